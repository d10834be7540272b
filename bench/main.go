// Command bench is stargazer's start-up benchmark: the stargz-snapshotter
// benchmark reproduced offline. It builds images (Debian python3 and gcc
// images, or with --quick a busybox-based one), publishes each as legacy gzip,
// BuildKit's eStargz, optimized eStargz and optimized zstd:chunked through
// a stargazer daemon, then times cold builds of `FROM image` + `RUN
// workload` over an emulated link (a local registry with bandwidth and
// per-request latency) and writes a Markdown table (results.md, also on
// standard output), a PNG chart (results.png) and the samples
// (results.json).
//
//	go run ./bench [--quick] [--runs N] [--out DIR] [--bandwidth 100Mbit] [--latency 20ms]
//
// What is measured, per run, on a daemon started on a fresh root:
//   - ready: from the start of the build until the workload's readiness
//     line, by the daemon's timestamp of that log line; this includes
//     resolving and pulling (or lazily mounting) the image, setting up the
//     RUN container and the workload's own start;
//   - resolve, pull and run: ready split by BuildKit's progress, at the end
//     of the image metadata step and of the FROM step (legacy pulls there;
//     the lazy forms only mount, and fetch during the RUN step);
//   - build: the wall time of the whole build as the client sees it;
//   - the registry's bytes and requests until ready and for the whole build.
//
// legacy runs on the overlayfs snapshotter (pull everything first); the
// other forms on the stargz snapshotter with prefetch on and background
// fetch as --background-fetch says (default on: stargazerd's default). A
// no-op baseline (a near-empty image from an unshaped registry, `RUN echo
// ready`) gives the fixed cost of a cold build.
//
// The physical limit of an image is the bytes its workload reads (the sum
// of the trace record's file sizes, uncompressed) over the bandwidth, plus
// the round trips a start cannot avoid (manifest HEAD and GET, config, one
// per layer) times the latency.
//
// The root filesystems (debootstrap), the workload's trace record and a
// registry holding every form are cached under --cache and reused; give
// --rebuild after changing the exporter to publish the forms again.
//
// It needs what the integration tests need (root, runc, /dev/fuse; see the
// README), and debootstrap with a reachable Debian mirror for the first
// full run.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stargazer-build/stargazer/bench/internal/report"
	"github.com/stargazer-build/stargazer/testutil"
)

type options struct {
	quick           bool
	runs            int
	out             string
	cacheDir        string
	bandwidth       int64
	latency         time.Duration
	backgroundFetch bool
	rebuild         bool
	verbose         bool
	// images and forms, when not empty, name the only ones to run.
	images, forms []string
	// daemonConfig is TOML added to every daemon's configuration.
	daemonConfig string
}

