package compression

import (
	"bufio"
	"fmt"
	"io"
	"maps"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
)

// DefaultZstdLevel is the zstd level used when none is given: zstd's own
// default, which klauspost/compress maps to its SpeedDefault encoder.
const DefaultZstdLevel = 3

// ZstdChunked is an estargz.Compression producing zstd:chunked blobs with
// estargz/zstdchunked. The compressor records the manifest checksum and
// position annotations of the blob it wrote last, so use one ZstdChunked
// per blob and read Annotations after the blob is complete.
type ZstdChunked struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
	level int
}

var _ estargz.Compression = (*ZstdChunked)(nil)

// NewZstdChunked returns a zstd:chunked Compression at a zstd level from 1
// to 22 (0 selects DefaultZstdLevel). klauspost/compress has four encoders,
// so levels are bucketed by zstd.EncoderLevelFromZstd: 1–2 fastest, 3–5
// default, 6–9 better, 10 and up best.
func NewZstdChunked(level int) (*ZstdChunked, error) {
	if level == 0 {
		level = DefaultZstdLevel
	}
	if level < 1 || level > 22 {
		return nil, fmt.Errorf("zstd compression level %d out of range [1, 22]", level)
	}
	return &ZstdChunked{
		Compressor: &zstdchunked.Compressor{
			CompressionLevel: zstd.EncoderLevelFromZstd(level),
			Metadata:         make(map[string]string),
		},
		Decompressor: &zstdchunked.Decompressor{},
		level:        level,
	}, nil
}

// Reader returns a decompressor for r, read through a pooled 1 MiB buffer
// unless r can read byte-wise, for the same reason as Gzip.Reader: the zstd
// decoder's small reads are goroutine handoffs when estargz.Build feeds it
// from a pipe.
func (z *ZstdChunked) Reader(r io.Reader) (io.ReadCloser, error) {
	var br *bufio.Reader
	if _, ok := r.(io.ByteReader); !ok {
		br = getBuffer(r)
		r = br
	}
	rc, err := z.Decompressor.Reader(r)
	if err != nil {
		putBuffer(br)
		return nil, err
	}
	return &bufferedReadCloser{ReadCloser: rc, br: br}, nil
}

type bufferedReadCloser struct {
	io.ReadCloser
	br *bufio.Reader
}

func (b *bufferedReadCloser) Close() error {
	err := b.ReadCloser.Close()
	putBuffer(b.br)
	b.br = nil
	return err
}

// Level reports the zstd level z was created with.
func (z *ZstdChunked) Level() int { return z.level }

// String names the compression for reports and logs.
func (z *ZstdChunked) String() string {
	return fmt.Sprintf("zstd:chunked level %d (%s)", z.level, z.CompressionLevel)
}

// Annotations returns the zstd:chunked layer annotations
// (zstdchunked.ManifestChecksumAnnotation and
// zstdchunked.ManifestPositionAnnotation) of the last blob written; empty
// before any TOC was written.
func (z *ZstdChunked) Annotations() map[string]string {
	return maps.Clone(z.Metadata)
}
