package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/labels"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// Image converts the image desc points at (an index, possibly nested and
// multi-platform, or a single manifest; Docker or OCI media types) inside
// cs and returns the descriptor of the converted image.
//
// Every platform manifest's layers are converted in parallel, bounded by
// WithConcurrency, and the new blobs, configs (rootfs.diff_ids), manifests
// and indexes are written to cs. Layers that are already eStargz or
// zstd:chunked are kept without reading their blobs unless
// WithReoptimizeBase is set; non-distributable, encrypted and non-tar layers
// are kept too. BuildKit attestation manifests in an index are rewritten so
// that their vnd.docker.reference.digest annotation, their subject and the
// subjects of their in-toto statements name the converted manifest.
// Anything unchanged keeps its digest; an image with nothing to convert is
// returned as is.
//
// The input blobs are not modified or deleted; leases and garbage
// collection of the old ones are the caller's business, as are the blobs
// already written when conversion fails part way.
func Image(ctx context.Context, cs content.Store, desc ocispec.Descriptor, opts ...Option) (ocispec.Descriptor, *Report, error) {
	o, err := newOptions(opts)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if _, err := newCompression(o); err != nil { // reject a bad level before any work
		return ocispec.Descriptor{}, nil, err
	}
	if !images.IsIndexType(desc.MediaType) && !images.IsManifestType(desc.MediaType) {
		return ocispec.Descriptor{}, nil, fmt.Errorf("convert %s: media type %q is not an image index or manifest", desc.Digest, desc.MediaType)
	}
	c := &imageConverter{
		cs:        cs,
		o:         o,
		tasks:     make(map[string]*layerTask),
		nodes:     make(map[string]*node),
		converted: make(map[digest.Digest]ocispec.Descriptor),
	}
	root, err := c.plan(ctx, desc, nil)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if err := c.convertLayers(ctx); err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	// Every image manifest first, so that attestations anywhere in the tree
	// find the new digest of their subject.
	for _, n := range c.manifests {
		if _, err := c.rewrite(ctx, n); err != nil {
			return ocispec.Descriptor{}, nil, err
		}
	}
	out, err := c.rewrite(ctx, root)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	return out, c.report(out), nil
}

type nodeKind int

const (
	kindOther nodeKind = iota
	kindIndex
	kindManifest
	kindAttestation
)

// node is one index or manifest of the image being converted.
type node struct {
	kind     nodeKind
	desc     ocispec.Descriptor
	obj      *object // the parsed index or manifest
	children []*node // index entries, in order

	// Image manifests.
	platform ocispec.Platform
	manifest ocispec.Manifest
	config   *object
	diffIDs  []digest.Digest
	layers   []*layerTask // nil entry: layer kept as is
	kept     []string     // why layer i is kept

	rewritten bool
	newDesc   ocispec.Descriptor
}

// layerTask is one distinct layer conversion; layers shared by manifests
// with the same prioritized list are converted once.
type layerTask struct {
	src         ocispec.Descriptor
	docker      bool
	prioritized []string

	desc         ocispec.Descriptor
	diffID       digest.Digest
	sourceDiffID digest.Digest
	placed       int
	missing      []string
	duration     time.Duration
}

type imageConverter struct {
	cs content.Store
	o  *options

	tasks     map[string]*layerTask // by source digest, media family and list
	taskOrder []*layerTask
	nodes     map[string]*node // by digest and platform
	manifests []*node          // image manifests, in walk order

	converted map[digest.Digest]ocispec.Descriptor // old manifest → new

	attestations []AttestationReport
}

// plan reads the index and manifest tree and decides, per layer, whether to
// convert or keep it. Nothing is written yet, so a bad image fails before
// any conversion work.
func (c *imageConverter) plan(ctx context.Context, desc ocispec.Descriptor, platform *ocispec.Platform) (*node, error) {
	key := desc.Digest.String()
	if platform != nil {
		key += "|" + platformString(*platform)
	}
	if n, ok := c.nodes[key]; ok {
		return n, nil
	}
	n := &node{desc: desc}
	c.nodes[key] = n
	switch {
	case images.IsIndexType(desc.MediaType):
		n.kind = kindIndex
		return n, c.planIndex(ctx, n)
	case images.IsManifestType(desc.MediaType):
		n.kind = kindManifest
		return n, c.planManifest(ctx, n, platform)
	}
	return n, nil // not an image part conversion knows; kept
}

