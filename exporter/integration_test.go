package exporter_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/buildx"
	"github.com/stargazer-build/stargazer/exporter/verify"
	"github.com/stargazer-build/stargazer/testutil"
)

const appScript = "#!/bin/sh\ncat /app/conf.txt\ncat /data/small.txt\necho ready\n"

func appContext(t *testing.T, base string) string {
	return testutil.BuildContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nCOPY --chmod=755 run.sh /app/run.sh\nCOPY conf.txt unused.txt /app/\nCMD [\"/app/run.sh\"]\n",
		"run.sh":     appScript,
		"conf.txt":   "conf\n",
		"unused.txt": strings.Repeat("never read\n", 1000),
	})
}

func build(t *testing.T, d *testutil.Daemon, ctxDir string, outputs ...string) (map[string]string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	resp, err := buildx.Build(ctx, buildx.BuildOptions{
		ContextDir: ctxDir, Outputs: outputs, Progress: "plain", Stderr: &progress,
		Daemon: buildx.DaemonOptions{Addr: d.Addr},
	})
	return resp, progress.String(), err
}

// verifyPrioritized runs the invariant checker on an image whose layer i
// must prioritize want[i], in that order.
func verifyPrioritized(t *testing.T, p content.Provider, desc ocispec.Descriptor, want map[int][]string) *verify.Report {
	t.Helper()
	rep, err := verify.Image(t.Context(), p, desc,
		verify.WithPrioritizedFiles(func(_ ocispec.Platform, i int) []string { return want[i] }))
	if err != nil {
		var buf bytes.Buffer
		if rep != nil {
			rep.WriteTable(&buf)
		}
		t.Fatalf("verify: %v\n%s", err, buf.String())
	}
	return rep
}

func TestOptimizedPushPrefetchesWhatTheWorkloadReads(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	// A gzip base: every layer is converted, so every file the workload
	// reads is prioritized.
	base := testutil.PushLarge(t, reg, testutil.Gzip)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()), testutil.WithDaemonArgs("--dockerfile-frontend", "stargazer"))
	ref := reg.Ref("app:optimized")
	resp, progress, err := build(t, d, appContext(t, base.Ref), "type=image,name="+ref+",push=true,optimize=true")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress)
	}
	img := testutil.FetchImage(t, reg.Ref("app")+"@"+resp["containerimage.digest"])

	// The image verifies, and its layers prioritize exactly the reads, after
	// the files the runtime reads.
	want := map[int][]string{0: {"etc/passwd", "etc/group", "bin/busybox"}, 2: {"data/small.txt"}, 3: {"app/run.sh"}, 4: {"app/conf.txt"}}
	rep := verifyPrioritized(t, img.Provider(), img.Manifest, want)

	// A cold daemon with prefetch on runs the workload: after the
	// prefetch nothing is fetched on demand.
	d2 := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()), testutil.WithPrefetch(true))
	reg.Reset()
	run := testutil.BuildContext(t, map[string]string{"Dockerfile": "FROM " + ref + " AS run\nRUN /app/run.sh > /out.txt\nFROM scratch\nCOPY --from=run /out.txt /\n"})
	if _, progress, err := build(t, d2, run, "type=local,dest="+t.TempDir()); err != nil {
		t.Fatalf("run the optimized image: %v\n%s", err, progress)
	}
	prefetch := map[digest.Digest]int64{}
	for _, m := range rep.Manifests {
		for _, l := range m.Layers {
			prefetch[l.Digest] = l.PrefetchSize
		}
	}
	for _, l := range img.Layers {
		blob := img.Blob(l.Digest)
		tocOff, _, err := estargz.OpenFooter(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
		if err != nil {
			t.Fatalf("layer %s footer: %v", l.Digest, err)
		}
		for _, r := range reg.BlobStats(l.Digest).Ranges {
			if r.Start < 0 || r.End < 0 {
				continue // suffix reads: the footer and TOC
			}
			// Allowed: reads of the prefetched range (the prefetch itself,
			// or a piece of it the workload reached while the asynchronous
			// prefetch was still under way); the tail with the TOC and
			// footer (the snapshotter aligns the start of that read down
			// to its fetch granularity); a one-byte availability check.
			// Anything else fetches files that were not prioritized.
			switch {
			case r.End >= tocOff:
			case prefetch[l.Digest] > 0 && r.End < prefetch[l.Digest]+128<<10:
			case r.End-r.Start <= 1:
			default:
				t.Errorf("layer %s (prefetch %d, TOC at %d): on-demand read %d-%d", l.Digest, prefetch[l.Digest], tocOff, r.Start, r.End)
			}
		}
	}
	large := img.Layers[2]
	if served := reg.BlobStats(large.Digest).Bytes; served > large.Size/10 {
		t.Errorf("the large layer was fetched (%d of %d bytes): not lazy", served, large.Size)
	}
}

