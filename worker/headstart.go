package worker

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"sync"

	digest "github.com/opencontainers/go-digest"
)

// headStarts are prefetch downloads started as soon as an image manifest
// tells the layers' prefetch sizes, before the stargz snapshotter first
// asks for the layers: between BuildKit reading the manifest and the
// snapshotter's first request lie the image config's round trip and the
// solver's work, about 50 ms of an idle link on the start-up benchmark.
//
// A head start downloads only the first headStartSize bytes of a layer's
// prefetch range, so a manifest that is read and never pulled (a build
// whose steps are all cached, say) costs at most that much per layer. When
// the snapshotter then asks for the layer, its rangeShare downloads the
// rest of the range beside it, and the snapshotter's prefetch follows the
// head start and then that download.
//
// The download goes to the blob URL the stargz snapshotter uses (the
// manifest's repository on the same host, no query), with the manifest
// request's Authorization header, and only a request to that URL with that
// same header is served from it (see rangeShare). A layer the snapshotter
// has already asked for in this daemon gets none: its snapshot exists.
type headStarts struct {
	chunkSize int64

	mu sync.Mutex
	// flights are the head starts, by blob URL and Authorization, like
	// rangeShare's keys.
	flights map[string]*rangeFlight
	// seen are the blobs the snapshotter asked for, oldest first in order.
	seen  map[digest.Digest]bool
	order []digest.Digest
}

// headStartSize bounds the bytes of one head start: at 100 Mbit/s, about
// the 80 ms a layer waits for the snapshotter.
const headStartSize = 1 << 20

// maxHeadStarts bounds the head starts kept at once.
const maxHeadStarts = 16

func newHeadStarts(chunkSize int64) *headStarts {
	return &headStarts{chunkSize: chunkSize, flights: make(map[string]*rangeFlight), seen: make(map[digest.Digest]bool)}
}

// start starts the head starts of the layers a manifest fetched with req
// hinted at, through inner.
func (h *headStarts) start(manifest *http.Request, inner http.RoundTripper, layers []hintedLayer) {
	repo := path.Dir(path.Dir(manifest.URL.Path))
	auth := manifest.Header.Get("Authorization")
	for _, l := range layers {
		u := *manifest.URL
		u.Path, u.RawPath, u.RawQuery, u.Fragment = repo+"/blobs/"+l.digest.String(), "", "", ""
		key := rangeKey(u.String(), auth)
		end := min(roundUp(min(l.prefetch, headStartSize), h.chunkSize), l.blob) - 1

		h.mu.Lock()
		if h.seen[l.digest] || h.flights[key] != nil || len(h.flights) >= maxHeadStarts {
			h.mu.Unlock()
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), earlyTimeout)
		f := newEarlyFlight(0, end, cancel)
		h.flights[key] = f
		h.mu.Unlock()

		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			cancel()
			h.forget(key, f)
			continue
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if ua := manifest.Header.Get("User-Agent"); ua != "" {
			req.Header.Set("User-Agent", ua)
		}
		req.Header.Set("Range", fmt.Sprintf("bytes=0-%d", end))
		go downloadEarly(inner, req, f, func() { h.forget(key, f) })
	}
}

// flight returns the head start of key, or nil.
func (h *headStarts) flight(key string) *rangeFlight {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.flights[key]
}

// forget drops head start f of key.
func (h *headStarts) forget(key string, f *rangeFlight) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.flights[key] == f {
		delete(h.flights, key)
	}
}

// saw records that the snapshotter asked for blob d.
func (h *headStarts) saw(d digest.Digest) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[d] {
		return
	}
	h.seen[d] = true
	h.order = append(h.order, d)
	for len(h.order) > maxHints {
		delete(h.seen, h.order[0])
		h.order = h.order[1:]
	}
}

// roundUp rounds n up to a multiple of chunk, as the snapshotter rounds the
// ranges it fetches.
func roundUp(n, chunk int64) int64 {
	return ((n-1)/chunk + 1) * chunk
}
