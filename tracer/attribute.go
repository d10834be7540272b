package tracer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// OCI layer whiteout markers (image-spec, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// maxSymlinkHops matches the kernel's limit (MAXSYMLINKS) so a lookup fails
// where opening the path in a container would fail with ELOOP.
const maxSymlinkHops = 40

type nodeKind uint8

const (
	kindDir nodeKind = iota
	kindFile
	kindSymlink
	kindOther // devices, fifos: present, but never prefetched content
)

// node is one entry of the merged filesystem tree.
type node struct {
	kind     nodeKind
	layer    int    // topmost layer that provides this entry
	target   string // symlink target
	children map[string]*node
}

func newDir(layer int) *node {
	return &node{kind: kindDir, layer: layer, children: make(map[string]*node)}
}

// LayerIndex is the merged filesystem of an image's layers, built from the
// layers' tar streams, answering which layer provides a file. It applies OCI
// layer semantics: an upper entry replaces a lower one, a directory merges
// with a lower directory, ".wh.NAME" deletes NAME from lower layers,
// ".wh..wh..opq" hides everything a lower layer had in its directory, and a
// hard link is a regular file of the layer that holds it.
type LayerIndex struct {
	root   *node
	layers int
}

// NewLayerIndex returns an empty index; add layers with AddLayer, lowest
// (base) layer first.
func NewLayerIndex() *LayerIndex {
	return &LayerIndex{root: newDir(-1)}
}

// Layers reports how many layers were added.
func (x *LayerIndex) Layers() int { return x.layers }

// layerEntry is one tar header of the layer being added, reduced to what the
// index needs.
type layerEntry struct {
	name   string // cleaned, relative
	kind   nodeKind
	target string
}

// AddLayer adds the next layer above those already added. r is the layer's
// uncompressed tar stream (a gzip stream is recognised and decompressed
// too). An entry whose name escapes the root ("../x") fails the layer and
// leaves the index unchanged.
func (x *LayerIndex) AddLayer(r io.Reader) error {
	layer := x.layers
	br := bufio.NewReader(r)
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("layer %d: gzip: %w", layer, err)
		}
		defer zr.Close()
		r = zr
	} else {
		r = br
	}

	// Whiteouts apply only to lower layers, whatever their position in the
	// tar stream, so the whole layer is read before the tree is touched.
	var (
		adds      []layerEntry
		whiteouts []string
		opaques   []string
	)
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("layer %d: read tar: %w", layer, err)
		}
		name, err := cleanTarName(h.Name)
		if err != nil {
			return fmt.Errorf("layer %d: %w", layer, err)
		}
		if name == "" {
			continue // the root directory itself
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		switch {
		case base == whiteoutOpaque:
			opaques = append(opaques, dir)
			if dir != "" {
				// The marker implies its directory exists in this layer.
				adds = append(adds, layerEntry{name: dir, kind: kindDir})
			}
			continue
		case strings.HasPrefix(base, whiteoutMeta):
			continue // other AUFS metadata (.wh..wh.plnk, ...): not content
		case strings.HasPrefix(base, whiteoutPrefix):
			whiteouts = append(whiteouts, path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix)))
			continue
		}
		e := layerEntry{name: name}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeRegA, tar.TypeLink, tar.TypeGNUSparse, tar.TypeCont:
			e.kind = kindFile
		case tar.TypeDir:
			e.kind = kindDir
		case tar.TypeSymlink:
			e.kind = kindSymlink
			e.target = h.Linkname
		default:
			e.kind = kindOther
		}
		adds = append(adds, e)
	}

	for _, d := range opaques {
		if n := x.lookupNoFollow(d); n != nil && n.kind == kindDir {
			n.children = make(map[string]*node)
		}
	}
	for _, w := range whiteouts {
		x.remove(w)
	}
	for _, e := range adds {
		x.add(e, layer)
	}
	x.layers++
	return nil
}

// cleanTarName makes a tar entry name relative and clean, rejecting names
// that climb above the root. It returns "" for the root itself.
func cleanTarName(name string) (string, error) {
	c := path.Clean("/" + name)
	if strings.Contains(name, "..") {
		// Clean("/"+name) silently stops ".." at the root; a layer that
		// tries to climb out is malformed or hostile, so say so.
		if rel := path.Clean(strings.TrimLeft(name, "/")); rel == ".." || strings.HasPrefix(rel, "../") {
			return "", fmt.Errorf("tar entry %q: %w", name, ErrPathEscapes)
		}
	}
	return strings.TrimPrefix(c, "/"), nil
}