func TestOptimizedKeepsEStargzBaseAndRunsEverywhere(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushLarge(t, reg, testutil.EStargz)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()), testutil.WithDaemonArgs("--dockerfile-frontend", "stargazer"))
	reg.Reset()
	ref := reg.Ref("other/app:optimized")
	resp, progress, err := build(t, d, appContext(t, base.Ref), "type=image,name="+ref+",push=true,optimize=true")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress)
	}
	// Before anything reads the pushed image: the base layers were never
	// fetched whole (the trace reads what it needs by range) nor
	// uploaded, only mounted from their repository.
	for i, l := range base.Layers {
		if st := reg.BlobStats(l.Digest); st.Gets > st.RangeGets {
			t.Errorf("base layer %d was fetched whole (%d GETs without a range, %d bytes)", i, st.Gets-st.RangeGets, st.Bytes)
		}
	}
	mounted := 0
	for _, r := range reg.Requests() {
		if r.Method == "POST" && strings.Contains(r.Path, "/v2/other/app/blobs/uploads") && r.Status == 201 {
			mounted++
		}
		if r.Method == "PATCH" || r.Method == "PUT" && r.Bytes > 0 {
			t.Logf("upload request %s %s (%d bytes)", r.Method, r.Path, r.Bytes)
		}
	}
	if mounted < len(base.Layers) {
		t.Errorf("%d blobs mounted from another repository, want at least the %d base layers", mounted, len(base.Layers))
	}
	img := testutil.FetchImage(t, reg.Ref("other/app")+"@"+resp["containerimage.digest"])
	for i, l := range base.Layers {
		if img.Layers[i].Digest != l.Digest {
			t.Errorf("base layer %d: digest %s, want the base's %s", i, img.Layers[i].Digest, l.Digest)
		}
	}
	if _, err := verify.Image(t.Context(), img.Provider(), img.Manifest); err != nil {
		t.Fatalf("verify: %v", err)
	}

	// The image is valid gzip: it runs on the overlayfs worker too.
	d2 := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()), testutil.WithSnapshotter("overlayfs"))
	out := t.TempDir()
	run := testutil.BuildContext(t, map[string]string{"Dockerfile": "FROM " + ref + " AS run\nRUN /app/run.sh > /out.txt\nFROM scratch\nCOPY --from=run /out.txt /\n"})
	if _, progress, err := build(t, d2, run, "type=local,dest="+out); err != nil {
		t.Fatalf("run on overlayfs: %v\n%s", err, progress)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "out.txt")); !strings.Contains(string(b), "ready") {
		t.Fatalf("workload output %q", b)
	}

	// The OCI tar of the same build imports into containerd.
	tarPath := filepath.Join(t.TempDir(), "app.tar")
	if _, progress, err := build(t, d, appContext(t, base.Ref), "type=oci,dest="+tarPath+",name=example.test/app:opt,optimize=true"); err != nil {
		t.Fatalf("oci export: %v\n%s", err, progress)
	}
	layout := testutil.ReadOCILayoutTar(t, tarPath)
	if _, err := verify.Image(t.Context(), layout.Provider(), layout.Index.Manifests[0]); err != nil {
		t.Fatalf("verify OCI tar: %v", err)
	}
	ctd := testutil.StartContainerd(t)
	if out, err := ctd.Ctr(t.Context(), "image", "import", tarPath); err != nil {
		t.Fatalf("ctr import: %v\n%s", err, out)
	}

	// reoptimize-base=true converts the eStargz base layers too: new
	// digests, and the busybox the workload reads is prioritized.
	reTar := filepath.Join(t.TempDir(), "reopt.tar")
	if _, progress, err := build(t, d, appContext(t, base.Ref), "type=oci,dest="+reTar+",optimize=true,reoptimize-base=true"); err != nil {
		t.Fatalf("reoptimize-base export: %v\n%s", err, progress)
	}
	reLayout := testutil.ReadOCILayoutTar(t, reTar)
	rep := verifyPrioritized(t, reLayout.Provider(), reLayout.Index.Manifests[0], map[int][]string{0: {"etc/passwd", "etc/group", "bin/busybox"}, 2: {"data/small.txt"}, 3: {"app/run.sh"}, 4: {"app/conf.txt"}})
	if got := rep.Manifests[0].Layers[0].Digest; got == base.Layers[0].Digest {
		t.Errorf("reoptimize-base kept base layer 0 as it was (%s)", got)
	}

	// And a docker tar, with Docker media types.
	dockerTar := filepath.Join(t.TempDir(), "app-docker.tar")
	if _, progress, err := build(t, d, appContext(t, base.Ref), "type=docker,dest="+dockerTar+",name=example.test/app:docker,optimize=true"); err != nil {
		t.Fatalf("docker export: %v\n%s", err, progress)
	}
	if out, err := ctd.Ctr(t.Context(), "image", "import", dockerTar); err != nil {
		t.Fatalf("ctr import of the docker tar: %v\n%s", err, out)
	}
	dockerLayout := testutil.ReadOCILayoutTar(t, dockerTar)
	if _, err := verify.Image(t.Context(), dockerLayout.Provider(), dockerLayout.Index.Manifests[0]); err != nil {
		t.Fatalf("verify the docker tar: %v", err)
	}
}

