package convert_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/compression"
	"github.com/stargazer-build/stargazer/exporter/convert"
	ct "github.com/stargazer-build/stargazer/exporter/convert/converttest"
	"github.com/stargazer-build/stargazer/exporter/verify"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

// sample is a small root filesystem layer: nested directories, a file
// larger than the 4 MiB default chunk, a symlink and a hardlink.
func sample() []ct.Entry {
	return []ct.Entry{
		ct.Dir("bin/"),
		ct.File("bin/sh", "#!/bin/busybox\n"),
		ct.Dir("etc/"),
		ct.File("etc/hosts", "127.0.0.1 localhost\n"),
		ct.File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
		ct.File("etc/.wh.motd", ""), // a whiteout, as diffs carry them
		ct.Dir("usr/"),
		ct.Dir("usr/lib/"),
		ct.RandomFile("usr/lib/libbig.so", 5<<20+123, 1),
		ct.File("usr/lib/libc.so", strings.Repeat("libc ", 1000)),
		ct.Hardlink("usr/lib/libc.so.6", "usr/lib/libc.so"),
		ct.Symlink("lib", "usr/lib"),
		ct.Dir("app/"),
		ct.File("app/main", strings.Repeat("main ", 5000)),
		ct.File("app/empty", ""),
		ct.File("app/config.json", `{"debug":false}`),
	}
}

// readerAt serves a blob from memory as a content.ReaderAt.
type readerAt struct{ *bytes.Reader }

func (r readerAt) Close() error { return nil }

func ra(b []byte) content.ReaderAt { return readerAt{bytes.NewReader(b)} }

// memProvider serves one converted layer to verify.Layer.
type memProvider map[digest.Digest][]byte

func (p memProvider) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	b, ok := p[desc.Digest]
	if !ok {
		return nil, errors.New("not found")
	}
	return ra(b), nil
}

func blobOf(t *testing.T, l *convert.Layer) []byte {
	t.Helper()
	b, err := io.ReadAll(l.Reader())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tarNames lists the entries of a blob's uncompressed tar stream, in order:
// what any non-lazy consumer unpacks.
func tarNames(t *testing.T, blob []byte) []string {
	t.Helper()
	rc, _, err := compression.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}

// tarFiles maps regular file names to content.
func tarFiles(t *testing.T, r io.Reader) map[string]string {
	t.Helper()
	tr := tar.NewReader(r)
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			files[strings.TrimPrefix(h.Name, "./")] = string(b)
		}
	}
}

