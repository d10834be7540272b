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

	"github.com/docker/cli/cli/config"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	"github.com/moby/buildkit/util/progress/progressui"
	"github.com/spf13/cobra"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sync/errgroup"

	"github.com/stargazer-build/stargazer/exporter"
	"github.com/stargazer-build/stargazer/tracer"
)

// BuildOptions are the inputs of one build, named as buildx names them.
type BuildOptions struct {
	ContextDir   string
	Dockerfile   string // path; default <context>/Dockerfile
	BuildArgs    []string
	Target       string
	Platforms    []string
	Outputs      []string
	Tags         []string
	Push         bool
	NoCache      bool
	Progress     string
	MetadataFile string
	// Attests are buildx --attest values: type=provenance,mode=min or
	// type=sbom.
	Attests []string
	// RecordIn is a record file the optimizing exporter prioritizes by
	// when the build result carries none.
	RecordIn string
	Daemon   DaemonOptions

	// Stderr receives progress; nil means os.Stderr.
	Stderr io.Writer
}

// Build runs one Dockerfile build and exports its result. It returns the
// exporter's response (image digest and the like).
func Build(ctx context.Context, o BuildOptions) (map[string]string, error) {
	solveOpt, err := o.solveOpt()
	if err != nil {
		return nil, err
	}
	mode, err := progressMode(o.Progress)
	if err != nil {
		return nil, err
	}
	stderr := o.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	addr, stop, err := connect(ctx, o.Daemon)
	if err != nil {
		return nil, err
	}
	resp, err := solve(ctx, addr, solveOpt, stderr, mode)
	if serr := stop(); serr != nil && err == nil {
		err = fmt.Errorf("stop embedded daemon: %w", serr)
	}
	if err != nil {
		return nil, err
	}
	if o.MetadataFile != "" {
		if err := writeMetadata(o.MetadataFile, resp); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

func (o BuildOptions) solveOpt() (client.SolveOpt, error) {
	var so client.SolveOpt
	if o.ContextDir == "" {
		return so, errors.New("build needs a context directory")
	}
	if o.ContextDir == "-" {
		return so, errors.New("a context from standard input is not supported; give a directory")
	}
	st, err := os.Stat(o.ContextDir)
	if err != nil {
		return so, fmt.Errorf("build context: %w", err)
	}
	if !st.IsDir() {
		return so, fmt.Errorf("build context %s is not a directory", o.ContextDir)
	}
	dockerfile := o.Dockerfile
	if dockerfile == "" {
		dockerfile = filepath.Join(o.ContextDir, "Dockerfile")
	}
	if _, err := os.Stat(dockerfile); err != nil {
		return so, fmt.Errorf("dockerfile: %w", err)
	}
	ctxFS, err := fsutil.NewFS(o.ContextDir)
	if err != nil {
		return so, fmt.Errorf("build context: %w", err)
	}
	dfFS, err := fsutil.NewFS(filepath.Dir(dockerfile))
	if err != nil {
		return so, fmt.Errorf("dockerfile: %w", err)
	}
	so.LocalMounts = map[string]fsutil.FS{"context": ctxFS, "dockerfile": dfFS}
	so.Frontend = "dockerfile.v0"
	so.FrontendAttrs = map[string]string{"filename": filepath.Base(dockerfile)}
	for _, a := range o.BuildArgs {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			// buildx takes the value of a bare name from the environment.
			v, ok = os.LookupEnv(k)
			if !ok {
				continue
			}
		}
		if k == "" {
			return so, fmt.Errorf("invalid --build-arg %q", a)
		}
		so.FrontendAttrs["build-arg:"+k] = v
	}
	if o.Target != "" {
		so.FrontendAttrs["target"] = o.Target
	}
	if len(o.Platforms) > 0 {
		so.FrontendAttrs["platform"] = strings.Join(o.Platforms, ",")
	}
	if o.NoCache {
		so.FrontendAttrs["no-cache"] = ""
	}
	for _, a := range o.Attests {
		typ, attrs, err := parseAttest(a)
		if err != nil {
			return so, err
		}
		so.FrontendAttrs["attest:"+typ] = attrs
	}
	for _, out := range o.Outputs {
		e, err := ParseOutput(out)
		if err != nil {
			return so, err
		}
		so.Exports = append(so.Exports, e)
	}
	if len(o.Tags) > 0 || o.Push {
		if err := applyTags(&so, o.Tags, o.Push); err != nil {
			return so, err
		}
	}
	if o.RecordIn != "" {
		if err := attachRecord(&so, o.RecordIn); err != nil {
			return so, err
		}
	}
	dockerConfig := config.LoadDefaultConfigFile(io.Discard)
	so.Session = []session.Attachable{authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
		AuthConfigProvider: authprovider.LoadAuthConfig(dockerConfig),
	})}
	return so, nil
}

