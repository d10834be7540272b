package buildx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/stargazer-build/stargazer/exporter/convert"
	"github.com/stargazer-build/stargazer/tracer"
)

// OptimizeOptions are the inputs of `stargazer optimize`.
type OptimizeOptions struct {
	Source, Target string
	// RecordIn is a record to prioritize by; without it the image is
	// traced with Trace's workload options.
	RecordIn       string
	ZstdChunked    bool
	OCI            bool
	Level          int
	ChunkSize      int
	ReoptimizeBase bool
	Trace          TraceOptions
	Stderr         io.Writer
}

// Optimize converts an existing image into an optimized one and writes it
// to a registry or an OCI tar. It returns the new manifest digest.
func Optimize(ctx context.Context, o OptimizeOptions) (ocispec.Descriptor, error) {
	stderr := o.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	if o.ZstdChunked && !o.OCI {
		return ocispec.Descriptor{}, fmt.Errorf("--zstdchunked needs OCI media types (--oci): %w", convert.ErrDockerZstdChunked)
	}
	platform := platforms.DefaultSpec()
	if o.Trace.Platform != "" {
		p, err := platforms.Parse(o.Trace.Platform)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("--platform: %w", err)
		}
		platform = p
	}
	tmp, err := os.MkdirTemp("", "stargazer-optimize-")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer os.RemoveAll(tmp)
	src, err := openImage(ctx, o.Source, platform, filepath.Join(tmp, "src"))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	store := src.Store
	if store == nil {
		if store, err = local.NewStore(filepath.Join(tmp, "out")); err != nil {
			return ocispec.Descriptor{}, err
		}
		// The manifest and config are copied in; layers stay in the
		// registry and only those converted are read.
		for _, d := range []ocispec.Descriptor{src.Manifest, src.ManifestDoc.Config} {
			b, err := content.ReadBlob(ctx, src.Provider, d)
			if err != nil {
				return ocispec.Descriptor{}, err
			}
			if err := content.WriteBlob(ctx, store, d.Digest.String(), strings.NewReader(string(b)), d); err != nil {
				return ocispec.Descriptor{}, err
			}
		}
	}

	var entries []tracer.Entry
	if o.RecordIn != "" {
		f, err := os.Open(o.RecordIn)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("--record-in: %w", err)
		}
		entries, err = tracer.ReadRecord(f)
		f.Close()
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("--record-in %s: %w", o.RecordIn, err)
		}
	} else {
		t := o.Trace
		t.Image = o.Source
		t.Stderr = stderr
		res, err := Trace(ctx, t)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		entries = res.Entries
	}
	lists, missing, err := tracer.AttributeImage(ctx, src.Provider, src.ManifestDoc, src.Manifest.Digest, entries, nil)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "WARNING: %d recorded paths are not files of the image (e.g. %s)\n", len(missing), missing[0])
	}

	format := convert.EStargz
	if o.ZstdChunked {
		format = convert.ZstdChunked
	}
	opts := []convert.Option{
		convert.WithFormat(format),
		convert.WithReoptimizeBase(o.ReoptimizeBase),
		convert.WithPrioritizedFiles(func(_ ocispec.Platform, i int) []string { return lists[i] }),
	}
	if o.OCI {
		opts = append(opts, convert.WithOCIMediaTypes(true))
	}
	if o.Level > 0 {
		opts = append(opts, convert.WithCompressionLevel(o.Level))
	}
	if o.ChunkSize > 0 {
		opts = append(opts, convert.WithChunkSize(o.ChunkSize))
	}
	cs := convert.WithFallback(store, src.Provider)
	desc, rep, err := convert.Image(ctx, cs, src.Manifest, opts...)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("optimize %s: %w", o.Source, err)
	}
	rep.WriteTable(stderr)

	if isTarTarget(o.Target) {
		return desc, writeOCITar(ctx, cs, desc, o.Target)
	}
	return desc, pushImage(ctx, cs, desc, src, o.Target)
}

func isTarTarget(t string) bool {
	return strings.HasSuffix(t, ".tar") || strings.HasPrefix(t, "oci-archive:")
}

