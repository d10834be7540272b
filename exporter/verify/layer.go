package verify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/compression"
	"github.com/stargazer-build/stargazer/exporter/internal/tarname"
)

// checkLayer checks one layer and returns its report and the joined
// failures. The report is filled as far as the checks got.
func checkLayer(ctx context.Context, provider content.Provider, desc ocispec.Descriptor, diffID digest.Digest, expected []string, o *options) (*LayerReport, error) {
	lr := &LayerReport{Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size}
	if !images.IsLayerType(desc.MediaType) {
		lr.Format = FormatOther
		if o.allowNonLazy {
			return lr, nil
		}
		return lr, fmt.Errorf("media type %q is not a layer", desc.MediaType)
	}
	ra, err := provider.ReaderAt(ctx, desc)
	if err != nil {
		return lr, fmt.Errorf("open blob: %w", err)
	}
	defer ra.Close()
	if ra.Size() != desc.Size {
		return lr, fmt.Errorf("blob is %d bytes, descriptor says %d", ra.Size(), desc.Size)
	}
	sr := io.NewSectionReader(ra, 0, desc.Size)

	var errs []error
	tocAnno, lazy := desc.Annotations[estargz.TOCJSONDigestAnnotation]
	if lazy {
		lr.Lazy = true
		lr.Format = EStargz
		if isZstd(desc.MediaType) {
			lr.Format = ZstdChunked
		}
		errs = append(errs, checkTOC(ctx, sr, desc, tocAnno, expected, lr)...)
	} else if !o.allowNonLazy {
		errs = append(errs, errNotLazy)
	}

	// One sequential pass for the blob digest and the uncompressed content.
	kind, usize, gotDiffID, err := readAll(ctx, sr, desc.Digest)
	if err != nil {
		errs = append(errs, err)
	} else {
		lr.UncompressedSize = usize
		if !lazy {
			lr.Format = Format(kind)
		}
		if diffID != "" && gotDiffID != diffID {
			errs = append(errs, fmt.Errorf("uncompressed digest %s, config diff_id %s", gotDiffID, diffID))
		}
		if lazy {
			want := kindOf(lr.Format)
			if kind != want {
				errs = append(errs, fmt.Errorf("media type %q but the blob is %s", desc.MediaType, kind))
			}
			if s, ok := desc.Annotations[estargz.StoreUncompressedSizeAnnotation]; !ok {
				errs = append(errs, fmt.Errorf("no %s annotation", estargz.StoreUncompressedSizeAnnotation))
			} else if n, err := strconv.ParseInt(s, 10, 64); err != nil || n != usize {
				errs = append(errs, fmt.Errorf("%s annotation %q, uncompressed size is %d", estargz.StoreUncompressedSizeAnnotation, s, usize))
			}
		}
	}
	return lr, errors.Join(errs...)
}

func isZstd(mt string) bool {
	return strings.HasSuffix(mt, "+zstd") || strings.HasSuffix(mt, ".zstd")
}

func kindOf(f Format) compression.Kind {
	if f == ZstdChunked {
		return compression.KindZstd
	}
	return compression.KindGzip
}

// readAll reads the blob front to back, checking its digest, and returns
// its compression, uncompressed size and uncompressed digest.
func readAll(ctx context.Context, sr *io.SectionReader, want digest.Digest) (compression.Kind, int64, digest.Digest, error) {
	if err := want.Validate(); err != nil {
		return "", 0, "", fmt.Errorf("descriptor digest: %w", err)
	}
	verifier := want.Verifier()
	br := bufio.NewReaderSize(io.TeeReader(tarname.ContextReader(ctx, io.NewSectionReader(sr, 0, sr.Size())), verifier), 1<<20)
	dec, kind, err := compression.NewReader(br)
	if err != nil {
		return "", 0, "", err
	}
	defer dec.Close()
	d := digest.Canonical.Digester()
	n, decErr := io.Copy(d.Hash(), dec)
	if _, err := io.Copy(io.Discard, br); err != nil {
		return "", 0, "", fmt.Errorf("read blob: %w", err)
	}
	if !verifier.Verified() {
		return "", 0, "", fmt.Errorf("blob content does not match digest %s", want)
	}
	if decErr != nil {
		return "", 0, "", fmt.Errorf("decompress %s: %w", kind, decErr)
	}
	return kind, n, d.Digest(), nil
}

