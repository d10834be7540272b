package worker

import (
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/compression"
)

// prefetchHints are the prefetch sizes of layers, learned from the image
// manifests the worker pulls: stargazer's exporter annotates every layer
// it optimizes with the bytes the stargz snapshotter will prefetch from it
// (compression.PrefetchSizeAnnotation). The snapshotter itself learns that
// number from the layer's TOC, two round trips and a TOC parse after it
// first touches the layer; the registry transport of lazily pulled layers
// (rangeShare) uses the hint to start that download with the first
// request instead.
//
// A hint only ever decides when bytes the snapshotter is about to fetch are
// fetched, never which: a wrong one costs a download, not correctness.
type prefetchHints struct {
	mu    sync.Mutex
	sizes map[digest.Digest]hint
	order []digest.Digest // oldest first
	// heads, once a stargz snapshotter set them, start the prefetch
	// downloads of the layers a manifest hints at (headStarts).
	heads atomic.Pointer[headStarts]
}

// hint is what a manifest told of a layer: the bytes the stargz
// snapshotter will prefetch from it, and the size of its blob.
type hint struct {
	prefetch, blob int64
}

// maxHints bounds the layers remembered; the oldest are forgotten first.
const maxHints = 4096

// maxManifestSize is the largest manifest read for hints; BuildKit refuses
// bigger ones too.
const maxManifestSize = 4 << 20

func newPrefetchHints() *prefetchHints {
	return &prefetchHints{sizes: make(map[digest.Digest]hint)}
}

// size returns what the manifest told of a layer.
func (h *prefetchHints) size(d digest.Digest) (hint, bool) {
	if h == nil {
		return hint{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	n, ok := h.sizes[d]
	return n, ok
}

// hintedLayer is a layer of a manifest with what the manifest told of it.
type hintedLayer struct {
	digest digest.Digest
	hint
}

// learn records the hints of an image manifest and returns the layers that
// had one, in the manifest's order; anything else is ignored.
func (h *prefetchHints) learn(manifest []byte) []hintedLayer {
	var m struct {
		Layers []ocispec.Descriptor `json:"layers"`
	}
	if json.Unmarshal(manifest, &m) != nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var learned []hintedLayer
	for _, l := range m.Layers {
		n, err := strconv.ParseInt(l.Annotations[compression.PrefetchSizeAnnotation], 10, 64)
		if err != nil || n <= 0 || n > l.Size || l.Digest.Validate() != nil {
			continue
		}
		if _, ok := h.sizes[l.Digest]; !ok {
			h.order = append(h.order, l.Digest)
		}
		h.sizes[l.Digest] = hint{prefetch: n, blob: l.Size}
		learned = append(learned, hintedLayer{digest: l.Digest, hint: h.sizes[l.Digest]})
	}
	for len(h.order) > maxHints {
		delete(h.sizes, h.order[0])
		h.order = h.order[1:]
	}
	return learned
}

// watch returns hosts whose clients pass every image manifest they fetch
// to learn on its way to the caller.
func (h *prefetchHints) watch(hosts docker.RegistryHosts) docker.RegistryHosts {
	return wrapTransports(hosts, func(inner http.RoundTripper) http.RoundTripper {
		return &manifestWatch{inner: inner, hints: h}
	})
}

// wrapTransports gives the client of every host hosts returns the
// transport wrap makes of its own.
func wrapTransports(hosts docker.RegistryHosts, wrap func(http.RoundTripper) http.RoundTripper) docker.RegistryHosts {
	return func(host string) ([]docker.RegistryHost, error) {
		list, err := hosts(host)
		if err != nil {
			return nil, err
		}
		out := make([]docker.RegistryHost, len(list))
		for i, h := range list {
			if h.Client != nil {
				c := *h.Client
				inner := c.Transport
				if inner == nil {
					inner = http.DefaultTransport
				}
				c.Transport = wrap(inner)
				h.Client = &c
			}
			out[i] = h
		}
		return out, nil
	}
}

// manifestWatch is a registry transport that hands the image manifests it
// fetches to hints.learn once their body has been read whole, and the
// layers learned to the head starts, if any.
type manifestWatch struct {
	inner http.RoundTripper
	hints *prefetchHints
}

func (t *manifestWatch) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := t.inner.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || res.StatusCode != http.StatusOK ||
		path.Base(path.Dir(req.URL.Path)) != "manifests" || res.ContentLength > maxManifestSize {
		return res, err
	}
	mt, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	if mt != ocispec.MediaTypeImageManifest && mt != images.MediaTypeDockerSchema2Manifest {
		return res, nil
	}
	res.Body = &manifestBody{ReadCloser: res.Body, watch: t, req: req}
	return res, nil
}

// manifestBody keeps what its reader reads, up to maxManifestSize, and
// learns from it at the end.
type manifestBody struct {
	io.ReadCloser
	watch *manifestWatch
	req   *http.Request // the manifest's
	buf   []byte
	over  bool
}

func (b *manifestBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if !b.over {
		if len(b.buf)+n > maxManifestSize {
			b.over, b.buf = true, nil
		} else {
			b.buf = append(b.buf, p[:n]...)
		}
	}
	if err == io.EOF && !b.over {
		learned := b.watch.hints.learn(b.buf)
		b.over, b.buf = true, nil
		if heads := b.watch.hints.heads.Load(); heads != nil && len(learned) > 0 {
			heads.start(b.req, b.watch.inner, learned)
		}
	}
	return n, err
}