func (c *imageConverter) planIndex(ctx context.Context, n *node) error {
	b, err := content.ReadBlob(ctx, c.cs, n.desc)
	if err != nil {
		return fmt.Errorf("read index %s: %w", n.desc.Digest, err)
	}
	if n.obj, err = parseObject(b); err != nil {
		return fmt.Errorf("parse index %s: %w", n.desc.Digest, err)
	}
	var children []ocispec.Descriptor
	if err := n.obj.get("manifests", &children); err != nil {
		return fmt.Errorf("parse index %s: %w", n.desc.Digest, err)
	}
	for _, child := range children {
		if isAttestation(child) {
			// Rewritten once the manifest it refers to is converted.
			n.children = append(n.children, &node{kind: kindAttestation, desc: child})
			continue
		}
		cn, err := c.plan(ctx, child, child.Platform)
		if err != nil {
			return err
		}
		n.children = append(n.children, cn)
	}
	return nil
}

func (c *imageConverter) planManifest(ctx context.Context, n *node, platform *ocispec.Platform) error {
	b, err := content.ReadBlob(ctx, c.cs, n.desc)
	if err != nil {
		return fmt.Errorf("read manifest %s: %w", n.desc.Digest, err)
	}
	if n.obj, err = parseObject(b); err != nil {
		return fmt.Errorf("parse manifest %s: %w", n.desc.Digest, err)
	}
	if err := json.Unmarshal(b, &n.manifest); err != nil {
		return fmt.Errorf("parse manifest %s: %w", n.desc.Digest, err)
	}
	if !images.IsConfigType(n.manifest.Config.MediaType) {
		n.kind = kindOther // an artifact, not a runnable image
		return nil
	}
	cb, err := content.ReadBlob(ctx, c.cs, n.manifest.Config)
	if err != nil {
		return fmt.Errorf("read config %s of manifest %s: %w", n.manifest.Config.Digest, n.desc.Digest, err)
	}
	if n.config, err = parseObject(cb); err != nil {
		return fmt.Errorf("parse config %s: %w", n.manifest.Config.Digest, err)
	}
	var cfg struct {
		ocispec.Platform
		RootFS struct {
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return fmt.Errorf("parse config %s: %w", n.manifest.Config.Digest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(n.manifest.Layers) {
		return fmt.Errorf("manifest %s has %d layers but its config %d diff_ids", n.desc.Digest, len(n.manifest.Layers), len(cfg.RootFS.DiffIDs))
	}
	n.diffIDs = cfg.RootFS.DiffIDs
	if platform != nil {
		n.platform = *platform
	} else {
		n.platform = cfg.Platform
	}

	docker := c.docker(n.desc.MediaType)
	n.layers = make([]*layerTask, len(n.manifest.Layers))
	n.kept = make([]string, len(n.manifest.Layers))
	for i, l := range n.manifest.Layers {
		switch {
		case isLazy(l) && !c.o.reoptimize:
			n.kept[i] = "already lazy"
			continue
		case images.IsNonDistributable(l.MediaType):
			n.kept[i] = "non-distributable"
			continue
		case !convertibleLayer(l.MediaType):
			n.kept[i] = "media type " + l.MediaType
			continue
		}
		if c.o.format == ZstdChunked && docker {
			return fmt.Errorf("manifest %s is %s: %w (use WithOCIMediaTypes(true))", n.desc.Digest, n.desc.MediaType, ErrDockerZstdChunked)
		}
		var list []string
		switch {
		case c.o.prioritized != nil:
			list = c.o.prioritized(n.platform, i)
		case c.o.byManifest != nil:
			list = c.o.byManifest(n.desc.Digest, i)
		}
		key := l.Digest.String() + "|" + strconv.FormatBool(docker) + "|" + strings.Join(list, "\x00")
		t, ok := c.tasks[key]
		if !ok {
			t = &layerTask{src: l, docker: docker, prioritized: slices.Clone(list)}
			c.tasks[key] = t
			c.taskOrder = append(c.taskOrder, t)
		}
		n.layers[i] = t
	}
	c.manifests = append(c.manifests, n)
	return nil
}

// docker reports whether output for a manifest or index of media type mt
// uses Docker media types.
func (c *imageConverter) docker(mt string) bool {
	if c.o.oci != nil {
		return !*c.o.oci
	}
	return isDockerType(mt)
}

func (c *imageConverter) convertLayers(ctx context.Context) error {
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(c.o.concurrency)
	for _, t := range c.taskOrder {
		eg.Go(func() error { return c.convertOne(ctx, t) })
	}
	return eg.Wait()
}

func (c *imageConverter) convertOne(ctx context.Context, t *layerTask) error {
	start := time.Now()
	ra, err := c.cs.ReaderAt(ctx, t.src)
	if err != nil {
		return fmt.Errorf("open layer %s: %w", t.src.Digest, err)
	}
	defer ra.Close()
	l, err := convertLayer(ctx, ra, t.src, t.prioritized, t.docker, c.o)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Commit(ctx, c.cs); err != nil {
		return err
	}
	t.desc = l.Descriptor
	t.diffID = l.DiffID
	t.sourceDiffID = l.SourceDiffID
	t.placed = l.Prioritized
	t.missing = l.Missing
	t.duration = time.Since(start)
	return nil
}

// rewrite writes the converted form of n and everything below it and
// returns its new descriptor (n.desc when nothing changed).
func (c *imageConverter) rewrite(ctx context.Context, n *node) (ocispec.Descriptor, error) {
	if n.rewritten {
		return n.newDesc, nil
	}
	var err error
	switch n.kind {
	case kindIndex:
		n.newDesc, err = c.rewriteIndex(ctx, n)
	case kindManifest:
		n.newDesc, err = c.rewriteManifest(ctx, n)
	default:
		n.newDesc = n.desc
	}
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	n.rewritten = true
	return n.newDesc, nil
}

func (c *imageConverter) rewriteIndex(ctx context.Context, n *node) (ocispec.Descriptor, error) {
	entries := make([]ocispec.Descriptor, len(n.children))
	// Images first: attestations need the new digests of their subjects.
	for i, child := range n.children {
		if child.kind == kindAttestation {
			continue
		}
		nd, err := c.rewrite(ctx, child)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		entries[i] = entry(child.desc, nd)
	}
	for i, child := range n.children {
		if child.kind != kindAttestation {
			continue
		}
		nd, err := c.rewriteAttestation(ctx, child)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		entries[i] = nd
	}

	var old []ocispec.Descriptor
	if err := n.obj.get("manifests", &old); err != nil {
		return ocispec.Descriptor{}, err
	}
	mt := n.desc.MediaType
	if !c.docker(mt) {
		mt = ociType(mt)
	}
	if mt == n.desc.MediaType && descsEqual(old, entries) {
		return n.desc, nil
	}
	if err := n.obj.set("manifests", entries); err != nil {
		return ocispec.Descriptor{}, err
	}
	if n.obj.has("mediaType") || mt != n.desc.MediaType {
		if err := n.obj.set("mediaType", mt); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	return c.writeJSON(ctx, n.obj, n.desc, mt, entries)
}

// entry is an index entry old updated to point at the blob nd describes,
// keeping its platform and annotations.
func entry(old, nd ocispec.Descriptor) ocispec.Descriptor {
	e := old
	e.MediaType = nd.MediaType
	e.Digest = nd.Digest
	e.Size = nd.Size
	e.Data = nil
	return e
}

func (c *imageConverter) rewriteManifest(ctx context.Context, n *node) (ocispec.Descriptor, error) {
	docker := c.docker(n.desc.MediaType)
	layers := make([]ocispec.Descriptor, len(n.manifest.Layers))
	diffIDs := slices.Clone(n.diffIDs)
	for i, l := range n.manifest.Layers {
		t := n.layers[i]
		if t == nil {
			if !docker {
				l.MediaType = ociType(l.MediaType)
			}
			layers[i] = l
			continue
		}
		if t.sourceDiffID != n.diffIDs[i] {
			return ocispec.Descriptor{}, fmt.Errorf("manifest %s layer %d (%s): uncompressed content is %s, config says %s: %w",
				n.desc.Digest, i, t.src.Digest, t.sourceDiffID, n.diffIDs[i], ErrDigestMismatch)
		}
		nl := t.desc
		nl.URLs = nil
		nl.Platform = l.Platform
		nl.ArtifactType = l.ArtifactType
		layers[i] = nl
		diffIDs[i] = t.diffID
	}
	mt, cmt := n.desc.MediaType, n.manifest.Config.MediaType
	if !docker {
		mt, cmt = ociType(mt), ociType(cmt)
	}
	if mt == n.desc.MediaType && cmt == n.manifest.Config.MediaType && descsEqual(n.manifest.Layers, layers) {
		c.setConverted(n.desc.Digest, n.desc)
		return n.desc, nil
	}

	cfg := n.manifest.Config
	if cmt != cfg.MediaType || !slices.Equal(diffIDs, n.diffIDs) {
		var rootfs object
		if err := n.config.get("rootfs", &rootfs); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("config %s: %w", cfg.Digest, err)
		}
		if err := rootfs.set("diff_ids", diffIDs); err != nil {
			return ocispec.Descriptor{}, err
		}
		if err := n.config.set("rootfs", &rootfs); err != nil {
			return ocispec.Descriptor{}, err
		}
		nc, err := c.writeJSON(ctx, n.config, cfg, cmt, nil)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		cfg = entry(cfg, nc)
	}
	if err := n.obj.set("config", cfg); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := n.obj.set("layers", layers); err != nil {
		return ocispec.Descriptor{}, err
	}
	if n.obj.has("mediaType") || mt != n.desc.MediaType {
		if err := n.obj.set("mediaType", mt); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	nd, err := c.writeJSON(ctx, n.obj, n.desc, mt, append([]ocispec.Descriptor{cfg}, layers...))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	c.setConverted(n.desc.Digest, nd)
	return nd, nil
}

// setConverted records a manifest's new descriptor for the attestations
// that refer to it. Rewriting runs on one goroutine; only layer conversion
// is parallel.
func (c *imageConverter) setConverted(old digest.Digest, nd ocispec.Descriptor) {
	c.converted[old] = nd
}

// writeJSON stores obj as a blob replacing old (whose descriptor fields
// other than media type, digest and size carry over), labelled so that a
// containerd garbage collector keeps children alive while it is.
func (c *imageConverter) writeJSON(ctx context.Context, obj *object, old ocispec.Descriptor, mediaType string, children []ocispec.Descriptor) (ocispec.Descriptor, error) {
	b, err := obj.MarshalJSON()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	nd := old
	nd.MediaType = mediaType
	nd.Digest = digest.FromBytes(b)
	nd.Size = int64(len(b))
	nd.Data = nil
	if nd.Digest == old.Digest {
		return nd, nil
	}
	labels := make(map[string]string)
	for i, ch := range children {
		for _, key := range images.ChildGCLabels(ch) {
			if strings.HasSuffix(key, ".") {
				key += strconv.Itoa(i)
			}
			labels[key] = ch.Digest.String()
		}
	}
	ref := "stargazer-convert-" + nd.Digest.String()
	if err := content.WriteBlob(ctx, c.cs, ref, bytes.NewReader(b), nd, content.WithLabels(labels)); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("write %s %s: %w", mediaType, nd.Digest, err)
	}
	return nd, nil
}

// rewriteAttestation points a BuildKit attestation manifest at the
// converted form of the manifest it describes and returns the new index
// entry. In-toto statements are rewritten only in their subject digests, and
// the attestation config's diff_ids (which BuildKit sets to the statement
// digests) follow. Signed envelopes are left alone: their signature would
// break.
func (c *imageConverter) rewriteAttestation(ctx context.Context, n *node) (ocispec.Descriptor, error) {
	oldSubject, err := digest.Parse(n.desc.Annotations[annotationReferenceDigest])
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("attestation manifest %s: %s annotation: %w", n.desc.Digest, annotationReferenceDigest, err)
	}
	subject, moved := c.converted[oldSubject]
	moved = moved && subject.Digest != oldSubject
	docker := c.docker(n.desc.MediaType)
	mt := n.desc.MediaType
	if !docker {
		mt = ociType(mt)
	}
	if !moved && mt == n.desc.MediaType {
		n.newDesc = n.desc
		return n.desc, nil
	}

	b, err := content.ReadBlob(ctx, c.cs, n.desc)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("read attestation manifest %s: %w", n.desc.Digest, err)
	}
	obj, err := parseObject(b)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("parse attestation manifest %s: %w", n.desc.Digest, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("parse attestation manifest %s: %w", n.desc.Digest, err)
	}

	renamed := make(map[digest.Digest]digest.Digest) // old statement → new
	for i, l := range m.Layers {
		if !moved || l.MediaType != images.MediaTypeInToto {
			continue
		}
		lb, err := content.ReadBlob(ctx, c.cs, l)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("read attestation %s: %w", l.Digest, err)
		}
		nb, changed, err := rewriteStatement(lb, oldSubject, subject.Digest)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("attestation %s: %w", l.Digest, err)
		}
		if !changed {
			continue
		}
		nl := l
		nl.Digest = digest.FromBytes(nb)
		nl.Size = int64(len(nb))
		nl.Data = nil
		if nl.Annotations[labels.LabelUncompressed] == l.Digest.String() {
			nl.Annotations = maps.Clone(nl.Annotations)
			nl.Annotations[labels.LabelUncompressed] = nl.Digest.String()
		}
		ref := "stargazer-convert-" + nl.Digest.String()
		if err := content.WriteBlob(ctx, c.cs, ref, bytes.NewReader(nb), nl); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("write attestation %s: %w", nl.Digest, err)
		}
		renamed[l.Digest] = nl.Digest
		m.Layers[i] = nl
	}
	if len(renamed) > 0 {
		if err := obj.set("layers", m.Layers); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	if moved && m.Subject != nil && m.Subject.Digest == oldSubject {
		s := entry(*m.Subject, subject)
		s.Platform, s.Annotations = nil, nil
		if err := obj.set("subject", s); err != nil {
			return ocispec.Descriptor{}, err
		}
	}

	cfg := m.Config
	cmt := cfg.MediaType
	if !docker {
		cmt = ociType(cmt)
	}
	if images.IsConfigType(cfg.MediaType) && (len(renamed) > 0 || cmt != cfg.MediaType) {
		nc, err := c.rewriteAttestationConfig(ctx, cfg, cmt, renamed)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		cfg = entry(cfg, nc)
		if err := obj.set("config", cfg); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	if obj.has("mediaType") || mt != n.desc.MediaType {
		if err := obj.set("mediaType", mt); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	nd, err := c.writeJSON(ctx, obj, n.desc, mt, append([]ocispec.Descriptor{cfg}, m.Layers...))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if moved {
		nd.Annotations = maps.Clone(nd.Annotations)
		nd.Annotations[annotationReferenceDigest] = subject.Digest.String()
	} else {
		subject = ocispec.Descriptor{Digest: oldSubject}
	}
	n.newDesc = nd
	c.attestations = append(c.attestations, AttestationReport{OldDigest: n.desc.Digest, NewDigest: nd.Digest, Subject: subject.Digest})
	return nd, nil
}

func (c *imageConverter) rewriteAttestationConfig(ctx context.Context, cfg ocispec.Descriptor, mediaType string, renamed map[digest.Digest]digest.Digest) (ocispec.Descriptor, error) {
	b, err := content.ReadBlob(ctx, c.cs, cfg)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("read attestation config %s: %w", cfg.Digest, err)
	}
	obj, err := parseObject(b)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("parse attestation config %s: %w", cfg.Digest, err)
	}
	if obj.has("rootfs") && len(renamed) > 0 {
		var rootfs object
		if err := obj.get("rootfs", &rootfs); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("attestation config %s: %w", cfg.Digest, err)
		}
		var diffIDs []digest.Digest
		if err := rootfs.get("diff_ids", &diffIDs); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("attestation config %s: %w", cfg.Digest, err)
		}
		for i, d := range diffIDs {
			if nd, ok := renamed[d]; ok {
				diffIDs[i] = nd
			}
		}
		if err := rootfs.set("diff_ids", diffIDs); err != nil {
			return ocispec.Descriptor{}, err
		}
		if err := obj.set("rootfs", &rootfs); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	return c.writeJSON(ctx, obj, cfg, mediaType, nil)
}

