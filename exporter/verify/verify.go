// Package verify checks the invariants of a lazily pullable image: every
// layer opens as eStargz or zstd:chunked, its TOC matches the digest
// annotation, every chunk matches its TOC digest, a prefetch landmark is
// present, and the uncompressed content matches the config's diff_id and
// the uncompressed-size annotation. Optionally it checks that each layer's
// prefetch range holds exactly the expected files in the expected order.
//
// Every test that produces an image runs Image on it, and a CLI can exit
// non-zero on its error; Report.WriteTable prints what was found.
package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// Option configures Image and Layer.
type Option func(*options) error

type options struct {
	prioritized  func(platform ocispec.Platform, layerIndex int) []string
	allowNonLazy bool
	concurrency  int
}

// WithPrioritizedFiles makes Image check the prefetch range of each layer:
// fn gets a manifest's platform and a layer index and returns the paths
// expected first, in order (as given to the converter), or nil to skip the
// check for that layer. An empty non-nil list expects no prefetch. Parent
// directories and hardlink targets that eStargz moves along with a file are
// expected where estargz puts them, and paths that are not in the layer
// are ignored. Layers the converter kept as they were (already lazy base
// layers) were not built from the list: return nil for them. Default: no
// order check.
func WithPrioritizedFiles(fn func(platform ocispec.Platform, layerIndex int) []string) Option {
	return func(o *options) error {
		o.prioritized = fn
		return nil
	}
}

// WithAllowNonLazy accepts layers without a TOC digest annotation (plain
// gzip, zstd or tar) instead of failing them; they are still checked
// against their digest and diff_id and reported as not lazy. Default:
// such layers are failures.
func WithAllowNonLazy() Option {
	return func(o *options) error {
		o.allowNonLazy = true
		return nil
	}
}

// WithConcurrency bounds how many layers are checked at once. Default:
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

