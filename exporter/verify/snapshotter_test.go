package verify_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/cache"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/containerd/stargz-snapshotter/fs/reader"
	"github.com/containerd/stargz-snapshotter/metadata"
	"github.com/containerd/stargz-snapshotter/metadata/memory"
	digest "github.com/opencontainers/go-digest"

	"github.com/stargazer-build/stargazer/exporter/convert"
	"github.com/stargazer-build/stargazer/exporter/verify"
)

// TestSnapshotterReads opens converted layers the way the stargz
// snapshotter does (its metadata reader and verifying reader, TOC checked
// against the annotation) and reads every file through it, chunk digests
// verified on the way. The prefetch size verify reports must be the
// landmark offset the snapshotter prefetches up to.
func TestSnapshotterReads(t *testing.T) {
	for _, format := range []convert.Format{convert.EStargz, convert.ZstdChunked} {
		t.Run(string(format), func(t *testing.T) {
			cs, desc, blob, diffID := converted(t, convert.WithFormat(format), convert.WithChunkSize(64<<10))
			sr := io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob)))
			mr, err := memory.NewReader(sr, metadata.WithDecompressors(new(zstdchunked.Decompressor)))
			if err != nil {
				t.Fatalf("snapshotter metadata reader: %v", err)
			}
			defer mr.Close()
			vr, err := reader.NewReader(mr, cache.NewMemoryCache(), desc.Digest)
			if err != nil {
				t.Fatal(err)
			}
			r, err := vr.VerifyTOC(digest.Digest(desc.Annotations[estargz.TOCJSONDigestAnnotation]))
			if err != nil {
				t.Fatalf("snapshotter TOC verification: %v", err)
			}
			defer r.Close()

			md := r.Metadata()
			lookup := func(p string) uint32 {
				id := md.RootID()
				for _, base := range strings.Split(p, "/") {
					if id, _, err = md.GetChild(id, base); err != nil {
						t.Fatalf("lookup %s: %v", p, err)
					}
				}
				return id
			}
			for _, e := range entries() {
				if e.Type != 0 {
					continue
				}
				f, err := r.OpenFile(lookup(e.Name))
				if err != nil {
					t.Fatal(err)
				}
				// Read exactly the file: the snapshotter's ReadAt returns
				// no io.EOF at the end, the FUSE layer knows the size.
				got := make([]byte, len(e.Body))
				n, err := f.ReadAt(got, 0)
				if (err != nil && err != io.EOF) || n != len(got) || !bytes.Equal(got, e.Body) {
					t.Errorf("%s: read %d bytes (err %v), want %d", e.Name, n, err, len(e.Body))
				}
			}

			off, err := md.GetOffset(lookup(estargz.PrefetchLandmark))
			if err != nil {
				t.Fatal(err)
			}
			lr, err := verify.Layer(context.Background(), cs, desc, diffID, list)
			if err != nil {
				t.Fatal(err)
			}
			if lr.PrefetchSize != off {
				t.Errorf("verify reports prefetch size %d, snapshotter prefetches %d", lr.PrefetchSize, off)
			}
		})
	}
}
