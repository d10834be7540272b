// Package worker assembles a BuildKit daemon whose OCI worker pulls eStargz
// base images lazily through an in-process stargz snapshotter.
//
// The daemon is built from BuildKit's public packages: a runc executor, a
// snapshotter chosen by name ("stargz" by default, "overlayfs" or "native"),
// the cache and history databases, garbage collection, the session manager
// and the dockerfile.v0 and gateway.v0 frontends. The worker it registers
// wraps BuildKit's base worker so that a caller can hand out its own
// exporters (see ExporterWrapper).
package worker

import (
	"github.com/moby/buildkit/exporter"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/worker/base"
)

// ExporterWrapper decorates or replaces the exporter BuildKit's worker hands
// out for an export type (client.ExporterImage, client.ExporterOCI, …).
//
// The controller passes the output type of a build straight to the worker,
// so this is the one place where an exporter can take over types such as
// "image", "oci" and "docker" without a second daemon.
type ExporterWrapper interface {
	// WrapExporter returns the exporter w uses for name. inner is
	// BuildKit's own exporter for that name, or nil when BuildKit has none.
	WrapExporter(w *Worker, name string, sm *session.Manager, inner exporter.Exporter) (exporter.Exporter, error)
}

// ExporterWrapperFunc adapts a function to ExporterWrapper.
type ExporterWrapperFunc func(w *Worker, name string, sm *session.Manager, inner exporter.Exporter) (exporter.Exporter, error)

// WrapExporter calls f.
func (f ExporterWrapperFunc) WrapExporter(w *Worker, name string, sm *session.Manager, inner exporter.Exporter) (exporter.Exporter, error) {
	return f(w, name, sm, inner)
}

// Worker is BuildKit's base worker with a replaceable exporter.
type Worker struct {
	*base.Worker
	wrapper ExporterWrapper
}

// Exporter returns the exporter for name, passing BuildKit's own exporter
// through the configured ExporterWrapper.
func (w *Worker) Exporter(name string, sm *session.Manager) (exporter.Exporter, error) {
	inner, err := w.Worker.Exporter(name, sm)
	if w.wrapper == nil {
		return inner, err
	}
	if err != nil {
		// BuildKit knows no such exporter; the wrapper may still.
		inner = nil
	}
	wrapped, werr := w.wrapper.WrapExporter(w, name, sm, inner)
	if werr != nil {
		return nil, werr
	}
	if wrapped == nil {
		return nil, err
	}
	return wrapped, nil
}