func main() {
	if err := mainErr(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func mainErr(args []string) error {
	var o options
	fl := flag.NewFlagSet("bench", flag.ContinueOnError)
	fl.BoolVar(&o.quick, "quick", false, "A small busybox-based image (about half a minute) instead of the Debian python3 and gcc images")
	fl.IntVar(&o.runs, "runs", 0, "Cold builds per image and form (default 5, 3 with --quick)")
	fl.StringVar(&o.out, "out", "results", "Directory for results.md and results.png")
	fl.StringVar(&o.cacheDir, "cache", "/var/cache/stargazer-bench", "Directory caching root filesystems, records and the prepared registry")
	bw := fl.String("bandwidth", "100Mbit", "Registry bandwidth (bits per second; k, M, G suffixes, \"bit\" optional; B for bytes)")
	fl.DurationVar(&o.latency, "latency", 20*time.Millisecond, "Registry latency added to every request")
	fl.BoolVar(&o.backgroundFetch, "background-fetch", true, "stargz snapshotter background fetch of whole layers (stargazerd's default is on)")
	fl.BoolVar(&o.rebuild, "rebuild", false, "Publish the image forms again instead of reusing the cached registry")
	fl.BoolVar(&o.verbose, "v", false, "Log each run, with its registry requests and their times")
	fl.Func("daemon-config", "Add the TOML in FILE to every daemon's configuration (e.g. [worker.oci.stargzSnapshotter.fuse])", func(v string) error {
		b, err := os.ReadFile(v)
		o.daemonConfig = string(b)
		return err
	})
	fl.Func("image", "Run only this image (repeat or comma-separate for more)", func(v string) error {
		o.images = append(o.images, strings.Split(v, ",")...)
		return nil
	})
	fl.Func("form", "Run only this form: legacy, estargz, estargz-opt, zstdchunked-opt (repeat or comma-separate for more)", func(v string) error {
		for _, f := range strings.Split(v, ",") {
			if !slices.ContainsFunc(forms, func(x form) bool { return x.name == f }) {
				return fmt.Errorf("unknown form %q", f)
			}
			o.forms = append(o.forms, f)
		}
		return nil
	})
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	var err error
	if o.bandwidth, err = parseBandwidth(*bw); err != nil {
		return fmt.Errorf("--bandwidth: %w", err)
	}
	if o.runs == 0 {
		o.runs = 5
		if o.quick {
			o.runs = 3
		}
	}
	if o.runs < 1 {
		return errors.New("--runs must be at least 1")
	}
	// The harness asks testing.Short, which needs the testing flags parsed.
	testing.Init()
	if err := flag.CommandLine.Parse(nil); err != nil {
		return err
	}
	if err := preflight(); err != nil {
		return err
	}
	return bench(o)
}

// preflight checks what a daemon needs, as the integration tests do.
func preflight() error {
	return run("requirements", os.Stderr, func(t *scope) {
		testutil.RequireIntegration(t)
		// Every daemon runs this executable; build it now, once.
		testutil.Binary(t, "stargazerd")
	})
}

func bench(o options) error {
	start := time.Now()
	set, images := "full", fullImages()
	if o.quick {
		set, images = "quick", quickImages()
	}
	var log io.Writer = io.Discard
	if o.verbose {
		log = os.Stderr
	}
	if err := os.MkdirAll(o.cacheDir, 0o755); err != nil {
		return err
	}
	store, cat, err := prepare(o.cacheDir, set, images, o.rebuild, os.Stderr)
	if err != nil {
		return fmt.Errorf("prepare images: %w", err)
	}
	fmt.Fprintf(os.Stderr, "images ready after %s\n", time.Since(start).Round(time.Second))

	// A first interrupt ends the benchmark after the current run, with the
	// results so far; a second one exits at once.
	var interrupted atomic.Bool
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for range sigs {
			if interrupted.Swap(true) {
				os.Exit(130)
			}
			fmt.Fprintln(os.Stderr, "interrupted: stopping after this run (interrupt again to exit now)")
		}
	}()

	var rows []report.Row
	var limits []report.Limit
	var noop []time.Duration
	var noopSize int64
	err = run("benchmark", os.Stderr, func(t *scope) {
		reg := testutil.NewRegistry(t, testutil.WithStorageDir(store),
			testutil.WithBandwidth(o.bandwidth), testutil.WithLatency(o.latency))
		noop, noopSize = noopBaseline(t, log, o)
		for _, img := range images {
			if len(o.images) > 0 && !slices.Contains(o.images, img.name) {
				continue
			}
			p := cat.Images[img.name]
			// Round trips a start cannot avoid: the manifest (HEAD and
			// GET), the config, and one request per layer.
			trips := 3 + p.Layers
			limits = append(limits, report.Limit{
				Image: img.name, ReadBytes: p.ReadBytes, ReadFiles: p.ReadFiles, RoundTrips: trips,
				Time: time.Duration(float64(p.ReadBytes)/float64(o.bandwidth)*float64(time.Second)) + time.Duration(trips)*o.latency,
			})
			for _, f := range forms {
				if len(o.forms) > 0 && !slices.Contains(o.forms, f.name) {
					continue
				}
				row := report.Row{Image: img.name, Form: f.name, ImageBytes: p.FormBytes[f.name]}
				for i := 0; i < o.runs && !interrupted.Load(); i++ {
					s, err := coldBuild(log, reg, reg.Ref(p.Forms[f.name]), img.argv, f.snapshotter, o.backgroundFetch, o.daemonConfig)
					if err != nil {
						row.Err = err.Error()
						fmt.Fprintf(os.Stderr, "%s: %v\n", describe(img.name, f.name, i, o.runs), err)
						continue
					}
					fmt.Fprintf(os.Stderr, "%s: ready %.2fs build %.2fs registry %.1f MB (%.1f MB until ready) %d requests\n",
						describe(img.name, f.name, i, o.runs), s.Ready.Seconds(), s.Build.Seconds(),
						float64(s.Bytes)/1e6, float64(s.ReadyBytes)/1e6, s.Requests)
					row.Ready = append(row.Ready, s.Ready)
					row.Build = append(row.Build, s.Build)
					row.ReadyBytes = append(row.ReadyBytes, s.ReadyBytes)
					row.Bytes = append(row.Bytes, s.Bytes)
					row.Requests = append(row.Requests, s.Requests)
					if s.Run > 0 {
						row.Resolve = append(row.Resolve, s.Resolve)
						row.Pull = append(row.Pull, s.Pull)
						row.Run = append(row.Run, s.Run)
					}
				}
				if len(row.Ready) > 0 || row.Err != "" {
					rows = append(rows, row)
				}
			}
		}
	})
	if err != nil {
		return err
	}

	var md bytes.Buffer
	fmt.Fprintf(&md, "# stargazer start-up benchmark (%s)\n\n", set)
	cache := "page cache dropped before each"
	if pageCache.notDropped != "" {
		cache = "page cache NOT dropped (" + pageCache.notDropped + ")"
	}
	fmt.Fprintf(&md, "Link: %s, %s per request. %d cold builds per row (fresh daemon root each, %s); legacy on overlayfs, the others on stargz with prefetch on, background fetch %s. "+
		"*ready*: build start until the workload's readiness line; *build*: whole `FROM image` + `RUN workload` build. "+
		"Physical limit: bytes the workload reads (uncompressed, from the trace record) ÷ bandwidth + round trips × latency.\n\n",
		formatBandwidth(o.bandwidth), o.latency, o.runs, cache, onOff(o.backgroundFetch))
	if len(noop) > 0 {
		fmt.Fprintf(&md, "No-op baseline (the fixed cost of a cold build: a %s busybox image, legacy form, `RUN echo ready`, from a registry without shaping): ready median %.2f s, p95 %.2f s over %d runs.\n\n",
			fmt.Sprintf("%.1f MB", float64(noopSize)/1e6), report.Median(noop).Seconds(), report.P95(noop).Seconds(), len(noop))
	}
	if err := report.Markdown(&md, rows, limits, "legacy", report.Median(noop)); err != nil {
		return err
	}
	md.WriteString("\nAgainst the targets (optimized forms; registry bytes until ready against the bytes the workload reads):\n\n")
	if err := report.Targets(&md, rows, limits, "legacy", "estargz", report.Median(noop)); err != nil {
		return err
	}
	fmt.Fprintf(&md, "\nTotal benchmark time %s.\n", time.Since(start).Round(time.Second))
	if interrupted.Load() {
		md.WriteString("\nInterrupted: the rows above are the runs that completed.\n")
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "results.md"), md.Bytes(), 0o644); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(struct {
		Set             string          `json:"set"`
		BandwidthBps    int64           `json:"bandwidthBytesPerSecond"`
		Latency         time.Duration   `json:"latencyNs"`
		BackgroundFetch bool            `json:"backgroundFetch"`
		Noop            []time.Duration `json:"noopReadyNs"`
		Rows            []report.Row    `json:"rows"`
		Limits          []report.Limit  `json:"limits"`
	}{set, o.bandwidth, o.latency, o.backgroundFetch, noop, rows, limits}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "results.json"), raw, 0o644); err != nil {
		return err
	}
	var chart bytes.Buffer
	title := fmt.Sprintf("time to ready, %s, %s per request (median, p95)", formatBandwidth(o.bandwidth), o.latency)
	if err := report.Chart(&chart, title, rows, limits); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "results.png"), chart.Bytes(), 0o644); err != nil {
		return err
	}
	os.Stdout.Write(md.Bytes())
	fmt.Fprintf(os.Stderr, "wrote %s and %s\n", filepath.Join(o.out, "results.md"), filepath.Join(o.out, "results.png"))
	return nil
}

