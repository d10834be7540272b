package convert

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"strconv"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/compression"
)

// Layer is a converted layer blob, staged in a temporary file until Close.
type Layer struct {
	// Descriptor describes the new blob: media type, digest, size and the
	// annotations lazy runtimes read (TOC digest, uncompressed size and,
	// for zstd:chunked, the manifest checksum and position). Annotations of
	// the source descriptor that do not describe the old format are kept.
	Descriptor ocispec.Descriptor
	// DiffID is the digest of the new blob's uncompressed tar, for the
	// image config's rootfs.diff_ids.
	DiffID digest.Digest
	// TOCDigest is the digest of the TOC JSON (also in the annotations).
	TOCDigest digest.Digest
	// UncompressedSize is the size of the new blob's uncompressed tar.
	UncompressedSize int64
	// SourceDiffID is the digest of the source layer's uncompressed tar,
	// computed while reading it, to check against the source config.
	SourceDiffID digest.Digest
	// Prioritized is the number of distinct prioritized paths placed
	// before the landmark.
	Prioritized int
	// PrefetchSize is the offset of the .prefetch.landmark entry in the
	// blob, the bytes a lazy runtime prefetches (also in the annotations,
	// compression.PrefetchSizeAnnotation); 0 for .no.prefetch.landmark.
	PrefetchSize int64
	// Missing lists prioritized paths that could not be placed first: not
	// in this layer, or (an estargz rule) a parent directory or hardlink
	// target of theirs has no entry in this layer. Not an error: a record
	// names files of every layer.
	Missing []string

	file *os.File
}

// Reader returns a reader of the whole blob; each call gets its own.
func (l *Layer) Reader() *io.SectionReader {
	return io.NewSectionReader(l.file, 0, l.Descriptor.Size)
}

// Commit writes the blob into a content store, labelled with its
// uncompressed digest as containerd does. A blob already present is left
// alone.
func (l *Layer) Commit(ctx context.Context, cs content.Ingester) error {
	ref := "stargazer-convert-" + l.Descriptor.Digest.String()
	err := content.WriteBlob(ctx, cs, ref, l.Reader(), l.Descriptor,
		content.WithLabels(map[string]string{labels.LabelUncompressed: l.DiffID.String()}))
	if err != nil {
		return fmt.Errorf("write converted layer %s: %w", l.Descriptor.Digest, err)
	}
	return nil
}

// Close removes the staged blob.
func (l *Layer) Close() error {
	if l.file == nil {
		return nil
	}
	name := l.file.Name()
	err := errors.Join(l.file.Close(), os.Remove(name))
	l.file = nil
	return err
}

// ConvertLayer converts the layer blob ra described by desc (a tar, gzip or
// zstd blob, eStargz and zstd:chunked included) into the format chosen with
// WithFormat, placing the prioritized paths first in the given order.
//
// The blob is read once, sequentially, and its digest and size are checked
// against desc while decompressing (ErrDigestMismatch). Tar entries whose
// path escapes the root are rejected (ErrPathEscapes). The output media type
// follows desc's family (Docker or OCI) unless WithOCIMediaTypes says
// otherwise. The caller must Close the returned Layer.
func ConvertLayer(ctx context.Context, ra content.ReaderAt, desc ocispec.Descriptor, prioritized []string, opts ...Option) (*Layer, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	if o.prioritized != nil || o.byManifest != nil {
		return nil, errors.New("WithPrioritizedFiles applies to Image; pass ConvertLayer the list itself")
	}
	docker := isDockerType(desc.MediaType)
	if o.oci != nil {
		docker = !*o.oci
	}
	return convertLayer(ctx, ra, desc, prioritized, docker, o)
}

func convertLayer(ctx context.Context, ra content.ReaderAt, desc ocispec.Descriptor, prioritized []string, docker bool, o *options) (_ *Layer, retErr error) {
	if !convertibleLayer(desc.MediaType) {
		return nil, fmt.Errorf("layer %s has media type %q: %w", desc.Digest, desc.MediaType, ErrUnsupportedLayer)
	}
	if o.format == ZstdChunked && docker {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, ErrDockerZstdChunked)
	}
	comp, err := newCompression(o)
	if err != nil {
		return nil, err
	}

	st, err := stage(ctx, ra, desc, o.tempDir)
	if err != nil {
		return nil, err
	}
	defer st.close()

	list, missing := st.placeable(prioritized)
	missedByBuild := []string{}
	bopts := []estargz.Option{
		estargz.WithContext(ctx),
		estargz.WithCompression(comp),
		estargz.WithAllowPrioritizeNotFound(&missedByBuild),
	}
	if len(list) > 0 {
		// With no placeable file, leaving the list out makes estargz write
		// .no.prefetch.landmark instead of an empty prefetch range.
		bopts = append(bopts, estargz.WithPrioritizedFiles(list))
	}
	if o.chunkSize > 0 {
		bopts = append(bopts, estargz.WithChunkSize(o.chunkSize))
	}
	blob, err := estargz.Build(io.NewSectionReader(st.file, 0, st.size), bopts...)
	if err != nil {
		return nil, fmt.Errorf("build %s from layer %s: %w", o.format, desc.Digest, err)
	}
	defer blob.Close()

	out, err := os.CreateTemp(o.tempDir, "stargazer-blob-*")
	if err != nil {
		return nil, fmt.Errorf("stage converted layer: %w", err)
	}
	l := &Layer{file: out}
	defer func() {
		if retErr != nil {
			l.Close()
		}
	}()
	dgstr := digest.Canonical.Digester()
	w := bufio.NewWriterSize(io.MultiWriter(out, dgstr.Hash()), 1<<20)
	n, err := io.Copy(w, blob)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		return nil, fmt.Errorf("write %s of layer %s: %w", o.format, desc.Digest, err)
	}
	if err := blob.Close(); err != nil {
		return nil, fmt.Errorf("build %s from layer %s: %w", o.format, desc.Digest, err)
	}
	usize, err := blob.UncompressedSize()
	if err != nil {
		return nil, fmt.Errorf("build %s from layer %s: %w", o.format, desc.Digest, err)
	}

	prefetch, err := landmarkOffset(io.NewSectionReader(out, 0, n), o.format)
	if err != nil {
		return nil, fmt.Errorf("read back the TOC of %s of layer %s: %w", o.format, desc.Digest, err)
	}

	missing = append(missing, missedByBuild...)
	l.PrefetchSize = prefetch
	l.DiffID = blob.DiffID()
	l.TOCDigest = blob.TOCDigest()
	l.UncompressedSize = usize
	l.SourceDiffID = st.diffID
	l.Prioritized = len(list) - len(missedByBuild)
	l.Missing = missing
	l.Descriptor = ocispec.Descriptor{
		MediaType:   outputLayerType(o.format, docker),
		Digest:      dgstr.Digest(),
		Size:        n,
		Annotations: layerAnnotations(desc.Annotations, l, comp),
	}
	return l, nil
}

