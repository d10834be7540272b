package buildx_test

import (
	"os"
	"path/filepath"
	"runtime"
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
	// In a default build container, with no capability added, the
	// kernel grants the seccomp listener: the fast path is the one used.
	if !strings.Contains(out, "with ptrace (opens through a seccomp listener)") {
		t.Errorf("trace did not use the seccomp listener:\n%s", out)
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

func TestTraceOCITarAndWorkloadEnds(t *testing.T) {
	testutil.RequireIntegration(t)
	spec := testutil.BaseSpec(t, testutil.Gzip)
	spec.Layers = append(spec.Layers, testutil.FileLayer(map[string]testutil.File{
		"app/forever.sh": {Mode: 0o755, Data: []byte("#!/bin/sh\ncat /data/small.txt\necho serving\nwhile true; do sleep 1; done\n")},
		"app/fail.sh":    {Mode: 0o755, Data: []byte("#!/bin/sh\ncat /data/dir/nested.txt\nexit 3\n")},
		"app/late.txt":   {Data: []byte("read after the line\n")},
	}))
	spec.Config = ocispec.ImageConfig{Cmd: []string{"/app/forever.sh"}}
	img := testutil.BuildImage(t, spec)
	tarPath := filepath.Join(t.TempDir(), "app.tar")
	if err := os.WriteFile(tarPath, testutil.OCITar(t, img), 0o644); err != nil {
		t.Fatal(err)
	}
	d := testutil.StartDaemon(t, testutil.WithDaemonArgs("--allow-insecure-entitlement", "security.insecure"))

	tests := []struct {
		name     string
		args     []string
		want     []string
		wantText string
	}{
		{"killed at the period", []string{"--period", "2s"}, []string{"app/forever.sh", "bin/busybox", "data/small.txt"}, ""},
		{"stopped by the line", []string{"--period", "60s", "--wait-on-line", "serving"}, []string{"app/forever.sh", "bin/busybox", "data/small.txt"}, ""},
		{"exits non-zero", []string{"--args", `["/app/fail.sh"]`}, []string{"app/fail.sh", "bin/busybox", "data/dir/nested.txt"}, "code 3"},
		{"fanotify", []string{"--tracer", "fanotify", "--period", "2s"}, []string{"app/forever.sh", "bin/busybox", "data/small.txt"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := filepath.Join(t.TempDir(), "record.json")
			args := append([]string{"trace", "--addr", d.Addr, "--progress", "plain", "--record-out", rec}, tt.args...)
			out, err := stargazer(t, append(args, tarPath)...)
			if err != nil {
				t.Fatalf("stargazer trace: %v\n%s", err, out)
			}
			if tt.wantText != "" && !strings.Contains(out, tt.wantText) {
				t.Errorf("output does not mention %q:\n%s", tt.wantText, out)
			}
			var paths []string
			for _, e := range readRecordFile(t, rec) {
				paths = append(paths, e.Path)
			}
			if !slices.Equal(paths, tt.want) {
				t.Fatalf("record %v, want %v", paths, tt.want)
			}
		})
	}
}

func TestTraceRejectsBadInput(t *testing.T) {
	testutil.RequireIntegration(t)
	spec := testutil.BaseSpec(t, testutil.Gzip)
	spec.Config = ocispec.ImageConfig{Cmd: []string{"/bin/true"}}
	withCmd := testutil.BuildImage(t, spec)
	noCmd := testutil.BuildImage(t, testutil.FixtureSpec{Layers: []testutil.Layer{testutil.DataLayer()}, Config: ocispec.ImageConfig{Cmd: []string{}}})
	dir := t.TempDir()
	withCmdTar, noCmdTar := filepath.Join(dir, "cmd.tar"), filepath.Join(dir, "nocmd.tar")
	os.WriteFile(withCmdTar, testutil.OCITar(t, withCmd), 0o644)
	os.WriteFile(noCmdTar, testutil.OCITar(t, noCmd), 0o644)
	badRecord := filepath.Join(dir, "bad.json")
	os.WriteFile(badRecord, []byte("{\"path\":\"a\"}\n{not json\n"), 0o644)
	escaping := filepath.Join(dir, "escape.json")
	os.WriteFile(escaping, []byte("{\"path\":\"../etc/passwd\"}\n"), 0o644)
	d := testutil.StartDaemon(t)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no workload", []string{"trace", "--addr", d.Addr, noCmdTar}, "no workload"},
		{"unknown user", []string{"trace", "--addr", d.Addr, "--user", "no-such-user", withCmdTar}, "no-such-user"},
		{"bad entrypoint", []string{"trace", "--addr", d.Addr, "--entrypoint", `["/bin/sh"`, withCmdTar}, "--entrypoint"},
		{"bad mount", []string{"trace", "--addr", d.Addr, "--mount", "type=volume,src=x,dst=/x", withCmdTar}, "type=bind"},
		{"bad tracer", []string{"trace", "--addr", d.Addr, "--tracer", "strace", withCmdTar}, "strace"},
		{"missing image", []string{"trace", "--addr", d.Addr, filepath.Join(dir, "nope.tar")}, "nope.tar"},
		{"malformed record", []string{"trace", "--merge", badRecord}, "line 2"},
		{"escaping record", []string{"trace", "--merge", escaping}, "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := stargazer(t, tt.args...)
			if err == nil {
				t.Fatalf("exit 0, want failure:\n%s", out)
			}
			if !strings.Contains(out, tt.want) {
				t.Fatalf("output does not mention %q:\n%s", tt.want, out)
			}
		})
	}
}

