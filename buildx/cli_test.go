package buildx_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stargazer-build/stargazer/exporter/verify"
	"github.com/stargazer-build/stargazer/testutil"
)

// helloContext copies examples/hello and the host's busybox-static into a
// new build context, as `make example` does.
func helloContext(t *testing.T) string {
	t.Helper()
	src := filepath.Join(testutil.ModuleRoot(t), "examples", "hello")
	dst := t.TempDir()
	if out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("copy example: %v\n%s", err, out)
	}
	os.RemoveAll(filepath.Join(dst, "rootfs"))
	if err := os.MkdirAll(filepath.Join(dst, "rootfs", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("requirement missing: /bin/busybox (Debian package busybox-static): %v", err)
	}
	if err := os.WriteFile(filepath.Join(dst, "rootfs", "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func stargazer(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, testutil.Binary(t, "stargazer"), args...).CombinedOutput()
	return string(out), err
}

func TestEmbeddedBuildToOCITarImports(t *testing.T) {
	testutil.RequireIntegration(t)
	root := filepath.Join(t.TempDir(), "root")
	dest := filepath.Join(t.TempDir(), "hello.tar")
	out, err := stargazer(t, "build", "--root", root, "--progress", "plain",
		"--output", "type=oci,dest="+dest+",name=example.test/hello:latest", helloContext(t))
	if err != nil {
		t.Fatalf("stargazer build: %v\n%s", err, out)
	}
	if left := testutil.MountsUnder(root); len(left) > 0 {
		t.Fatalf("embedded daemon left mounts: %v", left)
	}
	layout := testutil.ReadOCILayoutTar(t, dest)
	if n := len(layout.Index.Manifests); n != 1 {
		t.Fatalf("index lists %d manifests, want 1", n)
	}
	if _, err := verify.Image(t.Context(), layout.Provider(), layout.Index.Manifests[0], verify.WithAllowNonLazy()); err != nil {
		t.Fatalf("verify: %v", err)
	}

	ctd := testutil.StartContainerd(t)
	ctx := t.Context()
	if out, err := ctd.Ctr(ctx, "image", "import", dest); err != nil {
		t.Fatalf("ctr image import: %v\n%s", err, out)
	}
	list, err := ctd.Ctr(ctx, "image", "list", "-q")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(list, "example.test/hello:latest") {
		t.Fatalf("imported image not listed:\n%s", list)
	}
	// The import unpacks nothing by itself; checking the content verifies
	// every blob containerd stored.
	if out, err := ctd.Ctr(ctx, "content", "ls", "-q"); err != nil || strings.Count(out, "sha256:") < 4 {
		t.Fatalf("content after import: %v\n%s", err, out)
	}
}

func TestCLIRejectsBadInput(t *testing.T) {
	testutil.RequireIntegration(t)
	ctxDir := testutil.BuildContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY Dockerfile /\n"})
	badDF := testutil.BuildContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY Dockerfile /\nFORM x\n"})
	root := filepath.Join(t.TempDir(), "root")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"build", "--no-such-flag", ctxDir}, "unknown flag: --no-such-flag"},
		{"unknown output type", []string{"build", "--root", root, "--output", "type=bogus,dest=x", ctxDir}, `unknown output type "bogus"`},
		{"missing dest", []string{"build", "--root", root, "--output", "type=oci", ctxDir}, "needs dest"},
		{"missing context", []string{"build", "--root", root, filepath.Join(ctxDir, "nope")}, "no such file or directory"},
		{"dockerfile syntax error", []string{"build", "--root", root, "--progress", "plain", badDF}, "line 3"},
		{"root with addr", []string{"build", "--addr", "unix:///nonexistent.sock", "--root", root, ctxDir}, "--root configures the embedded daemon"},
		{"unknown command", []string{"bogus"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := stargazer(t, tt.args...)
			if err == nil {
				t.Fatalf("exit 0, want failure; output:\n%s", out)
			}
			if !strings.Contains(out, tt.want) {
				t.Fatalf("output does not mention %q:\n%s", tt.want, out)
			}
		})
	}
}

func TestDaemonRejectsUnsupportedFlags(t *testing.T) {
	bin := testutil.Binary(t, "stargazerd")
	for _, args := range [][]string{
		{"--containerd-worker=true"},
		{"--rootless"},
		{"--tlscert", "/x.pem"},
		{"--oci-worker-snapshotter", "zfs", "--root", t.TempDir(), "--addr", "unix://" + filepath.Join(t.TempDir(), "s.sock")},
		{"--no-such-flag"},
		{"--allow-insecure-entitlement", "bogus", "--root", t.TempDir()},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil {
			t.Errorf("stargazerd %v: exit 0, want an error", args)
			continue
		}
		if !strings.Contains(string(out), "stargazerd:") || strings.Contains(string(out), "unknown command") {
			t.Errorf("stargazerd %v: unclear error %q", args, out)
		}
		t.Logf("stargazerd %v: %s", args, strings.TrimSpace(string(out)))
	}
}
