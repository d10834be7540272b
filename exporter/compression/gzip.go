// Package compression provides the estargz.Compression implementations the
// exporter builds layers with: a gzip one backed by
// github.com/klauspost/compress (several times faster than compress/gzip at
// the same ratio) and zstd:chunked from estargz/zstdchunked with a
// configurable level.
//
// Both write blobs that stock readers open: gzip output is plain eStargz
// (valid gzip members, a TOC tar entry and the 51-byte footer) and parses
// with estargz.Open's default decompressors and the stargz snapshotter.
package compression

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"strconv"
	"sync"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

// DefaultGzipLevel is the gzip level used when none is given. On the files
// a Debian python3 image reads to start (20 MB, mostly executables and
// shared libraries), level 7 writes 1.8% less than level 6 for 1.3 times
// its CPU, which every lazy start of the image gets back on the link, and
// the ratio of compress/gzip at its default level for under half its CPU;
// level 8 saves another 0.5% for 1.4 times the CPU of level 7.
const DefaultGzipLevel = 7

// Gzip is an estargz.Compression producing eStargz (gzip) blobs with
// klauspost/compress. Compressors and decompressors are pooled because
// eStargz opens one gzip member per file: allocating a deflate state per
// member would dominate the cost for layers of many small files.
//
// A Gzip is safe for concurrent use.
type Gzip struct {
	level   int
	writers sync.Pool // *gzip.Writer at level
	readers sync.Pool // *gzip.Reader
}

var _ estargz.Compression = (*Gzip)(nil)

// NewGzip returns a gzip Compression at level, one of gzip.NoCompression (0)
// through gzip.BestCompression (9), gzip.HuffmanOnly (-2), or
// gzip.DefaultCompression (-1) which selects DefaultGzipLevel.
func NewGzip(level int) (*Gzip, error) {
	switch {
	case level == gzip.DefaultCompression:
		level = DefaultGzipLevel
	case level == gzip.HuffmanOnly:
	case level < gzip.NoCompression || level > gzip.BestCompression:
		return nil, fmt.Errorf("gzip compression level %d out of range [%d, %d]", level, gzip.NoCompression, gzip.BestCompression)
	}
	return &Gzip{level: level}, nil
}

// Level reports the gzip level g compresses with.
func (g *Gzip) Level() int { return g.level }

// String names the compression for reports and logs.
func (g *Gzip) String() string { return "gzip level " + strconv.Itoa(g.level) }

// Writer returns a gzip writer for one eStargz member. estargz closes it at
// the end of every member, which returns it to the pool.
func (g *Gzip) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	z, err := g.getWriter(w)
	if err != nil {
		return nil, err
	}
	return &pooledWriter{z: z, g: g}, nil
}

func (g *Gzip) getWriter(w io.Writer) (*gzip.Writer, error) {
	if z, ok := g.writers.Get().(*gzip.Writer); ok {
		z.Reset(w)
		return z, nil
	}
	return gzip.NewWriterLevel(w, g.level)
}

type pooledWriter struct {
	z *gzip.Writer
	g *Gzip
}

func (p *pooledWriter) Write(b []byte) (int, error) {
	if p.z == nil {
		return 0, errWriterClosed
	}
	return p.z.Write(b)
}

func (p *pooledWriter) Flush() error {
	if p.z == nil {
		return errWriterClosed
	}
	return p.z.Flush()
}

// Close finishes the gzip member. The writer goes back to the pool only on
// success: a writer holding an error would poison later members.
func (p *pooledWriter) Close() error {
	if p.z == nil {
		return nil
	}
	z := p.z
	p.z = nil
	if err := z.Close(); err != nil {
		return err
	}
	z.Reset(io.Discard) // drop the reference to the destination
	p.g.writers.Put(z)
	return nil
}

var errWriterClosed = fmt.Errorf("gzip writer already closed")

