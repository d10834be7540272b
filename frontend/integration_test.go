package frontend_test

import (
	"bytes"
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/buildx"
	"github.com/stargazer-build/stargazer/exporter/verify"
	"github.com/stargazer-build/stargazer/frontend"
	"github.com/stargazer-build/stargazer/testutil"
	"github.com/stargazer-build/stargazer/tracer"
)

const runScript = "#!/bin/sh\ncat /data/small.txt\necho ready\n"

// pushFrontend publishes the frontend image to reg with `stargazer
// frontend push` and returns its reference.
func pushFrontend(t *testing.T, reg *testutil.Registry) string {
	t.Helper()
	ref := reg.Ref("stargazer/frontend:test")
	out, err := exec.Command(testutil.Binary(t, "stargazer"), "frontend", "push", ref).CombinedOutput()
	if err != nil {
		t.Fatalf("stargazer frontend push: %v\n%s", err, out)
	}
	return ref
}

type buildResult struct {
	resp     map[string]string
	progress string
}

// build builds files on d with build args into an OCI tar, or into the
// outputs given as args that start with "type=".
func build(t *testing.T, d *testutil.Daemon, files map[string]string, args ...string) (buildResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	var buildArgs, outputs []string
	for _, a := range args {
		if strings.HasPrefix(a, "type=") {
			outputs = append(outputs, a)
		} else {
			buildArgs = append(buildArgs, a)
		}
	}
	dest := t.TempDir() + "/out.tar"
	if len(outputs) == 0 {
		outputs = []string{"type=oci,dest=" + dest}
	}
	var progress bytes.Buffer
	resp, err := buildx.Build(ctx, buildx.BuildOptions{
		ContextDir: testutil.BuildContext(t, files),
		BuildArgs:  buildArgs,
		Outputs:    outputs,
		Progress:   "plain",
		Stderr:     &progress,
		Daemon:     buildx.DaemonOptions{Addr: d.Addr},
	})
	if err == nil && strings.HasPrefix(outputs[0], "type=oci,dest="+dest) {
		// Every image a test produces passes the invariant checker.
		layout := testutil.ReadOCILayoutTar(t, dest)
		if _, verr := verify.Image(ctx, layout.Provider(), layout.Index.Manifests[0], verify.WithAllowNonLazy()); verr != nil {
			t.Errorf("verify: %v", verr)
		}
	}
	return buildResult{resp: resp, progress: progress.String()}, err
}

func recordPaths(t *testing.T, resp map[string]string) []string {
	t.Helper()
	rec, ok := resp[frontend.RecordKey]
	if !ok {
		t.Fatalf("no %s in the solve response (keys: %v)", frontend.RecordKey, keys(resp))
	}
	entries, err := tracer.ReadRecord(strings.NewReader(rec))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range entries {
		paths = append(paths, e.Path)
	}
	return paths
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func appFiles(base, syntax string) map[string]string {
	df := "FROM " + base + "\nCOPY --chmod=755 run.sh /app/run.sh\nCMD [\"/app/run.sh\"]\n"
	if syntax != "" {
		df = "# syntax=" + syntax + "\n" + df
	}
	return map[string]string{"Dockerfile": df, "run.sh": runScript}
}

var wantReads = []string{"app/run.sh", "bin/busybox", "data/small.txt"}

func TestSyntaxFrontendOnStargazerd(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushBase(t, reg, testutil.Gzip)
	fe := pushFrontend(t, reg)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))

	res, err := build(t, d, appFiles(base.Ref, fe), "type=image,name="+reg.Ref("app:opt")+",push=true,optimize=true")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, res.progress)
	}
	if got := recordPaths(t, res.resp); !slices.Equal(got, wantReads) {
		t.Fatalf("record %v, want %v", got, wantReads)
	}
	// The exported image prioritizes exactly those reads, layer by layer,
	// after the files the runtime reads.
	img := testutil.FetchImage(t, reg.Ref("app")+"@"+res.resp["containerimage.digest"])
	want := map[int][]string{0: {"etc/passwd", "etc/group", "bin/busybox"}, 1: {"data/small.txt"}, 2: {"app/run.sh"}}
	if _, err := verify.Image(t.Context(), img.Provider(), img.Manifest,
		verify.WithPrioritizedFiles(func(_ ocispec.Platform, i int) []string { return want[i] })); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if n := strings.Count(res.progress, "[stargazer] trace"); n == 0 {
		t.Fatalf("no trace step in the progress:\n%s", res.progress)
	}

	// Unchanged inputs: the trace step comes from the cache.
	again, err := build(t, d, appFiles(base.Ref, fe))
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if got := recordPaths(t, again.resp); !slices.Equal(got, wantReads) {
		t.Fatalf("rebuilt record %v", got)
	}
	if !traceCached(again.progress) {
		t.Fatalf("the rebuild ran the trace again:\n%s", again.progress)
	}
}

// traceVertices counts the distinct trace vertices of a plain progress
// log, which repeats a vertex's header when its output interleaves with
// another's.
func traceVertices(progress string) int {
	ids := map[string]bool{}
	for _, line := range strings.Split(progress, "\n") {
		if f := strings.Fields(line); len(f) > 2 && strings.HasPrefix(f[0], "#") && f[1] == "[stargazer]" && f[2] == "trace" {
			ids[f[0]] = true
		}
	}
	return len(ids)
}

