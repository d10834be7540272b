package worker

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// rangeShare is the stargz snapshotter's registry transport. A lazily
// mounted layer's prefetch is one long range GET; while it streams, the
// workload already runs (prefetch_async_size) and reads files the prefetch
// has not delivered yet, and the snapshotter fetches each of those again in
// a request of its own, which then shares the link with the prefetch and
// delays it. rangeShare serves such a request from the range already in
// flight instead: it waits for the stream to get there, so those bytes
// cross the link once.
//
// Only single-range GETs share, only between requests with the same URL and
// the same Authorization header (one client's credentials never fetch for
// another), and only when the bytes asked for lie at most shareAhead past
// what has arrived: further ahead, a request of its own is quicker. A
// request that finds the stream failing or ending early fetches the rest
// itself.
//
// It also answers a HEAD of a blob whose size an earlier range response
// told (Content-Range "bytes a-b/size") with that size: the snapshotter
// asks for it right after its first range request, one round trip for
// nothing.
type rangeShare struct {
	inner http.RoundTripper
	mu    sync.Mutex
	// flights are the ranges in flight, by key.
	flights map[string][]*rangeFlight
	// sizes are the blob sizes range responses told, by key.
	sizes map[string]blobSize
}

// blobSize is a blob's size with the headers of the response that told it.
type blobSize struct {
	size   int64
	header http.Header
}

// shareAhead is how far past the bytes a stream has delivered a request
// may start and still wait for the stream.
const shareAhead = 8 << 20

// keepBehind is how much of a stream is kept behind its newest byte for
// requests that start there; older bytes are dropped once twice as much
// has piled up.
const keepBehind = 16 << 20

func newRangeShare(inner http.RoundTripper) *rangeShare {
	if inner == nil {
		inner = http.DefaultTransport
	}
	return &rangeShare{inner: inner, flights: make(map[string][]*rangeFlight), sizes: make(map[string]blobSize)}
}

// rangeFlight is one range response being read by its requester.
type rangeFlight struct {
	start, end int64 // the range, inclusive
	header     http.Header

	mu sync.Mutex
	// buf holds bytes [bufStart, bufStart+len(buf)) of the blob.
	bufStart int64
	buf      []byte
	done     bool // the stream ended (complete, failed or closed)
	changed  chan struct{}
}

// head returns the offset just past the newest byte received.
func (f *rangeFlight) head() int64 { return f.bufStart + int64(len(f.buf)) }

func (t *rangeShare) RoundTrip(req *http.Request) (*http.Response, error) {
	key := req.URL.String() + "\x00" + req.Header.Get("Authorization")
	if req.Method == http.MethodHead && req.Header.Get("Range") == "" {
		t.mu.Lock()
		known, ok := t.sizes[key]
		t.mu.Unlock()
		if ok {
			return t.head(req, known), nil
		}
	}
	a, b, ok := singleRange(req)
	if req.Method != http.MethodGet || !ok {
		return t.inner.RoundTrip(req)
	}

	t.mu.Lock()
	for _, f := range t.flights[key] {
		f.mu.Lock()
		share := !f.done && f.start <= a && b <= f.end && a >= f.bufStart && a <= f.head()+shareAhead
		f.mu.Unlock()
		if share {
			t.mu.Unlock()
			return t.follow(req, f, a, b), nil
		}
	}
	t.mu.Unlock()

	res, err := t.inner.RoundTrip(req)
	if err != nil || res.StatusCode != http.StatusPartialContent {
		return res, err
	}
	ra, rb, total, ok := contentRange(res.Header.Get("Content-Range"))
	if size, err := strconv.ParseInt(total, 10, 64); ok && err == nil {
		t.mu.Lock()
		t.sizes[key] = blobSize{size: size, header: res.Header.Clone()}
		t.mu.Unlock()
	}
	if !ok || ra != a || rb != b {
		return res, nil
	}
	f := &rangeFlight{start: a, end: b, header: res.Header.Clone(), bufStart: a, changed: make(chan struct{})}
	t.mu.Lock()
	t.flights[key] = append(t.flights[key], f)
	t.mu.Unlock()
	res.Body = &teeBody{ReadCloser: res.Body, f: f, end: func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		list := t.flights[key]
		for i, g := range list {
			if g == f {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(t.flights, key)
		} else {
			t.flights[key] = list
		}
	}}
	return res, nil
}

// head answers a HEAD of a blob of known size.
func (t *rangeShare) head(req *http.Request, known blobSize) *http.Response {
	h := known.header.Clone()
	h.Del("Content-Range")
	h.Set("Content-Length", strconv.FormatInt(known.size, 10))
	return &http.Response{
		Status:        "200 OK",
		StatusCode:    http.StatusOK,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		ContentLength: known.size,
		Body:          http.NoBody,
		Request:       req,
	}
}

