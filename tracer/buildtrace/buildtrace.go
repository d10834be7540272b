// Package buildtrace runs a workload under the tracer as an ordinary
// BuildKit exec step: the image's root filesystem as the container's root,
// the tracer executable mounted read-only from an LLB source, the record
// written to a scratch mount and read back from the result. It needs no
// privileges (ptrace mode), no containerd and no image pull: on a stargz
// worker the image is mounted lazily.
package buildtrace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/moby/buildkit/client/llb"
	gwclient "github.com/moby/buildkit/frontend/gateway/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/tracer"
)

// Paths inside the trace container. They sit under one hidden directory so
// they never collide with the image's files.
const (
	tracerDir  = "/.stargazer/tracer"
	outDir     = "/.stargazer/out"
	recordFile = "record.json"
	statusFile = "status.json"
)

// DefaultPeriod is how long a workload runs when Workload.Period is zero.
const DefaultPeriod = 10 * time.Second

// ErrNoWorkload is returned when neither the image nor the caller says what
// to run.
var ErrNoWorkload = errors.New("no workload: the image has no entrypoint or cmd and none was given")

// Tracer says where the tracer executable is: a file in an LLB state and
// the arguments that make it act as the tracer.
type Tracer struct {
	// State holds the executable.
	State llb.State
	// Path is the executable's path inside State.
	Path string
	// Args come before the tracer's own flags, e.g. a hidden subcommand.
	Args []string
}

// Mount is workload data mounted into the trace container.
type Mount struct {
	Target   string
	Source   llb.State
	Selector string // path inside Source; "" for its root
	Readonly bool
}

// Workload is what to run and when to stop. Unset fields take the image
// config's values.
type Workload struct {
	// Entrypoint replaces the image's entrypoint; as with docker run, it
	// also clears the image's cmd.
	Entrypoint []string
	// Args replace the image's cmd: the arguments of the entrypoint.
	Args []string
	// Env entries (KEY=VALUE) are set over the image's environment.
	Env []string
	// User replaces the image's user.
	User string
	// Cwd replaces the image's working directory.
	Cwd string
	// Period stops the workload this long after its start. Zero means
	// DefaultPeriod; negative means wait for it to exit.
	Period time.Duration
	// WaitOnLine stops the workload once a line of its output contains it.
	WaitOnLine string
	// Mechanism is the tracer's mechanism: "" or "ptrace" (works without
	// privileges), "fanotify" or "auto" (need the security.insecure
	// entitlement).
	Mechanism string
	// Network gives the workload the host's network; by default it has
	// none.
	Network bool
	// Mounts are extra mounts, such as workload data.
	Mounts []Mount
	// IgnoreCache runs the trace even when BuildKit has it cached.
	IgnoreCache bool
}

// Argv is the command line the workload runs with, given the image config.
func (w Workload) Argv(cfg ocispec.ImageConfig) ([]string, error) {
	entrypoint, cmd := cfg.Entrypoint, cfg.Cmd
	if w.Entrypoint != nil {
		entrypoint, cmd = w.Entrypoint, nil
	}
	if w.Args != nil {
		cmd = w.Args
	}
	argv := append(append([]string{}, entrypoint...), cmd...)
	if len(argv) == 0 || argv[0] == "" {
		return nil, ErrNoWorkload
	}
	return argv, nil
}

