package tracer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"reflect"
	"testing"
)

// tarEntry describes one header of a test layer.
type tarEntry struct {
	name     string
	typ      byte
	linkname string
}

func file(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeReg} }
func dir(name string) tarEntry  { return tarEntry{name: name, typ: tar.TypeDir} }
func symlink(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeSymlink, linkname: target}
}
func hardlink(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeLink, linkname: target}
}

func buildLayer(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.linkname, Mode: 0o644}
		var body []byte
		switch e.typ {
		case tar.TypeReg:
			body = []byte("content of " + e.name)
			h.Size = int64(len(body))
		case tar.TypeDir:
			h.Mode = 0o755
		case tar.TypeChar:
			h.Devmajor, h.Devminor = 1, 3
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// threeLayers is an image with an overwritten file, whiteouts, an opaque
// directory, symlinked directories, a hard link and a replaced directory.
func threeLayers(t testing.TB) *LayerIndex {
	t.Helper()
	base := buildLayer(t,
		dir("bin/"), file("bin/sh"),
		dir("etc/"), file("etc/passwd"), file("etc/hosts"),
		dir("usr/"), dir("usr/lib/"), file("usr/lib/libfoo.so.1"), symlink("usr/lib/libfoo.so", "libfoo.so.1"),
		symlink("lib", "usr/lib"),
		dir("opt/"), dir("opt/app/"), file("opt/app/old.txt"), file("opt/app/keep.txt"),
		symlink("app", "/opt/app"),
		symlink("escape", "../../../etc"),
		dir("data/"), file("data/a.txt"), dir("data/sub/"), file("data/sub/b.txt"),
		dir("var/"), file("var/hard"), hardlink("var/hardlink", "var/hard"),
		dir("var/whdir/"), file("var/whdir/f"),
		dir("opt/replaced/"), file("opt/replaced/inner"),
		symlink("loop1", "loop2"), symlink("loop2", "loop1"),
		file("./dotslash/file"),
	)
	mid := buildLayer(t,
		file("etc/passwd"),
		file("opt/app/.wh.old.txt"),
		// The opaque marker comes after a file of the same layer in
		// the stream: it must hide only the lower layer's entries.
		file("data/new.txt"),
		file("data/.wh..wh..opq"),
		file("usr/lib/libbar.so"),
		file("bin/.wh.sh"),
		tarEntry{name: "dev/null", typ: tar.TypeChar},
		file("var/.wh..wh.plnk"),
	)
	top := buildLayer(t,
		file("bin/sh"),
		file("etc/.wh.hosts"),
		dir("usr/lib/"), // merges with the lower directory
		file("opt/replaced"),
		file("var/.wh.whdir"),
		file("newdir/deep/file"), // parents implied
	)
	idx := NewLayerIndex()
	for i, l := range [][]byte{base, mid, top} {
		if err := idx.AddLayer(bytes.NewReader(l)); err != nil {
			t.Fatalf("AddLayer(%d): %v", i, err)
		}
	}
	return idx
}

func TestLayerIndexLookup(t *testing.T) {
	idx := threeLayers(t)
	if idx.Layers() != 3 {
		t.Fatalf("Layers() = %d", idx.Layers())
	}
	for _, tc := range []struct {
		path     string
		layer    int
		ok       bool
		resolved string
	}{
		{"bin/sh", 2, true, "bin/sh"},         // whited out in 1, back in 2
		{"etc/passwd", 1, true, "etc/passwd"}, // overwritten
		{"/etc/passwd", 1, true, "etc/passwd"},
		{"etc/hosts", 0, false, ""},       // whiteout
		{"opt/app/old.txt", 0, false, ""}, // whiteout
		{"opt/app/keep.txt", 0, true, "opt/app/keep.txt"},
		{"data/a.txt", 0, false, ""},     // opaque directory above
		{"data/sub/b.txt", 0, false, ""}, // opaque hides subdirectories too
		{"data/new.txt", 1, true, "data/new.txt"},
		{"lib/libfoo.so.1", 0, true, "usr/lib/libfoo.so.1"}, // symlinked directory
		{"lib/libbar.so", 1, true, "usr/lib/libbar.so"},     // through the link, upper layer
		{"usr/lib/libfoo.so", 0, true, "usr/lib/libfoo.so.1"},
		{"app/keep.txt", 0, true, "opt/app/keep.txt"}, // absolute symlink
		{"escape/passwd", 1, true, "etc/passwd"},      // ".." stops at the root
		{"opt/app/../../etc/passwd", 1, true, "etc/passwd"},
		{"../../etc/passwd", 1, true, "etc/passwd"},
		{"var/hardlink", 0, true, "var/hardlink"},
		{"var/whdir/f", 0, false, ""},             // whited-out directory
		{"opt/replaced", 2, true, "opt/replaced"}, // file replaces directory
		{"opt/replaced/inner", 0, false, ""},
		{"newdir/deep/file", 2, true, "newdir/deep/file"},
		{"dotslash/file", 0, true, "dotslash/file"},
		{"dev/null", 0, false, ""}, // not a regular file
		{"data", 0, false, ""},     // a directory
		{"loop1", 0, false, ""},    // symlink loop
		{"missing", 0, false, ""},
		{"bin/sh/x", 0, false, ""}, // through a file
	} {
		layer, ok := idx.Lookup(tc.path)
		if ok != tc.ok || (ok && layer != tc.layer) {
			t.Errorf("Lookup(%q) = %d, %v; want %d, %v", tc.path, layer, ok, tc.layer, tc.ok)
		}
		if tc.ok {
			if r, rok := idx.Resolve(tc.path); !rok || r != tc.resolved {
				t.Errorf("Resolve(%q) = %q, %v; want %q", tc.path, r, rok, tc.resolved)
			}
		}
	}
	if r, ok := idx.Resolve("lib"); !ok || r != "usr/lib" {
		t.Errorf("Resolve(lib) = %q, %v", r, ok)
	}
}

func TestLayerIndexRejectsEscapingNames(t *testing.T) {
	idx := NewLayerIndex()
	if err := idx.AddLayer(bytes.NewReader(buildLayer(t, file("ok")))); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"../x", "a/../../x", "/../../x"} {
		err := idx.AddLayer(bytes.NewReader(buildLayer(t, file("fine"), file(name))))
		if !errors.Is(err, ErrPathEscapes) {
			t.Errorf("AddLayer with %q: %v, want ErrPathEscapes", name, err)
		}
	}
	if idx.Layers() != 1 {
		t.Errorf("a rejected layer was counted: Layers() = %d", idx.Layers())
	}
	if _, ok := idx.Lookup("fine"); ok {
		t.Error("a rejected layer changed the index")
	}
	// Names that only look odd stay inside the root.
	if err := idx.AddLayer(bytes.NewReader(buildLayer(t, file("a/../b"), file("..c")))); err != nil {
		t.Errorf("AddLayer: %v", err)
	}
}

