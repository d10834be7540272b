package compression

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

func newRunner(t *testing.T) *estargz.TestRunner {
	return &estargz.TestRunner{
		TestingT: t,
		Runner: func(tt estargz.TestingT, name string, run func(estargz.TestingT)) {
			t, ok := tt.(*testing.T)
			if !ok {
				tt.Fatal("TestingT is not a *testing.T")
				return
			}
			t.Run(name, func(t *testing.T) { run(t) })
		},
	}
}

type gzipController struct{ *Gzip }

func (c gzipController) TestStreams(t estargz.TestingT, b []byte, streams []int64) {
	estargz.CheckGzipHasStreams(t, b, streams)
}

func (c gzipController) DiffIDOf(t estargz.TestingT, b []byte) string {
	return estargz.GzipDiffIDOf(t, b)
}

func gzipFactory(level int) estargz.TestingControllerFactory {
	return func() estargz.TestingController {
		g, err := NewGzip(level)
		if err != nil {
			panic(err)
		}
		return gzipController{g}
	}
}

// TestGzipConformance runs estargz's exported conformance suite: blobs
// written with Gzip must be byte-level valid eStargz that estargz reads
// back, with correct digests and verification failures on corruption.
func TestGzipConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("conformance suite is slow")
	}
	estargz.CompressionTestSuite(newRunner(t),
		gzipFactory(stdgzip.NoCompression),
		gzipFactory(DefaultGzipLevel),
		gzipFactory(stdgzip.BestCompression),
	)
}

type zstdController struct{ *ZstdChunked }

// TestStreams checks that every expected stream offset starts a zstd frame
// or a skippable frame. The largest offset is the footer's content, which
// sits in a skippable frame whose 8-byte header precedes it; the TOC
// offset points at the zstd frame inside the TOC's skippable frame.
func (c zstdController) TestStreams(t estargz.TestingT, b []byte, streams []int64) {
	var last int64 = -1
	for _, s := range streams {
		last = max(last, s)
	}
	zstdMagic := []byte{0x28, 0xb5, 0x2f, 0xfd}
	skippable := []byte{0x50, 0x2a, 0x4d, 0x18}
	for _, s := range streams {
		off := s
		if s == last {
			off -= 8
		}
		if off < 0 || off+4 > int64(len(b)) ||
			!(bytes.Equal(b[off:off+4], zstdMagic) || bytes.Equal(b[off:off+4], skippable)) {
			t.Fatalf("no frame at offset %d of %d-byte blob", off, len(b))
		}
	}
}

func (c zstdController) DiffIDOf(t estargz.TestingT, b []byte) string {
	zr, err := zstd.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("open zstd: %v", err)
	}
	defer zr.Close()
	h := sha256.New()
	if _, err := io.Copy(h, zr); err != nil {
		t.Fatalf("decompress zstd: %v", err)
	}
	return fmt.Sprintf("sha256:%x", h.Sum(nil))
}

func zstdFactory(level int) estargz.TestingControllerFactory {
	return func() estargz.TestingController {
		z, err := NewZstdChunked(level)
		if err != nil {
			panic(err)
		}
		return zstdController{z}
	}
}

func TestZstdChunkedConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("conformance suite is slow")
	}
	estargz.CompressionTestSuite(newRunner(t), zstdFactory(DefaultZstdLevel))
}

