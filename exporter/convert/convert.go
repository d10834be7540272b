// Package convert turns image layers into optimized eStargz or zstd:chunked:
// per layer the prioritized files (the ones a workload reads at start, in
// the order it reads them) come first, followed by the .prefetch.landmark,
// so that a lazy-pulling runtime prefetches exactly that range.
//
// ConvertLayer converts one blob; Image converts a whole image (index or
// manifest) inside a content store, rewriting configs, manifests, indexes
// and attestation manifests to match. Layers that are already eStargz are
// kept untouched by default, without reading their blob, so lazily pulled
// base layers are never fetched and stay shareable across images.
package convert

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Format is the layer format conversion writes.
type Format string

const (
	// EStargz is gzip-compressed eStargz, readable by any gzip layer
	// consumer and lazily by the stargz snapshotter.
	EStargz Format = "estargz"
	// ZstdChunked is zstd:chunked (zstd frames per chunk, TOC in a
	// skippable frame), lazily readable by the stargz snapshotter and
	// containers/storage. It needs OCI media types.
	ZstdChunked Format = "zstd:chunked"
)

var (
	// ErrDigestMismatch reports a blob whose content does not match the
	// digest (or size) of its descriptor, or a layer whose uncompressed
	// content does not match its config diff_id.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrPathEscapes reports a tar entry (or hardlink target) whose path
	// leaves the layer root once cleaned, like "../x" or "/../x".
	ErrPathEscapes = errors.New("tar entry path escapes the layer root")
	// ErrDockerZstdChunked reports a zstd:chunked conversion that would
	// have to write Docker media types, which have no zstd:chunked layer
	// type. Use WithOCIMediaTypes(true).
	ErrDockerZstdChunked = errors.New("zstd:chunked needs OCI media types")
	// ErrUnsupportedLayer reports a layer that cannot be converted: an
	// unknown, encrypted or non-distributable media type, or tar content
	// eStargz cannot represent (such as a hardlink to a file outside the
	// layer).
	ErrUnsupportedLayer = errors.New("unsupported layer")
)

// Option configures ConvertLayer and Image.
type Option func(*options) error

type options struct {
	format      Format
	level       int
	levelSet    bool
	chunkSize   int
	prioritized func(platform ocispec.Platform, layerIndex int) []string
	byManifest  func(manifest digest.Digest, layerIndex int) []string
	reoptimize  bool
	oci         *bool
	concurrency int
	tempDir     string
}

func newOptions(opts []Option) (*options, error) {
	o := &options{
		format:      EStargz,
		concurrency: runtime.GOMAXPROCS(0),
	}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	if o.prioritized != nil && o.byManifest != nil {
		return nil, errors.New("WithPrioritizedFiles and WithPrioritizedFilesByManifest are exclusive")
	}
	if o.format == ZstdChunked && o.oci != nil && !*o.oci {
		return nil, fmt.Errorf("WithOCIMediaTypes(false) with %s: %w", o.format, ErrDockerZstdChunked)
	}
	return o, nil
}

// WithFormat selects the output format. Default: EStargz.
func WithFormat(f Format) Option {
	return func(o *options) error {
		switch f {
		case EStargz, ZstdChunked:
			o.format = f
			return nil
		}
		return fmt.Errorf("unknown format %q (want %q or %q)", f, EStargz, ZstdChunked)
	}
}

// WithCompressionLevel sets the compression level: for EStargz a gzip level
// 0–9 (default compression.DefaultGzipLevel, 7), for ZstdChunked a zstd
// level 1–22 (default compression.DefaultZstdLevel, 3). The level is checked
// against the format when conversion starts.
func WithCompressionLevel(level int) Option {
	return func(o *options) error {
		o.level = level
		o.levelSet = true
		return nil
	}
}

// WithChunkSize sets the largest piece of a regular file stored as one
// separately compressed, separately verifiable chunk. Default: estargz's
// (4 MiB).
func WithChunkSize(size int) Option {
	return func(o *options) error {
		if size < 0 {
			return fmt.Errorf("negative chunk size %d", size)
		}
		o.chunkSize = size
		return nil
	}
}

// WithPrioritizedFiles gives Image the files to put first in each layer:
// fn is called with the platform of a manifest and the index of a layer in
// it and returns paths (relative to the root, with or without a leading
// "/") in the order the workload reads them. A nil or empty result means no
// prefetch for that layer (.no.prefetch.landmark). fn may be called
// concurrently. Default: no prioritized files anywhere.
//
// ConvertLayer takes its list as an argument and rejects this option.
func WithPrioritizedFiles(fn func(platform ocispec.Platform, layerIndex int) []string) Option {
	return func(o *options) error {
		o.prioritized = fn
		return nil
	}
}

// WithPrioritizedFilesByManifest is WithPrioritizedFiles keyed by the
// digest of the source image manifest instead of its platform, the way a
// trace record attributes files (manifest digest and layer index). It
// cannot be combined with WithPrioritizedFiles.
func WithPrioritizedFilesByManifest(fn func(manifest digest.Digest, layerIndex int) []string) Option {
	return func(o *options) error {
		o.byManifest = fn
		return nil
	}
}

// WithReoptimizeBase makes Image convert layers that are already eStargz or
// zstd:chunked (those with the TOC digest annotation) like any other layer.
// That reads the whole blob, which for a lazily pulled base layer means
// fetching it, and gives the layer a new digest, so registries can no longer
// share it with the base image. Default: false, such layers are kept as
// they are and their blobs are not read.
func WithReoptimizeBase(reoptimize bool) Option {
	return func(o *options) error {
		o.reoptimize = reoptimize
		return nil
	}
}

// WithOCIMediaTypes(true) writes OCI media types for every converted index,
// manifest, config and layer, converting Docker ones; false requires the
// Docker family to be kept, which zstd:chunked cannot do. Default: each
// manifest and index keeps the media type family it has.
func WithOCIMediaTypes(oci bool) Option {
	return func(o *options) error {
		o.oci = &oci
		return nil
	}
}

// WithConcurrency bounds how many layers Image converts at once (each
// conversion itself compresses on up to GOMAXPROCS goroutines). Default:
// GOMAXPROCS.
func WithConcurrency(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("concurrency %d must be at least 1", n)
		}
		o.concurrency = n
		return nil
	}
}

// WithTempDir sets where the uncompressed layer and the converted blob are
// staged. Conversion needs about the uncompressed size plus the compressed
// size there per layer in flight (estargz itself also stages the compressed
// size in os.TempDir()). Default: os.TempDir().
func WithTempDir(dir string) Option {
	return func(o *options) error {
		if fi, err := os.Stat(dir); err != nil {
			return fmt.Errorf("temp dir: %w", err)
		} else if !fi.IsDir() {
			return fmt.Errorf("temp dir %s is not a directory", dir)
		}
		o.tempDir = dir
		return nil
	}
}
