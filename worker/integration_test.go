package worker_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stargazer-build/stargazer/buildx"
	"github.com/stargazer-build/stargazer/exporter/verify"
	"github.com/stargazer-build/stargazer/testutil"
)

// build runs one Dockerfile build on d through the CLI's build path.
func build(t *testing.T, d *testutil.Daemon, dockerfile string, outputs ...string) (map[string]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dir := testutil.BuildContext(t, map[string]string{"Dockerfile": dockerfile})
	return buildx.Build(ctx, buildx.BuildOptions{
		ContextDir: dir,
		Outputs:    outputs,
		Progress:   "quiet",
		Daemon:     buildx.DaemonOptions{Addr: d.Addr},
	})
}

func mustBuild(t *testing.T, d *testutil.Daemon, dockerfile string, outputs ...string) map[string]string {
	t.Helper()
	resp, err := build(t, d, dockerfile, outputs...)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return resp
}

// runAndCollect builds FROM ref with a RUN of script and returns the file
// /out/<name> the script wrote. Only /out leaves the build (through a
// scratch stage), so the export itself reads nothing else of the base.
func runAndCollect(t *testing.T, d *testutil.Daemon, ref, script, name string) string {
	t.Helper()
	out := t.TempDir()
	df := "FROM " + ref + " AS run\nRUN mkdir -p /out && " + script + "\nFROM scratch\nCOPY --from=run /out/ /\n"
	mustBuild(t, d, df, "type=local,dest="+out)
	b, err := os.ReadFile(filepath.Join(out, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// readSmall returns /data/small.txt as a RUN on ref reads it.
func readSmall(t *testing.T, d *testutil.Daemon, ref string) string {
	t.Helper()
	return runAndCollect(t, d, ref, "cat /data/small.txt > /out/small.txt", "small.txt")
}

func TestLazyPullEStargz(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	img := testutil.PushLarge(t, reg, testutil.EStargz)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))
	reg.Reset()

	if got := readSmall(t, d, img.Ref); got != testutil.LargeSmallText {
		t.Fatalf("read %q, want %q", got, testutil.LargeSmallText)
	}
	if m := testutil.FUSEMountsUnder(d.Root); len(m) == 0 {
		t.Fatal("no FUSE mount under the daemon root: the base was not mounted lazily")
	}
	large := img.Layers[len(img.Layers)-1]
	served := reg.BlobStats(large.Digest).Bytes
	limit := large.Size / 20
	t.Logf("large layer: %d bytes, served %d (%.2f%%)", large.Size, served, 100*float64(served)/float64(large.Size))
	if served >= limit {
		t.Fatalf("registry served %d bytes of the %d-byte large layer, want < 5%% (%d)", served, large.Size, limit)
	}
}

func TestGzipOnOverlayPullsWholeBlob(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	img := testutil.PushLarge(t, reg, testutil.Gzip)
	d := testutil.StartDaemon(t, testutil.WithSnapshotter("overlayfs"), testutil.WithPlainHTTPRegistry(reg.Host()))
	reg.Reset()

	if got := readSmall(t, d, img.Ref); got != testutil.LargeSmallText {
		t.Fatalf("read %q, want %q", got, testutil.LargeSmallText)
	}
	if m := testutil.FUSEMountsUnder(d.Root); len(m) != 0 {
		t.Fatalf("overlayfs worker has FUSE mounts: %v", m)
	}
	large := img.Layers[len(img.Layers)-1]
	if served := reg.BlobStats(large.Digest).Bytes; served < large.Size {
		t.Fatalf("registry served %d bytes of the %d-byte large layer, want all of it", served, large.Size)
	}
}

func TestNonEStargzBaseOnStargzWorker(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	img := testutil.PushLarge(t, reg, testutil.Gzip)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))
	reg.Reset()

	if got := readSmall(t, d, img.Ref); got != testutil.LargeSmallText {
		t.Fatalf("read %q, want %q", got, testutil.LargeSmallText)
	}
	large := img.Layers[len(img.Layers)-1]
	if served := reg.BlobStats(large.Digest).Bytes; served < large.Size {
		t.Fatalf("a gzip base must be pulled whole: served %d of %d bytes", served, large.Size)
	}
}