func TestOptimizeBadInput(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushBase(t, reg, testutil.Gzip)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))
	_, _, err := build(t, d, appContext(t, base.Ref), "type=oci,dest="+t.TempDir()+"/x.tar,optimize=true,compression=zstd:chunked,oci-mediatypes=false")
	if err == nil || !strings.Contains(err.Error(), "zstd:chunked") {
		t.Fatalf("zstd:chunked with docker media types: %v", err)
	}
	// A record path missing from the image is warned about, not fatal.
	rec := filepath.Join(t.TempDir(), "rec.json")
	os.WriteFile(rec, []byte("{\"path\":\"app/run.sh\"}\n{\"path\":\"no/such/file\"}\n"), 0o644)
	var progress bytes.Buffer
	yTar := filepath.Join(t.TempDir(), "y.tar")
	_, err = buildx.Build(t.Context(), buildx.BuildOptions{
		ContextDir: appContext(t, base.Ref), Outputs: []string{"type=oci,dest=" + yTar},
		RecordIn: rec, Progress: "plain", Stderr: &progress, Daemon: buildx.DaemonOptions{Addr: d.Addr},
	})
	if err != nil {
		t.Fatalf("record with a missing path: %v", err)
	}
	if !strings.Contains(progress.String(), "1 recorded paths are not files") {
		t.Fatalf("no warning about the missing path:\n%s", progress.String())
	}
	layout := testutil.ReadOCILayoutTar(t, yTar)
	verifyPrioritized(t, layout.Provider(), layout.Index.Manifests[0], map[int][]string{2: {"app/run.sh"}})
}

