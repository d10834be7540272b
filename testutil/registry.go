package testutil

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // registers the "filesystem" storage driver
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// Registry is a real distribution registry served on 127.0.0.1 over plain
// HTTP, behind a front that counts what it serves and can inject faults.
//
// The counters are updated before the bytes they count reach the client, so
// a test may read them as soon as its client call returns.
type Registry struct {
	host string
	ln   net.Listener
	srv  *http.Server
	app  *handlers.App

	closeOnce sync.Once

	mu      sync.Mutex
	cur     *epoch
	faults  []FaultFunc
	latency time.Duration
	link    *link
}

// RegistryOption configures NewRegistry.
type RegistryOption func(*registryOptions) error

type registryOptions struct {
	latency   time.Duration
	bandwidth int64
	faults    []FaultFunc
	storeDir  string
}

// WithLatency delays every response by d before the registry handles the
// request, like a round trip on a slow link. The default is no delay.
func WithLatency(d time.Duration) RegistryOption {
	return func(o *registryOptions) error {
		if d < 0 {
			return fmt.Errorf("negative latency %v", d)
		}
		o.latency = d
		return nil
	}
}

// WithBandwidth limits the response bodies of the whole registry to
// bytesPerSecond, shared by all connections like one link. The default is
// unlimited.
func WithBandwidth(bytesPerSecond int64) RegistryOption {
	return func(o *registryOptions) error {
		if bytesPerSecond <= 0 {
			return fmt.Errorf("bandwidth must be positive, got %d", bytesPerSecond)
		}
		o.bandwidth = bytesPerSecond
		return nil
	}
}

// WithFault adds f to the faults consulted for every request, in the order
// given; the first one that returns a non-zero FaultAction decides. The
// default is no faults. (*Registry).SetFaults replaces them at run time.
func WithFault(f FaultFunc) RegistryOption {
	return func(o *registryOptions) error {
		if f == nil {
			return errors.New("nil fault")
		}
		o.faults = append(o.faults, f)
		return nil
	}
}

// WithStorageDir keeps the registry's data under dir, for a test that
// inspects it or serves it again from a second registry. The default is a
// new directory under t.TempDir(). (distribution's in-memory driver is not
// used: it copies its whole upload buffer on every write, which makes
// pushing tens of MiB take seconds.)
func WithStorageDir(dir string) RegistryOption {
	return func(o *registryOptions) error {
		if dir == "" {
			return errors.New("empty storage dir")
		}
		o.storeDir = dir
		return nil
	}
}

// FaultFunc chooses what happens to a request. It is called once per request,
// possibly from many goroutines at once, and must be safe for that.
type FaultFunc func(*http.Request) FaultAction

// FaultAction is what a FaultFunc asks of the front. The zero value lets the
// request through untouched.
type FaultAction struct {
	// Delay holds the request this long before anything else happens.
	Delay time.Duration
	// Drop closes the connection without writing a response.
	Drop bool
	// Status, when non-zero, answers the request with this status code and
	// a short body instead of passing it to the registry.
	Status int
	// Truncate passes the request to the registry but closes the connection
	// once TruncateAfter body bytes have been written, so the client sees a
	// body shorter than its Content-Length.
	Truncate bool
	// TruncateAfter is the number of body bytes written before a Truncate.
	TruncateAfter int64
}

func (a FaultAction) isZero() bool { return a == FaultAction{} }

func (a FaultAction) String() string {
	var parts []string
	if a.Delay > 0 {
		parts = append(parts, "delay "+a.Delay.String())
	}
	switch {
	case a.Drop:
		parts = append(parts, "drop")
	case a.Status != 0:
		parts = append(parts, "status "+strconv.Itoa(a.Status))
	case a.Truncate:
		parts = append(parts, "truncate after "+strconv.FormatInt(a.TruncateAfter, 10))
	}
	return strings.Join(parts, ", ")
}

// FailBlobGets answers every blob GET with status.
func FailBlobGets(status int) FaultFunc {
	return func(r *http.Request) FaultAction {
		if isBlobGet(r) {
			return FaultAction{Status: status}
		}
		return FaultAction{}
	}
}