// lookupNoFollow walks an already clean path without following symlinks, as
// layer entries name tree positions, not resolved paths.
func (x *LayerIndex) lookupNoFollow(p string) *node {
	n := x.root
	if p == "" {
		return n
	}
	for _, c := range strings.Split(p, "/") {
		if n.kind != kindDir {
			return nil
		}
		n = n.children[c]
		if n == nil {
			return nil
		}
	}
	return n
}

func (x *LayerIndex) remove(p string) {
	dir, base := path.Split(p)
	parent := x.lookupNoFollow(strings.TrimSuffix(dir, "/"))
	if parent != nil && parent.kind == kindDir {
		delete(parent.children, base)
	}
}

// add places e into the tree for layer. Missing parents are created as
// directories of this layer, and a lower non-directory where this layer
// needs a directory is replaced, as overlayfs would show it.
func (x *LayerIndex) add(e layerEntry, layer int) {
	n := x.root
	comps := strings.Split(e.name, "/")
	for _, c := range comps[:len(comps)-1] {
		child := n.children[c]
		if child == nil || child.kind != kindDir {
			child = newDir(layer)
			n.children[c] = child
		}
		n = child
	}
	last := comps[len(comps)-1]
	old := n.children[last]
	if e.kind == kindDir {
		if old != nil && old.kind == kindDir {
			old.layer = layer // merged directory: lower children stay
			return
		}
		n.children[last] = newDir(layer)
		return
	}
	n.children[last] = &node{kind: e.kind, layer: layer, target: e.target}
}

// errNotFound ends a lookup for a path the merged tree does not have.
var errNotFound = errors.New("not found")

// resolve walks p in the merged tree, following symlinks inside the image
// root: an absolute target restarts at the root and ".." never climbs above
// it, exactly as inside a container whose root is the image. The last
// component is followed too when followLast is set. It returns the resolved
// clean relative path and its node.
func (x *LayerIndex) resolve(p string, followLast bool) (string, *node, error) {
	rest := splitPath(p)
	var (
		names []string
		nodes = []*node{x.root}
		hops  int
	)
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(names) > 0 {
				names = names[:len(names)-1]
				nodes = nodes[:len(nodes)-1]
			}
			continue
		}
		cur := nodes[len(nodes)-1]
		if cur.kind != kindDir {
			return "", nil, errNotFound
		}
		child := cur.children[c]
		if child == nil {
			return "", nil, errNotFound
		}
		if child.kind == kindSymlink && (len(rest) > 0 || followLast) {
			hops++
			if hops > maxSymlinkHops {
				return "", nil, fmt.Errorf("too many levels of symbolic links")
			}
			if strings.HasPrefix(child.target, "/") {
				names, nodes = names[:0], nodes[:1]
			}
			rest = append(splitPath(child.target), rest...)
			continue
		}
		names = append(names, c)
		nodes = append(nodes, child)
	}
	return strings.Join(names, "/"), nodes[len(nodes)-1], nil
}

func splitPath(p string) []string {
	return strings.Split(strings.Trim(p, "/"), "/")
}

// Resolve returns the path p names in the merged filesystem, with every
// symlink (the last component's included) followed within the image root,
// and whether that path exists.
func (x *LayerIndex) Resolve(p string) (string, bool) {
	r, _, err := x.resolve(p, true)
	return r, err == nil
}

// Lookup returns the topmost layer providing p as a regular file in the
// merged filesystem, following symlinks within the image root. ok is false
// when p is missing, whited out, hidden by an opaque directory, or not a
// regular file.
func (x *LayerIndex) Lookup(p string) (layer int, ok bool) {
	_, layer, ok = x.lookupFile(p)
	return layer, ok
}

func (x *LayerIndex) lookupFile(p string) (string, int, bool) {
	r, n, err := x.resolve(p, true)
	if err != nil || n.kind != kindFile {
		return "", 0, false
	}
	return r, n.layer, true
}

// Attribute fills in LayerIndex and ManifestDigest for each entry whose path
// is a regular file of the image, rewriting the path to the file it resolves
// to (symlinks followed within the image root), and keeps the first of
// entries that resolve to the same file. Paths the image does not provide
// as a regular file (files the workload created, directories, kernel
// interfaces) are left out and returned in missing, in record order. The
// input is not modified.
func Attribute(entries []Entry, idx *LayerIndex, manifestDigest string) (attributed []Entry, missing []string) {
	seen := make(map[string]struct{}, len(entries))
	for _, e := range entries {
		resolved, layer, ok := idx.lookupFile(e.Path)
		if !ok {
			missing = append(missing, e.Path)
			continue
		}
		if _, dup := seen[resolved]; dup {
			continue
		}
		seen[resolved] = struct{}{}
		e.Path = resolved
		e.LayerIndex = &layer
		e.ManifestDigest = manifestDigest
		attributed = append(attributed, e)
	}
	return attributed, missing
}
