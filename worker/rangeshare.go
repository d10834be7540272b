package worker

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
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
//
// With hints, it starts the prefetch download itself: the snapshotter asks
// for a layer's prefetch range only once it has fetched and parsed the
// TOC, two round trips and a parse after its first request. When the
// manifest told the layer's prefetch size (prefetchHints), the first range
// request for the blob starts a download of that range beside it, with
// the same headers; the snapshotter's prefetch request then follows the
// download, wherever it has got to by then. If a head start already
// downloads the beginning of that range, the download beside the first
// request fetches the rest, and the prefetch follows the one, then the
// other.
type rangeShare struct {
	inner http.RoundTripper
	// hints, if set, are the prefetch sizes to start downloads for, in
	// blob chunks of chunkSize as the snapshotter rounds its prefetch.
	hints     *prefetchHints
	chunkSize int64
	// heads are the head starts the snapshotter's prefetch may follow
	// first (headStarts).
	heads *headStarts

	mu sync.Mutex
	// flights are the ranges in flight, by key.
	flights map[string][]*rangeFlight
	// sizes are the blob sizes range responses told, by key.
	sizes map[string]blobSize
	// started are the keys a prefetch download was started for.
	started map[string]bool
	// redirected are the blobs behind redirect locations, by location.
	redirected map[string]digest.Digest
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

// maxEarlyPrefetch bounds a prefetch download started from a hint: all of
// it is kept until the snapshotter reads it, so it never drops bytes.
const maxEarlyPrefetch = 2 * keepBehind

// earlyLinger is how long a finished prefetch download started from a hint
// waits for the snapshotter to read it; earlyTimeout bounds the download.
const (
	earlyLinger  = time.Minute
	earlyTimeout = 10 * time.Minute
)

func newRangeShare(inner http.RoundTripper) *rangeShare {
	if inner == nil {
		inner = http.DefaultTransport
	}
	return &rangeShare{
		inner:      inner,
		flights:    make(map[string][]*rangeFlight),
		sizes:      make(map[string]blobSize),
		started:    make(map[string]bool),
		redirected: make(map[string]digest.Digest),
	}
}

// rangeFlight is one range response being read: by its requester, or, for
// a prefetch download started from a hint, by a goroutine of its own.
type rangeFlight struct {
	start, end int64 // the range, inclusive
	// early marks a prefetch download started from a hint; cancel stops it.
	early  bool
	cancel context.CancelFunc
	// ready is closed once header is set or the request failed.
	ready chan struct{}

	mu     sync.Mutex
	header http.Header
	failed bool // the request got no usable response
	// buf holds bytes [bufStart, bufStart+len(buf)) of the blob.
	bufStart int64
	buf      []byte
	done     bool // the stream ended (complete, failed or closed)
	changed  chan struct{}
}

// head returns the offset just past the newest byte received.
func (f *rangeFlight) head() int64 { return f.bufStart + int64(len(f.buf)) }

// serves reports whether a request for bytes [a, b] waits for f. An early
// prefetch download is the prefetch's own range: a request anywhere in it
// waits for it, and one that runs past its end fetches the rest itself.
func (f *rangeFlight) serves(a, b int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed || a < f.start || a > f.end || a < f.bufStart {
		return false
	}
	if f.early {
		return !f.done || a < f.head()
	}
	return !f.done && b <= f.end && a <= f.head()+shareAhead
}

func (t *rangeShare) RoundTrip(req *http.Request) (*http.Response, error) {
	key := rangeKey(req.URL.String(), req.Header.Get("Authorization"))
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
	t.startPrefetch(req, key)
	if f := t.flightFor(req, key, a, b); f != nil {
		return t.follow(req, key, f, a, b), nil
	}

	res, err := t.inner.RoundTrip(req)
	if err != nil {
		return res, err
	}
	if res.StatusCode/100 == 3 {
		t.noteRedirect(req, res)
	}
	if res.StatusCode != http.StatusPartialContent {
		return res, nil
	}
	t.noteSize(key, res.Header)
	ra, rb, _, ok := contentRange(res.Header.Get("Content-Range"))
	if !ok || ra != a || rb != b {
		return res, nil
	}
	f := &rangeFlight{start: a, end: b, header: res.Header.Clone(), bufStart: a, ready: closedChan, changed: make(chan struct{})}
	t.mu.Lock()
	t.flights[key] = append(t.flights[key], f)
	t.mu.Unlock()
	res.Body = &teeBody{ReadCloser: res.Body, f: f, end: func() { t.drop(key, f) }}
	return res, nil
}

// rangeKey is the key of requests for url with Authorization header auth:
// only requests of the same key share.
func rangeKey(url, auth string) string { return url + "\x00" + auth }

// closedChan is the ready channel of flights that start with a response.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// flightFor returns the flight a request for bytes [a, b] should follow,
// once it has a response, or nil.
func (t *rangeShare) flightFor(req *http.Request, key string, a, b int64) *rangeFlight {
	head := t.heads.flight(key)
	t.mu.Lock()
	candidates := append([]*rangeFlight{head}, t.flights[key]...)
	t.mu.Unlock()
	var f *rangeFlight
	for _, g := range candidates {
		if g != nil && g.serves(a, b) {
			f = g
			break
		}
	}
	if f == nil {
		return nil
	}
	select {
	case <-f.ready:
	case <-req.Context().Done():
		return nil
	}
	if !f.serves(a, b) {
		return nil
	}
	return f
}

// noteSize remembers the blob size a range response with header h told.
func (t *rangeShare) noteSize(key string, h http.Header) {
	_, _, total, ok := contentRange(h.Get("Content-Range"))
	size, err := strconv.ParseInt(total, 10, 64)
	if !ok || err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, known := t.sizes[key]; !known {
		t.sizes[key] = blobSize{size: size, header: h.Clone()}
	}
}

// drop forgets flight f of key, a head start included: later requests do
// not find it.
func (t *rangeShare) drop(key string, f *rangeFlight) {
	t.heads.forget(key, f)
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.flights[key]
	for i, g := range list {
		if g == f {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(t.flights, key)
	} else {
		t.flights[key] = list
	}
}

// noteRedirect remembers which blob a redirect location serves: the
// snapshotter fetches a redirected blob from the location itself.
func (t *rangeShare) noteRedirect(req *http.Request, res *http.Response) {
	loc := res.Header.Get("Location")
	d, ok := blobDigest(req.URL.Path)
	if loc == "" || !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.redirected) >= maxHints {
		clear(t.redirected)
	}
	t.redirected[loc] = d
}

// blobDigest returns the digest a registry blob path names.
func blobDigest(p string) (digest.Digest, bool) {
	if path.Base(path.Dir(p)) != "blobs" {
		return "", false
	}
	d, err := digest.Parse(path.Base(p))
	return d, err == nil
}

// startPrefetch starts, once per key, the download of the prefetch range
// the hints give for the blob req fetches from, with req's headers: of all
// of it, or of what follows the head start of key.
func (t *rangeShare) startPrefetch(req *http.Request, key string) {
	if t.hints == nil {
		return
	}
	d, ok := blobDigest(req.URL.Path)
	t.mu.Lock()
	if !ok {
		d, ok = t.redirected[req.URL.String()]
	}
	if !ok || t.started[key] {
		t.mu.Unlock()
		return
	}
	t.started[key] = true
	t.mu.Unlock()
	t.heads.saw(d)
	h, ok := t.hints.size(d)
	if !ok {
		return
	}
	// The snapshotter fetches whole chunks: the range rounded up to one.
	start, end := int64(0), min(roundUp(h.prefetch, t.chunkSize), h.blob, maxEarlyPrefetch)-1
	if head := t.heads.flight(key); head != nil {
		start = head.end + 1
	}
	if start > end {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(req.Context()), earlyTimeout)
	f := newEarlyFlight(start, end, cancel)
	t.mu.Lock()
	t.flights[key] = append(t.flights[key], f)
	t.mu.Unlock()

	early := req.Clone(ctx)
	early.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, end))
	go downloadEarly(t.inner, early, f, func() { t.drop(key, f) })
}

