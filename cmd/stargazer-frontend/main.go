// Command stargazer-frontend is stargazer's Dockerfile frontend, the
// entrypoint of the image a `# syntax=` line names. The executable is also
// the tracer its builds mount.
package main

import (
	"fmt"
	"os"

	"github.com/stargazer-build/stargazer/frontend"
	"github.com/stargazer-build/stargazer/tracer"
)

func main() {
	tracer.MaybeRunSubcommand()
	if err := frontend.Main(); err != nil {
		fmt.Fprintln(os.Stderr, "stargazer-frontend:", err)
		os.Exit(1)
	}
}