// checkTOC checks everything that hangs off the TOC: its digest, the
// landmark and prefetch range, and every chunk.
func checkTOC(ctx context.Context, sr *io.SectionReader, desc ocispec.Descriptor, tocAnno string, expected []string, lr *LayerReport) []error {
	want, err := digest.Parse(tocAnno)
	if err != nil {
		return []error{fmt.Errorf("%s annotation: %w", estargz.TOCJSONDigestAnnotation, err)}
	}
	d := newDecompressor(lr.Format)
	toc, tocDigest, err := readTOC(sr, d, desc, lr.Format)
	if err != nil {
		return []error{err}
	}
	if tocDigest != want {
		return []error{fmt.Errorf("TOC digest %s, annotation says %s", tocDigest, want)}
	}
	var errs []error
	ents, err := indexTOC(toc)
	if err != nil {
		return []error{err} // unsafe to hand to estargz.Open
	}
	lr.Entries = len(ents.order)
	if err := ents.checkPrefetch(expected, lr); err != nil {
		errs = append(errs, err)
	}
	if err := checkPrefetchAnnotation(desc, lr); err != nil {
		errs = append(errs, err)
	}

	r, err := openEStargz(sr, d)
	if err != nil {
		return append(errs, fmt.Errorf("open %s: %w", lr.Format, err))
	}
	verifiers, err := r.VerifyTOC(want)
	if err != nil {
		return append(errs, fmt.Errorf("verify TOC: %w", err))
	}
	n, err := checkChunks(ctx, sr, r, toc, verifiers, d)
	lr.Chunks = n
	if err != nil {
		errs = append(errs, err)
	}
	return errs
}

// decompressor reads TOCs and chunks of one format; chunk readers are
// pooled because a layer has one chunk per small file.
type decompressor struct {
	estargz.Decompressor
	zstdPool sync.Pool
}

func newDecompressor(f Format) *decompressor {
	if f == ZstdChunked {
		return &decompressor{Decompressor: new(zstdchunked.Decompressor)}
	}
	g, _ := compression.NewGzip(compression.DefaultGzipLevel)
	return &decompressor{Decompressor: g}
}

// chunkReader decompresses one chunk's compressed range.
func (d *decompressor) chunkReader(r io.Reader) (io.ReadCloser, error) {
	if _, ok := d.Decompressor.(*zstdchunked.Decompressor); !ok {
		return d.Reader(r)
	}
	z, _ := d.zstdPool.Get().(*zstd.Decoder)
	if z == nil {
		var err error
		// Chunks are small; concurrent decoding would only add goroutines.
		if z, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1)); err != nil {
			return nil, err
		}
	}
	if err := z.Reset(r); err != nil {
		d.zstdPool.Put(z)
		return nil, err
	}
	return &pooledZstd{z: z, pool: &d.zstdPool}, nil
}

type pooledZstd struct {
	z    *zstd.Decoder
	pool *sync.Pool
}

func (p *pooledZstd) Read(b []byte) (int, error) {
	if p.z == nil {
		return 0, io.ErrClosedPipe
	}
	return p.z.Read(b)
}

func (p *pooledZstd) Close() error {
	if p.z != nil {
		p.z.Reset(nil)
		p.pool.Put(p.z)
		p.z = nil
	}
	return nil
}

// readTOC parses the footer and TOC with bounds checks of its own, so a
// malformed blob is reported rather than trusted, and for zstd:chunked
// checks the manifest annotations containers/storage reads.
func readTOC(sr *io.SectionReader, d *decompressor, desc ocispec.Descriptor, f Format) (*estargz.JTOC, digest.Digest, error) {
	footer, tocOff, tocSize, err := compression.LocateTOC(sr, d, string(f))
	if err != nil {
		return nil, "", err
	}
	tocBytes := make([]byte, tocSize)
	if _, err := sr.ReadAt(tocBytes, tocOff); err != nil {
		return nil, "", fmt.Errorf("read TOC: %w", err)
	}
	toc, tocDigest, err := d.ParseTOC(bytes.NewReader(tocBytes))
	if err != nil {
		return nil, "", fmt.Errorf("parse TOC: %w", err)
	}
	if f == ZstdChunked {
		if err := checkZstdAnnotations(desc.Annotations, footer, tocOff, tocBytes); err != nil {
			return nil, "", err
		}
	}
	return toc, tocDigest, nil
}

func checkZstdAnnotations(a map[string]string, footer []byte, tocOff int64, tocBytes []byte) error {
	var errs []error
	if got, want := a[zstdchunked.ManifestChecksumAnnotation], digest.FromBytes(tocBytes).String(); got != want {
		errs = append(errs, fmt.Errorf("%s annotation %q, compressed TOC digest %s", zstdchunked.ManifestChecksumAnnotation, got, want))
	}
	rawSize := binary.LittleEndian.Uint64(footer[16:24])
	want := fmt.Sprintf("%d:%d:%d:1", tocOff, len(tocBytes), rawSize)
	if got := a[zstdchunked.ManifestPositionAnnotation]; got != want {
		errs = append(errs, fmt.Errorf("%s annotation %q, footer says %q", zstdchunked.ManifestPositionAnnotation, got, want))
	}
	return errors.Join(errs...)
}