func TestPushThenPullByDigest(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushBase(t, reg, testutil.EStargz)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))

	ref := reg.Ref("pushed:1")
	resp := mustBuild(t, d, "FROM "+base.Ref+"\nRUN echo built-content > /built.txt && cat /data/small.txt >> /built.txt\n",
		"type=image,name="+ref+",push=true")
	dgst := resp["containerimage.digest"]
	if dgst == "" {
		t.Fatalf("no image digest in the exporter response: %v", resp)
	}

	pulled := testutil.FetchImage(t, reg.Ref("pushed")+"@"+dgst)
	if pulled.Manifest.Digest.String() != dgst {
		t.Fatalf("pulled manifest %s, want %s", pulled.Manifest.Digest, dgst)
	}
	if _, err := verify.Image(t.Context(), pulled.Provider(), pulled.Manifest, verify.WithAllowNonLazy()); err != nil {
		t.Fatalf("verify: %v", err)
	}
	got := runAndCollect(t, d, reg.Ref("pushed")+"@"+dgst, "cp /built.txt /out/copy.txt", "copy.txt")
	if want := "built-content\n" + testutil.SmallText; got != want {
		t.Fatalf("pulled image has %q, want %q", got, want)
	}
}

func TestRestartOnSameRoot(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	img := testutil.PushLarge(t, reg, testutil.EStargz)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))

	if got := readSmall(t, d, img.Ref); got != testutil.LargeSmallText {
		t.Fatalf("before restart: read %q", got)
	}
	// Restart sends SIGTERM and fails if any mount is left under the root.
	d.Restart(t)
	if got := readSmall(t, d, img.Ref); got != testutil.LargeSmallText {
		t.Fatalf("after restart: read %q", got)
	}
	// A new step on the restored base must still see its files.
	head := runAndCollect(t, d, img.Ref, "head -c 16 /data/large.bin > /out/head.bin", "head.bin")
	if want := testutil.LargeData(testutil.DefaultLargeSize)[:16]; string(head) != string(want) {
		t.Fatalf("after restart: large.bin starts %x, want %x", head, want)
	}
}

func TestDockerfileSyntaxErrorNamesLine(t *testing.T) {
	testutil.RequireIntegration(t)
	d := testutil.StartDaemon(t)
	_, err := build(t, d, "FROM scratch\n\nFORM scratch\n")
	if err == nil {
		t.Fatal("want error for a misspelt instruction")
	}
	if !strings.Contains(err.Error(), "line 3") && !strings.Contains(err.Error(), ":3") {
		t.Fatalf("error does not name line 3: %v", err)
	}
}

func TestUnreachableRegistryFailsFast(t *testing.T) {
	testutil.RequireIntegration(t)
	host := testutil.UnreachableHost(t)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(host))
	start := time.Now()
	_, err := build(t, d, "FROM "+host+"/base:estargz\nRUN true\n")
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("want error for an unreachable registry")
	}
	if !strings.Contains(err.Error(), host) {
		t.Fatalf("error does not name the registry %s: %v", host, err)
	}
	// build() bounds the whole build at five minutes; a hang would fail there.
	t.Logf("failed after %v: %v", elapsed.Round(time.Millisecond), err)
}

func TestFlakyRegistryFailsClearly(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	img := testutil.PushLarge(t, reg, testutil.EStargz)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))
	large := img.Layers[len(img.Layers)-1]
	reg.SetFaults(testutil.ForBlob(large.Digest, testutil.FailBlobGets(500)))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := testutil.BuildContext(t, map[string]string{"Dockerfile": "FROM " + img.Ref + "\nRUN cat /data/small.txt\n"})
	_, err := buildx.Build(ctx, buildx.BuildOptions{ContextDir: dir, Progress: "quiet", Daemon: buildx.DaemonOptions{Addr: d.Addr}})
	if err == nil {
		t.Fatal("want an error when the registry fails every request for a layer")
	}
	if ctx.Err() != nil {
		t.Fatalf("the build hung until the deadline: %v", err)
	}
	if !strings.Contains(err.Error(), large.Digest.Encoded()[:12]) && !strings.Contains(err.Error(), "500") {
		t.Fatalf("error names neither the layer nor the status: %v", err)
	}
	t.Logf("error: %v", err)

	// Once the registry recovers, the same daemon builds.
	reg.SetFaults()
	if got := readSmall(t, d, img.Ref); got != testutil.LargeSmallText {
		t.Fatalf("after recovery: read %q", got)
	}
}
