package tracer_test

import (
	"reflect"
	"testing"

	"github.com/stargazer-build/stargazer/testutil"
	"github.com/stargazer-build/stargazer/tracer"
)

// TestIndexImageFromTOC checks that attribution from eStargz TOCs (what
// IndexImage reads of a lazy layer) matches attribution from the whole
// layers, on layers with an overwritten file, a whiteout, an opaque
// directory and a symlinked directory.
func TestIndexImageFromTOC(t *testing.T) {
	layers := []testutil.Layer{
		testutil.FileLayer(map[string]testutil.File{
			"etc/conf":       {Data: []byte("v1")},
			"etc/gone":       {Data: []byte("deleted above")},
			"opt/old/a":      {Data: []byte("hidden above")},
			"opt/keep":       {Data: []byte("kept")},
			"usr/lib/lib.so": {Data: []byte("lib")},
			"lib":            {Symlink: "usr/lib"},
		}),
		testutil.FileLayer(map[string]testutil.File{
			"etc/conf": {Data: []byte("v2")},
			"etc/gone": {Whiteout: true},
			"opt/old":  {Opaque: true},
		}),
		testutil.FileLayer(map[string]testutil.File{
			"opt/old/b": {Data: []byte("new")},
			"bin/tool":  {Data: []byte("tool"), Mode: 0o755},
		}),
	}
	want := map[string]int{"etc/conf": 1, "opt/keep": 0, "opt/old/b": 2, "bin/tool": 2, "usr/lib/lib.so": 0, "lib/lib.so": 0}
	absent := []string{"etc/gone", "opt/old/a", "opt", "lib", "no/such"}
	for _, c := range []testutil.Compression{testutil.Gzip, testutil.EStargz} {
		t.Run(string(c), func(t *testing.T) {
			img := testutil.BuildImage(t, testutil.FixtureSpec{Layers: layers, Compression: c})
			idx, err := tracer.IndexImage(t.Context(), img.Provider(), img.DecodeManifest(t))
			if err != nil {
				t.Fatal(err)
			}
			for p, l := range want {
				if got, ok := idx.Lookup(p); !ok || got != l {
					t.Errorf("%s: layer %d (found %v), want %d", p, got, ok, l)
				}
			}
			for _, p := range absent {
				if l, ok := idx.Lookup(p); ok {
					t.Errorf("%s: found in layer %d, want absent", p, l)
				}
			}
		})
	}
}

// TestAttributeImageRuntimeFiles checks that the files a runtime reads
// before the workload come first, in the layer that provides them, even
// when the workload reads them too, and that an image without them gets
// none.
func TestAttributeImageRuntimeFiles(t *testing.T) {
	img := testutil.BuildImage(t, testutil.FixtureSpec{Layers: []testutil.Layer{
		testutil.FileLayer(map[string]testutil.File{
			"etc/passwd":  {Data: []byte("root:x:0:0::/root:/bin/sh\n")},
			"etc/group0":  {Data: []byte("root:x:0:\n")},
			"etc/group":   {Symlink: "group0"},
			"bin/tool":    {Data: []byte("tool"), Mode: 0o755},
			"lib/libx.so": {Data: []byte("lib")},
		}),
		testutil.FileLayer(map[string]testutil.File{
			"etc/passwd": {Data: []byte("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n")},
		}),
	}})
	m := img.DecodeManifest(t)
	entries := []tracer.Entry{{Path: "bin/tool"}, {Path: "etc/passwd"}, {Path: "lib/libx.so"}, {Path: "tmp/made"}}
	lists, missing, err := tracer.AttributeImage(t.Context(), img.Provider(), m, img.Manifest.Digest, entries, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int][]string{0: {"etc/group0", "bin/tool", "lib/libx.so"}, 1: {"etc/passwd"}}
	if !reflect.DeepEqual(lists, want) || !reflect.DeepEqual(missing, []string{"tmp/made"}) {
		t.Errorf("lists %v, missing %q; want %v, [tmp/made]", lists, missing, want)
	}

	bare := testutil.BuildImage(t, testutil.FixtureSpec{Layers: []testutil.Layer{
		testutil.FileLayer(map[string]testutil.File{"bin/tool": {Data: []byte("tool"), Mode: 0o755}}),
	}})
	lists, missing, err = tracer.AttributeImage(t.Context(), bare.Provider(), bare.DecodeManifest(t), bare.Manifest.Digest, entries[:1], nil)
	if err != nil || !reflect.DeepEqual(lists, map[int][]string{0: {"bin/tool"}}) || len(missing) != 0 {
		t.Errorf("lists %v, missing %q, %v; want only bin/tool", lists, missing, err)
	}
}
