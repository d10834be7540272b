// Command stargazer builds container images that start fast: Dockerfile
// builds on a lazily pulling BuildKit worker, with a daemon embedded in the
// process unless --addr names one.
//
// The same static executable is the in-container tracer (mounted into
// trace steps, run as `stargazer __trace`) and, installed as
// /bin/stargazer-frontend, the frontend of a `# syntax=` image.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/stargazer-build/stargazer/buildx"
	"github.com/stargazer-build/stargazer/frontend"
	"github.com/stargazer-build/stargazer/tracer"
)

func main() {
	tracer.MaybeRunSubcommand()
	if filepath.Base(os.Args[0]) == filepath.Base(frontend.TracerPath) {
		if err := frontend.Main(); err != nil {
			fmt.Fprintln(os.Stderr, "stargazer-frontend:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := buildx.NewRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(1)
	}
}
