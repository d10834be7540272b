// Package frontend is stargazer's Dockerfile frontend: BuildKit's
// Dockerfile frontend plus a trace step. After the Dockerfile build, it runs
// the image's workload on each platform's result as an ordinary exec step
// under the tracer (ptrace, network none, no privileges) and attaches the
// record to the result metadata, where stargazer's exporter finds it and a
// client sees it. The trace is an LLB step like any other, so a rebuild
// with unchanged inputs reuses it from the cache.
package frontend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	dockerfile "github.com/moby/buildkit/frontend/dockerfile/builder"
	"github.com/moby/buildkit/frontend/dockerui"
	gwclient "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/solver/pb"
	"github.com/opencontainers/go-digest"

	"github.com/stargazer-build/stargazer/tracer"
	"github.com/stargazer-build/stargazer/tracer/buildtrace"
)

// Result metadata keys. The "frontend." prefix makes BuildKit copy them
// into the solve response, so a client of any BuildKit daemon receives the
// record. A multi-platform build has one key per platform, suffixed with
// "/<platform id>" as BuildKit's own per-platform keys are.
const (
	// RecordKey holds the merged record (JSON lines, paths only).
	RecordKey = "frontend.stargazer.record"
	// StatusKey holds the tracer's status of the last workload (JSON).
	StatusKey = "frontend.stargazer.trace-status"
)

// TracerPath is where the frontend image keeps its executable, which is
// also the in-container tracer.
const TracerPath = "/bin/stargazer-frontend"

// TracerSource returns where the tracer executable is for a build.
type TracerSource func(ctx context.Context, c gwclient.Client) (buildtrace.Tracer, error)

// Option configures New.
type Option func(*options) error

type options struct {
	builder gwclient.BuildFunc
	tracer  TracerSource
}

// WithBuilder replaces the Dockerfile frontend the trace step follows.
// Default: BuildKit's Dockerfile frontend.
func WithBuilder(f gwclient.BuildFunc) Option {
	return func(o *options) error {
		o.builder = f
		return nil
	}
}

// WithTracerSource sets where the tracer comes from. Default: the
// frontend's own image (the gateway's current frontend), at TracerPath.
func WithTracerSource(s TracerSource) Option {
	return func(o *options) error {
		o.tracer = s
		return nil
	}
}

// Build is the frontend with default options, for a frontend image's main.
func Build(ctx context.Context, c gwclient.Client) (*gwclient.Result, error) {
	f, err := New()
	if err != nil {
		return nil, err
	}
	return f(ctx, c)
}

// New returns the frontend's build function.
func New(opts ...Option) (gwclient.BuildFunc, error) {
	o := options{builder: dockerfile.Build, tracer: currentFrontendTracer}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	return func(ctx context.Context, c gwclient.Client) (*gwclient.Result, error) {
		return build(ctx, c, o)
	}, nil
}

// currentFrontendTracer mounts the tracer from the frontend image the
// gateway runs.
func currentFrontendTracer(ctx context.Context, c gwclient.Client) (buildtrace.Tracer, error) {
	cf, ok := c.(interface{ CurrentFrontend() (*llb.State, error) })
	if !ok {
		return buildtrace.Tracer{}, errors.New("this BuildKit gateway cannot mount the frontend's own image")
	}
	st, err := cf.CurrentFrontend()
	if err != nil {
		return buildtrace.Tracer{}, fmt.Errorf("mount the frontend image: %w", err)
	}
	if st == nil {
		return buildtrace.Tracer{}, errors.New("the frontend runs without an image to take the tracer from")
	}
	return buildtrace.Tracer{State: *st, Path: TracerPath, Args: []string{tracer.Subcommand}}, nil
}

