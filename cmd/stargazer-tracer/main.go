// Command stargazer-tracer runs a workload inside a container and records
// the files it opens, in first-access order, as a ctr-remote compatible
// record. Build it static (CGO_ENABLED=0) so it runs in any image.
package main

import (
	"os"

	"github.com/stargazer-build/stargazer/tracer"
)

func main() {
	tracer.MaybeRunShim()
	os.Exit(tracer.Main(os.Args[1:], os.Stdout, os.Stderr))
}
