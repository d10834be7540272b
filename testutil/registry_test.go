package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

// testArtifact is a minimal image pushed by hand, so the registry tests do
// not depend on the fixture builder.
type testArtifact struct {
	manifest, config, layer ocispec.Descriptor
	blobs                   map[digest.Digest][]byte
}

func newTestArtifact(layer []byte) testArtifact {
	a := testArtifact{blobs: map[digest.Digest][]byte{}}
	add := func(mediaType string, data []byte) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
		a.blobs[d.Digest] = data
		return d
	}
	a.layer = add(ocispec.MediaTypeImageLayer, layer)
	config, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{a.layer.Digest}},
	})
	a.config = add(ocispec.MediaTypeImageConfig, config)
	manifest, _ := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    a.config,
		Layers:    []ocispec.Descriptor{a.layer},
	})
	a.manifest = add(ocispec.MediaTypeImageManifest, manifest)
	return a
}

// push uploads the artifact with containerd's pusher.
func (a testArtifact) push(t *testing.T, reg *Registry, ref string) {
	t.Helper()
	ctx := t.Context()
	pusher, err := reg.Resolver().Pusher(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []ocispec.Descriptor{a.layer, a.config, a.manifest} {
		w, err := pusher.Push(ctx, d)
		if errdefs.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			t.Fatalf("push %s: %v", d.Digest, err)
		}
		if err := content.Copy(ctx, w, bytes.NewReader(a.blobs[d.Digest]), d.Size, d.Digest); err != nil {
			t.Fatalf("push %s: %v", d.Digest, err)
		}
		w.Close()
	}
}

