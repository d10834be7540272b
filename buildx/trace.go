package buildx

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/platforms"
	"github.com/docker/cli/cli/config"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	gwclient "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	"github.com/moby/buildkit/util/progress/progressui"
	"github.com/spf13/cobra"
	"github.com/tonistiigi/fsutil"

	"github.com/stargazer-build/stargazer/tracer"
	"github.com/stargazer-build/stargazer/tracer/buildtrace"
)

const (
	localTracer = "stargazer-tracer"
	localMount  = "stargazer-mount-"
	ociStoreID  = "stargazer-input"
	// ociLayoutName names the image of an OCI tar for BuildKit's
	// oci-layout source, which parses it like a registry reference.
	ociLayoutName = "stargazer/input"
)

// TraceOptions are the inputs of `stargazer trace`.
type TraceOptions struct {
	Image      string
	Platform   string
	Entrypoint string // JSON array or a single command
	Args       string // JSON array
	Env        []string
	User       string
	Cwd        string
	Mounts     []string
	Period     time.Duration
	WaitOnLine string
	Tracer     string
	Network    string
	RecordOut  string
	Progress   string
	Daemon     DaemonOptions
	Stderr     io.Writer
}

// TraceResult is a trace with its record attributed to the image's layers.
type TraceResult struct {
	Entries []tracer.Entry
	Status  tracer.Status
	// Missing are recorded paths that are not regular files of the image
	// (created by the workload, kernel files, mounts).
	Missing []string
}

// Trace runs the image's workload under the tracer on the daemon and
// returns the attributed record.
func Trace(ctx context.Context, o TraceOptions) (*TraceResult, error) {
	stderr := o.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	mode, err := progressMode(o.Progress)
	if err != nil {
		return nil, err
	}
	w, err := o.workload()
	if err != nil {
		return nil, err
	}
	platform := platforms.DefaultSpec()
	if o.Platform != "" {
		if platform, err = platforms.Parse(o.Platform); err != nil {
			return nil, fmt.Errorf("--platform: %w", err)
		}
	}
	tmp, err := os.MkdirTemp("", "stargazer-trace-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	img, err := openImage(ctx, o.Image, platform, filepath.Join(tmp, "content"))
	if err != nil {
		return nil, err
	}
	if _, err := w.Argv(img.Config.Config); err != nil {
		return nil, fmt.Errorf("%s: %w; give --entrypoint or --args", o.Image, err)
	}
	tracerDir, err := stageTracer(filepath.Join(tmp, "tracer"))
	if err != nil {
		return nil, err
	}
	mounts, locals, err := parseMounts(o.Mounts)
	if err != nil {
		return nil, err
	}
	w.Mounts = mounts
	locals[localTracer] = tracerDir

	so := client.SolveOpt{LocalMounts: map[string]fsutil.FS{}}
	for name, dir := range locals {
		fs, err := fsutil.NewFS(dir)
		if err != nil {
			return nil, fmt.Errorf("mount %s: %w", dir, err)
		}
		so.LocalMounts[name] = fs
	}
	if img.Store != nil {
		so.OCIStores = map[string]content.Store{ociStoreID: img.Store}
	}
	so.Session = []session.Attachable{authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
		AuthConfigProvider: authprovider.LoadAuthConfig(config.LoadDefaultConfigFile(io.Discard)),
	})}
	if w.Mechanism != "" && w.Mechanism != string(tracer.Ptrace) {
		so.AllowedEntitlements = []string{"security.insecure"}
	}

	addr, stop, err := connect(ctx, o.Daemon)
	if err != nil {
		return nil, err
	}
	var res *buildtrace.Result
	err = runGateway(ctx, addr, so, stderr, mode, func(ctx context.Context, c gwclient.Client) (*gwclient.Result, error) {
		var rootfs llb.State
		pinned := img.Ref + "@" + img.Manifest.Digest.String()
		if img.Store != nil {
			rootfs = llb.OCILayout(ociLayoutName+"@"+img.Manifest.Digest.String(),
				llb.OCIStore(c.BuildOpts().SessionID, ociStoreID), llb.Platform(platform))
		} else {
			rootfs = llb.Image(pinned, llb.Platform(platform))
		}
		tr := buildtrace.Tracer{State: llb.Local(localTracer), Path: "stargazer", Args: []string{tracer.Subcommand}}
		r, err := buildtrace.Run(ctx, c, rootfs, img.Config.Config, tr, w, llb.Platform(platform))
		if err != nil {
			return nil, err
		}
		res = r
		return gwclient.NewResult(), nil
	})
	if serr := stop(); serr != nil && err == nil {
		err = fmt.Errorf("stop embedded daemon: %w", serr)
	}
	if err != nil {
		return nil, err
	}

	idx, err := tracer.IndexImage(ctx, img.Provider, img.ManifestDoc)
	if err != nil {
		return nil, fmt.Errorf("attribute record to layers: %w", err)
	}
	entries, missing := tracer.Attribute(res.Entries, idx, img.Manifest.Digest.String())
	out := &TraceResult{Entries: entries, Status: res.Status, Missing: missing}
	for _, wmsg := range res.Status.Warnings {
		fmt.Fprintln(stderr, "WARNING:", wmsg)
	}
	return out, nil
}