func TestOptimizedZstdChunked(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushBase(t, reg, testutil.Gzip)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()), testutil.WithDaemonArgs("--dockerfile-frontend", "stargazer"))
	ref := reg.Ref("app:zstd")
	resp, progress, err := build(t, d, appContext(t, base.Ref), "type=image,name="+ref+",push=true,optimize=true,compression=zstd:chunked")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress)
	}
	img := testutil.FetchImage(t, reg.Ref("app")+"@"+resp["containerimage.digest"])
	want := map[int][]string{0: {"etc/passwd", "etc/group", "bin/busybox"}, 1: {"data/small.txt"}, 2: {"app/run.sh"}, 3: {"app/conf.txt"}}
	rep := verifyPrioritized(t, img.Provider(), img.Manifest, want)
	for _, l := range rep.Manifests[0].Layers {
		if l.Format != verify.ZstdChunked {
			t.Errorf("layer %d: format %s, want zstd:chunked", l.Index, l.Format)
		}
	}
	// The stargz worker runs it lazily.
	d2 := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))
	run := testutil.BuildContext(t, map[string]string{"Dockerfile": "FROM " + ref + " AS run\nRUN /app/run.sh > /out.txt\nFROM scratch\nCOPY --from=run /out.txt /\n"})
	out := t.TempDir()
	if _, progress, err := build(t, d2, run, "type=local,dest="+out); err != nil {
		t.Fatalf("run: %v\n%s", err, progress)
	}
	if m := testutil.FUSEMountsUnder(d2.Root); len(m) == 0 {
		t.Fatal("zstd:chunked layers were not mounted lazily")
	}
}

func TestOptimizedRewritesAttestations(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushBase(t, reg, testutil.Gzip)
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()), testutil.WithDaemonArgs("--dockerfile-frontend", "stargazer"))
	tarPath := filepath.Join(t.TempDir(), "app.tar")
	var progress bytes.Buffer
	_, err := buildx.Build(t.Context(), buildx.BuildOptions{
		ContextDir: appContext(t, base.Ref), Outputs: []string{"type=oci,dest=" + tarPath + ",name=example.test/app:att,optimize=true"},
		Attests: []string{"type=provenance,mode=min"}, Progress: "plain", Stderr: &progress,
		Daemon: buildx.DaemonOptions{Addr: d.Addr},
	})
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress.String())
	}
	layout := testutil.ReadOCILayoutTar(t, tarPath)
	rep, err := verify.Image(t.Context(), layout.Provider(), layout.Index.Manifests[0])
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if len(rep.Attestations) == 0 {
		t.Fatal("the provenance attestation is missing from the optimized image")
	}
	// A named image's statements name it: after conversion, by its new
	// manifest digest.
	var idx ocispec.Index
	json.Unmarshal(layout.Blobs[layout.Index.Manifests[0].Digest], &idx)
	manifest := idx.Manifests[0].Digest
	named := false
	for _, b := range layout.Blobs {
		var st struct {
			Type    string `json:"_type"`
			Subject []struct {
				Digest map[string]string `json:"digest"`
			} `json:"subject"`
		}
		if json.Unmarshal(b, &st) != nil || !strings.Contains(st.Type, "in-toto") {
			continue
		}
		for _, sub := range st.Subject {
			if sub.Digest["sha256"] == manifest.Encoded() {
				named = true
			}
		}
	}
	if !named {
		t.Fatalf("no in-toto statement names the optimized manifest %s", manifest)
	}
}

func TestExporterTracesWhenNoRecord(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	base := testutil.PushBase(t, reg, testutil.Gzip)
	// BuildKit's own Dockerfile frontend: the result carries no record.
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))
	tarPath := filepath.Join(t.TempDir(), "app.tar")
	_, progress, err := build(t, d, appContext(t, base.Ref), "type=oci,dest="+tarPath+",optimize=true")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress)
	}
	if !strings.Contains(progress, "[stargazer] trace /app/run.sh") {
		t.Fatalf("the exporter did not trace:\n%s", progress)
	}
	layout := testutil.ReadOCILayoutTar(t, tarPath)
	want := map[int][]string{0: {"etc/passwd", "etc/group", "bin/busybox"}, 1: {"data/small.txt"}, 2: {"app/run.sh"}, 3: {"app/conf.txt"}}
	verifyPrioritized(t, layout.Provider(), layout.Index.Manifests[0], want)
}