// stdFooter builds the footer with the standard library's gzip writer, the
// one estargz itself uses, to pin GzipFooter to the same bytes.
func stdFooter(t *testing.T, off int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	z, err := stdgzip.NewWriterLevel(&buf, stdgzip.NoCompression)
	if err != nil {
		t.Fatal(err)
	}
	sub := fmt.Sprintf("%016xSTARGZ", off)
	extra := []byte{'S', 'G', 0, 0}
	binary.LittleEndian.PutUint16(extra[2:], uint16(len(sub)))
	z.Extra = append(extra, sub...)
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestGzipFooter(t *testing.T) {
	g, err := NewGzip(DefaultGzipLevel)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1, 51, 1 << 20, 1<<40 + 12345, 1<<63 - 1} {
		got, err := GzipFooter(off)
		if err != nil {
			t.Fatalf("GzipFooter(%d): %v", off, err)
		}
		if want := stdFooter(t, off); !bytes.Equal(got, want) {
			t.Errorf("GzipFooter(%d) =\n%x\nwant\n%x", off, got, want)
		}
		for name, d := range map[string]estargz.Decompressor{"ours": g, "estargz": &estargz.GzipDecompressor{}} {
			_, tocOff, _, err := d.ParseFooter(got)
			if err != nil || tocOff != off {
				t.Errorf("%s ParseFooter(GzipFooter(%d)) = %d, %v", name, off, tocOff, err)
			}
		}
	}
	if _, err := GzipFooter(-1); err == nil {
		t.Error("GzipFooter(-1) succeeded")
	}
}

func TestParseFooterRejects(t *testing.T) {
	g, _ := NewGzip(DefaultGzipLevel)
	good, _ := GzipFooter(42)
	noExtra := func() []byte {
		var buf bytes.Buffer
		z, _ := stdgzip.NewWriterLevel(&buf, stdgzip.NoCompression)
		// 10 header + 28 comment + 5 stored block + 8 trailer: a valid
		// gzip member of footer size without an Extra field.
		z.Comment = strings.Repeat("x", 27)
		z.Close()
		return buf.Bytes()
	}()
	for name, p := range map[string][]byte{
		"empty":      nil,
		"short":      good[:len(good)-1],
		"not gzip":   bytes.Repeat([]byte{0}, estargz.FooterSize),
		"no extra":   noExtra,
		"bad id":     bytes.Replace(good, []byte("SG"), []byte("XX"), 1),
		"bad magic":  bytes.Replace(good, []byte("STARGZ"), []byte("STARGX"), 1),
		"bad offset": bytes.Replace(good, []byte("000000000000002a"), []byte("00000000000000zz"), 1),
	} {
		if _, _, _, err := g.ParseFooter(p); err == nil {
			t.Errorf("%s: ParseFooter succeeded", name)
		}
	}
}

// buildTar returns a tar of n files of pseudo-random, partly compressible
// content, plus a directory and a symlink.
func buildTar(t testing.TB, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	rnd := rand.New(rand.NewSource(1))
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}))
	for i := range n {
		body := make([]byte, rnd.Intn(64<<10))
		for j := range body {
			body[j] = "abcdefgh"[rnd.Intn(8)]
		}
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d/f%03d", i), Mode: 0o644, Size: int64(len(body))}))
		_, err := tw.Write(body)
		must(err)
	}
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "d/link", Linkname: "f000"}))
	must(tw.Close())
	return buf.Bytes()
}

