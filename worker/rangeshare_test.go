package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// blobServer serves one blob with Range support and logs the Range header
// of every request.
type blobServer struct {
	*httptest.Server
	blob   []byte
	mu     sync.Mutex
	ranges []string
}

func newBlobServer(t *testing.T, size int) *blobServer {
	s := &blobServer{blob: make([]byte, size)}
	rand.Read(s.blob)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.ranges = append(s.ranges, r.Header.Get("Range"))
		s.mu.Unlock()
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(s.blob))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *blobServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}

func (s *blobServer) get(t *testing.T, rt http.RoundTripper, ctx context.Context, rng, auth string) *http.Response {
	t.Helper()
	return rangeGet(t, rt, ctx, s.URL+"/v2/x/blobs/sha256:0", rng, auth)
}

// rangeGet sends a GET of url for range rng, with auth as its
// Authorization header if set, through rt.
func rangeGet(t *testing.T, rt http.RoundTripper, ctx context.Context, url, rng, auth string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", rng)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// readAsync reads a body to its end in the background.
func readAsync(res *http.Response) <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			b = append([]byte("error: "), err.Error()...)
		}
		ch <- b
	}()
	return ch
}

func TestRangeShareServesFromFlight(t *testing.T) {
	s := newBlobServer(t, 1<<20)
	rt := newRangeShare(http.DefaultTransport)
	ctx := context.Background()

	lead := s.get(t, rt, ctx, "bytes=0-1048575", "Bearer a")
	head := make([]byte, 100<<10)
	if _, err := io.ReadFull(lead.Body, head); err != nil {
		t.Fatal(err)
	}
	// Inside the flight and just ahead of it: waits for the stream.
	follower := s.get(t, rt, ctx, "bytes=200000-300000", "Bearer a")
	if follower.StatusCode != http.StatusPartialContent || follower.Header.Get("Content-Range") != "bytes 200000-300000/1048576" ||
		follower.ContentLength != 100001 || follower.Header.Get("Content-Type") == "" {
		t.Fatalf("follower answered %s, Content-Range %q, length %d, type %q", follower.Status,
			follower.Header.Get("Content-Range"), follower.ContentLength, follower.Header.Get("Content-Type"))
	}
	// Behind what the flight has delivered but still kept: answered at once.
	early := s.get(t, rt, ctx, "bytes=1000-1999", "Bearer a")
	gotEarly, _ := io.ReadAll(early.Body)
	if !bytes.Equal(gotEarly, s.blob[1000:2000]) {
		t.Error("bytes 1000-1999 differ")
	}
	got := readAsync(follower)
	select {
	case <-got:
		t.Fatal("follower finished before the stream reached its bytes")
	case <-time.After(50 * time.Millisecond):
	}
	rest, err := io.ReadAll(lead.Body)
	lead.Body.Close()
	if err != nil || !bytes.Equal(append(head, rest...), s.blob) {
		t.Fatalf("lead body: %v, %d bytes", err, len(head)+len(rest))
	}
	if b := <-got; !bytes.Equal(b, s.blob[200000:300001]) {
		t.Fatalf("follower got %d bytes, not the blob's 200000-300000", len(b))
	}
	if reqs := s.requests(); len(reqs) != 1 {
		t.Errorf("registry saw %q, want the one range", reqs)
	}
}

func TestRangeShareKeepsApart(t *testing.T) {
	s := newBlobServer(t, 10<<20)
	rt := newRangeShare(http.DefaultTransport)
	ctx := context.Background()
	lead := s.get(t, rt, ctx, "bytes=0-10485759", "Bearer a")
	defer lead.Body.Close()

	for _, tt := range []struct{ name, rng, auth string }{
		{"other credentials", "bytes=100-199", "Bearer b"},
		{"no credentials", "bytes=100-199", ""},
		{"past the flight", "bytes=10485000-10485760", "Bearer a"},
		{"too far ahead", "bytes=9000000-9000099", "Bearer a"},
		{"several ranges", "bytes=100-199,300-399", "Bearer a"},
	} {
		before := len(s.requests())
		res := s.get(t, rt, ctx, tt.rng, tt.auth)
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if n := len(s.requests()) - before; n != 1 {
			t.Errorf("%s: %d requests reached the registry, want 1", tt.name, n)
		}
	}
}

