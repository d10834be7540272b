package convert_test

import (
	"archive/tar"
	"bufio"
	stdgzip "compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/convert"
)

// benchLayer is a realistic layer: the Go distribution's sources and tool
// binaries from this host (≈190 MiB uncompressed, 11k files, text and ELF),
// gzip-compressed at the default level as docker and BuildKit push layers.
// It is built once and cached under os.TempDir() across runs.
type benchLayer struct {
	path        string
	desc        ocispec.Descriptor
	tarSize     int64
	prioritized []string
}

var (
	benchOnce sync.Once
	bench     benchLayer
	benchErr  error
)

func loadBenchLayer(b *testing.B) benchLayer {
	benchOnce.Do(func() { bench, benchErr = buildBenchLayer() })
	if benchErr != nil {
		b.Skipf("benchmark layer: %v", benchErr)
	}
	return bench
}

func buildBenchLayer() (benchLayer, error) {
	root := runtime.GOROOT()
	dirs := []string{"src", "pkg/tool"}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(root, d)); err != nil {
			return benchLayer{}, err
		}
	}
	cache := filepath.Join(os.TempDir(), "stargazer-bench")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return benchLayer{}, err
	}
	path := filepath.Join(cache, "goroot-"+runtime.Version()+"-v2.tar.gz")
	if _, err := os.Stat(path); err != nil {
		if err := writeBenchLayer(path, root, dirs); err != nil {
			return benchLayer{}, err
		}
	}

	f, err := os.Open(path)
	if err != nil {
		return benchLayer{}, err
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return benchLayer{}, err
	}
	l := benchLayer{path: path, desc: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.NewDigest(digest.SHA256, h), Size: size}}

	zr, err := stdgzip.NewReader(bufio.NewReader(io.NewSectionReader(f, 0, size)))
	if err != nil {
		return benchLayer{}, err
	}
	cr := &countingReader{r: zr}
	tr := tar.NewReader(cr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return benchLayer{}, err
		}
		// What `go build` of a small program touches first: the toolchain
		// binaries and the runtime's sources.
		if hdr.Typeflag == tar.TypeReg && (strings.HasPrefix(hdr.Name, "usr/local/go/pkg/tool/") && isBuildTool(hdr.Name) ||
			strings.HasPrefix(hdr.Name, "usr/local/go/src/runtime/") && strings.Count(hdr.Name, "/") == 5 && strings.HasSuffix(hdr.Name, "_linux.go")) {
			l.prioritized = append(l.prioritized, hdr.Name)
		}
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return benchLayer{}, err
	}
	l.tarSize = cr.n
	return l, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func isBuildTool(name string) bool {
	switch filepath.Base(name) {
	case "compile", "link", "asm", "cgo", "vet":
		return true
	}
	return false
}

func writeBenchLayer(path, root string, dirs []string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "building-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	zw := stdgzip.NewWriter(bw)
	tw := tar.NewWriter(zw)
	// Parent directories first, as layer diffs carry them: estargz can
	// only move a file to the front along with its directories' entries.
	for _, d := range []string{"usr/", "usr/local/", "usr/local/go/", "usr/local/go/pkg/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: time.Unix(1700000000, 0)}); err != nil {
			return err
		}
	}
	for _, d := range dirs {
		var paths []string
		err := filepath.WalkDir(filepath.Join(root, d), func(p string, _ fs.DirEntry, err error) error {
			paths = append(paths, p)
			return err
		})
		if err != nil {
			return err
		}
		sort.Strings(paths)
		for _, p := range paths {
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			var link string
			if fi.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(p); err != nil {
					return err
				}
			} else if !fi.Mode().IsRegular() && !fi.IsDir() {
				continue
			}
			hdr, err := tar.FileInfoHeader(fi, link)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			hdr.Name = "usr/local/go/" + filepath.ToSlash(rel)
			if fi.IsDir() {
				hdr.Name += "/"
			}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if fi.Mode().IsRegular() {
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				_, err = io.Copy(tw, f)
				f.Close()
				if err != nil {
					return err
				}
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

type fileRA struct{ *os.File }

func (f fileRA) Size() int64 {
	fi, err := f.Stat()
	if err != nil {
		return -1
	}
	return fi.Size()
}

// BenchmarkConvert converts the benchmark layer three ways. MiB/s is
// uncompressed tar MiB per second of wall time; run with -cpu 1,2 for the
// per-core figure. out-MiB is the blob size.
//
//	ctr-remote: estargz.Build at ctr-remote's defaults (compress/gzip
//	            level 9, default chunk size)
//	estargz:    ConvertLayer, klauspost gzip at its default level (7)
//	zstd:chunked: ConvertLayer, zstd level 3
func BenchmarkConvert(b *testing.B) {
	l := loadBenchLayer(b)
	ctx := context.Background()
	report := func(b *testing.B, elapsed time.Duration, out int64) {
		sec := elapsed.Seconds() / float64(b.N)
		b.ReportMetric(float64(l.tarSize)/(1<<20)/sec, "MiB/s")
		b.ReportMetric(float64(out)/(1<<20), "out-MiB")
	}

	b.Run("ctr-remote", func(b *testing.B) {
		var out int64
		start := time.Now()
		for range b.N {
			f, err := os.Open(l.path)
			if err != nil {
				b.Fatal(err)
			}
			blob, err := estargz.Build(io.NewSectionReader(f, 0, l.desc.Size),
				estargz.WithCompressionLevel(stdgzip.BestCompression),
				estargz.WithPrioritizedFiles(l.prioritized))
			if err != nil {
				b.Fatal(err)
			}
			dst, err := os.CreateTemp("", "bench-out-*")
			if err != nil {
				b.Fatal(err)
			}
			h := sha256.New()
			out, err = io.Copy(io.MultiWriter(dst, h), blob)
			if err != nil {
				b.Fatal(err)
			}
			blob.Close()
			f.Close()
			dst.Close()
			os.Remove(dst.Name())
		}
		report(b, time.Since(start), out)
	})

	for _, format := range []convert.Format{convert.EStargz, convert.ZstdChunked} {
		b.Run(string(format), func(b *testing.B) {
			var out int64
			start := time.Now()
			for range b.N {
				f, err := os.Open(l.path)
				if err != nil {
					b.Fatal(err)
				}
				cl, err := convert.ConvertLayer(ctx, fileRA{f}, l.desc, l.prioritized, convert.WithFormat(format))
				if err != nil {
					b.Fatal(err)
				}
				out = cl.Descriptor.Size
				missing := cl.Missing
				cl.Close()
				f.Close()
				if len(missing) != 0 {
					b.Fatalf("missing %q", missing)
				}
			}
			report(b, time.Since(start), out)
		})
	}
}

// TestBenchLayerSanity keeps the benchmark honest in normal test runs
// without paying for it: the prioritized list must be non-trivial.
func TestBenchLayerSanity(t *testing.T) {
	if testing.Short() || os.Getenv("STARGAZER_BENCH_SANITY") == "" {
		t.Skip("set STARGAZER_BENCH_SANITY=1 to build the benchmark layer")
	}
	l, err := buildBenchLayer()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("bench layer %s: %d bytes gzip, %d MiB tar, %d prioritized\n", l.path, l.desc.Size, l.tarSize>>20, len(l.prioritized))
}