func (o TraceOptions) workload() (buildtrace.Workload, error) {
	w := buildtrace.Workload{
		Env:         o.Env,
		User:        o.User,
		Cwd:         o.Cwd,
		Period:      o.Period,
		WaitOnLine:  o.WaitOnLine,
		Mechanism:   o.Tracer,
		IgnoreCache: true,
	}
	if w.Period == 0 {
		w.Period = -1 // --period 0: until the workload exits
	}
	if o.Entrypoint != "" {
		ep, err := parseCommand("--entrypoint", o.Entrypoint)
		if err != nil {
			return w, err
		}
		w.Entrypoint = ep
	}
	if o.Args != "" {
		args, err := parseCommand("--args", o.Args)
		if err != nil {
			return w, err
		}
		w.Args = args
	}
	switch o.Network {
	case "", "none":
	case "host":
		w.Network = true
	default:
		return w, fmt.Errorf("invalid --network %q: want none or host", o.Network)
	}
	if o.Tracer != "" {
		if _, err := tracer.ParseMechanism(o.Tracer); err != nil {
			return w, err
		}
	}
	for _, e := range o.Env {
		if k, _, _ := strings.Cut(e, "="); k == "" {
			return w, fmt.Errorf("invalid --env %q: want KEY=VALUE", e)
		}
	}
	return w, nil
}

// parseCommand takes a JSON array, as ctr-remote does, or one word.
func parseCommand(flag, s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		var out []string
		if err := json.Unmarshal([]byte(s), &out); err != nil {
			return nil, fmt.Errorf("invalid %s %q: want a JSON array of strings: %w", flag, s, err)
		}
		return out, nil
	}
	if s == "" {
		return nil, fmt.Errorf("invalid %s: empty", flag)
	}
	return []string{s}, nil
}

// parseMounts turns --mount type=bind,src=DIR,dst=PATH[,ro] into mounts of
// local sources synced through the session.
func parseMounts(specs []string) ([]buildtrace.Mount, map[string]string, error) {
	locals := map[string]string{}
	var mounts []buildtrace.Mount
	for i, spec := range specs {
		fields, err := csv.NewReader(strings.NewReader(spec)).Read()
		if err != nil {
			return nil, nil, fmt.Errorf("invalid --mount %q: %w", spec, err)
		}
		var src, dst string
		ro := false
		for _, f := range fields {
			k, v, _ := strings.Cut(f, "=")
			switch strings.ToLower(k) {
			case "type":
				if v != "bind" {
					return nil, nil, fmt.Errorf("invalid --mount %q: only type=bind is supported", spec)
				}
			case "src", "source":
				src = v
			case "dst", "destination", "target":
				dst = v
			case "ro", "readonly":
				ro = v == "" || v == "true"
			default:
				return nil, nil, fmt.Errorf("invalid --mount %q: unknown field %q", spec, k)
			}
		}
		if src == "" || dst == "" || !strings.HasPrefix(dst, "/") {
			return nil, nil, fmt.Errorf("invalid --mount %q: want type=bind,src=DIR,dst=/ABSOLUTE/PATH", spec)
		}
		st, err := os.Stat(src)
		if err != nil || !st.IsDir() {
			return nil, nil, fmt.Errorf("invalid --mount %q: src must be a directory", spec)
		}
		name := fmt.Sprintf("%s%d", localMount, i)
		locals[name] = src
		mounts = append(mounts, buildtrace.Mount{Target: dst, Source: llb.Local(name), Readonly: ro})
	}
	return mounts, locals, nil
}

