package exporter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/platforms"
	"github.com/moby/buildkit/cache"
	"github.com/moby/buildkit/executor"
	bkexporter "github.com/moby/buildkit/exporter"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/solver/pb"
	"github.com/moby/buildkit/util/progress"
	"github.com/moby/sys/user"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/tracer"
	"github.com/stargazer-build/stargazer/tracer/buildtrace"
)

// Paths of the exporter's own trace container.
const (
	selfTracerPath = "/.stargazer/tracer/stargazer"
	selfOutDir     = "/.stargazer/out"
)

// selfTrace runs each platform's workload on the build result under the
// tracer, when the result carries no record: the daemon's own executable
// is bind-mounted read-only as the tracer, the workload runs with network
// none, and its root filesystem is a throwaway copy of the result.
func (e *instance) selfTrace(ctx context.Context, src *bkexporter.Source, sessionID string) (map[string][]tracer.Entry, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locate the tracer: %w", err)
	}
	ps, err := exptypes.ParsePlatforms(src.Metadata)
	if err != nil {
		return nil, err
	}
	out := map[string][]tracer.Entry{}
	for _, p := range ps.Platforms {
		ref, img, _, err := buildtrace.PlatformImage(src, p.ID)
		if err != nil {
			return nil, err
		}
		if ref == nil {
			continue
		}
		w := buildtrace.Workload{Period: e.s.tracePeriod}
		argv, err := w.Argv(img.Config)
		if errors.Is(err, buildtrace.ErrNoWorkload) {
			progress.OneOff(ctx, fmt.Sprintf("WARNING: %s: no workload to trace (no entrypoint or cmd)", p.ID))(nil)
			continue
		}
		if err != nil {
			return nil, err
		}
		entries, err := e.traceRef(ctx, ref, img.Config, argv, exe, session.NewGroup(sessionID))
		if err != nil {
			progress.OneOff(ctx, fmt.Sprintf("WARNING: %s: trace failed: %v", p.ID, err))(nil)
			continue
		}
		out[platforms.FormatAll(platforms.Normalize(p.Platform))] = entries
	}
	return out, nil
}

func (e *instance) traceRef(ctx context.Context, ref cache.ImmutableRef, cfg ocispec.ImageConfig, argv []string, exe string, g session.Group) (_ []tracer.Entry, retErr error) {
	report := progress.OneOff(ctx, "[stargazer] trace "+strings.Join(argv, " "))
	defer func() { report(retErr) }()
	w := e.o.w
	root, err := w.CacheManager().New(ctx, ref, g, cache.WithDescription("stargazer trace root"))
	if err != nil {
		return nil, err
	}
	defer root.Release(context.WithoutCancel(ctx))
	outDir, err := os.MkdirTemp("", "stargazer-trace-out-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(outDir)

	period := e.s.tracePeriod
	if period <= 0 {
		period = buildtrace.DefaultPeriod
	}
	args := []string{selfTracerPath, tracer.Subcommand, "--tracer", string(tracer.Ptrace), "--period", period.String(),
		"--record-out", selfOutDir + "/record.json", "--status-out", selfOutDir + "/status.json", "--"}
	cwd := cfg.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	meta := executor.Meta{
		Args:    append(args, argv...),
		Env:     cfg.Env,
		User:    cfg.User,
		Cwd:     cwd,
		NetMode: pb.NetMode_NONE,
	}
	mounts := []executor.Mount{
		{Src: bindMount{path: exe, readonly: true}, Dest: selfTracerPath, Readonly: true},
		{Src: bindMount{path: outDir}, Dest: selfOutDir},
	}
	ctx, cancel := context.WithTimeout(ctx, period+2*time.Minute)
	defer cancel()
	if _, err := w.Executor().Run(ctx, "", executor.Mount{Src: refMount{ref: root, g: g}}, mounts,
		executor.ProcessInfo{Meta: meta, Stdout: nopWriteCloser{}, Stderr: nopWriteCloser{}}, nil); err != nil {
		return nil, fmt.Errorf("run the tracer: %w", err)
	}
	f, err := os.Open(filepath.Join(outDir, "record.json"))
	if err != nil {
		return nil, fmt.Errorf("read the record: %w", err)
	}
	defer f.Close()
	return tracer.ReadRecord(f)
}

// refMount mounts a cache ref as an executor's root.
type refMount struct {
	ref cache.MutableRef
	g   session.Group
}

func (m refMount) Mount(ctx context.Context, readonly bool) (executor.MountableRef, error) {
	return m.ref.Mount(ctx, readonly, m.g)
}

// bindMount mounts a host file or directory.
type bindMount struct {
	path     string
	readonly bool
}

func (b bindMount) Mount(context.Context, bool) (executor.MountableRef, error) {
	return bindRef(b), nil
}

type bindRef bindMount

func (b bindRef) Mount() ([]mount.Mount, func() error, error) {
	opts := []string{"rbind"}
	if b.readonly {
		opts = append(opts, "ro")
	}
	return []mount.Mount{{Type: "bind", Source: b.path, Options: opts}}, func() error { return nil }, nil
}

func (bindRef) IdentityMapping() *user.IdentityMapping { return nil }

type nopWriteCloser struct{}

func (nopWriteCloser) Write(p []byte) (int, error) { return len(p), nil }
func (nopWriteCloser) Close() error                { return nil }