// newEarlyFlight returns the flight of an early download of bytes
// [start, end], which cancel stops.
func newEarlyFlight(start, end int64, cancel context.CancelFunc) *rangeFlight {
	return &rangeFlight{start: start, end: end, bufStart: start, early: true, cancel: cancel,
		ready: make(chan struct{}), changed: make(chan struct{})}
}

// downloadEarly reads an early download into its flight f through inner.
// release lets go of f: at once if the download fails, earlyLinger after it
// ends otherwise, unless a prefetch read it whole before.
func downloadEarly(inner http.RoundTripper, req *http.Request, f *rangeFlight, release func()) {
	defer f.cancel()
	res, err := inner.RoundTrip(req)
	if err == nil {
		a, b, _, ok := contentRange(res.Header.Get("Content-Range"))
		if res.StatusCode != http.StatusPartialContent || !ok || a != f.start || b != f.end {
			res.Body.Close()
			err = fmt.Errorf("answered %s, Content-Range %q", res.Status, res.Header.Get("Content-Range"))
		}
	}
	if err != nil {
		f.mu.Lock()
		f.failed, f.done = true, true
		f.mu.Unlock()
		release()
		close(f.ready)
		return
	}
	f.mu.Lock()
	f.header = res.Header.Clone()
	f.mu.Unlock()
	close(f.ready)
	body := &teeBody{ReadCloser: res.Body, f: f, end: func() { time.AfterFunc(earlyLinger, release) }}
	io.Copy(io.Discard, body)
	body.Close()
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

// follow answers req, for bytes [a, b], from flight f of key.
func (t *rangeShare) follow(req *http.Request, key string, f *rangeFlight, a, b int64) *http.Response {
	f.mu.Lock()
	h := f.header.Clone()
	f.mu.Unlock()
	t.noteSize(key, h)
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
		Body:          &followBody{t: t, req: req, key: key, f: f, from: a, pos: a, end: b},
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
	key      string
	f        *rangeFlight
	from     int64 // the first byte asked for
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
			return r.next(p)
		}
		if r.pos < f.head() {
			off := r.pos - f.bufStart
			n := copy(p, f.buf[off:min(int64(len(f.buf)), off+r.end-r.pos+1)])
			f.mu.Unlock()
			r.pos += int64(n)
			if f.early && r.from <= f.start && r.pos > f.end {
				// The prefetch has read it all: let go of the bytes.
				r.t.drop(r.key, f)
			}
			return n, nil
		}
		if f.done {
			f.mu.Unlock()
			return r.next(p)
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-r.req.Context().Done():
			if f.early {
				// Whoever gave up on it will not want the rest, and
				// whoever asks again should not wait for it either.
				f.cancel()
			}
			return 0, r.req.Context().Err()
		}
	}
}

// next follows another flight that has bytes [pos, end] (a head start's
// download goes on in another), or fetches them itself.
func (r *followBody) next(p []byte) (int, error) {
	if g := r.t.flightFor(r.req, r.key, r.pos, r.end); g != nil && g != r.f {
		r.f = g
		return r.Read(p)
	}
	return r.fetchRest(p)
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