// stageTracer puts a copy of this executable where a local source can sync
// it into the build. It must be static to run in any image.
func stageTracer(dir string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("locate the tracer: %w", err)
	}
	if err := checkStatic(self); err != nil {
		return "", err
	}
	b, err := os.ReadFile(self)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "stargazer"), b, 0o755); err != nil {
		return "", err
	}
	return dir, nil
}

func checkStatic(path string) error {
	static, err := tracer.IsStaticExecutable(path)
	if err != nil {
		return fmt.Errorf("the tracer: %w", err)
	}
	if !static {
		return fmt.Errorf("the tracer %s is dynamically linked and cannot run inside images; build stargazer with CGO_ENABLED=0 (make build)", path)
	}
	return nil
}

// runGateway runs f as a gateway build on the daemon at addr, showing
// progress on stderr.
func runGateway(ctx context.Context, addr string, so client.SolveOpt, stderr io.Writer, mode progressui.DisplayMode, f gwclient.BuildFunc) error {
	c, err := client.New(ctx, addr)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer c.Close()
	return withProgress(ctx, stderr, mode, func(ctx context.Context, ch chan *client.SolveStatus) error {
		_, err := c.Build(ctx, so, "stargazer", f, ch)
		return err
	})
}

func newTraceCommand() *cobra.Command {
	var o TraceOptions
	var merge bool
	cmd := &cobra.Command{
		Use:   "trace [OPTIONS] IMAGE | trace --merge RECORD...",
		Short: "Run an image's workload and record the files it reads",
		Long: `Run an image's workload under the tracer, through BuildKit on the daemon,
and write the files it read, in first-access order, as a record that
ctr-remote and nerdctl read (JSON lines: path, manifestDigest, layerIndex).
IMAGE is a registry reference or an OCI layout tar. On a stargz worker the
image is pulled lazily: tracing fetches only what the workload reads.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if merge {
				return mergeRecords(args, o.RecordOut, cmd.OutOrStdout())
			}
			if len(args) != 1 {
				return errors.New("trace takes one IMAGE (or --merge RECORD...)")
			}
			o.Image = args[0]
			res, err := Trace(cmd.Context(), o)
			if err != nil {
				return err
			}
			if len(res.Missing) > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d recorded paths are not files of the image and were left out\n", len(res.Missing))
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "traced %d files with %s\n", len(res.Entries), mechanismText(res.Status))
			return writeRecord(res.Entries, o.RecordOut, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	addWorkloadFlags(cmd, &o)
	fl.StringVar(&o.RecordOut, "record-out", "", "Write the record to FILE (default: standard output)")
	fl.BoolVar(&merge, "merge", false, "Merge the given records, keeping first-access rank, instead of tracing")
	addDaemonFlags(cmd, &o.Daemon)
	return cmd
}

// mechanismText names how a trace watched the workload.
func mechanismText(st tracer.Status) string {
	switch {
	case st.Mechanism == tracer.Ptrace && st.SeccompListener:
		return "ptrace (opens through a seccomp listener)"
	case st.Mechanism == tracer.Ptrace:
		return "ptrace (opens stopped for ptrace: no seccomp listener granted)"
	}
	return string(st.Mechanism)
}

func writeRecord(entries []tracer.Entry, path string, stdout io.Writer) error {
	var buf bytes.Buffer
	if err := tracer.NewWriter(&buf).WriteAll(entries); err != nil {
		return err
	}
	if path == "" || path == "-" {
		_, err := stdout.Write(buf.Bytes())
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func mergeRecords(paths []string, out string, stdout io.Writer) error {
	var records [][]tracer.Entry
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		entries, err := tracer.ReadRecord(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		records = append(records, entries)
	}
	return writeRecord(tracer.Merge(records...), out, stdout)
}
