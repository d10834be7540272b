package tracer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// IndexImage builds the LayerIndex of an image's layers. A layer that
// carries a TOC (eStargz or zstd:chunked, announced by its descriptor's
// annotations) is indexed from its TOC alone, so with a registry provider
// that serves ranges only the TOC is fetched; any other layer is read and
// decompressed whole.
func IndexImage(ctx context.Context, p content.Provider, m ocispec.Manifest) (*LayerIndex, error) {
	return IndexImageLayers(ctx, p, m, nil)
}

// IndexImageLayers is IndexImage with some layers left out: a layer for
// which skip returns true is indexed as empty and its blob is not read.
func IndexImageLayers(ctx context.Context, p content.Provider, m ocispec.Manifest, skip func(i int, l ocispec.Descriptor) bool) (*LayerIndex, error) {
	idx := NewLayerIndex()
	for i, l := range m.Layers {
		var err error
		if skip != nil && skip(i, l) {
			err = idx.AddLayer(emptyTar())
		} else if tocDigest, ok := layerTOCDigest(l); ok {
			err = indexFromTOC(ctx, p, l, tocDigest, idx)
		} else {
			err = indexFromBlob(ctx, p, l, idx)
		}
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, l.Digest, err)
		}
	}
	return idx, nil
}

func emptyTar() io.Reader {
	var buf bytes.Buffer
	tar.NewWriter(&buf).Close()
	return &buf
}

// HasTOC reports whether a layer descriptor announces a TOC (eStargz or
// zstd:chunked).
func HasTOC(l ocispec.Descriptor) bool {
	_, ok := layerTOCDigest(l)
	return ok
}

func layerTOCDigest(l ocispec.Descriptor) (digest.Digest, bool) {
	for _, k := range []string{estargz.TOCJSONDigestAnnotation, zstdchunked.ManifestChecksumAnnotation} {
		if v, ok := l.Annotations[k]; ok {
			d, err := digest.Parse(v)
			return d, err == nil
		}
	}
	return "", false
}

func indexFromBlob(ctx context.Context, p content.Provider, l ocispec.Descriptor, idx *LayerIndex) error {
	ra, err := p.ReaderAt(ctx, l)
	if err != nil {
		return err
	}
	defer ra.Close()
	ds, err := compression.DecompressStream(content.NewReader(ra))
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	defer ds.Close()
	return idx.AddLayer(ds)
}

// indexFromTOC adds a layer from its verified TOC, as a tar stream of the
// TOC's headers without file contents.
func indexFromTOC(ctx context.Context, p content.Provider, l ocispec.Descriptor, tocDigest digest.Digest, idx *LayerIndex) error {
	ra, err := p.ReaderAt(ctx, l)
	if err != nil {
		return err
	}
	defer ra.Close()
	r, err := estargz.Open(io.NewSectionReader(ra, 0, l.Size), estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		return fmt.Errorf("open TOC: %w", err)
	}
	if _, err := r.VerifyTOC(tocDigest); err != nil {
		return fmt.Errorf("verify TOC: %w", err)
	}
	root, ok := r.Lookup("")
	if !ok {
		return errors.New("TOC has no root")
	}
	var hdrs []*tar.Header
	var walk func(dir string, e *estargz.TOCEntry)
	walk = func(dir string, e *estargz.TOCEntry) {
		var names []string
		children := map[string]*estargz.TOCEntry{}
		e.ForeachChild(func(base string, c *estargz.TOCEntry) bool {
			names = append(names, base)
			children[base] = c
			return true
		})
		sort.Strings(names)
		for _, base := range names {
			c := children[base]
			name := path.Join(dir, base)
			h := &tar.Header{Name: name, Linkname: c.LinkName, Mode: c.Mode}
			switch c.Type {
			case "dir":
				h.Typeflag = tar.TypeDir
				h.Name += "/"
			case "reg":
				h.Typeflag = tar.TypeReg
			case "symlink":
				h.Typeflag = tar.TypeSymlink
			case "hardlink":
				h.Typeflag = tar.TypeLink
				h.Linkname = strings.TrimPrefix(c.LinkName, "/")
			case "char":
				h.Typeflag = tar.TypeChar
			case "block":
				h.Typeflag = tar.TypeBlock
			case "fifo":
				h.Typeflag = tar.TypeFifo
			default:
				continue
			}
			hdrs = append(hdrs, h)
			if c.Type == "dir" {
				walk(name, c)
			}
		}
	}
	walk("", root)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("TOC entry %s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return idx.AddLayer(&buf)
}

// RuntimeFiles are the files a container runtime reads from an image
// before the workload starts: BuildKit's executor, containerd and runc
// resolve the container's user and its groups from them. A record never
// holds them (the workload did not read them), but a lazily pulled image
// is waiting for them all the same.
var RuntimeFiles = []string{"etc/passwd", "etc/group"}

// runtimeEntries returns entries for those of RuntimeFiles the image has
// as regular files.
func runtimeEntries(idx *LayerIndex) []Entry {
	var entries []Entry
	for _, p := range RuntimeFiles {
		if _, ok := idx.Lookup(p); ok {
			entries = append(entries, Entry{Path: p})
		}
	}
	return entries
}

// AttributeImage attributes a record to the layers of an image (see
// IndexImageLayers for skip) and returns each layer's paths in record
// order, keyed by layer index, with the recorded paths that are not
// regular files of those layers. The image's RuntimeFiles come first, as
// the runtime reads them first.
func AttributeImage(ctx context.Context, p content.Provider, m ocispec.Manifest, manifestDigest digest.Digest, entries []Entry, skip func(i int, l ocispec.Descriptor) bool) (map[int][]string, []string, error) {
	idx, err := IndexImageLayers(ctx, p, m, skip)
	if err != nil {
		return nil, nil, fmt.Errorf("attribute the record to layers: %w", err)
	}
	attributed, missing := Attribute(append(runtimeEntries(idx), entries...), idx, manifestDigest.String())
	lists := map[int][]string{}
	for _, e := range attributed {
		if e.LayerIndex != nil {
			lists[*e.LayerIndex] = append(lists[*e.LayerIndex], e.Path)
		}
	}
	return lists, missing, nil
}