func newOptions(opts []Option) (*options, error) {
	o := &options{concurrency: runtime.GOMAXPROCS(0)}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// Image checks every platform manifest and layer of the image desc points
// at (an index, possibly nested, or a manifest) and every BuildKit
// attestation manifest in its indexes (its subject must be a manifest of
// the same index, named by its in-toto statements). It returns a report of
// everything checked and, if anything failed, an error joining every
// failure (errors.Join), each naming the manifest and layer.
func Image(ctx context.Context, provider content.Provider, desc ocispec.Descriptor, opts ...Option) (*Report, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	v := &imageVerifier{provider: provider, o: o, seen: make(map[string]bool)}
	v.walk(ctx, desc, nil)

	eg, gctx := errgroup.WithContext(ctx)
	eg.SetLimit(o.concurrency)
	for _, job := range v.jobs {
		eg.Go(func() error {
			lr, err := checkLayer(gctx, provider, job.desc, job.diffID, job.expected, o)
			lr.Index = job.index
			if err != nil {
				lr.Err = err
			}
			*job.out = *lr
			return nil
		})
	}
	eg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	r := &Report{Image: desc, Manifests: v.manifests, Attestations: v.attestations}
	return r, r.Err()
}

type layerJob struct {
	desc     ocispec.Descriptor
	index    int
	diffID   digest.Digest
	expected []string
	out      *LayerReport
}

type imageVerifier struct {
	provider content.Provider
	o        *options

	mu           sync.Mutex
	seen         map[string]bool
	manifests    []*ManifestReport
	attestations []*AttestationReport
	jobs         []layerJob
}

func (v *imageVerifier) walk(ctx context.Context, desc ocispec.Descriptor, platform *ocispec.Platform) {
	key := desc.Digest.String()
	if platform != nil {
		key += "|" + platformString(*platform)
	}
	if v.seen[key] {
		return
	}
	v.seen[key] = true
	switch {
	case images.IsIndexType(desc.MediaType):
		v.walkIndex(ctx, desc)
	case images.IsManifestType(desc.MediaType):
		v.walkManifest(ctx, desc, platform)
	default:
		v.manifests = append(v.manifests, &ManifestReport{
			Digest: desc.Digest,
			Err:    fmt.Errorf("%s has media type %q, not an image index or manifest", desc.Digest, desc.MediaType),
		})
	}
}

func (v *imageVerifier) walkIndex(ctx context.Context, desc ocispec.Descriptor) {
	var idx ocispec.Index
	if err := readJSON(ctx, v.provider, desc, &idx); err != nil {
		v.manifests = append(v.manifests, &ManifestReport{Digest: desc.Digest, Err: fmt.Errorf("index: %w", err)})
		return
	}
	inIndex := make(map[digest.Digest]bool)
	for _, m := range idx.Manifests {
		if !isAttestation(m) {
			inIndex[m.Digest] = true
		}
	}
	for _, m := range idx.Manifests {
		switch {
		case isAttestation(m):
			v.attestations = append(v.attestations, checkAttestation(ctx, v.provider, m, inIndex))
		case images.IsIndexType(m.MediaType), images.IsManifestType(m.MediaType):
			v.walk(ctx, m, m.Platform)
		}
		// Other entries (artifacts) are not images; nothing to check.
	}
}

func (v *imageVerifier) walkManifest(ctx context.Context, desc ocispec.Descriptor, platform *ocispec.Platform) {
	mr := &ManifestReport{Digest: desc.Digest}
	v.manifests = append(v.manifests, mr)
	var m ocispec.Manifest
	if err := readJSON(ctx, v.provider, desc, &m); err != nil {
		mr.Err = fmt.Errorf("manifest: %w", err)
		return
	}
	if !images.IsConfigType(m.Config.MediaType) {
		mr.Err = fmt.Errorf("manifest config has media type %q, not an image config", m.Config.MediaType)
		return
	}
	var cfg struct {
		ocispec.Platform
		RootFS ocispec.RootFS `json:"rootfs"`
	}
	if err := readJSON(ctx, v.provider, m.Config, &cfg); err != nil {
		mr.Err = fmt.Errorf("config: %w", err)
		return
	}
	mr.Platform = cfg.Platform
	if platform != nil {
		mr.Platform = *platform
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		mr.Err = fmt.Errorf("%d layers but %d diff_ids in config %s", len(m.Layers), len(cfg.RootFS.DiffIDs), m.Config.Digest)
		return
	}
	mr.Layers = make([]LayerReport, len(m.Layers))
	for i, l := range m.Layers {
		var expected []string
		if v.o.prioritized != nil {
			expected = v.o.prioritized(mr.Platform, i)
		}
		v.jobs = append(v.jobs, layerJob{desc: l, index: i, diffID: cfg.RootFS.DiffIDs[i], expected: expected, out: &mr.Layers[i]})
	}
}

// Layer checks one layer blob read from provider. diffID is the config's
// diff_id for it ("" skips that check). expected, when non-nil, is the
// prioritized list the layer was converted with (see WithPrioritizedFiles);
// the option form of it is ignored here. The error joins every failure.
func Layer(ctx context.Context, provider content.Provider, desc ocispec.Descriptor, diffID digest.Digest, expected []string, opts ...Option) (*LayerReport, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	lr, err := checkLayer(ctx, provider, desc, diffID, expected, o)
	if err != nil {
		lr.Err = err
		return lr, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	return lr, nil
}

func readJSON(ctx context.Context, provider content.Provider, desc ocispec.Descriptor, v any) error {
	b, err := content.ReadBlob(ctx, provider, desc)
	if err != nil {
		return fmt.Errorf("read %s: %w", desc.Digest, err)
	}
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("descriptor digest: %w", err)
	}
	if int64(len(b)) != desc.Size || desc.Digest.Algorithm().FromBytes(b) != desc.Digest {
		return fmt.Errorf("blob %s: content does not match the descriptor", desc.Digest)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", desc.Digest, err)
	}
	return nil
}

var errNotLazy = errors.New("not lazy-pullable: no TOC digest annotation")

func platformString(p ocispec.Platform) string {
	if p.OS == "" && p.Architecture == "" {
		return "-"
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}
