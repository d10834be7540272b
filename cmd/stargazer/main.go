// Command stargazer builds container images that start fast: Dockerfile
// builds on a lazily pulling BuildKit worker, with a daemon embedded in the
// process unless --addr names one.
//
// The same static executable is the in-container tracer: `stargazer trace`
// mounts it into the trace step, where it runs as `stargazer __trace`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/stargazer-build/stargazer/buildx"
	"github.com/stargazer-build/stargazer/tracer"
)

func main() {
	tracer.MaybeRunShim()
	if len(os.Args) > 1 && os.Args[1] == buildx.TracerSubcommand {
		os.Exit(tracer.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := buildx.NewRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(1)
	}
}
