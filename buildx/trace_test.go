package buildx_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/testutil"
	"github.com/stargazer-build/stargazer/tracer"
)

// appLayer is a workload on top of the large fixture: a #!/bin/sh script
// that reads a file of its own layer, one of the large layer, and one
// through a symlink, and only stats another.
func appSpec(t *testing.T, c testutil.Compression) testutil.FixtureSpec {
	spec := testutil.LargeSpec(t, c, testutil.DefaultLargeSize)
	spec.Layers = append(spec.Layers, testutil.FileLayer(map[string]testutil.File{
		"app/run.sh":        {Mode: 0o755, Data: []byte("#!/bin/sh\ncat /app/conf.txt\ncat /data/small.txt\ncat /app/link.txt\ntest -e /app/stat-only.txt\necho app-ready\n")},
		"app/conf.txt":      {Data: []byte("conf\n")},
		"app/target.txt":    {Data: []byte("target\n")},
		"app/link.txt":      {Symlink: "target.txt"},
		"app/stat-only.txt": {Data: []byte("never read\n")},
		"app/unused.txt":    {Data: []byte("never touched\n")},
	}))
	spec.Config = ocispec.ImageConfig{Entrypoint: []string{"/app/run.sh"}}
	return spec
}

func readRecordFile(t *testing.T, path string) []tracer.Entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := tracer.ReadRecord(f)
	if err != nil {
		t.Fatalf("read record: %v", err)
	}
	return entries
}

func TestTraceRegistryImageLazily(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	img := testutil.PushImage(t, reg, "app:estargz", appSpec(t, testutil.EStargz))
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))
	reg.Reset()

	rec := filepath.Join(t.TempDir(), "record.json")
	out, err := stargazer(t, "trace", "--addr", d.Addr, "--progress", "plain", "--record-out", rec, img.Ref)
	if err != nil {
		t.Fatalf("stargazer trace: %v\n%s", err, out)
	}
	if !strings.Contains(out, "app-ready") {
		t.Errorf("workload output not shown in progress:\n%s", out)
	}
	entries := readRecordFile(t, rec)
	var paths []string
	layerOf := map[string]int{}
	for _, e := range entries {
		paths = append(paths, e.Path)
		if e.LayerIndex != nil {
			layerOf[e.Path] = *e.LayerIndex
		}
		if e.ManifestDigest != img.Manifest.Digest.String() {
			t.Errorf("%s: manifestDigest %q, want %s", e.Path, e.ManifestDigest, img.Manifest.Digest)
		}
	}
	// The script, its interpreter (busybox behind /bin/sh), then its reads
	// in order; the symlink recorded as its target.
	want := []string{"app/run.sh", "bin/busybox", "app/conf.txt", "data/small.txt", "app/target.txt"}
	if !slices.Equal(paths, want) {
		t.Fatalf("record %v, want %v", paths, want)
	}
	wantLayer := map[string]int{"app/run.sh": 3, "bin/busybox": 0, "app/conf.txt": 3, "data/small.txt": 2, "app/target.txt": 3}
	for p, l := range wantLayer {
		if layerOf[p] != l {
			t.Errorf("%s attributed to layer %d, want %d", p, layerOf[p], l)
		}
	}
	large := img.Layers[2]
	if served := reg.BlobStats(large.Digest).Bytes; served >= large.Size/20 {
		t.Fatalf("tracing fetched %d of the %d-byte large layer: not lazy", served, large.Size)
	}
}
