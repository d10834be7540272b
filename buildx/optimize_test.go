package buildx_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stargazer-build/stargazer/testutil"
)

func TestOptimizeAndVerify(t *testing.T) {
	testutil.RequireIntegration(t)
	reg := testutil.NewRegistry(t)
	src := testutil.PushImage(t, reg, "app:gzip", appSpec(t, testutil.Gzip))
	d := testutil.StartDaemon(t, testutil.WithPlainHTTPRegistry(reg.Host()))
	dir := t.TempDir()

	// Traced by the daemon, pushed to the registry.
	dst := reg.Ref("app:optimized")
	if out, err := stargazer(t, "optimize", "--addr", d.Addr, "--progress", "plain", src.Ref, dst); err != nil {
		t.Fatalf("optimize: %v\n%s", err, out)
	}
	rec := filepath.Join(dir, "record.json")
	if out, err := stargazer(t, "trace", "--addr", d.Addr, "--progress", "quiet", "--record-out", rec, src.Ref); err != nil {
		t.Fatalf("trace: %v\n%s", err, out)
	}
	out, err := stargazer(t, "verify", "--record", rec, dst)
	if err != nil {
		t.Fatalf("verify %s: %v\n%s", dst, err, out)
	}
	if !strings.Contains(out, "estargz") {
		t.Errorf("verify table does not name the format:\n%s", out)
	}

	// From a record into zstd:chunked in an OCI tar.
	srcTar := filepath.Join(dir, "src.tar")
	os.WriteFile(srcTar, testutil.OCITar(t, src), 0o644)
	dstTar := filepath.Join(dir, "dst.tar")
	if out, err := stargazer(t, "optimize", "--record-in", rec, "--zstdchunked", srcTar, dstTar); err != nil {
		t.Fatalf("optimize to zstd:chunked: %v\n%s", err, out)
	}
	out, err = stargazer(t, "verify", "--record", rec, dstTar)
	if err != nil {
		t.Fatalf("verify %s: %v\n%s", dstTar, err, out)
	}
	if !strings.Contains(out, "zstd") {
		t.Errorf("verify table does not name zstd:chunked:\n%s", out)
	}

	// A plain gzip image is not lazy: verify fails.
	if out, err := stargazer(t, "verify", srcTar); err == nil {
		t.Fatalf("verify of a gzip image passed:\n%s", out)
	}
	// zstd:chunked needs OCI media types.
	if out, err := stargazer(t, "optimize", "--record-in", rec, "--zstdchunked", "--oci=false", srcTar, filepath.Join(dir, "x.tar")); err == nil || !strings.Contains(out, "OCI media types") {
		t.Fatalf("zstd:chunked with docker media types: %v\n%s", err, out)
	}
}