// noopBaseline times cold builds of a near-empty image, served by a
// registry without shaping, whose workload only prints the readiness line:
// what every build costs besides the network.
func noopBaseline(t *scope, log io.Writer, o options) (out []time.Duration, size int64) {
	reg := testutil.NewRegistry(t)
	img := testutil.PushImage(t, reg, "noop:legacy", testutil.BaseSpec(t, testutil.Gzip))
	for _, l := range img.Layers {
		size += l.Size
	}
	for i := 0; i < o.runs; i++ {
		s, err := coldBuild(log, reg, img.Ref, []string{"/bin/sh", "-c", "echo " + readyLine}, "overlayfs", o.backgroundFetch, o.daemonConfig)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", describe("no-op", "legacy", i, o.runs), err)
			continue
		}
		fmt.Fprintf(os.Stderr, "%s: ready %.2fs build %.2fs registry %.1f MB\n", describe("no-op", "legacy", i, o.runs),
			s.Ready.Seconds(), s.Build.Seconds(), float64(s.Bytes)/1e6)
		out = append(out, s.Ready)
	}
	return out, size
}

var bandwidthRE = regexp.MustCompile(`^([0-9.]+)\s*([kKmMgG]?)(bit|bps|b|B)?(/s)?$`)

// parseBandwidth reads "100Mbit", "1G", "12.5MB" into bytes per second;
// without a unit the number is bits per second.
func parseBandwidth(s string) (int64, error) {
	m := bandwidthRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("cannot parse %q (want e.g. 100Mbit or 12.5MB)", s)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, err
	}
	switch strings.ToLower(m[2]) {
	case "k":
		v *= 1e3
	case "m":
		v *= 1e6
	case "g":
		v *= 1e9
	}
	if m[3] != "B" {
		v /= 8
	}
	if v < 1 {
		return 0, fmt.Errorf("%q is too slow", s)
	}
	return int64(v), nil
}

func formatBandwidth(bytesPerSecond int64) string {
	return fmt.Sprintf("%g Mbit/s", float64(bytesPerSecond)*8/1e6)
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