// Exec returns the trace step on rootfs as an LLB state whose filesystem is
// the trace output (record and status).
func Exec(rootfs llb.State, cfg ocispec.ImageConfig, tr Tracer, w Workload) (llb.State, error) {
	argv, err := w.Argv(cfg)
	if err != nil {
		return llb.State{}, err
	}
	mech := w.Mechanism
	if mech == "" {
		mech = string(tracer.Ptrace)
	}
	if _, err := tracer.ParseMechanism(mech); err != nil {
		return llb.State{}, err
	}
	period := w.Period
	if period == 0 {
		period = DefaultPeriod
	}
	if period < 0 {
		period = 0
	}

	cmd := []string{path.Join(tracerDir, path.Base(tr.Path))}
	cmd = append(cmd, tr.Args...)
	cmd = append(cmd,
		"--tracer", mech,
		"--period", period.String(),
		"--record-out", path.Join(outDir, recordFile),
		"--status-out", path.Join(outDir, statusFile),
	)
	if w.WaitOnLine != "" {
		cmd = append(cmd, "--wait-on-line", w.WaitOnLine)
	}
	cmd = append(cmd, "--")
	cmd = append(cmd, argv...)

	opts := []llb.RunOption{
		llb.Args(cmd),
		llb.AddMount(tracerDir, tr.State, llb.SourcePath(path.Dir(path.Join("/", tr.Path))), llb.Readonly),
		llb.WithCustomNamef("[stargazer] trace %s", strings.Join(argv, " ")),
	}
	// The trace sees the image's environment with the caller's entries
	// on top, as a container started from the image would.
	for _, kv := range append(append([]string{}, cfg.Env...), w.Env...) {
		k, v, _ := strings.Cut(kv, "=")
		if k != "" {
			opts = append(opts, llb.AddEnv(k, v))
		}
	}
	if user := firstNonEmpty(w.User, cfg.User); user != "" {
		opts = append(opts, llb.User(user))
	}
	if dir := firstNonEmpty(w.Cwd, cfg.WorkingDir); dir != "" {
		opts = append(opts, llb.Dir(dir))
	}
	if !w.Network {
		opts = append(opts, llb.Network(llb.NetModeNone))
	}
	if mech != string(tracer.Ptrace) {
		opts = append(opts, llb.Security(llb.SecurityModeInsecure))
	}
	if w.IgnoreCache {
		opts = append(opts, llb.IgnoreCache)
	}
	for _, m := range w.Mounts {
		mo := []llb.MountOption{}
		if m.Selector != "" {
			mo = append(mo, llb.SourcePath(m.Selector))
		}
		if m.Readonly {
			mo = append(mo, llb.Readonly)
		}
		opts = append(opts, llb.AddMount(m.Target, m.Source, mo...))
	}
	run := rootfs.Run(opts...)
	return run.AddMount(outDir, llb.Scratch()), nil
}

// Result is a finished trace.
type Result struct {
	// Entries are the files the workload read, in first-access order,
	// paths relative to the image root, without layer attribution.
	Entries []tracer.Entry
	// Status says how the workload ended.
	Status tracer.Status
}

// Run solves the trace step with c and reads back its record.
func Run(ctx context.Context, c gwclient.Client, rootfs llb.State, cfg ocispec.ImageConfig, tr Tracer, w Workload, opts ...llb.ConstraintsOpt) (*Result, error) {
	out, err := Exec(rootfs, cfg, tr, w)
	if err != nil {
		return nil, err
	}
	def, err := out.Marshal(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("marshal trace step: %w", err)
	}
	res, err := c.Solve(ctx, gwclient.SolveRequest{Definition: def.ToPB()})
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	ref, err := res.SingleRef()
	if err != nil {
		return nil, err
	}
	return ReadResult(ctx, ref)
}

// ReadResult reads the record and status from the output of Exec.
func ReadResult(ctx context.Context, ref gwclient.Reference) (*Result, error) {
	recordData, err := ref.ReadFile(ctx, gwclient.ReadRequest{Filename: recordFile})
	if err != nil {
		return nil, fmt.Errorf("read trace record: %w", err)
	}
	entries, err := tracer.ReadRecord(strings.NewReader(string(recordData)))
	if err != nil {
		return nil, fmt.Errorf("trace record: %w", err)
	}
	var r Result
	r.Entries = entries
	statusData, err := ref.ReadFile(ctx, gwclient.ReadRequest{Filename: statusFile})
	if err != nil {
		return nil, fmt.Errorf("read trace status: %w", err)
	}
	if err := json.Unmarshal(statusData, &r.Status); err != nil {
		return nil, fmt.Errorf("trace status: %w", err)
	}
	return &r, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