// parseAttest splits a buildx --attest value into the attestation type and
// the attributes BuildKit's frontend takes for it.
func parseAttest(s string) (string, string, error) {
	fields, err := csv.NewReader(strings.NewReader(s)).Read()
	if err != nil {
		return "", "", fmt.Errorf("invalid --attest %q: %w", s, err)
	}
	var typ string
	var rest []string
	for _, f := range fields {
		k, v, _ := strings.Cut(f, "=")
		if k == "type" {
			typ = v
			continue
		}
		rest = append(rest, f)
	}
	switch typ {
	case "provenance", "sbom":
	default:
		return "", "", fmt.Errorf("invalid --attest %q: type must be provenance or sbom", s)
	}
	return typ, strings.Join(rest, ","), nil
}

// attachRecord passes a record file to every image, oci and docker output.
func attachRecord(so *client.SolveOpt, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--record-in: %w", err)
	}
	defer f.Close()
	entries, err := tracer.ReadRecord(f)
	if err != nil {
		return fmt.Errorf("--record-in %s: %w", path, err)
	}
	var buf bytes.Buffer
	if err := tracer.NewWriter(&buf).WriteAll(entries); err != nil {
		return err
	}
	n := 0
	for i := range so.Exports {
		switch so.Exports[i].Type {
		case client.ExporterImage, client.ExporterOCI, client.ExporterDocker:
			so.Exports[i].Attrs[exporter.AttrRecord] = buf.String()
			if _, ok := so.Exports[i].Attrs[exporter.AttrOptimize]; !ok {
				so.Exports[i].Attrs[exporter.AttrOptimize] = "true"
			}
			n++
		}
	}
	if n == 0 {
		return errors.New("--record-in needs an image, oci or docker output")
	}
	return nil
}

// applyTags gives --tag and --push their buildx meaning: names for the
// image output, which is added when no output was asked for.
func applyTags(so *client.SolveOpt, tags []string, push bool) error {
	for i := range so.Exports {
		e := &so.Exports[i]
		if e.Type != client.ExporterImage && e.Type != client.ExporterOCI && e.Type != client.ExporterDocker {
			continue
		}
		if len(tags) > 0 && e.Attrs["name"] == "" {
			e.Attrs["name"] = strings.Join(tags, ",")
		}
		if push && e.Type == client.ExporterImage {
			e.Attrs["push"] = "true"
		}
		return nil
	}
	if len(so.Exports) > 0 {
		if push {
			return errors.New("--push needs an image output; it cannot be combined with the given --output")
		}
		return nil
	}
	if len(tags) == 0 {
		return errors.New("--push needs --tag or an --output with name=")
	}
	attrs := map[string]string{"name": strings.Join(tags, ",")}
	if push {
		attrs["push"] = "true"
	}
	so.Exports = append(so.Exports, client.ExportEntry{Type: client.ExporterImage, Attrs: attrs})
	return nil
}

func progressMode(s string) (progressui.DisplayMode, error) {
	switch s {
	case "", "auto":
		return progressui.AutoMode, nil
	case "plain":
		return progressui.PlainMode, nil
	case "tty":
		return progressui.TtyMode, nil
	case "rawjson":
		return progressui.RawJSONMode, nil
	case "quiet", "none":
		return progressui.QuietMode, nil
	}
	return "", fmt.Errorf("invalid --progress %q: want auto, plain, tty, rawjson or quiet", s)
}