func TestRangeShareFlightEndsEarly(t *testing.T) {
	s := newBlobServer(t, 1<<20)
	rt := newRangeShare(http.DefaultTransport)
	ctx := context.Background()
	lead := s.get(t, rt, ctx, "bytes=0-1048575", "")
	if _, err := io.ReadFull(lead.Body, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	follower := s.get(t, rt, ctx, "bytes=500000-599999", "")
	got := readAsync(follower)
	// The requester gives up: the follower fetches its bytes itself.
	lead.Body.Close()
	if b := <-got; !bytes.Equal(b, s.blob[500000:600000]) {
		t.Fatalf("follower got %q..., not the blob's 500000-599999", b[:min(len(b), 40)])
	}
	reqs := s.requests()
	if len(reqs) != 2 || reqs[1] != "bytes=500000-599999" {
		t.Errorf("registry saw %q, want the flight and the follower's own request", reqs)
	}
}

func TestRangeShareFollowerCanceled(t *testing.T) {
	s := newBlobServer(t, 1<<20)
	rt := newRangeShare(http.DefaultTransport)
	lead := s.get(t, rt, context.Background(), "bytes=0-1048575", "")
	defer lead.Body.Close()
	ctx, cancel := context.WithCancel(context.Background())
	follower := s.get(t, rt, ctx, "bytes=900000-900099", "")
	got := readAsync(follower)
	cancel()
	if b := string(<-got); !strings.Contains(b, context.Canceled.Error()) {
		t.Fatalf("canceled follower read %q, want the cancellation", b)
	}
}

func TestRangeShareFailedFollowUp(t *testing.T) {
	s := newBlobServer(t, 1<<20)
	fail := false
	var mu sync.Mutex
	inner := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errors.New("registry unreachable")
		}
		return http.DefaultTransport.RoundTrip(req)
	})
	rt := newRangeShare(inner)
	lead := s.get(t, rt, context.Background(), "bytes=0-1048575", "")
	follower := s.get(t, rt, context.Background(), "bytes=700000-700099", "")
	mu.Lock()
	fail = true
	mu.Unlock()
	lead.Body.Close()
	if b := string(<-readAsync(follower)); !strings.Contains(b, "registry unreachable") {
		t.Fatalf("follower read %q, want the registry's failure", b)
	}
}