// openEStargz opens the blob with estargz, which is what runtimes use.
// estargz trusts its input in places (it indexes footer fields without
// length checks), so a panic is turned into an error.
func openEStargz(sr *io.SectionReader, d *decompressor) (r *estargz.Reader, err error) {
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("estargz.Open panicked: %v", p)
		}
	}()
	return estargz.Open(sr, estargz.WithDecompressors(d.Decompressor))
}

// checkChunks decompresses every chunk of every regular file from its own
// compressed range, as a lazy reader fetches it, and checks it against the
// TOC's chunk digest and the whole file against its content digest.
func checkChunks(ctx context.Context, sr *io.SectionReader, r *estargz.Reader, toc *estargz.JTOC, verifiers estargz.TOCEntryVerifier, d *decompressor) (int, error) {
	var errs []error
	chunks := 0
	done := make(map[string]bool)
	for _, e := range toc.Entries {
		if e.Type != "reg" || e.Size == 0 {
			continue
		}
		name := tarname.Clean(e.Name)
		if done[name] {
			continue
		}
		done[name] = true
		if err := ctx.Err(); err != nil {
			return chunks, err
		}
		fileDigest := digest.Canonical.Digester()
		var off int64
		for off < e.Size {
			ce, ok := r.ChunkEntryForOffset(name, off)
			if !ok {
				errs = append(errs, fmt.Errorf("file %q: no chunk at offset %d", name, off))
				break
			}
			if ce.ChunkOffset != off || ce.ChunkSize <= 0 {
				errs = append(errs, fmt.Errorf("file %q: chunk at offset %d covers [%d, +%d)", name, off, ce.ChunkOffset, ce.ChunkSize))
				break
			}
			chunks++
			if err := checkChunk(sr, ce, verifiers, d, fileDigest.Hash()); err != nil {
				errs = append(errs, fmt.Errorf("file %q chunk at %d: %w", name, off, err))
				break
			}
			off += ce.ChunkSize
		}
		if off == e.Size && e.Digest != "" && fileDigest.Digest().String() != e.Digest {
			errs = append(errs, fmt.Errorf("file %q: content digest %s, TOC says %s", name, fileDigest.Digest(), e.Digest))
		}
		if len(errs) > 10 {
			errs = append(errs, errors.New("too many chunk failures; stopped"))
			break
		}
	}
	return chunks, errors.Join(errs...)
}

func checkChunk(sr *io.SectionReader, ce *estargz.TOCEntry, verifiers estargz.TOCEntryVerifier, d *decompressor, file io.Writer) error {
	v, err := verifiers.Verifier(ce)
	if err != nil {
		return err
	}
	end := ce.NextOffset()
	if ce.Offset < 0 || end <= ce.Offset || end > sr.Size() {
		return fmt.Errorf("compressed range [%d, %d) outside the blob", ce.Offset, end)
	}
	br := bufio.NewReaderSize(io.NewSectionReader(sr, ce.Offset, end-ce.Offset), int(min(end-ce.Offset, 256<<10)))
	dr, err := d.chunkReader(br)
	if err != nil {
		return err
	}
	defer dr.Close()
	if _, err := io.CopyN(io.Discard, dr, ce.InnerOffset); err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if _, err := io.CopyN(io.MultiWriter(v, file), dr, ce.ChunkSize); err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if !v.Verified() {
		return errors.New("content does not match the TOC chunk digest")
	}
	return nil
}

// tocIndex is the TOC's entries by cleaned name, in blob order.
type tocIndex struct {
	order []string // non-chunk entries
	types map[string]string
	links map[string]string // hardlink → cleaned target
	// landmark is the position in order of the landmark entry, -1 if none.
	landmark     int
	landmarkName string
	offsets      map[string]int64
}

