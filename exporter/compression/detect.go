package compression

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Kind is the compression of a layer stream as told by its first bytes.
type Kind string

// Kinds Detect recognizes.
const (
	KindUncompressed Kind = "uncompressed"
	KindGzip         Kind = "gzip"
	KindZstd         Kind = "zstd"
)

var (
	gzipMagic = []byte{0x1f, 0x8b, 0x08}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Detect reports the compression of a stream starting with b (at least 4
// bytes for a certain answer). Media types are not trusted for this: layers
// labelled gzip are sometimes plain tar and the other way round.
func Detect(b []byte) Kind {
	switch {
	case bytes.HasPrefix(b, gzipMagic):
		return KindGzip
	case bytes.HasPrefix(b, zstdMagic):
		return KindZstd
	default:
		return KindUncompressed
	}
}

// NewReader returns the decompressed stream of r and its compression. r is
// read through a bufio.Reader (r itself when it is one) so the magic can be
// peeked without losing bytes. Gzip is read across members and zstd skips
// skippable frames, so eStargz and zstd:chunked blobs decompress to their
// tar stream like any other layer.
func NewReader(r io.Reader) (io.ReadCloser, Kind, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 1<<20)
	}
	magic, err := br.Peek(4)
	if err != nil && err != io.EOF {
		return nil, "", fmt.Errorf("read stream header: %w", err)
	}
	switch kind := Detect(magic); kind {
	case KindGzip:
		z, err := gzip.NewReader(br)
		if err != nil {
			return nil, kind, fmt.Errorf("open gzip stream: %w", err)
		}
		return z, kind, nil
	case KindZstd:
		z, err := zstd.NewReader(br)
		if err != nil {
			return nil, kind, fmt.Errorf("open zstd stream: %w", err)
		}
		return zstdReadCloser{z}, kind, nil
	default:
		return io.NopCloser(br), KindUncompressed, nil
	}
}

type zstdReadCloser struct{ *zstd.Decoder }

func (z zstdReadCloser) Close() error {
	z.Decoder.Close()
	return nil
}