func TestConvertLayer(t *testing.T) {
	ctx := context.Background()
	src := ct.Tar(t, sample()...)
	want := tarFiles(t, bytes.NewReader(src))
	prioritized := []string{"etc/passwd", "/bin/sh", "usr/lib/libc.so.6", "./app/main", "usr/lib/libbig.so"}

	for _, in := range []ct.Compression{ct.Uncompressed, ct.Gzip, ct.Zstd, ct.EStargz} {
		for _, format := range []convert.Format{convert.EStargz, convert.ZstdChunked} {
			t.Run(string(in)+"→"+string(format), func(t *testing.T) {
				layer := ct.FromTar(t, src, in, false)
				desc := layer.Descriptor()
				l, err := convert.ConvertLayer(ctx, ra(layer.Blob), desc, prioritized, convert.WithFormat(format))
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				blob := blobOf(t, l)

				wantType := ocispec.MediaTypeImageLayerGzip
				if format == convert.ZstdChunked {
					wantType = ocispec.MediaTypeImageLayerZstd
					for _, k := range []string{zstdchunked.ManifestChecksumAnnotation, zstdchunked.ManifestPositionAnnotation} {
						if l.Descriptor.Annotations[k] == "" {
							t.Errorf("no %s annotation", k)
						}
					}
				}
				if l.Descriptor.MediaType != wantType {
					t.Errorf("media type %s, want %s", l.Descriptor.MediaType, wantType)
				}
				if l.Descriptor.Digest != digest.FromBytes(blob) || l.Descriptor.Size != int64(len(blob)) {
					t.Errorf("descriptor %v does not describe the blob", l.Descriptor)
				}
				if l.SourceDiffID != layer.DiffID {
					t.Errorf("source DiffID %s, want %s", l.SourceDiffID, layer.DiffID)
				}
				if l.Prioritized != len(prioritized) || len(l.Missing) != 0 {
					t.Errorf("prioritized %d, missing %q", l.Prioritized, l.Missing)
				}

				lr, err := verify.Layer(ctx, memProvider{l.Descriptor.Digest: blob}, l.Descriptor, l.DiffID, prioritized)
				if err != nil {
					t.Fatalf("verify: %v", err)
				}
				if lr.PrioritizedFiles != 6 { // the five and the hardlink's target
					t.Errorf("verify counted %d prioritized files", lr.PrioritizedFiles)
				}
				// The annotation tells runtimes the range before the TOC does.
				if got := l.Descriptor.Annotations[compression.PrefetchSizeAnnotation]; l.PrefetchSize != lr.PrefetchSize || got != strconv.FormatInt(lr.PrefetchSize, 10) {
					t.Errorf("prefetch size %d, annotation %q; the landmark is at %d", l.PrefetchSize, got, lr.PrefetchSize)
				}

				// Any gzip/zstd consumer unpacks the same files.
				rc, _, err := compression.NewReader(bytes.NewReader(blob))
				if err != nil {
					t.Fatal(err)
				}
				got := tarFiles(t, rc)
				rc.Close()
				delete(got, estargz.PrefetchLandmark)
				delete(got, estargz.TOCTarName)
				if !mapsEqual(got, want) {
					t.Errorf("converted layer has different files")
				}
			})
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestPrioritizedOrder pins the exact entry order of a converted layer:
// prioritized files in the given order, each after the directories it needs
// and a hardlink after its target, then the landmark, then the rest in
// original order.
func TestPrioritizedOrder(t *testing.T) {
	layer := ct.NewLayer(t, ct.Gzip, false, sample()...)
	prioritized := []string{"app/main", "usr/lib/libc.so.6", "etc/passwd", "bin/sh", "app/main"}
	l, err := convert.ConvertLayer(context.Background(), ra(layer.Blob), layer.Descriptor(), prioritized)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := strings.Join(tarNames(t, blobOf(t, l)), "\n") + "\n"
	golden(t, "prioritized-order.golden", got)

	var files []string
	for _, n := range tarNames(t, blobOf(t, l)) {
		if n == estargz.PrefetchLandmark {
			break
		}
		if !strings.HasSuffix(n, "/") {
			files = append(files, n)
		}
	}
	want := []string{"app/main", "usr/lib/libc.so", "usr/lib/libc.so.6", "etc/passwd", "bin/sh"}
	if !slices.Equal(files, want) {
		t.Errorf("files before the landmark %q, want %q", files, want)
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\ngot:\n%s\nwant:\n%s", p, got, want)
	}
}

func TestNoPrioritizedFiles(t *testing.T) {
	layer := ct.NewLayer(t, ct.Gzip, true, sample()...)
	for name, list := range map[string][]string{"nil": nil, "all missing": {"nope", "etc/nope"}} {
		t.Run(name, func(t *testing.T) {
			l, err := convert.ConvertLayer(context.Background(), ra(layer.Blob), layer.Descriptor(), list)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if l.Descriptor.MediaType != "application/vnd.docker.image.rootfs.diff.tar.gzip" {
				t.Errorf("docker input gave media type %s", l.Descriptor.MediaType)
			}
			names := tarNames(t, blobOf(t, l))
			if names[0] != estargz.NoPrefetchLandmark || slices.Contains(names, estargz.PrefetchLandmark) {
				t.Errorf("want %s first and no prefetch landmark, got %q", estargz.NoPrefetchLandmark, names)
			}
			if len(l.Missing) != len(list) {
				t.Errorf("missing %q, want %q", l.Missing, list)
			}
			if v, ok := l.Descriptor.Annotations[compression.PrefetchSizeAnnotation]; ok || l.PrefetchSize != 0 {
				t.Errorf("no prefetch, but prefetch size %d, annotation %q", l.PrefetchSize, v)
			}
			if _, err := verify.Layer(context.Background(), memProvider{l.Descriptor.Digest: blobOf(t, l)}, l.Descriptor, l.DiffID, []string{}); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
}

func TestMissingPrioritized(t *testing.T) {
	// "opt/tool" has no entry for its directory "opt": estargz cannot move
	// it without one, so it counts as missing along with an absent path.
	entries := append(sample(), ct.File("opt/tool", "tool"))
	layer := ct.NewLayer(t, ct.Gzip, false, entries...)
	list := []string{"etc/hosts", "does/not/exist", "opt/tool", "bin/sh"}
	l, err := convert.ConvertLayer(context.Background(), ra(layer.Blob), layer.Descriptor(), list)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !slices.Equal(l.Missing, []string{"does/not/exist", "opt/tool"}) || l.Prioritized != 2 {
		t.Errorf("missing %q, prioritized %d", l.Missing, l.Prioritized)
	}
	if _, err := verify.Layer(context.Background(), memProvider{l.Descriptor.Digest: blobOf(t, l)}, l.Descriptor, l.DiffID, list); err != nil {
		t.Errorf("verify: %v", err)
	}
}

func TestConvertLayerErrors(t *testing.T) {
	ctx := context.Background()
	good := ct.NewLayer(t, ct.Gzip, false, sample()...)

	corrupt := bytes.Clone(good.Blob)
	corrupt[len(corrupt)/2] ^= 0xff

	full := ct.Tar(t, sample()...)
	truncated := ct.FromTar(t, full[:len(full)/2], ct.Gzip, false)
	truncatedPlain := ct.FromTar(t, full[:len(full)-2000], ct.Uncompressed, false)

	escape := func(entries ...ct.Entry) ct.Layer { return ct.NewLayer(t, ct.Gzip, false, entries...) }
	for _, tc := range []struct {
		name    string
		blob    []byte
		desc    ocispec.Descriptor
		opts    []convert.Option
		is      error
		mention string
	}{
		{name: "corrupt blob", blob: corrupt, desc: good.Descriptor(), is: convert.ErrDigestMismatch, mention: good.Descriptor().Digest.String()},
		{name: "short blob", blob: good.Blob[:100], desc: good.Descriptor(), is: convert.ErrDigestMismatch, mention: good.Descriptor().Digest.String()},
		{name: "truncated tar.gz", blob: truncated.Blob, desc: truncated.Descriptor(), mention: "unexpected EOF"},
		{name: "truncated tar", blob: truncatedPlain.Blob, desc: truncatedPlain.Descriptor(), mention: "unexpected EOF"},
		{name: "dotdot", blob: escape(ct.File("../x", "x")).Blob, desc: escape(ct.File("../x", "x")).Descriptor(), is: convert.ErrPathEscapes, mention: `"../x"`},
		{name: "nested dotdot", blob: escape(ct.Dir("a/"), ct.File("a/../../x", "x")).Blob, desc: escape(ct.Dir("a/"), ct.File("a/../../x", "x")).Descriptor(), is: convert.ErrPathEscapes, mention: `"a/../../x"`},
		{name: "absolute dotdot", blob: escape(ct.File("/../etc/x", "x")).Blob, desc: escape(ct.File("/../etc/x", "x")).Descriptor(), is: convert.ErrPathEscapes, mention: `"/../etc/x"`},
		{name: "hardlink escape", blob: escape(ct.Hardlink("x", "../../etc/shadow")).Blob, desc: escape(ct.Hardlink("x", "../../etc/shadow")).Descriptor(), is: convert.ErrPathEscapes, mention: "../../etc/shadow"},
		{name: "dangling hardlink", blob: escape(ct.Hardlink("x", "y")).Blob, desc: escape(ct.Hardlink("x", "y")).Descriptor(), is: convert.ErrUnsupportedLayer, mention: `"x"`},
		{name: "hardlink cycle", blob: escape(ct.File("a", "a"), ct.Hardlink("b", "a"), ct.Hardlink("a", "b")).Blob,
			desc: escape(ct.File("a", "a"), ct.Hardlink("b", "a"), ct.Hardlink("a", "b")).Descriptor(), is: convert.ErrUnsupportedLayer, mention: "cycle"},
		{name: "global header", blob: escape(ct.Entry{Name: "g", Type: tar.TypeXGlobalHeader}).Blob, desc: escape(ct.Entry{Name: "g", Type: tar.TypeXGlobalHeader}).Descriptor(), is: convert.ErrUnsupportedLayer, mention: `"g"`},
		{name: "zstd:chunked docker", blob: good.Blob, desc: ct.NewLayer(t, ct.Gzip, true, sample()...).Descriptor(), opts: []convert.Option{convert.WithFormat(convert.ZstdChunked)}, is: convert.ErrDockerZstdChunked},
		{name: "zstd:chunked oci=false", blob: good.Blob, desc: good.Descriptor(), opts: []convert.Option{convert.WithFormat(convert.ZstdChunked), convert.WithOCIMediaTypes(false)}, is: convert.ErrDockerZstdChunked},
		{name: "not a layer", blob: good.Blob, desc: ocispec.Descriptor{MediaType: "application/vnd.in-toto+json", Digest: good.Descriptor().Digest, Size: good.Descriptor().Size}, is: convert.ErrUnsupportedLayer},
		{name: "bad level", blob: good.Blob, desc: good.Descriptor(), opts: []convert.Option{convert.WithCompressionLevel(12)}, mention: "level 12"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := convert.ConvertLayer(ctx, ra(tc.blob), tc.desc, []string{"bin/sh"}, tc.opts...)
			if err == nil {
				l.Close()
				t.Fatal("conversion succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %q", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
			if tc.is != convert.ErrDigestMismatch && errors.Is(err, convert.ErrDigestMismatch) {
				t.Errorf("error %q blames the digest", err)
			}
		})
	}
}

func TestAcceptedOddNames(t *testing.T) {
	// Leading "/" and "./" are anchored at the root, ".." inside that
	// stays below it: nothing here escapes.
	layer := ct.NewLayer(t, ct.Gzip, false,
		ct.Dir("./"), ct.Dir("/abs/"), ct.File("/abs/f", "f"), ct.Dir("./rel/"), ct.File("./rel/../rel/g", "g"),
		ct.Entry{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666}, ct.Entry{Name: "fifo", Type: tar.TypeFifo, Mode: 0o600})
	l, err := convert.ConvertLayer(context.Background(), ra(layer.Blob), layer.Descriptor(), []string{"abs/f", "rel/g"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Prioritized != 2 {
		t.Errorf("prioritized %d, missing %q", l.Prioritized, l.Missing)
	}
	if _, err := verify.Layer(context.Background(), memProvider{l.Descriptor.Digest: blobOf(t, l)}, l.Descriptor, l.DiffID, []string{"abs/f", "rel/g"}); err != nil {
		t.Errorf("verify: %v", err)
	}
}

func TestLayerCleanup(t *testing.T) {
	dir := t.TempDir()
	layer := ct.NewLayer(t, ct.Zstd, false, sample()...)
	l, err := convert.ConvertLayer(context.Background(), ra(layer.Blob), layer.Descriptor(), nil, convert.WithTempDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d files staged during use, want the blob only", len(ents))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d files left after Close", len(ents))
	}
	// A failed conversion leaves nothing behind either.
	bad := bytes.Clone(layer.Blob)
	bad[len(bad)-10] ^= 1
	if _, err := convert.ConvertLayer(context.Background(), ra(bad), layer.Descriptor(), nil, convert.WithTempDir(dir)); err == nil {
		t.Fatal("corrupt blob converted")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d files left after a failure", len(ents))
	}
	// And a cancelled one.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := convert.ConvertLayer(ctx, ra(layer.Blob), layer.Descriptor(), nil, convert.WithTempDir(dir)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled conversion: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d files left after cancellation", len(ents))
	}
}

func TestCompressionLevel(t *testing.T) {
	layer := ct.NewLayer(t, ct.Uncompressed, false, sample()...)
	size := func(opts ...convert.Option) int64 {
		l, err := convert.ConvertLayer(context.Background(), ra(layer.Blob), layer.Descriptor(), nil, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Descriptor.Size
	}
	if fast, best := size(convert.WithCompressionLevel(1)), size(convert.WithCompressionLevel(9)); fast <= best {
		t.Errorf("gzip level 1 gave %d bytes, level 9 %d", fast, best)
	}
	if stored := size(convert.WithCompressionLevel(0)); stored < int64(len(layer.Blob)) {
		t.Errorf("level 0 gave %d bytes for a %d-byte tar", stored, len(layer.Blob))
	}
	if z := size(convert.WithFormat(convert.ZstdChunked), convert.WithCompressionLevel(19)); z <= 0 {
		t.Error("zstd level 19 failed")
	}
}

func FuzzConvertLayer(f *testing.F) {
	f.Add(ct.Tar(f, ct.Dir("a/"), ct.File("a/b", "hello"), ct.Symlink("c", "a/b")))
	f.Add(ct.NewLayer(f, ct.Gzip, false, ct.File("x", "y"), ct.Hardlink("z", "x")).Blob)
	f.Add(ct.NewLayer(f, ct.Zstd, false, ct.File("x", "y")).Blob)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, blob []byte) {
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		l, err := convert.ConvertLayer(context.Background(), ra(blob), desc, []string{"a/b", "x", "z"}, convert.WithTempDir(t.TempDir()))
		if err != nil {
			return // rejecting is fine; panicking or hanging is not
		}
		defer l.Close()
		out := blobOf(t, l)
		if _, err := verify.Layer(context.Background(), memProvider{l.Descriptor.Digest: out}, l.Descriptor, l.DiffID, nil); err != nil {
			t.Fatalf("converted layer fails verification: %v", err)
		}
	})
}