func fetchAll(ctx context.Context, reg *Registry, ref string, d ocispec.Descriptor) ([]byte, error) {
	f, err := reg.Resolver().Fetcher(ctx, ref)
	if err != nil {
		return nil, err
	}
	rc, err := f.Fetch(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func blobURL(reg *Registry, name string, d digest.Digest) string {
	return reg.URL() + "/v2/" + name + "/blobs/" + d.String()
}

// get performs a GET with an optional Range header and returns status and
// body; a body that fails part way returns what was read and the error.
func get(t *testing.T, url, rangeHeader string) (int, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rangeHeader != "" {
		req.Header.Set("Range", rangeHeader)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func TestRegistryRoundTrip(t *testing.T) {
	reg := NewRegistry(t)
	if !strings.HasPrefix(reg.Host(), "127.0.0.1:") {
		t.Fatalf("Host() = %q, want 127.0.0.1:PORT", reg.Host())
	}
	a := newTestArtifact(PseudoRandom("roundtrip", 100_000))
	ref := reg.Ref("roundtrip/image:v1")
	a.push(t, reg, ref)

	ctx := t.Context()
	name, desc, err := reg.Resolver().Resolve(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != a.manifest.Digest {
		t.Fatalf("resolved %s, pushed %s", desc.Digest, a.manifest.Digest)
	}
	for _, d := range []ocispec.Descriptor{a.manifest, a.config, a.layer} {
		got, err := fetchAll(ctx, reg, name, d)
		if err != nil {
			t.Fatalf("fetch %s: %v", d.Digest, err)
		}
		if !bytes.Equal(got, a.blobs[d.Digest]) {
			t.Fatalf("fetched %s differs from what was pushed", d.Digest)
		}
	}

	// Resolving by digest works too.
	if _, desc, err := reg.Resolver().Resolve(ctx, reg.Ref("roundtrip/image@"+a.manifest.Digest.String())); err != nil || desc.Digest != a.manifest.Digest {
		t.Fatalf("resolve by digest: %v, %s", err, desc.Digest)
	}

	st := reg.BlobStats(a.layer.Digest)
	if st.Gets != 1 || st.Bytes != a.layer.Size || st.RangeGets != 0 {
		t.Errorf("layer stats %+v, want 1 GET of %d bytes", st, a.layer.Size)
	}
	var puts, posts int
	for _, r := range reg.Requests() {
		switch r.Method {
		case http.MethodPut:
			puts++
		case http.MethodPost:
			posts++
		}
	}
	if puts != 3 || posts != 2 {
		t.Errorf("saw %d PUTs and %d POSTs, want 3 (2 blobs + manifest) and 2 (blob uploads)", puts, posts)
	}
}

func TestRegistryCountsRanges(t *testing.T) {
	reg := NewRegistry(t)
	a := newTestArtifact(PseudoRandom("ranges", 64<<10))
	a.push(t, reg, reg.Ref("ranges:latest"))
	reg.Reset()
	if got := reg.Totals(); got != (Stats{}) {
		t.Fatalf("totals after Reset = %+v", got)
	}
	layer := a.blobs[a.layer.Digest]
	url := blobURL(reg, "ranges", a.layer.Digest)

	status, body, err := get(t, url, "")
	if err != nil || status != http.StatusOK || !bytes.Equal(body, layer) {
		t.Fatalf("full GET: %d, %d bytes, %v", status, len(body), err)
	}
	status, body, err = get(t, url, "bytes=10-19")
	if err != nil || status != http.StatusPartialContent || !bytes.Equal(body, layer[10:20]) {
		t.Fatalf("range GET: %d, %d bytes, %v", status, len(body), err)
	}
	status, body, err = get(t, url, "bytes=65000-")
	if err != nil || status != http.StatusPartialContent || !bytes.Equal(body, layer[65000:]) {
		t.Fatalf("open range GET: %d, %d bytes, %v", status, len(body), err)
	}
	status, multi, err := get(t, url, "bytes=0-0,-5")
	if err != nil || status != http.StatusPartialContent {
		t.Fatalf("multi-range GET: %d, %v", status, err)
	}

	// containerd's fetcher turns a seek into a Range request.
	f, err := reg.Resolver().Fetcher(t.Context(), reg.Ref("ranges:latest"))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := f.Fetch(t.Context(), a.layer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.(io.Seeker).Seek(1000, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if _, err := io.ReadFull(rc, buf); err != nil || !bytes.Equal(buf, layer[1000:1100]) {
		t.Fatalf("read after seek: %v", err)
	}
	rc.Close()

	st := reg.BlobStats(a.layer.Digest)
	if st.Gets != 5 || st.RangeGets != 4 {
		t.Errorf("Gets=%d RangeGets=%d, want 5 and 4", st.Gets, st.RangeGets)
	}
	wantRanges := []ByteRange{{10, 19}, {65000, -1}, {0, 0}, {-1, 5}, {1000, -1}}
	if !slices.Equal(st.Ranges, wantRanges) {
		t.Errorf("Ranges = %v, want %v", st.Ranges, wantRanges)
	}
	// The seeked read may stop early, so its bytes are bounded, not exact.
	fixed := int64(len(layer) + 10 + (len(layer) - 65000) + len(multi))
	if st.Bytes < fixed+100 || st.Bytes > fixed+int64(len(layer)-1000) {
		t.Errorf("Bytes = %d, want between %d and %d", st.Bytes, fixed+100, fixed+int64(len(layer)-1000))
	}
	tot := reg.Totals()
	if tot.BlobGets != 5 || tot.RangeGets != 4 || tot.BlobBytes != st.Bytes || tot.Bytes < tot.BlobBytes {
		t.Errorf("Totals = %+v, blob stats %+v", tot, st)
	}

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodHead, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := reg.BlobStats(a.layer.Digest).Heads; got != 1 {
		t.Errorf("Heads = %d, want 1", got)
	}

	log := reg.Requests()
	if len(log) != tot.Requests+1 {
		t.Fatalf("%d log entries, %d requests", len(log), tot.Requests+1)
	}
	first := log[0]
	if first.Method != http.MethodGet || first.Digest != a.layer.Digest || first.Status != http.StatusOK || first.Bytes != int64(len(layer)) || first.Range != "" {
		t.Errorf("first log entry %+v", first)
	}
	if r := log[1]; r.Range != "bytes=10-19" || r.Status != http.StatusPartialContent || r.Bytes != 10 {
		t.Errorf("second log entry %+v", r)
	}

	reg.Reset()
	if st := reg.BlobStats(a.layer.Digest); st.Gets != 0 || len(reg.Requests()) != 0 {
		t.Errorf("after Reset: %+v, %d requests", st, len(reg.Requests()))
	}
}

func TestRegistryFaults(t *testing.T) {
	a := newTestArtifact(PseudoRandom("faults", 32<<10))
	other := newTestArtifact(PseudoRandom("faults-other", 1000))
	layer := a.blobs[a.layer.Digest]

	tests := []struct {
		name  string
		fault FaultFunc
		check func(t *testing.T, reg *Registry)
	}{{
		name:  "fail nth blob GET",
		fault: FailNthBlobGet(2, http.StatusInternalServerError),
		check: func(t *testing.T, reg *Registry) {
			url := blobURL(reg, "faults", a.layer.Digest)
			for i, want := range []int{200, 500, 200} {
				status, _, err := get(t, url, "")
				if err != nil || status != want {
					t.Errorf("GET %d: status %d (%v), want %d", i+1, status, err, want)
				}
			}
			if got := reg.Totals().Faults; got != 1 {
				t.Errorf("Faults = %d, want 1", got)
			}
		},
	}, {
		name:  "fail all blob GETs, manifests pass",
		fault: FailBlobGets(http.StatusServiceUnavailable),
		check: func(t *testing.T, reg *Registry) {
			ctx := t.Context()
			name, _, err := reg.Resolver().Resolve(ctx, reg.Ref("faults:latest"))
			if err != nil {
				t.Fatalf("resolve: %v", err)
			}
			if _, err := fetchAll(ctx, reg, name, a.layer); err == nil {
				t.Error("layer fetch succeeded despite the fault")
			}
			log := reg.Requests()
			last := log[len(log)-1]
			if last.Status != http.StatusServiceUnavailable || last.Fault == "" {
				t.Errorf("last request %+v", last)
			}
		},
	}, {
		name:  "truncate blob body",
		fault: TruncateBlobGets(1000),
		check: func(t *testing.T, reg *Registry) {
			status, body, err := get(t, blobURL(reg, "faults", a.layer.Digest), "")
			if status != http.StatusOK || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("status %d, err %v; want 200 and unexpected EOF", status, err)
			}
			if !bytes.Equal(body, layer[:1000]) {
				t.Errorf("got %d bytes before the cut, want the first 1000", len(body))
			}
			if st := reg.BlobStats(a.layer.Digest); st.Bytes != 1000 {
				t.Errorf("Bytes = %d, want 1000", st.Bytes)
			}

			// containerd resumes a cut body with a Range request from
			// where it stopped, so it gets there 1000 bytes at a time.
			reg.Reset()
			got, err := fetchAll(t.Context(), reg, reg.Ref("faults:latest"), a.layer)
			if err != nil || !bytes.Equal(got, layer) {
				t.Fatalf("containerd fetch through cuts: %d bytes, %v", len(got), err)
			}
			st := reg.BlobStats(a.layer.Digest)
			if want := (len(layer) + 999) / 1000; st.Gets != want || st.RangeGets != want-1 || st.Bytes != int64(len(layer)) {
				t.Errorf("stats %d GETs, %d with Range, %d bytes; want %d, %d, %d", st.Gets, st.RangeGets, st.Bytes, want, want-1, len(layer))
			}
			if st.Ranges[0] != (ByteRange{1000, -1}) {
				t.Errorf("first resume range %v, want 1000-", st.Ranges[0])
			}
		},
	}, {
		name:  "truncate nth blob GET before any body",
		fault: TruncateNthBlobGet(1, 0),
		check: func(t *testing.T, reg *Registry) {
			url := blobURL(reg, "faults", a.layer.Digest)
			if _, body, err := get(t, url, ""); err == nil || len(body) != 0 {
				t.Errorf("first GET: %d bytes, err %v; want none and an error", len(body), err)
			}
			if status, body, err := get(t, url, ""); err != nil || status != 200 || len(body) != len(layer) {
				t.Errorf("second GET: status %d, %d bytes, %v", status, len(body), err)
			}
		},
	}, {
		name:  "fault for one blob only",
		fault: ForBlob(other.layer.Digest, FailBlobGets(http.StatusNotFound)),
		check: func(t *testing.T, reg *Registry) {
			if status, _, _ := get(t, blobURL(reg, "faults", a.layer.Digest), ""); status != 200 {
				t.Errorf("unfaulted blob: status %d", status)
			}
			if status, _, _ := get(t, blobURL(reg, "other", other.layer.Digest), ""); status != 404 {
				t.Errorf("faulted blob: status %d", status)
			}
		},
	}, {
		name:  "drop everything",
		fault: DropAll(),
		check: func(t *testing.T, reg *Registry) {
			if _, _, err := get(t, reg.URL()+"/v2/", ""); err == nil {
				t.Error("GET /v2/ succeeded")
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			if _, _, err := reg.Resolver().Resolve(ctx, reg.Ref("faults:latest")); err == nil {
				t.Error("resolve succeeded")
			}
			for _, r := range reg.Requests() {
				if r.Status != 0 || r.Fault != "drop" {
					t.Errorf("request %+v, want dropped", r)
				}
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := NewRegistry(t)
			a.push(t, reg, reg.Ref("faults:latest"))
			other.push(t, reg, reg.Ref("other:latest"))
			reg.Reset()
			reg.SetFaults(tt.fault)
			tt.check(t, reg)
		})
	}
}

func TestRegistryFaultOption(t *testing.T) {
	reg := NewRegistry(t, WithFault(func(r *http.Request) FaultAction {
		if r.Method == http.MethodGet && r.URL.Path == "/v2/" {
			return FaultAction{Status: http.StatusTeapot}
		}
		return FaultAction{}
	}))
	if status, _, err := get(t, reg.URL()+"/v2/", ""); err != nil || status != http.StatusTeapot {
		t.Fatalf("status %d, %v", status, err)
	}
	reg.SetFaults()
	if status, _, err := get(t, reg.URL()+"/v2/", ""); err != nil || status != http.StatusOK {
		t.Fatalf("after SetFaults(): status %d, %v", status, err)
	}
}

func TestRegistryLatencyAndBandwidth(t *testing.T) {
	const latency = 150 * time.Millisecond
	reg := NewRegistry(t, WithLatency(latency), WithBandwidth(4<<20))
	a := newTestArtifact(PseudoRandom("slow", 1<<20))
	a.push(t, reg, reg.Ref("slow:latest"))

	start := time.Now()
	if status, _, err := get(t, reg.URL()+"/v2/", ""); err != nil || status != 200 {
		t.Fatalf("status %d, %v", status, err)
	}
	if d := time.Since(start); d < latency {
		t.Errorf("request took %v, want at least %v", d, latency)
	}

	reg.SetLatency(0)
	start = time.Now()
	status, body, err := get(t, blobURL(reg, "slow", a.layer.Digest), "")
	if err != nil || status != 200 || len(body) != 1<<20 {
		t.Fatalf("status %d, %d bytes, %v", status, len(body), err)
	}
	// 1 MiB at 4 MiB/s: about 250ms.
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("1 MiB at 4 MiB/s took %v, want at least 200ms", d)
	}
}

func TestRegistryStorageDir(t *testing.T) {
	dir := t.TempDir()
	reg := NewRegistry(t, WithStorageDir(dir))
	a := newTestArtifact([]byte("on disk"))
	a.push(t, reg, reg.Ref("disk:latest"))
	var found bool
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(p, a.layer.Digest.Encoded()) {
			found = true
		}
		return err
	})
	if err != nil || !found {
		t.Fatalf("blob %s not stored under %s (%v)", a.layer.Digest, dir, err)
	}
	if _, err := fetchAll(t.Context(), reg, reg.Ref("disk:latest"), a.layer); err != nil {
		t.Fatal(err)
	}
}

func TestRegistryClose(t *testing.T) {
	reg := NewRegistry(t)
	reg.Close()
	_, _, err := get(t, reg.URL()+"/v2/", "")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET after Close: %v, want connection refused", err)
	}
	reg.Close()
}

func TestUnreachableHost(t *testing.T) {
	host := UnreachableHost(t)
	_, _, err := get(t, "http://"+host+"/v2/", "")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET: %v, want connection refused", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, _, err := loopbackResolver().Resolve(ctx, host+"/nothing:latest"); err == nil {
		t.Fatal("resolve against an unreachable host succeeded")
	}
}

// TestRegistryQuiet checks that distribution logs to the registry's own
// logger rather than logrus's standard one, which other code in the test
// binary shares.
func TestRegistryQuiet(t *testing.T) {
	reg := NewRegistry(t)
	a := newTestArtifact([]byte("quiet"))
	a.push(t, reg, reg.Ref("quiet:latest"))

	var buf bytes.Buffer
	std := logrus.StandardLogger()
	out, level := std.Out, std.GetLevel()
	std.SetOutput(&buf)
	std.SetLevel(logrus.DebugLevel)
	defer func() {
		std.SetOutput(out)
		std.SetLevel(level)
	}()
	// Plain HTTP requests, so only the registry could log: a success and
	// an error response, which distribution logs at info and error level.
	if status, _, _ := get(t, blobURL(reg, "quiet", a.layer.Digest), ""); status != http.StatusOK {
		t.Fatalf("status %d, want 200", status)
	}
	if status, _, _ := get(t, reg.URL()+"/v2/quiet/manifests/missing", ""); status != http.StatusNotFound {
		t.Fatalf("status %d, want 404", status)
	}
	reg.Close()
	if buf.Len() > 0 {
		t.Errorf("registry logged to logrus's standard logger:\n%s", buf.String())
	}
}

func TestParseRanges(t *testing.T) {
	tests := []struct {
		in   string
		want []ByteRange
	}{
		{"bytes=0-99", []ByteRange{{0, 99}}},
		{"bytes=100-", []ByteRange{{100, -1}}},
		{"bytes=-500", []ByteRange{{-1, 500}}},
		{"bytes=0-1, 5-9,20-", []ByteRange{{0, 1}, {5, 9}, {20, -1}}},
		{"bytes=x-1,2-3", []ByteRange{{2, 3}}},
		{"bytes=-", nil},
		{"items=0-1", nil},
		{"", nil},
	}
	for _, tt := range tests {
		if got := parseRanges(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("parseRanges(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestBlobDigest(t *testing.T) {
	d := digest.FromString("x")
	tests := map[string]digest.Digest{
		"/v2/a/blobs/" + d.String():                d,
		"/v2/a/b/c/blobs/" + d.String():            d,
		"/v2/a/blobs/uploads/":                     "",
		"/v2/a/blobs/uploads/" + d.Encoded():       "",
		"/v2/a/manifests/" + d.String():            "",
		"/v2/a/blobs/sha256:short":                 "",
		fmt.Sprintf("/v2/blobs/%s", d.String()):    "",
		fmt.Sprintf("/v2/x/blobs/%s/", d.String()): "",
	}
	for path, want := range tests {
		if got := blobDigest(path); got != want {
			t.Errorf("blobDigest(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestLinkSchedule(t *testing.T) {
	l := &link{bytesPerSecond: 1 << 20} // 1 MiB/s: 1 KiB takes about 1ms
	kib := time.Second / 1024
	t0 := time.Unix(1000, 0)
	if got := l.reserve(t0, 1024); !got.Equal(t0.Add(kib)) {
		t.Fatalf("first KiB sent at +%v, want +%v", got.Sub(t0), kib)
	}
	// Booked back to back: the link is busy until the first is sent.
	if got := l.reserve(t0, 1024); !got.Equal(t0.Add(2 * kib)) {
		t.Fatalf("second KiB sent at +%v, want +%v", got.Sub(t0), 2*kib)
	}
	// The sender comes back 3ms late: the link made that time up.
	late := t0.Add(2*kib + 3*time.Millisecond)
	if got := l.reserve(late, 1024); !got.Equal(t0.Add(3 * kib)) {
		t.Fatalf("KiB booked 3ms late sent at +%v, want +%v", got.Sub(t0), 3*kib)
	}
	// After an idle time longer than linkSlack nothing is made up.
	idle := t0.Add(time.Second)
	if got := l.reserve(idle, 1024); !got.Equal(idle.Add(kib)) {
		t.Fatalf("KiB after idling sent at +%v, want +%v", got.Sub(idle), kib)
	}
}
