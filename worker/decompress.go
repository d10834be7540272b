package worker

import (
	"errors"
	"io"
	"slices"
	"sync"

	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/containerd/stargz-snapshotter/metadata"
	"github.com/containerd/stargz-snapshotter/metadata/memory"
	"github.com/klauspost/compress/zstd"
)

// zstdDecompressor is the stargz filesystem's zstd:chunked decompressor
// with its decoders reused. The filesystem opens a decompressor for every
// chunk it reads; the stock one makes a new zstd decoder each time, which
// starts its own goroutines and allocates (and zeroes) a window of history,
// several MiB, to read a chunk of a few KiB. On the start-up benchmark's
// python3 image that was about 150 ms of CPU per cold start, most of it
// after the last prefetched byte had arrived. Here each decoder decodes in
// the reading goroutine and goes back to a pool when its chunk is closed,
// with its window, for the next chunk.
//
// Everything else (footer, TOC) is the stock decompressor's.
type zstdDecompressor struct {
	zstdchunked.Decompressor
	decoders sync.Pool // *zstd.Decoder, reset to no input
}

// sharedZstd is the decompressor every layer of the daemon uses.
var sharedZstd = new(zstdDecompressor)

func (z *zstdDecompressor) Reader(r io.Reader) (io.ReadCloser, error) {
	d, _ := z.decoders.Get().(*zstd.Decoder)
	if d == nil {
		var err error
		d, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
	}
	if err := d.Reset(r); err != nil {
		d.Close()
		return nil, err
	}
	return &pooledDecoder{d: d, pool: &z.decoders}, nil
}

// pooledDecoder reads one chunk with a pooled decoder; Close gives the
// decoder back.
type pooledDecoder struct {
	d    *zstd.Decoder
	pool *sync.Pool
}

var errDecoderClosed = errors.New("zstd: read after close")

func (p *pooledDecoder) Read(b []byte) (int, error) {
	if p.d == nil {
		return 0, errDecoderClosed
	}
	return p.d.Read(b)
}

func (p *pooledDecoder) Close() error {
	if p.d == nil {
		return nil
	}
	// Reset to no input drops the reference to the chunk; a decoder that
	// cannot be reset is not reused.
	if err := p.d.Reset(nil); err == nil {
		p.pool.Put(p.d)
	} else {
		p.d.Close()
	}
	p.d = nil
	return nil
}

// withPooledZstd makes the stargz filesystem's zstd:chunked decompressor,
// among the decompressors a layer is opened with, sharedZstd.
func withPooledZstd(o *metadata.Options) error {
	o.Decompressors = slices.Clone(o.Decompressors)
	for i, d := range o.Decompressors {
		if _, ok := d.(*zstdchunked.Decompressor); ok {
			o.Decompressors[i] = sharedZstd
		}
	}
	return nil
}

// openLayerIndex is the stargz filesystem's own metadata store (in memory)
// with sharedZstd for zstd:chunked layers.
func openLayerIndex(sr *io.SectionReader, opts ...metadata.Option) (metadata.Reader, error) {
	return memory.NewReader(sr, append(opts, withPooledZstd)...)
}
