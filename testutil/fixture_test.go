package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

func readTar(t *testing.T, data []byte) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		out = append(out, tarEntry{hdr, body})
	}
}

func tarIndex(entries []tarEntry) map[string]tarEntry {
	m := map[string]tarEntry{}
	for _, e := range entries {
		m[strings.TrimSuffix(e.hdr.Name, "/")] = e
	}
	return m
}

func gunzip(t *testing.T, data []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	return out
}

func TestLayerTar(t *testing.T) {
	files := map[string]File{
		"/etc/motd":         {Data: []byte("hi\n")},
		"usr/bin/tool":      {Data: []byte("#!/bin/sh\n"), Mode: 0o755},
		"usr/bin/alias":     {Symlink: "tool"},
		"usr/bin/hard":      {Hardlink: "/usr/bin/tool"},
		"tmp":               {Dir: true, Mode: 0o777 | fs.ModeSticky},
		"etc/gone":          {Whiteout: true},
		"var/cache":         {Opaque: true},
		"home/user/.bashrc": {Data: []byte("x"), UID: 1000, GID: 1000},
		"sbin/su":           {Data: []byte("su"), Mode: 0o755 | fs.ModeSetuid},
	}
	data := LayerTar(t, files)
	if again := LayerTar(t, files); !bytes.Equal(data, again) {
		t.Fatal("LayerTar is not deterministic")
	}
	entries := readTar(t, data)
	var names []string
	for _, e := range entries {
		names = append(names, e.hdr.Name)
		if !e.hdr.ModTime.Equal(FixtureTime) {
			t.Errorf("%s: mtime %v", e.hdr.Name, e.hdr.ModTime)
		}
	}
	want := []string{
		"etc/", "etc/.wh.gone", "etc/motd",
		"home/", "home/user/", "home/user/.bashrc",
		"sbin/", "sbin/su",
		"tmp/",
		"usr/", "usr/bin/", "usr/bin/alias", "usr/bin/hard", "usr/bin/tool",
		"var/", "var/cache/", "var/cache/.wh..wh..opq",
	}
	if !slices.Equal(names, want) {
		t.Fatalf("entries\n got %q\nwant %q", names, want)
	}
	idx := tarIndex(entries)
	checks := []struct {
		name     string
		typeflag byte
		mode     int64
	}{
		{"etc", tar.TypeDir, 0o755},
		{"etc/motd", tar.TypeReg, 0o644},
		{"etc/.wh.gone", tar.TypeReg, 0o644},
		{"usr/bin/tool", tar.TypeReg, 0o755},
		{"usr/bin/alias", tar.TypeSymlink, 0o777},
		{"usr/bin/hard", tar.TypeLink, 0o644},
		{"tmp", tar.TypeDir, 0o1777},
		{"sbin/su", tar.TypeReg, 0o4755},
		{"var/cache", tar.TypeDir, 0o755},
	}
	for _, c := range checks {
		h := idx[c.name].hdr
		if h.Typeflag != c.typeflag || h.Mode != c.mode {
			t.Errorf("%s: type %c mode %o, want %c %o", c.name, h.Typeflag, h.Mode, c.typeflag, c.mode)
		}
	}
	if h := idx["usr/bin/alias"].hdr; h.Linkname != "tool" {
		t.Errorf("symlink target %q", h.Linkname)
	}
	if h := idx["usr/bin/hard"].hdr; h.Linkname != "usr/bin/tool" {
		t.Errorf("hardlink target %q", h.Linkname)
	}
	if h := idx["home/user/.bashrc"].hdr; h.Uid != 1000 || h.Gid != 1000 {
		t.Errorf("owner %d:%d", h.Uid, h.Gid)
	}
	if string(idx["etc/motd"].data) != "hi\n" {
		t.Errorf("content %q", idx["etc/motd"].data)
	}
}