// follow answers req, for bytes [a, b], from flight f.
func (t *rangeShare) follow(req *http.Request, f *rangeFlight, a, b int64) *http.Response {
	h := f.header.Clone()
	_, _, total, _ := contentRange(h.Get("Content-Range"))
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%s", a, b, total))
	h.Set("Content-Length", strconv.FormatInt(b-a+1, 10))
	return &http.Response{
		Status:        "206 Partial Content",
		StatusCode:    http.StatusPartialContent,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		ContentLength: b - a + 1,
		Body:          &followBody{t: t, req: req, f: f, pos: a, end: b},
		Request:       req,
	}
}

// teeBody is the requester's body of a flight: what it reads is kept for
// followers.
type teeBody struct {
	io.ReadCloser
	f    *rangeFlight
	end  func()
	once sync.Once
}

func (r *teeBody) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	f := r.f
	f.mu.Lock()
	if n > 0 {
		f.buf = append(f.buf, p[:n]...)
		if len(f.buf) > 2*keepBehind {
			drop := len(f.buf) - keepBehind
			f.buf = append(f.buf[:0], f.buf[drop:]...)
			f.bufStart += int64(drop)
		}
	}
	if err != nil {
		f.done = true
	}
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	if err != nil {
		r.once.Do(r.end)
	}
	return n, err
}

func (r *teeBody) Close() error {
	f := r.f
	f.mu.Lock()
	if !f.done {
		f.done = true
		close(f.changed)
		f.changed = make(chan struct{})
	}
	f.mu.Unlock()
	r.once.Do(r.end)
	return r.ReadCloser.Close()
}

// followBody reads bytes [pos, end] from a flight as they arrive, and
// fetches whatever the flight cannot give (it ended, or dropped them) with
// a request of its own.
type followBody struct {
	t        *rangeShare
	req      *http.Request
	f        *rangeFlight
	pos, end int64
	own      io.ReadCloser // the request of its own, once made
}

func (r *followBody) Read(p []byte) (int, error) {
	if r.pos > r.end {
		return 0, io.EOF
	}
	if r.own != nil {
		n, err := r.own.Read(p)
		r.pos += int64(n)
		if err == io.EOF && r.pos <= r.end {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	f := r.f
	for {
		f.mu.Lock()
		if r.pos < f.bufStart {
			f.mu.Unlock()
			return r.fetchRest(p)
		}
		if r.pos < f.head() {
			off := r.pos - f.bufStart
			n := copy(p, f.buf[off:min(int64(len(f.buf)), off+r.end-r.pos+1)])
			f.mu.Unlock()
			r.pos += int64(n)
			return n, nil
		}
		if f.done {
			f.mu.Unlock()
			return r.fetchRest(p)
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-r.req.Context().Done():
			return 0, r.req.Context().Err()
		}
	}
}

// fetchRest requests bytes [pos, end] itself and reads from them.
func (r *followBody) fetchRest(p []byte) (int, error) {
	req := r.req.Clone(r.req.Context())
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", r.pos, r.end))
	res, err := r.t.inner.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	if res.StatusCode != http.StatusPartialContent {
		res.Body.Close()
		return 0, fmt.Errorf("fetch bytes %d-%d: %s", r.pos, r.end, res.Status)
	}
	if a, _, _, ok := contentRange(res.Header.Get("Content-Range")); !ok || a != r.pos {
		res.Body.Close()
		return 0, fmt.Errorf("fetch bytes %d-%d: answered with range %q", r.pos, r.end, res.Header.Get("Content-Range"))
	}
	r.own = res.Body
	return r.Read(p)
}

func (r *followBody) Close() error {
	if r.own != nil {
		return r.own.Close()
	}
	return nil
}

// singleRange returns the range of a request's "bytes=a-b" Range header;
// ok is false for no header, several ranges or open-ended ones.
func singleRange(req *http.Request) (a, b int64, ok bool) {
	spec, found := strings.CutPrefix(req.Header.Get("Range"), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	return parseSpan(spec)
}

// contentRange parses "bytes a-b/total"; total may be "*".
func contentRange(h string) (a, b int64, total string, ok bool) {
	spec, found := strings.CutPrefix(h, "bytes ")
	if !found {
		return 0, 0, "", false
	}
	span, total, found := strings.Cut(spec, "/")
	if !found {
		return 0, 0, "", false
	}
	a, b, ok = parseSpan(span)
	return a, b, total, ok
}

func parseSpan(s string) (a, b int64, ok bool) {
	as, bs, found := strings.Cut(s, "-")
	if !found {
		return 0, 0, false
	}
	a, errA := strconv.ParseInt(as, 10, 64)
	b, errB := strconv.ParseInt(bs, 10, 64)
	if errA != nil || errB != nil || a < 0 || b < a {
		return 0, 0, false
	}
	return a, b, true
}
