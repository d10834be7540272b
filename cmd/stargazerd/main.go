// Command stargazerd is a BuildKit daemon whose OCI worker pulls eStargz
// base images lazily. It takes buildkitd's flags and buildkitd.toml, so
// buildx drivers and buildkitd users can run it in buildkitd's place.
package main

import (
	"fmt"
	"os"

	"github.com/stargazer-build/stargazer/tracer"
	"github.com/stargazer-build/stargazer/worker/daemoncmd"
)

func main() {
	// The daemon's executable is also the tracer its builds mount when it
	// serves stargazer's frontend as dockerfile.v0.
	tracer.MaybeRunSubcommand()
	if err := daemoncmd.New().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "stargazerd:", err)
		os.Exit(1)
	}
}