// indexTOC indexes the TOC and rejects hardlinks estargz cannot resolve;
// a hardlink cycle would send estargz.Open into unbounded recursion.
func indexTOC(toc *estargz.JTOC) (*tocIndex, error) {
	ix := &tocIndex{types: map[string]string{}, links: map[string]string{}, offsets: map[string]int64{}, landmark: -1}
	for _, e := range toc.Entries {
		if e.Type == "chunk" {
			continue
		}
		name := tarname.Clean(e.Name)
		switch name {
		case estargz.PrefetchLandmark, estargz.NoPrefetchLandmark:
			if ix.landmark >= 0 {
				return nil, fmt.Errorf("TOC has both %s and %s", ix.landmarkName, name)
			}
			ix.landmark, ix.landmarkName = len(ix.order), name
		}
		ix.order = append(ix.order, name)
		ix.types[name] = e.Type
		ix.offsets[name] = e.Offset
		if e.Type == "hardlink" {
			ix.links[name] = tarname.Clean(e.LinkName)
		}
	}
	for name := range ix.links {
		seen := map[string]bool{name: true}
		for cur := name; ix.types[cur] == "hardlink"; {
			next := ix.links[cur]
			if _, ok := ix.types[next]; !ok {
				return nil, fmt.Errorf("hardlink %q points to %q, which is not in the TOC", name, next)
			}
			if seen[next] {
				return nil, fmt.Errorf("hardlink %q is part of a cycle", name)
			}
			seen[next] = true
			cur = next
		}
	}
	return ix, nil
}

// checkPrefetchAnnotation checks a layer's prefetch size annotation, where
// it has one, against the landmark's offset: a runtime that trusts it
// downloads that range before reading the TOC.
func checkPrefetchAnnotation(desc ocispec.Descriptor, lr *LayerReport) error {
	s, ok := desc.Annotations[compression.PrefetchSizeAnnotation]
	if !ok {
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("%s annotation %q is not a positive number of bytes", compression.PrefetchSizeAnnotation, s)
	}
	if lr.Landmark != estargz.PrefetchLandmark {
		return fmt.Errorf("%s annotation says %d, but the layer has no %s", compression.PrefetchSizeAnnotation, n, estargz.PrefetchLandmark)
	}
	if n != lr.PrefetchSize {
		return fmt.Errorf("%s annotation says %d, the landmark is at %d", compression.PrefetchSizeAnnotation, n, lr.PrefetchSize)
	}
	return nil
}

// checkPrefetch fills the prefetch fields of lr and, with expected, checks
// the entries before the landmark.
func (ix *tocIndex) checkPrefetch(expected []string, lr *LayerReport) error {
	if ix.landmark < 0 {
		return fmt.Errorf("no %s or %s entry", estargz.PrefetchLandmark, estargz.NoPrefetchLandmark)
	}
	lr.Landmark = ix.landmarkName
	before := ix.order[:ix.landmark]
	if ix.landmarkName == estargz.PrefetchLandmark {
		// The stargz snapshotter prefetches [0, landmark offset).
		lr.PrefetchSize = ix.offsets[ix.landmarkName]
		for _, name := range before {
			if ix.types[name] != "dir" {
				lr.PrioritizedFiles++
			}
		}
	}
	if expected == nil {
		return nil
	}
	want := ix.expectedOrder(expected)
	if ix.landmarkName == estargz.NoPrefetchLandmark {
		if len(want) > 0 {
			return fmt.Errorf("%s, but %d prioritized entries were expected first (%q ...)", estargz.NoPrefetchLandmark, len(want), want[0])
		}
		return nil
	}
	for i := range max(len(want), len(before)) {
		switch {
		case i >= len(before):
			return fmt.Errorf("prefetch range ends after %d entries; expected %q next", len(before), want[i])
		case i >= len(want):
			return fmt.Errorf("prefetch range has %d entries, expected %d; first unexpected %q", len(before), len(want), before[i])
		case before[i] != want[i]:
			return fmt.Errorf("prefetch entry %d is %q, expected %q", i, before[i], want[i])
		}
	}
	return nil
}

// expectedOrder is where estargz puts prioritized paths: each one (if it
// and every entry it depends on are in the layer) preceded by those of its
// parent directories and hardlink targets not already placed, root first.
func (ix *tocIndex) expectedOrder(prioritized []string) []string {
	var out []string
	placed := make(map[string]bool)
	var place func(name string)
	place = func(name string) {
		if placed[name] {
			return
		}
		if name != "" {
			place(tarname.Parent(name))
			if t, ok := ix.links[name]; ok {
				place(t)
			}
		}
		if _, ok := ix.types[name]; ok && !placed[name] {
			placed[name] = true
			out = append(out, name)
		}
	}
	for _, p := range prioritized {
		name := tarname.Clean(p)
		if name == "" || !ix.resolvable(name) {
			continue
		}
		place(name)
	}
	return out
}

func (ix *tocIndex) resolvable(name string) bool {
	for ; name != ""; name = tarname.Parent(name) {
		t, ok := ix.types[name]
		if !ok || name == estargz.PrefetchLandmark || name == estargz.NoPrefetchLandmark {
			return false
		}
		if t == "hardlink" && !ix.resolvable(ix.links[name]) {
			return false // indexTOC rejected cycles
		}
	}
	return true
}