// traceCached reports whether the trace vertex of a plain progress log was
// a cache hit.
func traceCached(progress string) bool {
	var id string
	for _, line := range strings.Split(progress, "\n") {
		if strings.Contains(line, "[stargazer] trace") {
			id = strings.Fields(line)[0]
		}
		if id != "" && strings.HasPrefix(line, id+" CACHED") {
			return true
		}
	}
	return false
}

func TestBuiltinFrontendTracesOnce(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushBase(t, reg, testutil.Gzip)
	fe := pushFrontend(t, reg)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()), testutil.WithDaemonArgs("--dockerfile-frontend", "stargazer"))

	for _, syntax := range []string{"", fe} {
		res, err := build(t, d, appFiles(base.Ref, syntax))
		if err != nil {
			t.Fatalf("build (syntax %q): %v\n%s", syntax, err, res.progress)
		}
		if got := recordPaths(t, res.resp); !slices.Equal(got, wantReads) {
			t.Fatalf("syntax %q: record %v, want %v", syntax, got, wantReads)
		}
		if n := traceVertices(res.progress); n != 1 {
			t.Fatalf("syntax %q: %d trace steps, want 1:\n%s", syntax, n, res.progress)
		}
	}
}

func TestTargetAndWorkloadOutcomes(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushBase(t, reg, testutil.Gzip)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()), testutil.WithDaemonArgs("--dockerfile-frontend", "stargazer"))

	multi := map[string]string{"Dockerfile": "FROM " + base.Ref + " AS app\nCMD [\"cat\", \"/data/small.txt\"]\n" +
		"FROM " + base.Ref + " AS other\nCMD [\"cat\", \"/data/dir/nested.txt\"]\n"}
	res, err := build(t, d, multi)
	if err != nil {
		t.Fatal(err)
	}
	if got := recordPaths(t, res.resp); !slices.Equal(got, []string{"bin/busybox", "data/dir/nested.txt"}) {
		t.Fatalf("last stage: record %v", got)
	}
	var progress bytes.Buffer
	resp, err := buildx.Build(t.Context(), buildx.BuildOptions{
		ContextDir: testutil.BuildContext(t, multi), Target: "app", Progress: "plain", Stderr: &progress,
		Outputs: []string{"type=oci,dest=" + t.TempDir() + "/o.tar"}, Daemon: buildx.DaemonOptions{Addr: d.Addr},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := recordPaths(t, resp); !slices.Equal(got, []string{"bin/busybox", "data/small.txt"}) {
		t.Fatalf("--target app: record %v", got)
	}

	noCmd := map[string]string{"Dockerfile": "FROM scratch\nCOPY Dockerfile /\n"}
	res, err = build(t, d, noCmd)
	if err != nil {
		t.Fatalf("an image without a workload must still build: %v", err)
	}
	if _, ok := res.resp[frontend.RecordKey]; ok {
		t.Fatal("an image without a workload got a record")
	}
	if !strings.Contains(res.progress, "no workload") {
		t.Fatalf("no warning about the missing workload:\n%s", res.progress)
	}

	crash := map[string]string{"Dockerfile": "FROM " + base.Ref + "\nCMD [\"sh\", \"-c\", \"cat /data/small.txt; echo boom-output >&2; exit 7\"]\n"}
	res, err = build(t, d, crash)
	if err != nil {
		t.Fatalf("a crashing workload must warn, not fail: %v", err)
	}
	if got := recordPaths(t, res.resp); !slices.Contains(got, "data/small.txt") {
		t.Fatalf("crashing workload: record %v lacks what it read", got)
	}
	if !strings.Contains(res.progress, "exited with code 7") {
		t.Fatalf("no warning about the crash:\n%s", res.progress)
	}
	_, err = build(t, d, crash, "STARGAZER_TRACE=required")
	if err == nil || !strings.Contains(err.Error(), "boom-output") {
		t.Fatalf("required trace of a crashing workload: want an error with its output, got %v", err)
	}

	_, err = build(t, d, crash, "STARGAZER_TRACE_PERIOD=later")
	if err == nil || !strings.Contains(err.Error(), "STARGAZER_TRACE_PERIOD") {
		t.Fatalf("malformed build arg: %v", err)
	}
	bad := map[string]string{"Dockerfile": "# stargazer-trace-args=not-json\nFROM " + base.Ref + "\n"}
	_, err = build(t, d, bad)
	if err == nil || !strings.Contains(err.Error(), "stargazer-trace-args") {
		t.Fatalf("malformed directive: %v", err)
	}
}

func TestSyntaxFrontendOnStockBuildkitd(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushBase(t, reg, testutil.Gzip)
	fe := pushFrontend(t, reg)
	d := testutil.StartDaemon(t, testutil.WithDaemonBinary(testutil.StockBuildkitd(t)),
		testutil.WithSnapshotter("overlayfs"), testutil.WithPlainHTTPRegistry(reg.Host()))

	res, err := build(t, d, appFiles(base.Ref, fe))
	if err != nil {
		t.Fatalf("build on stock buildkitd: %v\n%s", err, res.progress)
	}
	if got := recordPaths(t, res.resp); !slices.Equal(got, wantReads) {
		t.Fatalf("record %v, want %v", got, wantReads)
	}
}