func TestLayerIndexGzip(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(buildLayer(t, file("usr/bin/env")))
	zw.Close()
	idx := NewLayerIndex()
	if err := idx.AddLayer(&buf); err != nil {
		t.Fatal(err)
	}
	if l, ok := idx.Lookup("usr/bin/env"); !ok || l != 0 {
		t.Errorf("Lookup = %d, %v", l, ok)
	}
}

func TestAttribute(t *testing.T) {
	idx := threeLayers(t)
	in := []Entry{
		{Path: "bin/sh", FirstAccessMs: 1},
		{Path: "etc/hosts"},
		{Path: "app/keep.txt", Size: 20},
		{Path: "opt/app/keep.txt"}, // the same file as app/keep.txt
		{Path: "tmp/created-by-workload"},
		{Path: "lib/libfoo.so.1"},
		{Path: "data"},
		{Path: "etc/passwd", ManifestDigest: "sha256:old", LayerIndex: intp(0)},
	}
	orig := make([]Entry, len(in))
	copy(orig, in)
	got, missing := Attribute(in, idx, "sha256:1234")
	want := []Entry{
		{Path: "bin/sh", FirstAccessMs: 1, ManifestDigest: "sha256:1234", LayerIndex: intp(2)},
		{Path: "opt/app/keep.txt", Size: 20, ManifestDigest: "sha256:1234", LayerIndex: intp(0)},
		{Path: "usr/lib/libfoo.so.1", ManifestDigest: "sha256:1234", LayerIndex: intp(0)},
		{Path: "etc/passwd", ManifestDigest: "sha256:1234", LayerIndex: intp(1)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("attributed:\n%+v\nwant:\n%+v", got, want)
	}
	wantMissing := []string{"etc/hosts", "tmp/created-by-workload", "data"}
	if !reflect.DeepEqual(missing, wantMissing) {
		t.Errorf("missing = %q, want %q", missing, wantMissing)
	}
	if !reflect.DeepEqual(in, orig) || *in[7].LayerIndex != 0 {
		t.Error("Attribute modified its input")
	}
}