// TestRoundTripStockReader builds with our compressions and opens with
// estargz's defaults (gzip) or its zstdchunked decompressor, checking every
// file's content and the DiffID.
func TestRoundTripStockReader(t *testing.T) {
	src := buildTar(t, 40)
	gz, _ := NewGzip(DefaultGzipLevel)
	zc, _ := NewZstdChunked(0)
	for _, tc := range []struct {
		name  string
		comp  estargz.Compression
		open  []estargz.OpenOption
		chunk int
	}{
		{name: "gzip", comp: gz},
		{name: "gzip small chunks", comp: gz, chunk: 4096},
		{name: "zstd:chunked", comp: zc, open: []estargz.OpenOption{estargz.WithDecompressors(new(zstdchunked.Decompressor))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := []estargz.Option{estargz.WithCompression(tc.comp), estargz.WithPrioritizedFiles([]string{"d/f007", "d/f003"})}
			if tc.chunk > 0 {
				opts = append(opts, estargz.WithChunkSize(tc.chunk))
			}
			blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(src), 0, int64(len(src))), opts...)
			if err != nil {
				t.Fatal(err)
			}
			out, err := io.ReadAll(blob)
			if err != nil {
				t.Fatal(err)
			}
			if err := blob.Close(); err != nil {
				t.Fatal(err)
			}
			r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(out), 0, int64(len(out))), tc.open...)
			if err != nil {
				t.Fatalf("stock Open: %v", err)
			}
			if _, err := r.VerifyTOC(blob.TOCDigest()); err != nil {
				t.Fatalf("VerifyTOC: %v", err)
			}
			tr := tar.NewReader(bytes.NewReader(src))
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if h.Typeflag != tar.TypeReg {
					continue
				}
				want, _ := io.ReadAll(tr)
				f, err := r.OpenFile(h.Name)
				if err != nil {
					t.Fatalf("OpenFile(%s): %v", h.Name, err)
				}
				got, err := io.ReadAll(f)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("content of %s differs (err %v)", h.Name, err)
				}
			}
			// DiffID: the uncompressed stream of the whole blob.
			rc, kind, err := NewReader(bytes.NewReader(out))
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			if _, err := io.Copy(h, rc); err != nil {
				t.Fatalf("decompress %s blob: %v", kind, err)
			}
			if got := digest.NewDigest(digest.SHA256, h); got != blob.DiffID() {
				t.Errorf("DiffID %s, Build said %s", got, blob.DiffID())
			}
			if zs, ok := tc.comp.(*ZstdChunked); ok {
				if a := zs.Annotations(); len(a) != 2 {
					t.Errorf("zstd:chunked annotations %v, want checksum and position", a)
				}
			}
		})
	}
}

func TestLevels(t *testing.T) {
	for _, l := range []int{-1, -2, 0, 1, 6, 9} {
		if _, err := NewGzip(l); err != nil {
			t.Errorf("NewGzip(%d): %v", l, err)
		}
	}
	for _, l := range []int{-4, -3, 10} {
		if _, err := NewGzip(l); err == nil {
			t.Errorf("NewGzip(%d) succeeded", l)
		}
	}
	if g, _ := NewGzip(-1); g.Level() != DefaultGzipLevel {
		t.Errorf("default level %d", g.Level())
	}
	for _, l := range []int{0, 1, 3, 19, 22} {
		if _, err := NewZstdChunked(l); err != nil {
			t.Errorf("NewZstdChunked(%d): %v", l, err)
		}
	}
	for _, l := range []int{-1, 23} {
		if _, err := NewZstdChunked(l); err == nil {
			t.Errorf("NewZstdChunked(%d) succeeded", l)
		}
	}
}

func TestDetect(t *testing.T) {
	src := buildTar(t, 2)
	var gz bytes.Buffer
	z := stdgzip.NewWriter(&gz)
	z.Write(src)
	z.Close()
	var zs bytes.Buffer
	e, _ := zstd.NewWriter(&zs)
	e.Write(src)
	e.Close()
	for want, b := range map[Kind][]byte{KindUncompressed: src, KindGzip: gz.Bytes(), KindZstd: zs.Bytes()} {
		rc, kind, err := NewReader(bytes.NewReader(b))
		if err != nil || kind != want {
			t.Fatalf("NewReader: %s, %v; want %s", kind, err, want)
		}
		got, err := io.ReadAll(rc)
		if err != nil || !bytes.Equal(got, src) {
			t.Errorf("%s: round trip differs (err %v)", want, err)
		}
		rc.Close()
	}
}

func FuzzParseFooter(f *testing.F) {
	good, _ := GzipFooter(1234)
	f.Add(good)
	f.Add(make([]byte, estargz.FooterSize))
	g, _ := NewGzip(DefaultGzipLevel)
	f.Fuzz(func(t *testing.T, p []byte) {
		_, off, _, err := g.ParseFooter(p)
		if err == nil {
			if off < 0 {
				t.Fatalf("negative offset %d accepted", off)
			}
			again, err := GzipFooter(off)
			if err != nil {
				t.Fatal(err)
			}
			if _, off2, _, err := g.ParseFooter(again); err != nil || off2 != off {
				t.Fatalf("re-encoded footer parses to %d, %v", off2, err)
			}
		}
	})
}
