package worker

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/containerd/stargz-snapshotter/metadata"
	"github.com/klauspost/compress/zstd"

	"github.com/stargazer-build/stargazer/exporter/compression"
	ct "github.com/stargazer-build/stargazer/exporter/convert/converttest"
)

// zstdChunkedIndex builds a zstd:chunked blob of files in chunks of 1000
// bytes and opens it as the stargz filesystem does, through openLayerIndex.
func zstdChunkedIndex(t *testing.T, files map[string][]byte) metadata.Reader {
	t.Helper()
	var entries []ct.Entry
	for name, body := range files {
		entries = append(entries, ct.Entry{Name: name, Body: body, Mode: 0o644})
	}
	comp, err := compression.NewZstdChunked(0)
	if err != nil {
		t.Fatal(err)
	}
	b := buildBlob(t, entries, estargz.WithCompression(comp), estargz.WithChunkSize(1000))
	r, err := openLayerIndex(io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b))),
		metadata.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPooledZstdReadsChunks(t *testing.T) {
	var o metadata.Options
	withPooledZstd(&o)
	stock := []metadata.Decompressor{new(zstdchunked.Decompressor)}
	o.Decompressors = stock
	if withPooledZstd(&o); o.Decompressors[0] != sharedZstd || stock[0] == metadata.Decompressor(sharedZstd) {
		t.Fatal("the zstd:chunked decompressor was not replaced, or the filesystem's list was changed")
	}

	files := map[string][]byte{}
	for i := range 8 {
		files[fmt.Sprintf("f%d", i)] = ct.RandomFile("", 500+i*1700, int64(i)).Body
	}
	files["text"] = bytes.Repeat([]byte("the same line again\n"), 2000)
	r := zstdChunkedIndex(t, files)
	// Every file, read whole and at chunk boundaries from several
	// goroutines at once, as FUSE reads do, through reused decoders.
	var wg sync.WaitGroup
	for range 4 {
		for name, want := range files {
			wg.Go(func() {
				id, _, err := r.GetChild(r.RootID(), name)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				f, err := r.OpenFile(id)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				for _, off := range []int{0, 999, 1000, len(want) / 2} {
					off = min(off, len(want)-1)
					got := make([]byte, len(want)-off)
					if n, err := f.ReadAt(got, int64(off)); (err != nil && err != io.EOF) || !bytes.Equal(got[:n], want[off:]) {
						t.Errorf("%s at %d: %d bytes, %v", name, off, n, err)
					}
				}
			})
		}
	}
	wg.Wait()
}

func TestPooledZstdBadInput(t *testing.T) {
	good := &bytes.Buffer{}
	zw, _ := zstd.NewWriter(good)
	zw.Write([]byte("chunk"))
	zw.Close()
	// A corrupt chunk fails; the decoder it used still reads the next.
	for range 3 {
		rc, err := sharedZstd.Reader(bytes.NewReader([]byte("not zstd at all")))
		if err == nil {
			_, err = io.ReadAll(rc)
			rc.Close()
		}
		if err == nil {
			t.Fatal("a corrupt chunk read without error")
		}
		rc, err = sharedZstd.Reader(bytes.NewReader(good.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(rc); err != nil || string(b) != "chunk" {
			t.Fatalf("after a corrupt chunk: %q, %v", b, err)
		}
		rc.Close()
		// Closed, the reader no longer reads; closing again is harmless.
		if _, err := rc.Read(make([]byte, 1)); err != errDecoderClosed || rc.Close() != nil {
			t.Fatalf("read after close: %v", err)
		}
	}
}