func writeOCITar(ctx context.Context, p content.InfoReaderProvider, desc ocispec.Descriptor, target string) error {
	path := strings.TrimPrefix(target, "oci-archive:")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := archive.Export(ctx, p, f, archive.WithManifest(desc), archive.WithAllPlatforms(), archive.WithSkipDockerManifest()); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// pushImage pushes the optimized manifest and its blobs; a layer kept from
// a source image in the same registry is mounted from its repository.
func pushImage(ctx context.Context, p content.Provider, desc ocispec.Descriptor, src *imageSource, target string) error {
	b, err := content.ReadBlob(ctx, p, desc)
	if err != nil {
		return err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	kept := map[string]bool{}
	for _, l := range src.ManifestDoc.Layers {
		kept[l.Digest.String()] = true
	}
	var mountKey, mountRepo string
	if src.Store == nil {
		if spec, err := reference.Parse(src.Ref); err == nil {
			mountKey = "containerd.io/distribution.source." + spec.Hostname()
			mountRepo = strings.TrimPrefix(spec.Locator, spec.Hostname()+"/")
		}
	}
	var descs []ocispec.Descriptor
	for _, l := range m.Layers {
		if mountKey != "" && kept[l.Digest.String()] {
			l.Annotations = map[string]string{mountKey: mountRepo}
		}
		descs = append(descs, l)
	}
	descs = append(descs, m.Config, desc)
	return pushBlobs(ctx, target, descs, p)
}

func newOptimizeCommand() *cobra.Command {
	o := OptimizeOptions{OCI: true}
	cmd := &cobra.Command{
		Use:   "optimize [OPTIONS] SOURCE TARGET",
		Short: "Convert an image into optimized eStargz or zstd:chunked",
		Long: `Convert an existing image (registry reference or OCI layout tar) into an
optimized one: per layer, the files its workload reads first, then the
landmark. The workload is traced through BuildKit on the daemon (lazily on
the stargz worker), or the record comes from --record-in. TARGET is a
registry reference, or an OCI layout tar (a path ending in .tar, or
oci-archive:PATH). No containerd is needed.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Source, o.Target = args[0], args[1]
			o.Stderr = cmd.ErrOrStderr()
			desc, err := Optimize(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s\n", o.Target, desc.Digest)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.RecordIn, "record-in", "", "Prioritize by this record instead of tracing the image")
	fl.BoolVar(&o.ZstdChunked, "zstdchunked", false, "Write zstd:chunked instead of eStargz")
	fl.BoolVar(&o.OCI, "oci", true, "Write OCI media types (zstd:chunked needs them)")
	fl.IntVar(&o.Level, "compression-level", 0, "Compression level (default: gzip 7, zstd 3)")
	fl.IntVar(&o.ChunkSize, "estargz-chunk-size", 0, "Largest piece of a file stored as one chunk, in bytes (default 4 MiB)")
	// ctr-remote's name for --compression-level.
	fl.IntVar(&o.Level, "estargz-compression-level", 0, "Same as --compression-level")
	fl.Lookup("estargz-compression-level").Hidden = true
	fl.BoolVar(&o.ReoptimizeBase, "reoptimize-base", false, "Convert layers that are already eStargz or zstd:chunked too")
	addWorkloadFlags(cmd, &o.Trace)
	addDaemonFlags(cmd, &o.Trace.Daemon)
	return cmd
}

func newVerifyCommand() *cobra.Command {
	var platform, record string
	cmd := &cobra.Command{
		Use:   "verify [OPTIONS] IMAGE",
		Short: "Check that an image is valid optimized eStargz or zstd:chunked",
		Long: `Check every layer of IMAGE (registry reference or OCI layout tar): it opens as
eStargz or zstd:chunked, its TOC digest matches the annotation, every
chunk digest verifies, the landmark is present and, with --record, the
prioritized files stand before it in record order. Prints the prefetch
size of each layer; exits non-zero on any failure.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return Verify(cmd.Context(), args[0], platform, record, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&platform, "platform", "", "Platform to check (default: every platform; with --record, this machine's)")
	cmd.Flags().StringVar(&record, "record", "", "Record whose files each layer must prioritize, in order")
	return cmd
}

// addWorkloadFlags registers the workload flags `trace` and `optimize`
// share.
func addWorkloadFlags(cmd *cobra.Command, o *TraceOptions) {
	fl := cmd.Flags()
	fl.StringVar(&o.Platform, "platform", "", "Platform of the image (default: this machine's)")
	fl.StringVar(&o.Entrypoint, "entrypoint", "", `Entrypoint of the workload, a JSON array (e.g. '["/bin/sh","-c"]') or one command`)
	fl.StringVar(&o.Args, "args", "", `Arguments of the entrypoint, a JSON array (default: the image's cmd)`)
	fl.StringArrayVar(&o.Env, "env", nil, "Environment variable KEY=VALUE set over the image's")
	fl.StringVar(&o.User, "user", "", "User of the workload (default: the image's)")
	fl.StringVar(&o.Cwd, "cwd", "", "Working directory of the workload (default: the image's)")
	fl.StringArrayVar(&o.Mounts, "mount", nil, "Workload data: type=bind,src=DIR,dst=PATH[,ro]")
	fl.DurationVar(&o.Period, "period", 10e9, "Stop the workload after this long (0: when it exits)")
	fl.StringVar(&o.WaitOnLine, "wait-on-line", "", "Stop the workload when a line of its output contains TEXT")
	fl.StringVar(&o.Tracer, "tracer", "ptrace", "Tracing mechanism: ptrace (unprivileged), fanotify or auto (need the security.insecure entitlement)")
	fl.StringVar(&o.Network, "network", "none", "Network of the workload: none or host")
	fl.StringVar(&o.Progress, "progress", "auto", `Set type of progress output ("auto", "plain", "tty", "rawjson", "quiet")`)
}

var errVerifyFailed = errors.New("verification failed")