func build(ctx context.Context, c gwclient.Client, o options) (*gwclient.Result, error) {
	df, err := readDockerfile(ctx, c)
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(c.BuildOpts().Opts, df)
	if err != nil {
		return nil, err
	}
	res, err := o.builder(ctx, c)
	if err != nil || cfg.Mode == ModeOff {
		return res, err
	}
	// A frontend selected with "# syntax=" may be stargazer's own: then
	// the result is traced already.
	if alreadyTraced(res) {
		return res, nil
	}
	ps, err := exptypes.ParsePlatforms(res.Metadata)
	if err != nil {
		return nil, err
	}
	var tr *buildtrace.Tracer
	for _, p := range ps.Platforms {
		ref, img, suffix, err := buildtrace.PlatformImage(res, p.ID)
		if err != nil {
			return nil, err
		}
		if ref == nil {
			continue
		}
		fail := func(format string, args ...any) error {
			msg := fmt.Sprintf(format, args...)
			if cfg.Mode == ModeRequired {
				return fmt.Errorf("stargazer trace (%s): %s", p.ID, msg)
			}
			warn(ctx, c, ref, fmt.Sprintf("stargazer: %s: %s; the image is exported unoptimized", p.ID, msg))
			return nil
		}
		if _, err := cfg.Workloads[0].Argv(img.Config); err != nil {
			if err := fail("%v; set %s or a stargazer-trace-args directive", err, ArgTraceArgs); err != nil {
				return nil, err
			}
			continue
		}
		if tr == nil {
			t, err := o.tracer(ctx, c)
			if err != nil {
				if err := fail("%v", err); err != nil {
					return nil, err
				}
				return res, nil
			}
			tr = &t
		}
		rootfs, err := ref.ToState()
		if err != nil {
			return nil, err
		}
		var records [][]tracer.Entry
		var status tracer.Status
		failed := false
		for _, w := range cfg.Workloads {
			r, err := buildtrace.Run(ctx, c, rootfs, img.Config, *tr, w, llb.Platform(p.Platform))
			if err != nil {
				if err := fail("trace failed: %v", err); err != nil {
					return nil, err
				}
				failed = true
				break
			}
			records = append(records, r.Entries)
			status = r.Status
			if r.Status.StopReason == tracer.StopExited && r.Status.ExitCode != 0 {
				if err := fail("workload %v exited with code %d%s", w.Args, r.Status.ExitCode, outputTail(r)); err != nil {
					return nil, err
				}
			}
			for _, wmsg := range r.Status.Warnings {
				warn(ctx, c, ref, "stargazer: "+wmsg)
			}
		}
		if failed {
			continue
		}
		var buf bytes.Buffer
		if err := tracer.NewWriter(&buf).WriteAll(tracer.Merge(records...)); err != nil {
			return nil, err
		}
		res.AddMeta(RecordKey+suffix, buf.Bytes())
		if b, err := json.Marshal(status); err == nil {
			res.AddMeta(StatusKey+suffix, b)
		}
	}
	return res, nil
}

// outputTail is the workload's last output, for an error message.
func outputTail(r *buildtrace.Result) string {
	if r.Status.Output == "" {
		return ""
	}
	return "; its output ended with:\n" + r.Status.Output
}

func alreadyTraced(res *gwclient.Result) bool {
	for k := range res.Metadata {
		if k == RecordKey || strings.HasPrefix(k, RecordKey+"/") {
			return true
		}
	}
	return false
}

// readDockerfile reads the Dockerfile the build uses, for its directives.
func readDockerfile(ctx context.Context, c gwclient.Client) ([]byte, error) {
	bc, err := dockerui.NewClient(c)
	if err != nil {
		return nil, err
	}
	src, err := bc.ReadEntrypoint(ctx, "Dockerfile")
	if err != nil {
		return nil, err
	}
	return src.Data, nil
}

// warn shows msg in the client's build warnings, on the vertex that made
// ref.
func warn(ctx context.Context, c gwclient.Client, ref gwclient.Reference, msg string) {
	dgst := refVertex(ctx, ref)
	if dgst == "" {
		return
	}
	_ = c.Warn(ctx, dgst, msg, gwclient.WarnOpts{Level: 1})
}

func refVertex(ctx context.Context, ref gwclient.Reference) digest.Digest {
	st, err := ref.ToState()
	if err != nil {
		return ""
	}
	def, err := st.Marshal(ctx)
	if err != nil || len(def.Def) == 0 {
		return ""
	}
	// The last op of a definition only points at the result vertex.
	var op pb.Op
	if err := op.UnmarshalVT(def.Def[len(def.Def)-1]); err != nil || len(op.Inputs) == 0 {
		return ""
	}
	return digest.Digest(op.Inputs[0].Digest)
}