func TestTraceMerge(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.json"), filepath.Join(dir, "b.json")
	os.WriteFile(a, []byte("{\"path\":\"x\"}\n{\"path\":\"y\"}\n{\"path\":\"z\"}\n"), 0o644)
	os.WriteFile(b, []byte("{\"path\":\"/w\",\"manifestDigest\":\"sha256:0000000000000000000000000000000000000000000000000000000000000000\",\"layerIndex\":1}\n{\"path\":\"y\"}\n"), 0o644)
	out, err := stargazer(t, "trace", "--merge", a, b)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var paths []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		e, err := tracer.ReadRecord(strings.NewReader(line))
		if err != nil {
			t.Fatalf("output line %q: %v", line, err)
		}
		paths = append(paths, e[0].Path)
	}
	if want := []string{"x", "w", "y", "z"}; !slices.Equal(paths, want) {
		t.Fatalf("merged %v, want %v", paths, want)
	}
}

// hostFile is a file of the host copied into a fixture.
func hostFile(t *testing.T, path string) testutil.File {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("requirement missing: %s: %v", path, err)
	}
	st, _ := os.Stat(path)
	return testutil.File{Data: b, Mode: st.Mode().Perm()}
}

// TestTraceDynamicProgram traces a dynamically linked program copied from
// the host with its loader and libc, laid out as Debian does (usr-merged,
// /lib64/ld-linux… through symlinks): the loader and libc the kernel and
// the loader open are recorded, the symlinks resolved to their targets.
func TestTraceDynamicProgram(t *testing.T) {
	testutil.RequireIntegration(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the fixture lays out x86_64 libraries")
	}
	const (
		loader = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
		libc   = "usr/lib/x86_64-linux-gnu/libc.so.6"
	)
	files := map[string]testutil.File{
		"usr/bin/cat":                    hostFile(t, "/usr/bin/cat"),
		loader:                           hostFile(t, "/"+loader),
		libc:                             hostFile(t, "/"+libc),
		"lib":                            {Symlink: "usr/lib"},
		"lib64":                          {Symlink: "usr/lib64"},
		"usr/lib64/ld-linux-x86-64.so.2": {Symlink: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"},
		"data/file.txt":                  {Data: []byte("dynamic\n")},
		"data/untouched.txt":             {Data: []byte("never\n")},
	}
	img := testutil.BuildImage(t, testutil.FixtureSpec{
		Layers: []testutil.Layer{testutil.FileLayer(files)},
		Config: ocispec.ImageConfig{Entrypoint: []string{"/usr/bin/cat", "/data/file.txt"}},
	})
	tarPath := filepath.Join(t.TempDir(), "dyn.tar")
	os.WriteFile(tarPath, testutil.OCITar(t, img), 0o644)
	d := testutil.StartDaemon(t)
	rec := filepath.Join(t.TempDir(), "record.json")
	if out, err := stargazer(t, "trace", "--addr", d.Addr, "--progress", "plain", "--record-out", rec, tarPath); err != nil {
		t.Fatalf("trace: %v\n%s", err, out)
	}
	var paths []string
	for _, e := range readRecordFile(t, rec) {
		paths = append(paths, e.Path)
	}
	if want := []string{"usr/bin/cat", loader, libc, "data/file.txt"}; !slices.Equal(paths, want) {
		t.Fatalf("record %v, want %v", paths, want)
	}
}