func TestLayerTarErrors(t *testing.T) {
	tests := map[string]map[string]File{
		"escape":            {"../x": {}},
		"root":              {"/": {Dir: true}},
		"two kinds":         {"a": {Symlink: "b", Whiteout: true}},
		"data on symlink":   {"a": {Symlink: "b", Data: []byte("x")}},
		"file as parent":    {"a": {Data: []byte("x")}, "a/b": {}},
		"duplicate":         {"/a": {}, "a": {}},
		"whiteout and file": {"a/b": {Whiteout: true}, "a/.wh.b": {}},
	}
	for name, files := range tests {
		if _, err := buildTar(files); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestBusyboxLayer(t *testing.T) {
	tb, err := BusyboxLayer(t).src.tar()
	if err != nil {
		t.Fatal(err)
	}
	idx := tarIndex(readTar(t, tb.data))
	bin, err := os.ReadFile(busyboxPath())
	if err != nil {
		t.Fatal(err)
	}
	if e := idx["bin/busybox"]; !bytes.Equal(e.data, bin) || e.hdr.Mode != 0o755 {
		t.Errorf("bin/busybox: %d bytes mode %o", len(e.data), e.hdr.Mode)
	}
	for _, applet := range []string{"sh", "ls", "cat", "echo", "sleep", "head", "wc", "sha256sum", "true", "false", "test"} {
		if e, ok := idx["bin/"+applet]; !ok || e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != "busybox" {
			t.Errorf("bin/%s missing or not a symlink to busybox", applet)
		}
	}
	if !strings.Contains(string(idx["etc/passwd"].data), "root:x:0:0:") || !strings.Contains(string(idx["etc/passwd"].data), "nobody:x:65534:") {
		t.Errorf("etc/passwd: %q", idx["etc/passwd"].data)
	}
	if !strings.Contains(string(idx["etc/group"].data), "nobody:x:65534:") {
		t.Errorf("etc/group: %q", idx["etc/group"].data)
	}
	if e := idx["tmp"]; e.hdr == nil || e.hdr.Mode != 0o1777 {
		t.Errorf("tmp missing or wrong mode")
	}
}

func TestPseudoRandom(t *testing.T) {
	a := PseudoRandom("seed", 4096)
	b := PseudoRandom("seed", 4096)
	c := PseudoRandom("other", 4096)
	if !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatal("PseudoRandom is not a deterministic function of its seed")
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(a)
	zw.Close()
	if z.Len() < len(a) {
		t.Errorf("pseudo-random data compressed from %d to %d bytes", len(a), z.Len())
	}
}

// checkImageContent verifies an image's blobs against its descriptors and
// fixture invariants: diff IDs, config platform and media types.
func checkImageContent(t *testing.T, img Image, c Compression) {
	t.Helper()
	m := img.DecodeManifest(t)
	if m.Config.Digest != img.Config.Digest || len(m.Layers) != len(img.Layers) {
		t.Fatalf("manifest does not match the image's descriptors")
	}
	cfg := img.DecodeConfig(t)
	if cfg.Architecture != runtime.GOARCH || cfg.OS != "linux" {
		t.Errorf("platform %s/%s", cfg.OS, cfg.Architecture)
	}
	if !slices.Equal(cfg.RootFS.DiffIDs, img.DiffIDs) || len(img.DiffIDs) != len(img.Layers) {
		t.Fatalf("config diff IDs %v, image %v", cfg.RootFS.DiffIDs, img.DiffIDs)
	}
	for i, l := range img.Layers {
		data := img.Blob(l.Digest)
		if digest.FromBytes(data) != l.Digest || int64(len(data)) != l.Size {
			t.Errorf("layer %d: blob does not match its descriptor", i)
		}
		if got := digest.FromBytes(gunzip(t, data)); got != img.DiffIDs[i] {
			t.Errorf("layer %d: uncompressed digest %s, diff ID %s", i, got, img.DiffIDs[i])
		}
		_, hasTOC := l.Annotations[estargz.TOCJSONDigestAnnotation]
		if hasTOC != (c == EStargz) {
			t.Errorf("layer %d: TOC annotation present=%v for %s", i, hasTOC, c)
		}
	}
}

func TestFixturesPushAndPull(t *testing.T) {
	for _, c := range []Compression{Gzip, EStargz} {
		t.Run(string(c), func(t *testing.T) {
			reg := NewRegistry(t)
			for _, img := range []Image{PushBase(t, reg, c), PushLarge(t, reg, c)} {
				wantRef := reg.Ref("base:" + string(c))
				if len(img.Layers) == 3 {
					wantRef = reg.Ref("large:" + string(c))
				}
				if img.Ref != wantRef {
					t.Errorf("Ref = %q, want %q", img.Ref, wantRef)
				}
				if img.Manifest.MediaType != ocispec.MediaTypeImageManifest {
					t.Errorf("manifest media type %s", img.Manifest.MediaType)
				}
				checkImageContent(t, img, c)

				for _, ref := range []string{img.DigestRef(), img.Ref} {
					got := FetchImage(t, ref)
					if got.Manifest.Digest != img.Manifest.Digest || got.Config.Digest != img.Config.Digest {
						t.Fatalf("%s: fetched manifest %s, pushed %s", ref, got.Manifest.Digest, img.Manifest.Digest)
					}
					if !slices.EqualFunc(got.Layers, img.Layers, descEqual) || !slices.Equal(got.DiffIDs, img.DiffIDs) {
						t.Fatalf("%s: fetched layers differ", ref)
					}
					for _, d := range append([]ocispec.Descriptor{got.Manifest, got.Config}, got.Layers...) {
						if !bytes.Equal(got.Blob(d.Digest), img.Blob(d.Digest)) {
							t.Fatalf("%s: blob %s differs", ref, d.Digest)
						}
					}
				}
			}
		})
	}
}

func descEqual(a, b ocispec.Descriptor) bool {
	if a.MediaType != b.MediaType || a.Digest != b.Digest || a.Size != b.Size || len(a.Annotations) != len(b.Annotations) {
		return false
	}
	for k, v := range a.Annotations {
		if b.Annotations[k] != v {
			return false
		}
	}
	return true
}

func TestBaseFixtureContent(t *testing.T) {
	img := BuildImage(t, BaseSpec(t, Gzip))
	if len(img.Layers) != 2 {
		t.Fatalf("%d layers", len(img.Layers))
	}
	idx := tarIndex(readTar(t, gunzip(t, img.Blob(img.Layers[1].Digest))))
	for name, f := range DataFiles() {
		e, ok := idx[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if !bytes.Equal(e.data, f.Data) || e.hdr.Linkname != f.Symlink {
			t.Errorf("%s: content differs", name)
		}
	}
	cfg := img.DecodeConfig(t)
	if !slices.Equal(cfg.Config.Cmd, []string{"/bin/sh"}) || !slices.Contains(cfg.Config.Env, "PATH="+DefaultPath) {
		t.Errorf("config %+v", cfg.Config)
	}
	if again := BuildImage(t, BaseSpec(t, Gzip)); again.Manifest.Digest != img.Manifest.Digest {
		t.Errorf("rebuilding gave manifest %s, first %s", again.Manifest.Digest, img.Manifest.Digest)
	}
}

func TestFixtureConfig(t *testing.T) {
	spec := FixtureSpec{
		Layers: []Layer{FileLayer(map[string]File{"app/run": {Data: []byte("#!/bin/sh\n"), Mode: 0o755}})},
		Config: ocispec.ImageConfig{
			Entrypoint: []string{"/app/run"},
			Env:        []string{"PATH=/app", "A=b"},
			User:       "nobody",
			WorkingDir: "/app",
			Labels:     map[string]string{"k": "v"},
		},
	}
	cfg := BuildImage(t, spec).DecodeConfig(t).Config
	if len(cfg.Cmd) != 0 || !slices.Equal(cfg.Entrypoint, []string{"/app/run"}) {
		t.Errorf("Entrypoint %q Cmd %q", cfg.Entrypoint, cfg.Cmd)
	}
	if !slices.Equal(cfg.Env, []string{"PATH=/app", "A=b"}) || cfg.User != "nobody" || cfg.WorkingDir != "/app" || cfg.Labels["k"] != "v" {
		t.Errorf("config %+v", cfg)
	}
	if spec.Config.Env[0] != "PATH=/app" || len(spec.Config.Env) != 2 {
		t.Error("BuildImage modified the spec")
	}

	spec.Config = ocispec.ImageConfig{Env: []string{"A=b"}}
	cfg = BuildImage(t, spec).DecodeConfig(t).Config
	if !slices.Equal(cfg.Env, []string{"PATH=" + DefaultPath, "A=b"}) || !slices.Equal(cfg.Cmd, []string{"/bin/sh"}) {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

func TestFixtureDockerMediaTypes(t *testing.T) {
	reg := NewRegistry(t)
	spec := BaseSpec(t, Gzip)
	spec.DockerMediaTypes = true
	img := PushImage(t, reg, "docker", spec)
	if img.Ref != reg.Ref("docker:latest") {
		t.Errorf("Ref = %q", img.Ref)
	}
	got := FetchImage(t, img.Ref)
	if got.Manifest.MediaType != images.MediaTypeDockerSchema2Manifest || got.Config.MediaType != images.MediaTypeDockerSchema2Config {
		t.Errorf("media types %s, %s", got.Manifest.MediaType, got.Config.MediaType)
	}
	for _, l := range got.Layers {
		if l.MediaType != images.MediaTypeDockerSchema2LayerGzip {
			t.Errorf("layer media type %s", l.MediaType)
		}
	}
	checkImageContent(t, got, Gzip)
}

func TestFixtureSpecErrors(t *testing.T) {
	tests := map[string]FixtureSpec{
		"no layers":       {},
		"zero layer":      {Layers: []Layer{{}}},
		"bad compression": {Layers: []Layer{DataLayer()}, Compression: "zstd"},
		"docker estargz":  {Layers: []Layer{DataLayer()}, Compression: EStargz, DockerMediaTypes: true},
		"bad files":       {Layers: []Layer{FileLayer(map[string]File{"../x": {}})}},
		"negative size":   {Layers: []Layer{LargeLayer(-1)}},
	}
	for name, spec := range tests {
		if _, err := buildImage(spec); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestEStargzFixture(t *testing.T) {
	reg := NewRegistry(t)
	img := PushLarge(t, reg, EStargz)
	checkImageContent(t, img, EStargz)
	for i, l := range img.Layers {
		data := img.Blob(l.Digest)
		r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(data), 0, int64(len(data))))
		if err != nil {
			t.Fatalf("layer %d: estargz.Open: %v", i, err)
		}
		want := digest.Digest(l.Annotations[estargz.TOCJSONDigestAnnotation])
		if r.TOCDigest() != want {
			t.Errorf("layer %d: TOC digest %s, annotation %s", i, r.TOCDigest(), want)
		}
		if _, err := r.VerifyTOC(want); err != nil {
			t.Errorf("layer %d: VerifyTOC: %v", i, err)
		}
		size, err := strconv.ParseInt(l.Annotations[estargz.StoreUncompressedSizeAnnotation], 10, 64)
		if err != nil || size != int64(len(gunzip(t, data))) {
			t.Errorf("layer %d: uncompressed size annotation %q, err %v", i, l.Annotations[estargz.StoreUncompressedSizeAnnotation], err)
		}
		if _, ok := r.Lookup(estargz.NoPrefetchLandmark); !ok {
			t.Errorf("layer %d: no %s", i, estargz.NoPrefetchLandmark)
		}
		if _, ok := r.Lookup(estargz.PrefetchLandmark); ok {
			t.Errorf("layer %d: unexpected %s", i, estargz.PrefetchLandmark)
		}
	}

	// The large layer holds large.bin and small.txt.
	large := img.Layers[2]
	data := img.Blob(large.Digest)
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(data), 0, int64(len(data))))
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := r.Lookup("data/large.bin"); !ok || e.Size != DefaultLargeSize {
		t.Fatalf("data/large.bin missing or wrong size")
	}
	readFile := func(name string) []byte {
		sr, err := r.OpenFile(name)
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		b, err := io.ReadAll(io.NewSectionReader(sr, 0, sr.Size()))
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		return b
	}
	if got := readFile("data/small.txt"); string(got) != LargeSmallText {
		t.Errorf("data/small.txt = %q", got)
	}
	if got := readFile("data/large.bin"); !bytes.Equal(got, LargeData(DefaultLargeSize)) {
		t.Errorf("data/large.bin differs from LargeData")
	}
}

// rangeReaderAt reads a blob from a registry with one Range GET per call.
type rangeReaderAt struct {
	t   *testing.T
	url string
}

func (r rangeReaderAt) ReadAt(p []byte, off int64) (int, error) {
	req, err := http.NewRequestWithContext(r.t.Context(), http.MethodGet, r.url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(off+int64(len(p))-1, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return 0, errors.New(resp.Status)
	}
	n, err := io.ReadFull(resp.Body, p)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}

// TestLargeFixtureLazyRead reads data/small.txt out of the large eStargz
// layer with Range requests, as a lazy snapshotter does, and checks that
// the registry served a small fraction of the layer.
func TestLargeFixtureLazyRead(t *testing.T) {
	reg := NewRegistry(t)
	img := PushLarge(t, reg, EStargz)
	large := img.Layers[2]
	reg.Reset()

	ra := rangeReaderAt{t: t, url: blobURL(reg, "large", large.Digest)}
	r, err := estargz.Open(io.NewSectionReader(ra, 0, large.Size))
	if err != nil {
		t.Fatal(err)
	}
	sr, err := r.OpenFile("data/small.txt")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(sr, 0, sr.Size()))
	if err != nil || string(got) != LargeSmallText {
		t.Fatalf("small.txt = %q, %v", got, err)
	}
	st := reg.BlobStats(large.Digest)
	if st.Gets == 0 || st.RangeGets != st.Gets {
		t.Errorf("stats %+v: want Range GETs only", st)
	}
	if st.Bytes > large.Size/100 {
		t.Errorf("served %d of %d bytes of the large layer to read one small file", st.Bytes, large.Size)
	}
	t.Logf("read small.txt with %d range requests, %d bytes of %d", st.RangeGets, st.Bytes, large.Size)
}

func TestOCILayout(t *testing.T) {
	reg := NewRegistry(t)
	img := PushBase(t, reg, EStargz)
	dir := t.TempDir()
	WriteOCILayout(t, img, dir)

	layout, err := os.ReadFile(filepath.Join(dir, ocispec.ImageLayoutFile))
	if err != nil || !strings.Contains(string(layout), ocispec.ImageLayoutVersion) {
		t.Fatalf("oci-layout: %q, %v", layout, err)
	}
	indexJSON, err := os.ReadFile(filepath.Join(dir, ocispec.ImageIndexFile))
	if err != nil {
		t.Fatal(err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(indexJSON, &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("%d manifests in index", len(index.Manifests))
	}
	m := index.Manifests[0]
	if m.Digest != img.Manifest.Digest || m.Annotations[ocispec.AnnotationRefName] != "estargz" || m.Annotations[images.AnnotationImageName] != img.Ref {
		t.Errorf("index entry %+v", m)
	}
	for _, d := range append([]ocispec.Descriptor{img.Manifest, img.Config}, img.Layers...) {
		b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", d.Digest.Encoded()))
		if err != nil || digest.FromBytes(b) != d.Digest {
			t.Errorf("blob %s: %v", d.Digest, err)
		}
	}

	idx := tarIndex(readTar(t, OCITar(t, img)))
	if !bytes.Equal(idx[ocispec.ImageIndexFile].data, indexJSON) {
		t.Error("OCITar's index.json differs from WriteOCILayout's")
	}
	if _, ok := idx["blobs/sha256/"+img.Manifest.Digest.Encoded()]; !ok {
		t.Error("OCITar lacks the manifest blob")
	}
}

// TestFixtureRunsInContainerd imports the base fixture's OCI tar into a real
// containerd and runs a shell in it with runc, which shows the busybox root
// filesystem and the image config work for a real runtime.
func TestFixtureRunsInContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd: skipped with -short")
	}
	RequireRunc(t)
	c := StartContainerd(t)
	for _, comp := range []Compression{Gzip, EStargz} {
		t.Run(string(comp), func(t *testing.T) {
			img := BuildImage(t, BaseSpec(t, comp))
			img.Ref = "example.test/base:" + string(comp)
			archive := filepath.Join(t.TempDir(), "base.tar")
			if err := os.WriteFile(archive, OCITar(t, img), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			if out, err := c.Ctr(ctx, "image", "import", archive); err != nil {
				t.Fatalf("import: %v", err)
			} else if !strings.Contains(out, img.Ref) {
				t.Errorf("import output lacks %s:\n%s", img.Ref, out)
			}
			// The output goes through a bind mount: ctr's own stdout
			// copy can lose a short-lived container's output.
			outDir := t.TempDir()
			if _, err := c.Ctr(ctx, "run", "--rm", "--mount", "type=bind,src="+outDir+",dst=/out,options=rbind:rw",
				img.Ref, "fixture-"+string(comp),
				"/bin/sh", "-c", "(cat /data/small.txt; id -u; ls -d /tmp; echo $PATH) > /out/out.txt"); err != nil {
				t.Fatalf("run: %v", err)
			}
			b, err := os.ReadFile(filepath.Join(outDir, "out.txt"))
			if err != nil {
				t.Fatal(err)
			}
			out := string(b)
			want := SmallText + "0\n/tmp\n" + DefaultPath + "\n"
			if out != want {
				t.Errorf("container printed %q, want %q", out, want)
			}
		})
	}
}