// FailNthBlobGet answers the n-th blob GET (counting from 1) this fault sees
// with status; the others pass.
func FailNthBlobGet(n int, status int) FaultFunc {
	return nthBlobGet(n, FaultAction{Status: status})
}

// TruncateBlobGets cuts the body of every blob GET after the given number of
// bytes and closes the connection.
func TruncateBlobGets(after int64) FaultFunc {
	return func(r *http.Request) FaultAction {
		if isBlobGet(r) {
			return FaultAction{Truncate: true, TruncateAfter: after}
		}
		return FaultAction{}
	}
}

// TruncateNthBlobGet cuts the body of the n-th blob GET (counting from 1)
// this fault sees after the given number of bytes and closes the connection.
func TruncateNthBlobGet(n int, after int64) FaultFunc {
	return nthBlobGet(n, FaultAction{Truncate: true, TruncateAfter: after})
}

// DropAll closes every connection without a response: the registry answers
// nothing, though it still accepts connections. UnreachableHost gives a
// refused connection instead.
func DropAll() FaultFunc {
	return func(*http.Request) FaultAction { return FaultAction{Drop: true} }
}

// ForBlob applies f only to requests for the blob d; f sees no others, so
// counting faults such as FailNthBlobGet count that blob's GETs alone.
func ForBlob(d digest.Digest, f FaultFunc) FaultFunc {
	return func(r *http.Request) FaultAction {
		if blobDigest(r.URL.Path) != d {
			return FaultAction{}
		}
		return f(r)
	}
}

func nthBlobGet(n int, action FaultAction) FaultFunc {
	var seen atomic.Int64
	return func(r *http.Request) FaultAction {
		if !isBlobGet(r) {
			return FaultAction{}
		}
		if seen.Add(1) == int64(n) {
			return action
		}
		return FaultAction{}
	}
}

// BlobStats is what the registry served for one blob.
type BlobStats struct {
	// Gets counts GET requests, with or without a Range header, faulted
	// ones included.
	Gets int
	// RangeGets counts GET requests carrying a Range header.
	RangeGets int
	// Heads counts HEAD requests.
	Heads int
	// Ranges lists the ranges of every Range header, in arrival order.
	Ranges []ByteRange
	// Bytes counts response body bytes written for GETs of the blob.
	Bytes int64
}

// ByteRange is one range of a Range header. End is inclusive; an open range
// "a-" has End -1; a suffix range "-n" has Start -1 and End n.
type ByteRange struct {
	Start, End int64
}

// Stats are totals over all requests since the registry started or was last
// Reset.
type Stats struct {
	// Requests counts all requests, including faulted ones.
	Requests int
	// BlobGets counts GETs of blobs.
	BlobGets int
	// RangeGets counts GETs of blobs carrying a Range header.
	RangeGets int
	// BlobBytes counts response body bytes of blob GETs.
	BlobBytes int64
	// Bytes counts response body bytes of all requests.
	Bytes int64
	// Faults counts requests a fault acted on.
	Faults int
}

// Request is one entry of the registry's request log.
type Request struct {
	Method string
	// Path is the URL path, such as /v2/base/blobs/sha256:....
	Path string
	// Range is the raw Range header, empty when absent.
	Range string
	// Digest is the blob's digest for blob requests, empty otherwise.
	Digest digest.Digest
	// Status is the response status; 0 while unanswered or when dropped.
	Status int
	// Bytes counts response body bytes written.
	Bytes int64
	// Fault describes the fault injected, empty when none.
	Fault string
	// Arrived and Done are when the request arrived and when its answer
	// was written (zero while unanswered), for timelines.
	Arrived, Done time.Time
}

// epoch holds the counters between two Resets. Requests in flight during a
// Reset keep updating the epoch they started in.
type epoch struct {
	blobs    map[digest.Digest]*BlobStats
	totals   Stats
	requests []*Request
}

func newEpoch() *epoch {
	return &epoch{blobs: map[digest.Digest]*BlobStats{}}
}