func TestRangeShareHeadOfKnownSize(t *testing.T) {
	s := newBlobServer(t, 12345)
	rt := newRangeShare(http.DefaultTransport)
	head := func(auth string) *http.Response {
		req, err := http.NewRequest(http.MethodHead, s.URL+"/v2/x/blobs/sha256:0", nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	// Nothing known yet: the registry answers.
	if res := head("Bearer a"); res.StatusCode != http.StatusOK || res.Header.Get("Content-Length") != "12345" {
		t.Fatalf("HEAD: %s, Content-Length %q", res.Status, res.Header.Get("Content-Length"))
	}
	res := s.get(t, rt, context.Background(), "bytes=0-1", "Bearer a")
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	before := len(s.requests())
	if res := head("Bearer a"); res.StatusCode != http.StatusOK || res.Header.Get("Content-Length") != "12345" || res.Header.Get("Content-Range") != "" {
		t.Fatalf("HEAD after a range: %s, Content-Length %q, Content-Range %q", res.Status, res.Header.Get("Content-Length"), res.Header.Get("Content-Range"))
	}
	if n := len(s.requests()) - before; n != 0 {
		t.Errorf("HEAD of a known size reached the registry (%d requests)", n)
	}
	// Other credentials learn nothing from ours.
	head("Bearer b")
	if n := len(s.requests()) - before; n != 1 {
		t.Errorf("HEAD with other credentials: %d requests reached the registry, want 1", n)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestContentRange(t *testing.T) {
	for _, tt := range []struct {
		h     string
		a, b  int64
		total string
		ok    bool
	}{
		{"bytes 0-99/1000", 0, 99, "1000", true},
		{"bytes 5-5/*", 5, 5, "*", true},
		{"bytes 9-5/10", 0, 0, "", false},
		{"bytes 0-99", 0, 0, "", false},
		{"items 0-1/2", 0, 0, "", false},
		{"bytes a-b/3", 0, 0, "", false},
	} {
		a, b, total, ok := contentRange(tt.h)
		if ok != tt.ok || (ok && (a != tt.a || b != tt.b || total != tt.total)) {
			t.Errorf("contentRange(%q) = %d, %d, %q, %v", tt.h, a, b, total, ok)
		}
	}
}

// earlyServer serves a blob under its digest, like a registry, answers
// GETs of /redirect/... with a redirect to the blob, and can fail the
// early download.
type earlyServer struct {
	*blobServer
	digest    digest.Digest
	failEarly bool
}

func newEarlyServer(t *testing.T, size int, failEarly bool) *earlyServer {
	s := &earlyServer{blobServer: &blobServer{blob: make([]byte, size)}, failEarly: failEarly}
	rand.Read(s.blob)
	s.digest = digest.FromBytes(s.blob)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.ranges = append(s.ranges, r.URL.Path+" "+r.Header.Get("Range"))
		s.mu.Unlock()
		switch {
		case r.URL.Path == "/v2/x/blobs/"+s.digest.String() && r.URL.Query().Get("redirect") != "":
			w.Header().Set("Location", s.URL+"/storage/blob")
			w.WriteHeader(http.StatusTemporaryRedirect)
		case s.failEarly && strings.HasPrefix(r.Header.Get("Range"), "bytes=0-") && r.Header.Get("Range") != "bytes=0-1":
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
		default:
			http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(s.blob))
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *earlyServer) get(t *testing.T, rt http.RoundTripper, url, rng, auth string) []byte {
	t.Helper()
	res := rangeGet(t, rt, context.Background(), url, rng, auth)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read %s: %v", rng, err)
	}
	return b
}

// earlyShare is a rangeShare that knows the blob's prefetch size is
// prefetch, in chunks of 1000 bytes.
func earlyShare(s *earlyServer, prefetch int64) *rangeShare {
	hints := newPrefetchHints()
	hints.learn(hintedManifest(map[digest.Digest][2]string{s.digest: {fmt.Sprint(len(s.blob)), fmt.Sprint(prefetch)}}))
	rt := newRangeShare(http.DefaultTransport)
	rt.hints, rt.chunkSize = hints, 1000
	return rt
}

// waitRequests waits until the registry has seen n requests and returns
// them.
func (s *blobServer) waitRequests(t *testing.T, n int) []string {
	t.Helper()
	for range 500 {
		if r := s.requests(); len(r) >= n {
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("registry saw %q, want %d requests", s.requests(), n)
	return nil
}

func TestRangeShareEarlyPrefetch(t *testing.T) {
	s := newEarlyServer(t, 100000, false)
	rt := earlyShare(s, 41500)
	blobURL := s.URL + "/v2/x/blobs/" + s.digest.String()

	// The snapshotter's first request starts the prefetch download,
	// rounded up to whole chunks, and is served from it.
	if b := s.get(t, rt, blobURL, "bytes=0-1", "Bearer a"); !bytes.Equal(b, s.blob[:2]) {
		t.Fatal("bytes 0-1 differ")
	}
	reqs := s.waitRequests(t, 1)
	if p := "/v2/x/blobs/" + s.digest.String(); !slices.Equal(reqs, []string{p + " bytes=0-41999"}) {
		t.Fatalf("registry saw %q, want the prefetch range", reqs)
	}
	// The TOC: a request of its own. Pieces of the prefetch range and the
	// prefetch itself: from the download, whether it is still running or
	// done; one running past it fetches the rest on its own.
	s.get(t, rt, blobURL, "bytes=90000-99999", "Bearer a")
	for _, r := range [][2]int{{20000, 24999}, {41000, 42999}, {0, 41999}} {
		if b := s.get(t, rt, blobURL, fmt.Sprintf("bytes=%d-%d", r[0], r[1]), "Bearer a"); !bytes.Equal(b, s.blob[r[0]:r[1]+1]) {
			t.Errorf("bytes %d-%d differ", r[0], r[1])
		}
	}
	want := []string{"bytes=90000-99999", "bytes=42000-42999"}
	if reqs := s.requests(); len(reqs) != 3 || !rangesAre(reqs[1:], want) {
		t.Errorf("registry saw %q, want %q", reqs, want)
	}
	// Once the prefetch has read it all, the download is let go.
	s.get(t, rt, blobURL, "bytes=20000-24999", "Bearer a")
	// Other credentials share nothing: their first request starts a
	// download of their own.
	s.get(t, rt, blobURL, "bytes=100-199", "Bearer b")
	if want := []string{"bytes=20000-24999", "bytes=0-41999"}; !rangesAre(s.waitRequests(t, 5)[3:], want) {
		t.Errorf("registry saw %q, want %q last", s.requests(), want)
	}
}

// rangesAre reports whether requests logged as "path range" asked for the
// ranges want, in order.
func rangesAre(reqs, want []string) bool {
	if len(reqs) != len(want) {
		return false
	}
	for i, r := range reqs {
		if !strings.HasSuffix(r, " "+want[i]) {
			return false
		}
	}
	return true
}

func TestRangeShareEarlyPrefetchRedirected(t *testing.T) {
	s := newEarlyServer(t, 10000, false)
	rt := earlyShare(s, 3000)
	// As the snapshotter does: the blob URL answers with a redirect, which
	// it follows itself, without credentials.
	req, _ := http.NewRequest(http.MethodGet, s.URL+"/v2/x/blobs/"+s.digest.String()+"?redirect=1", nil)
	req.Header.Set("Range", "bytes=0-1")
	req.Header.Set("Authorization", "Bearer a")
	res, err := rt.RoundTrip(req)
	if err != nil || res.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("redirect: %v %v", res, err)
	}
	res.Body.Close()
	// The redirect URL in this test names the blob path, so resolve the
	// location as the snapshotter would and go there.
	loc := res.Header.Get("Location")
	if b := s.get(t, rt, loc, "bytes=0-1", ""); !bytes.Equal(b, s.blob[:2]) {
		t.Fatal("bytes 0-1 differ")
	}
	// The download the first request started got the redirect too, and
	// the request went on its own; the location's first request starts
	// the download that gets the bytes.
	p := "/v2/x/blobs/" + s.digest.String()
	want := []string{p + " bytes=0-2999", p + " bytes=0-1", "/storage/blob bytes=0-2999"}
	if reqs := s.waitRequests(t, 3); !slices.Equal(reqs, want) {
		t.Fatalf("registry saw %q, want %q", reqs, want)
	}
	if b := s.get(t, rt, loc, "bytes=0-2999", ""); !bytes.Equal(b, s.blob[:3000]) {
		t.Error("prefetch range differs")
	}
	if reqs := s.requests(); len(reqs) != 3 {
		t.Errorf("registry saw %q", reqs)
	}
}

func TestRangeShareEarlyPrefetchFails(t *testing.T) {
	s := newEarlyServer(t, 10000, true)
	rt := earlyShare(s, 5000)
	blobURL := s.URL + "/v2/x/blobs/" + s.digest.String()
	s.get(t, rt, blobURL, "bytes=0-1", "")
	s.waitRequests(t, 2)
	// The download failed: the prefetch goes on its own, and fails as the
	// registry makes it.
	req, _ := http.NewRequest(http.MethodGet, blobURL, nil)
	req.Header.Set("Range", "bytes=0-4999")
	res, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("prefetch answered %s, want the registry's own answer", res.Status)
	}
	if reqs := s.requests(); len(reqs) != 3 {
		t.Errorf("registry saw %q", reqs)
	}
}

func TestRangeShareNoHintNoEarlyPrefetch(t *testing.T) {
	s := newEarlyServer(t, 10000, false)
	rt := earlyShare(s, 5000)
	rt.hints = newPrefetchHints() // knows nothing
	s.get(t, rt, s.URL+"/v2/x/blobs/"+s.digest.String(), "bytes=0-1", "")
	time.Sleep(50 * time.Millisecond)
	if reqs := s.requests(); len(reqs) != 1 {
		t.Errorf("registry saw %q, want only the request made", reqs)
	}
}