// WriteTOCAndFooter writes the TOC JSON as the single entry of a tar in its
// own gzip member, then the footer pointing at that member. The JSON is
// indented the way estargz's own compressor writes it so TOC digests stay
// comparable across tools.
func (g *Gzip) WriteTOCAndFooter(w io.Writer, off int64, toc *estargz.JTOC, diffHash hash.Hash) (digest.Digest, error) {
	tocJSON, err := json.MarshalIndent(toc, "", "\t")
	if err != nil {
		return "", fmt.Errorf("encode TOC: %w", err)
	}
	z, err := g.getWriter(w)
	if err != nil {
		return "", err
	}
	var dst io.Writer = z
	if diffHash != nil {
		// The TOC tar is part of the uncompressed layer, so it is part of
		// the DiffID.
		dst = io.MultiWriter(z, diffHash)
	}
	tw := tar.NewWriter(dst)
	if err := tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     estargz.TOCTarName,
		Size:     int64(len(tocJSON)),
	}); err != nil {
		return "", fmt.Errorf("write TOC tar header: %w", err)
	}
	if _, err := tw.Write(tocJSON); err != nil {
		return "", fmt.Errorf("write TOC: %w", err)
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("close TOC tar: %w", err)
	}
	if err := z.Close(); err != nil {
		return "", fmt.Errorf("close TOC gzip member: %w", err)
	}
	z.Reset(io.Discard)
	g.writers.Put(z)
	footer, err := GzipFooter(off)
	if err != nil {
		return "", err
	}
	if _, err := w.Write(footer); err != nil {
		return "", fmt.Errorf("write footer: %w", err)
	}
	return digest.FromBytes(tocJSON), nil
}

// GzipFooter returns the eStargz footer for a TOC member at tocOffset: an
// empty gzip member (RFC 1952) whose Extra field carries the offset as
// "%016xSTARGZ" under subfield ID "SG", and whose deflate data is a single
// empty stored block. The bytes are laid out by hand because the size must
// be exactly estargz.FooterSize and deflate encoders differ in how they
// encode an empty stream.
func GzipFooter(tocOffset int64) ([]byte, error) {
	if tocOffset < 0 {
		return nil, fmt.Errorf("negative TOC offset %d", tocOffset)
	}
	subfield := fmt.Sprintf("%016xSTARGZ", tocOffset)
	b := make([]byte, 0, estargz.FooterSize)
	// ID1 ID2 CM=deflate FLG=FEXTRA, MTIME 0, XFL 0, OS unknown.
	b = append(b, 0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff)
	b = binary.LittleEndian.AppendUint16(b, uint16(4+len(subfield))) // XLEN
	b = append(b, 'S', 'G')
	b = binary.LittleEndian.AppendUint16(b, uint16(len(subfield)))
	b = append(b, subfield...)
	// Final stored block of length 0 (LEN 0x0000, NLEN 0xffff).
	b = append(b, 0x01, 0x00, 0x00, 0xff, 0xff)
	// CRC-32 and ISIZE of no data.
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
	if len(b) != estargz.FooterSize {
		return nil, fmt.Errorf("footer is %d bytes, want %d", len(b), estargz.FooterSize)
	}
	return b, nil
}

// Reader returns a decompressor for r. It reads across gzip members, so it
// decompresses a single chunk as well as a whole blob.
//
// Unless r can already read byte-wise (a bufio.Reader, say), it is read
// through a pooled 1 MiB buffer. The decompressor would otherwise read 4 KiB
// at a time, and estargz.Build feeds it from an io.Pipe whose every read is
// a goroutine handoff, which dominates the DiffID pass on several cores.
func (g *Gzip) Reader(r io.Reader) (io.ReadCloser, error) {
	var br *bufio.Reader
	if _, ok := r.(io.ByteReader); !ok {
		br = getBuffer(r)
		r = br
	}
	var (
		z   *gzip.Reader
		err error
	)
	if pz, ok := g.readers.Get().(*gzip.Reader); ok {
		z = pz
		err = z.Reset(r)
	} else {
		z, err = gzip.NewReader(r)
	}
	if err != nil {
		putBuffer(br)
		return nil, err
	}
	return &pooledReader{z: z, g: g, br: br}, nil
}

var buffers sync.Pool // *bufio.Reader of 1 MiB

func getBuffer(r io.Reader) *bufio.Reader {
	if br, ok := buffers.Get().(*bufio.Reader); ok {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, 1<<20)
}

func putBuffer(br *bufio.Reader) {
	if br != nil {
		br.Reset(nil)
		buffers.Put(br)
	}
}

type pooledReader struct {
	z  *gzip.Reader
	g  *Gzip
	br *bufio.Reader
}