// NewRegistry starts a registry on 127.0.0.1 with a random port and stops it
// when the test ends.
func NewRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()
	var o registryOptions
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			t.Fatalf("testutil: registry option: %v", err)
		}
	}

	storage := configuration.Storage{
		"delete": configuration.Parameters{"enabled": true},
		"maintenance": configuration.Parameters{
			"uploadpurging": map[any]any{"enabled": false},
		},
	}
	if o.storeDir == "" {
		o.storeDir = t.TempDir()
	}
	storage["filesystem"] = configuration.Parameters{"rootdirectory": o.storeDir}
	config := &configuration.Configuration{
		Version: "0.1",
		Storage: storage,
		Catalog: configuration.Catalog{MaxEntries: 1000},
	}
	// A fixed secret keeps distribution from warning about a generated one.
	config.HTTP.Secret = "stargazer-testutil"

	lw := &testLogWriter{t: t}
	ctx := quietContext(context.Background(), lw)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testutil: registry listen: %v", err)
	}
	r := &Registry{
		host:    ln.Addr().String(),
		ln:      ln,
		app:     handlers.NewApp(ctx, config),
		cur:     newEpoch(),
		faults:  o.faults,
		latency: o.latency,
	}
	if o.bandwidth > 0 {
		r.link = &link{bytesPerSecond: o.bandwidth}
	}
	r.srv = &http.Server{
		Handler:           r,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: time.Minute,
		ErrorLog:          log.New(lw, "http: ", 0),
	}
	go func() { _ = r.srv.Serve(ln) }()
	t.Cleanup(func() {
		r.Close()
		lw.stop()
	})
	return r
}

// Close stops the registry; later connections are refused. It is called
// when the test ends and may be called earlier.
func (r *Registry) Close() {
	r.closeOnce.Do(func() {
		// Close rather than Shutdown: a test may end with requests held by
		// latency or faults, and waiting for them helps nobody.
		_ = r.srv.Close()
		// Serve may not have taken the listener over yet; closing it here
		// makes later connections refused rather than reset.
		_ = r.ln.Close()
		_ = r.app.Shutdown()
	})
}

// Host is the registry's address, "127.0.0.1:PORT".
func (r *Registry) Host() string { return r.host }

// URL is the registry's base URL, "http://127.0.0.1:PORT".
func (r *Registry) URL() string { return "http://" + r.host }

// Ref is the reference of name on this registry, "127.0.0.1:PORT/name"; name
// may carry a tag or digest.
func (r *Registry) Ref(name string) string {
	return r.host + "/" + strings.TrimPrefix(name, "/")
}

// Resolver is a containerd resolver that speaks plain HTTP to loopback
// registries such as this one, without credentials.
func (r *Registry) Resolver() remotes.Resolver { return loopbackResolver() }

// SetFaults replaces the registry's faults; with none, requests pass
// untouched.
func (r *Registry) SetFaults(faults ...FaultFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = append([]FaultFunc(nil), faults...)
}

// SetLatency replaces the delay added to every request.
func (r *Registry) SetLatency(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.latency = d
}

// BlobStats reports what was served for the blob d since the last Reset.
func (r *Registry) BlobStats(d digest.Digest) BlobStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.cur.blobs[d]
	if !ok {
		return BlobStats{}
	}
	c := *s
	c.Ranges = append([]ByteRange(nil), s.Ranges...)
	return c
}

// Totals reports totals over all requests since the last Reset.
func (r *Registry) Totals() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur.totals
}

// Requests returns the request log since the last Reset, oldest first.
func (r *Registry) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Request, len(r.cur.requests))
	for i, req := range r.cur.requests {
		out[i] = *req
	}
	return out
}

// Reset zeroes the counters and the request log, for example after pushing
// fixtures and before the pull a test measures. Faults and latency stay.
func (r *Registry) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur = newEpoch()
}

// ServeHTTP is the counting front: it records the request, applies latency
// and faults, and hands the request to the registry.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	d := blobDigest(req.URL.Path)
	rangeHeader := req.Header.Get("Range")
	isGet := req.Method == http.MethodGet
	isBlobGet := d != "" && isGet

	r.mu.Lock()
	ep := r.cur
	faults := r.faults
	latency := r.latency
	entry := &Request{Method: req.Method, Path: req.URL.Path, Range: rangeHeader, Digest: d, Arrived: time.Now()}
	ep.requests = append(ep.requests, entry)
	ep.totals.Requests++
	var bs *BlobStats
	if d != "" && (isGet || req.Method == http.MethodHead) {
		bs = ep.blobs[d]
		if bs == nil {
			bs = &BlobStats{}
			ep.blobs[d] = bs
		}
		if isGet {
			bs.Gets++
			ep.totals.BlobGets++
			if rangeHeader != "" {
				bs.RangeGets++
				ep.totals.RangeGets++
				bs.Ranges = append(bs.Ranges, parseRanges(rangeHeader)...)
			}
		} else {
			bs.Heads++
		}
	}
	r.mu.Unlock()

	var action FaultAction
	for _, f := range faults {
		if action = f(req); !action.isZero() {
			break
		}
	}
	if !action.isZero() {
		r.mu.Lock()
		entry.Fault = action.String()
		ep.totals.Faults++
		r.mu.Unlock()
	}

	if !sleepCtx(req.Context(), latency+action.Delay) {
		return
	}

	cw := &countingWriter{
		ResponseWriter: w,
		reg:            r,
		entry:          entry,
		ep:             ep,
		countBlob:      isBlobGet,
		blob:           bs,
		truncateAt:     -1,
	}
	switch {
	case action.Drop:
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
		}
		return
	case action.Status != 0:
		http.Error(cw, fmt.Sprintf("testutil: injected fault: status %d", action.Status), action.Status)
		return
	case action.Truncate:
		cw.truncateAt = max(action.TruncateAfter, 0)
	}
	r.app.ServeHTTP(cw, req)
	r.mu.Lock()
	entry.Done = time.Now()
	if entry.Status == 0 && !cw.cut {
		// net/http answers 200 for a handler that wrote nothing.
		entry.Status = http.StatusOK
	}
	r.mu.Unlock()
}

// countingWriter counts the status and body bytes of one response, paces
// them through the registry's link and cuts the connection for a Truncate.
type countingWriter struct {
	http.ResponseWriter
	reg        *Registry
	entry      *Request
	ep         *epoch
	countBlob  bool
	blob       *BlobStats
	truncateAt int64 // -1: never
	written    int64
	cut        bool
}

func (w *countingWriter) WriteHeader(status int) {
	w.reg.mu.Lock()
	if w.entry.Status == 0 {
		w.entry.Status = status
	}
	w.reg.mu.Unlock()
	w.ResponseWriter.WriteHeader(status)
}

var errTruncated = errors.New("testutil: connection cut by injected fault")

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.cut {
		return 0, errTruncated
	}
	w.reg.mu.Lock()
	if w.entry.Status == 0 {
		w.entry.Status = http.StatusOK
	}
	w.reg.mu.Unlock()

	limit := len(p)
	if w.truncateAt >= 0 && w.written+int64(limit) > w.truncateAt {
		limit = int(w.truncateAt - w.written)
	}
	n, err := w.write(p[:limit])
	if err != nil {
		return n, err
	}
	if limit < len(p) {
		w.cut = true
		rc := http.NewResponseController(w.ResponseWriter)
		_ = rc.Flush()
		if conn, _, err := rc.Hijack(); err == nil {
			_ = conn.Close()
		}
		return n, errTruncated
	}
	return n, nil
}

// write sends p in pieces paced by the link, counting each piece before it
// is sent.
func (w *countingWriter) write(p []byte) (int, error) {
	const piece = 32 << 10
	total := 0
	for len(p) > 0 {
		chunk := p
		if w.reg.link != nil && len(chunk) > piece {
			chunk = chunk[:piece]
		}
		if w.reg.link != nil {
			w.reg.link.wait(int64(len(chunk)))
		}
		w.add(int64(len(chunk)))
		n, err := w.ResponseWriter.Write(chunk)
		if n < len(chunk) {
			w.add(int64(n - len(chunk)))
		}
		total += n
		w.written += int64(n)
		if err != nil {
			return total, err
		}
		p = p[len(chunk):]
	}
	return total, nil
}

func (w *countingWriter) add(n int64) {
	w.reg.mu.Lock()
	defer w.reg.mu.Unlock()
	w.entry.Bytes += n
	w.ep.totals.Bytes += n
	if w.countBlob {
		w.ep.totals.BlobBytes += n
		w.blob.Bytes += n
	}
}

// Flush lets handlers that stream flush through the front.
func (w *countingWriter) Flush() {
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap gives http.ResponseController the underlying writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// linkSlack is how far behind its schedule the link may fall and still make
// the time up. A sender the scheduler wakes late on a busy machine would
// otherwise lose that time for good, and the link would carry less than its
// bandwidth while data waits to be sent: a real link's queue keeps sending
// meanwhile. A longer idle time is not banked.
const linkSlack = 5 * time.Millisecond

// link paces bytes like one shared link of a fixed bandwidth.
type link struct {
	bytesPerSecond int64
	mu             sync.Mutex
	free           time.Time // when the link has sent everything reserved
}

func (l *link) wait(n int64) {
	time.Sleep(time.Until(l.reserve(time.Now(), n)))
}

// reserve books n bytes on the link at now and returns when they are sent.
func (l *link) reserve(now time.Time, n int64) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A sender woken late by less than linkSlack finds free in the past:
	// the link kept sending meanwhile, so the schedule stands. A longer
	// gap is idle time, and nothing is banked.
	if l.free.Before(now.Add(-linkSlack)) {
		l.free = now
	}
	l.free = l.free.Add(time.Duration(n * int64(time.Second) / l.bytesPerSecond))
	return l.free
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

var blobPath = regexp.MustCompile(`^/v2/.+/blobs/([^/]+)$`)

// blobDigest is the digest of a blob request's path, empty for other paths.
func blobDigest(path string) digest.Digest {
	m := blobPath.FindStringSubmatch(path)
	if m == nil {
		return ""
	}
	d, err := digest.Parse(m[1])
	if err != nil {
		return ""
	}
	return d
}

func isBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && blobDigest(r.URL.Path) != ""
}

// parseRanges parses a Range header such as "bytes=0-99,200-"; parts it
// cannot parse are left out.
func parseRanges(h string) []ByteRange {
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !ok {
		return nil
	}
	var out []ByteRange
	for part := range strings.SplitSeq(spec, ",") {
		first, last, ok := strings.Cut(strings.TrimSpace(part), "-")
		if !ok {
			continue
		}
		br := ByteRange{Start: -1, End: -1}
		var err error
		if first != "" {
			if br.Start, err = strconv.ParseInt(first, 10, 64); err != nil {
				continue
			}
		}
		if last != "" {
			if br.End, err = strconv.ParseInt(last, 10, 64); err != nil {
				continue
			}
		}
		if first == "" && last == "" {
			continue
		}
		out = append(out, br)
	}
	return out
}

// UnreachableHost returns "127.0.0.1:PORT" for a port nothing listens on,
// so connections to it are refused. The port was free a moment ago; another
// process could in principle take it.
func UnreachableHost(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testutil: listen: %v", err)
	}
	host := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("testutil: close listener: %v", err)
	}
	return host
}

// loopbackResolver is a containerd resolver using plain HTTP for loopback
// hosts and HTTPS elsewhere, without credentials.
func loopbackResolver() remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(
			docker.WithPlainHTTP(docker.MatchLocalhost),
		),
	})
}

// quietContext returns ctx carrying a logger for distribution that writes
// to w. distribution keeps its context logger under an unexported key of an
// internal package, so the key is recognised by its type's name; should that
// name change, distribution falls back to logrus's standard logger and
// nothing else breaks.
func quietContext(ctx context.Context, w io.Writer) context.Context {
	logger := logrus.New()
	logger.SetOutput(w)
	// Warnings and errors only: at info distribution logs every request,
	// and the front's Requests log already has them.
	logger.SetLevel(logrus.WarnLevel)
	return loggerContext{Context: ctx, entry: logrus.NewEntry(logger)}
}

type loggerContext struct {
	context.Context
	entry *logrus.Entry
}

func (c loggerContext) Value(key any) any {
	if t := reflect.TypeOf(key); t != nil && t.Name() == "loggerKey" &&
		strings.HasSuffix(t.PkgPath(), "/distribution/v3/internal/dcontext") {
		return c.entry
	}
	return c.Context.Value(key)
}

// testLogWriter sends the registry's log to the test log under -v, and
// discards it otherwise and once the test has ended.
type testLogWriter struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	if !testing.Verbose() {
		return len(p), nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Logf("registry: %s", strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
}