func newCompression(o *options) (estargz.Compression, error) {
	switch o.format {
	case ZstdChunked:
		level := 0
		if o.levelSet {
			level = o.level
		}
		return compression.NewZstdChunked(level)
	default:
		level := compression.DefaultGzipLevel
		if o.levelSet {
			level = o.level
		}
		return compression.NewGzip(level)
	}
}

// formatAnnotations are the annotations that describe a layer's encoding;
// they are dropped from the source descriptor because the blob changes.
var formatAnnotations = []string{
	labels.LabelUncompressed, // BuildKit-internal, the old DiffID
	estargz.TOCJSONDigestAnnotation,
	estargz.StoreUncompressedSizeAnnotation,
	zstdchunked.ManifestChecksumAnnotation,
	zstdchunked.ManifestPositionAnnotation,
	compression.PrefetchSizeAnnotation,
}

func layerAnnotations(src map[string]string, l *Layer, comp estargz.Compression) map[string]string {
	a := maps.Clone(src)
	if a == nil {
		a = make(map[string]string)
	}
	for _, k := range formatAnnotations {
		delete(a, k)
	}
	a[estargz.TOCJSONDigestAnnotation] = l.TOCDigest.String()
	a[estargz.StoreUncompressedSizeAnnotation] = strconv.FormatInt(l.UncompressedSize, 10)
	if z, ok := comp.(*compression.ZstdChunked); ok {
		maps.Copy(a, z.Annotations())
	}
	if l.PrefetchSize > 0 {
		a[compression.PrefetchSizeAnnotation] = strconv.FormatInt(l.PrefetchSize, 10)
	}
	return a
}

// tocDecompressor is an estargz.Decompressor that also hands out the TOC
// JSON as a stream, as estargz's own decompressors do.
type tocDecompressor interface {
	estargz.Decompressor
	DecompressTOC(r io.Reader) (io.ReadCloser, error)
}

func tocDecompressorFor(f Format) tocDecompressor {
	if f == ZstdChunked {
		return new(zstdchunked.Decompressor)
	}
	return new(estargz.GzipDecompressor)
}

// landmarkOffset returns the offset of the .prefetch.landmark entry in the
// blob sr, 0 when it has .no.prefetch.landmark or none. Entries are listed
// in blob order and the landmark follows the prioritized files, so only
// the start of the TOC is decoded.
func landmarkOffset(sr *io.SectionReader, f Format) (int64, error) {
	d := tocDecompressorFor(f)
	_, tocOffset, tocSize, err := compression.LocateTOC(sr, d, string(f))
	if err != nil {
		return 0, err
	}
	rc, err := d.DecompressTOC(io.NewSectionReader(sr, tocOffset, tocSize))
	if err != nil {
		return 0, fmt.Errorf("decompress TOC: %w", err)
	}
	defer rc.Close()
	dec := json.NewDecoder(rc)
	if err := expectDelim(dec, '{'); err != nil {
		return 0, err
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return 0, fmt.Errorf("decode TOC: %w", err)
		}
		if key != "entries" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return 0, fmt.Errorf("decode TOC: %w", err)
			}
			continue
		}
		if err := expectDelim(dec, '['); err != nil {
			return 0, err
		}
		for dec.More() {
			var e struct {
				Name   string `json:"name"`
				Offset int64  `json:"offset"`
			}
			if err := dec.Decode(&e); err != nil {
				return 0, fmt.Errorf("decode TOC entry: %w", err)
			}
			switch e.Name {
			case estargz.PrefetchLandmark:
				return e.Offset, nil
			case estargz.NoPrefetchLandmark:
				return 0, nil
			}
		}
		return 0, nil
	}
	return 0, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return fmt.Errorf("decode TOC: %w", err)
	}
	if t != want {
		return fmt.Errorf("decode TOC: got %v, want %v", t, want)
	}
	return nil
}

// isLazy reports whether a layer descriptor marks an eStargz or
// zstd:chunked blob, i.e. one a lazy runtime can already use.
func isLazy(desc ocispec.Descriptor) bool {
	_, ok := desc.Annotations[estargz.TOCJSONDigestAnnotation]
	return ok && images.IsLayerType(desc.MediaType)
}