func (p *pooledReader) Read(b []byte) (int, error) {
	if p.z == nil {
		return 0, errReaderClosed
	}
	return p.z.Read(b)
}

// WriteTo lets io.Copy use the decompressor's own buffer.
func (p *pooledReader) WriteTo(w io.Writer) (int64, error) {
	if p.z == nil {
		return 0, errReaderClosed
	}
	return p.z.WriteTo(w)
}

func (p *pooledReader) Close() error {
	if p.z == nil {
		return nil
	}
	z := p.z
	p.z = nil
	err := z.Close()
	p.g.readers.Put(z)
	putBuffer(p.br)
	p.br = nil
	return err
}

var errReaderClosed = fmt.Errorf("gzip reader already closed")

// FooterSize is the size of the eStargz footer.
func (g *Gzip) FooterSize() int64 { return estargz.FooterSize }

// ParseFooter parses the 51-byte eStargz footer. Unlike estargz's own
// parser it checks every length before indexing, so a blob that ends in an
// unrelated gzip header yields an error instead of a panic.
func (g *Gzip) ParseFooter(p []byte) (blobPayloadSize, tocOffset, tocSize int64, err error) {
	if len(p) != estargz.FooterSize {
		return 0, 0, 0, fmt.Errorf("footer is %d bytes, want %d", len(p), estargz.FooterSize)
	}
	z, err := gzip.NewReader(bytes.NewReader(p))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("footer is not a gzip member: %w", err)
	}
	defer z.Close()
	extra := z.Extra
	const subfieldLen = 16 + len("STARGZ")
	if len(extra) != 4+subfieldLen {
		return 0, 0, 0, fmt.Errorf("footer extra field is %d bytes, want %d", len(extra), 4+subfieldLen)
	}
	if extra[0] != 'S' || extra[1] != 'G' {
		return 0, 0, 0, fmt.Errorf("footer subfield ID %q, want \"SG\"", extra[:2])
	}
	if n := int(binary.LittleEndian.Uint16(extra[2:4])); n != subfieldLen {
		return 0, 0, 0, fmt.Errorf("footer subfield length %d, want %d", n, subfieldLen)
	}
	sub := extra[4:]
	if string(sub[16:]) != "STARGZ" {
		return 0, 0, 0, fmt.Errorf("footer lacks the STARGZ magic")
	}
	off, err := strconv.ParseInt(string(sub[:16]), 16, 64)
	if err != nil || off < 0 {
		return 0, 0, 0, fmt.Errorf("footer TOC offset %q is invalid", sub[:16])
	}
	// The payload ends where the TOC member starts; the TOC runs to the
	// footer (tocSize 0 tells estargz to compute that).
	return off, off, 0, nil
}

// ParseTOC reads the TOC member: a gzip stream holding a tar whose first
// entry is estargz.TOCTarName. The digest covers the JSON bytes.
func (g *Gzip) ParseTOC(r io.Reader) (*estargz.JTOC, digest.Digest, error) {
	rc, err := g.DecompressTOC(r)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	d := digest.Canonical.Digester()
	toc := new(estargz.JTOC)
	if err := json.NewDecoder(io.TeeReader(rc, d.Hash())).Decode(toc); err != nil {
		return nil, "", fmt.Errorf("decode TOC JSON: %w", err)
	}
	// Hash any bytes the decoder did not need (e.g. trailing whitespace) so
	// the digest covers the whole entry, as the writer computed it.
	if _, err := io.Copy(d.Hash(), rc); err != nil {
		return nil, "", fmt.Errorf("read TOC: %w", err)
	}
	return toc, d.Digest(), nil
}

// DecompressTOC returns the TOC JSON from the TOC member. It reads exactly
// one gzip member so the footer that follows is not mistaken for data.
func (g *Gzip) DecompressTOC(r io.Reader) (io.ReadCloser, error) {
	z, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("TOC is not a gzip member: %w", err)
	}
	z.Multistream(false)
	tr := tar.NewReader(z)
	h, err := tr.Next()
	if err != nil {
		z.Close()
		return nil, fmt.Errorf("read TOC tar header: %w", err)
	}
	if h.Name != estargz.TOCTarName {
		z.Close()
		return nil, fmt.Errorf("TOC tar entry is %q, want %q", h.Name, estargz.TOCTarName)
	}
	return readCloser{Reader: tr, close: z.Close}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }
