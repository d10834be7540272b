//go:build !linux || !(amd64 || arm64)

package tracer

import (
	"context"
	"fmt"
	"runtime"
)

// MaybeRunShim does nothing where the tracing engine does not run.
func MaybeRunShim() {}

// Run reports ErrUnsupported: the tracing engine needs Linux on amd64 or
// arm64.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	return nil, fmt.Errorf("run workload on %s/%s: %w", runtime.GOOS, runtime.GOARCH, ErrUnsupported)
}

func signalName(sig int) string { return fmt.Sprintf("signal %d", sig) }