func solve(ctx context.Context, addr string, so client.SolveOpt, stderr io.Writer, mode progressui.DisplayMode) (map[string]string, error) {
	c, err := client.New(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer c.Close()
	var resp *client.SolveResponse
	err = withProgress(ctx, stderr, mode, func(ctx context.Context, ch chan *client.SolveStatus) error {
		var err error
		resp, err = c.Solve(ctx, nil, so, ch)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.ExporterResponse, nil
}

// withProgress runs f, which reports to ch, while BuildKit's progress UI
// shows the reports on stderr.
func withProgress(ctx context.Context, stderr io.Writer, mode progressui.DisplayMode, f func(context.Context, chan *client.SolveStatus) error) error {
	display, err := progressui.NewDisplay(stderr, mode)
	if err != nil {
		return err
	}
	ch := make(chan *client.SolveStatus)
	eg, ectx := errgroup.WithContext(ctx)
	eg.Go(func() error { return f(ectx, ch) })
	eg.Go(func() error {
		warnings, err := display.UpdateFrom(context.WithoutCancel(ectx), ch)
		for _, w := range warnings {
			fmt.Fprintf(stderr, "WARNING: %s\n", w.Short)
		}
		return err
	})
	return eg.Wait()
}

func writeMetadata(path string, resp map[string]string) error {
	out := map[string]any{}
	for k, v := range resp {
		// Some values are base64 or JSON; keep JSON values structured like
		// buildx does.
		var j any
		if json.Unmarshal([]byte(v), &j) == nil {
			if _, isObj := j.(map[string]any); isObj {
				out[k] = j
				continue
			}
		}
		out[k] = v
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func newBuildCommand() *cobra.Command {
	var o BuildOptions
	cmd := &cobra.Command{
		Use:   "build [OPTIONS] PATH",
		Short: "Build an image from a Dockerfile",
		Long: `Build an image from a Dockerfile on a BuildKit worker that pulls eStargz
base images lazily. Without --addr the daemon runs inside this process.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.ContextDir = args[0]
			_, err := Build(cmd.Context(), o)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&o.Dockerfile, "file", "f", "", `Name of the Dockerfile (default: "PATH/Dockerfile")`)
	fl.StringArrayVar(&o.BuildArgs, "build-arg", nil, "Set build-time variables")
	fl.StringVar(&o.Target, "target", "", "Set the target build stage to build")
	fl.StringArrayVar(&o.Platforms, "platform", nil, "Set target platform for build")
	fl.StringArrayVarP(&o.Outputs, "output", "o", nil, `Output destination (format: "type=local,dest=path")`)
	fl.StringArrayVarP(&o.Tags, "tag", "t", nil, `Name and optionally a tag (format: "name:tag")`)
	fl.BoolVar(&o.Push, "push", false, `Shorthand for "--output=type=registry"`)
	fl.BoolVar(&o.NoCache, "no-cache", false, "Do not use cache when building the image")
	fl.StringVar(&o.Progress, "progress", "auto", `Set type of progress output ("auto", "plain", "tty", "rawjson", "quiet")`)
	fl.StringVar(&o.MetadataFile, "metadata-file", "", "Write build result metadata to a file")
	fl.StringArrayVar(&o.Attests, "attest", nil, `Attestation parameters (format: "type=provenance,mode=min")`)
	fl.StringVar(&o.RecordIn, "record-in", "", "Optimize image outputs by this record (JSON lines) when the build result carries none")
	addDaemonFlags(cmd, &o.Daemon)
	return cmd
}

func addDaemonFlags(cmd *cobra.Command, o *DaemonOptions) {
	fl := cmd.Flags()
	fl.StringVar(&o.Addr, "addr", os.Getenv("BUILDKIT_HOST"), "Address of a running stargazerd or buildkitd (default: a daemon embedded in this process)")
	fl.StringVar(&o.Root, "root", "", "State directory of the embedded daemon (default \""+defaultEmbeddedRoot+"\")")
	fl.StringVar(&o.Config, "config", "", "Configuration of the embedded daemon (buildkitd.toml format)")
	fl.StringVar(&o.Snapshotter, "oci-worker-snapshotter", "", "Snapshotter of the embedded daemon: stargz (default), overlayfs or native")
	fl.StringVar(&o.Frontend, "dockerfile-frontend", "", "Frontend of the embedded daemon's dockerfile.v0: buildkit (default) or stargazer (adds the trace step)")
	fl.BoolVar(&o.Debug, "debug", false, "Enable debug logs of the embedded daemon")
}