// rewriteStatement replaces oldSubject by newSubject in the subject list of
// an in-toto statement.
func rewriteStatement(b []byte, oldSubject, newSubject digest.Digest) ([]byte, bool, error) {
	st, err := parseObject(b)
	if err != nil {
		return nil, false, fmt.Errorf("parse in-toto statement: %w", err)
	}
	var subjects []*object
	if err := st.get("subject", &subjects); err != nil {
		return nil, false, err
	}
	changed := false
	for _, s := range subjects {
		var digests map[string]string
		if err := s.get("digest", &digests); err != nil {
			return nil, false, err
		}
		hit := false
		for alg, enc := range digests {
			if digest.NewDigestFromEncoded(digest.Algorithm(alg), enc) == oldSubject {
				delete(digests, alg)
				hit = true
			}
		}
		if !hit {
			continue
		}
		digests[newSubject.Algorithm().String()] = newSubject.Encoded()
		if err := s.set("digest", digests); err != nil {
			return nil, false, err
		}
		changed = true
	}
	if !changed {
		return b, false, nil
	}
	if err := st.set("subject", subjects); err != nil {
		return nil, false, err
	}
	nb, err := st.MarshalJSON()
	return nb, err == nil, err
}

func descsEqual(a, b []ocispec.Descriptor) bool {
	return slices.EqualFunc(a, b, func(x, y ocispec.Descriptor) bool {
		return x.MediaType == y.MediaType && x.Digest == y.Digest && x.Size == y.Size &&
			maps.Equal(x.Annotations, y.Annotations)
	})
}

func platformString(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}
