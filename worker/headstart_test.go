package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// headRegistry serves one manifest, hinting at the prefetch size of its
// one layer, and the layer's blob with Range support; it logs every request
// as "path range authorization".
type headRegistry struct {
	*blobServer
	digest   digest.Digest
	manifest []byte
	cut      string // a Range answered with 100 bytes and a broken connection
}

func newHeadRegistry(t *testing.T, size, prefetch int) *headRegistry {
	r := &headRegistry{blobServer: &blobServer{blob: make([]byte, size)}}
	rand.Read(r.blob)
	r.digest = digest.FromBytes(r.blob)
	r.manifest = hintedManifest(map[digest.Digest][2]string{r.digest: {fmt.Sprint(size), fmt.Sprint(prefetch)}})
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.ranges = append(r.ranges, fmt.Sprintf("%s %s %s", req.URL.Path, req.Header.Get("Range"), req.Header.Get("Authorization")))
		cut := r.cut != "" && req.Header.Get("Range") == r.cut
		r.mu.Unlock()
		switch {
		case cut:
			a, b, _ := singleRange(req)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, size))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(r.blob[a : a+100])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		case req.URL.Path == "/v2/x/manifests/latest":
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Write(r.manifest)
		case req.URL.Path == "/v2/x/blobs/"+r.digest.String():
			http.ServeContent(w, req, "blob", time.Time{}, bytes.NewReader(r.blob))
		default:
			http.NotFound(w, req)
		}
	}))
	t.Cleanup(r.Close)
	return r
}

// headSetup wires a registry as the daemon does: BuildKit's hosts watch
// manifests, and the stargz snapshotter's transport (one rangeShare per
// layer) shares with the head starts, in chunks of 1000 bytes.
func headSetup(t *testing.T, r *headRegistry) (manifests *http.Client, layer func() http.RoundTripper) {
	hints := newPrefetchHints()
	heads := newHeadStarts(1000)
	hints.heads.Store(heads)
	hosts := hints.watch(func(string) ([]docker.RegistryHost, error) {
		return []docker.RegistryHost{{Client: r.Client(), Host: r.Listener.Addr().String(), Scheme: "http", Path: "/v2"}}, nil
	})
	list, err := hosts("registry")
	if err != nil {
		t.Fatal(err)
	}
	layers := sharedRanges(hosts, hints, heads, 1000)
	return list[0].Client, func() http.RoundTripper {
		l, err := layers("registry")
		if err != nil {
			t.Fatal(err)
		}
		return l[0].Client.Transport
	}
}

// getManifest fetches the manifest as BuildKit does, with auth if set.
func (r *headRegistry) getManifest(t *testing.T, c *http.Client, auth string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.URL+"/v2/x/manifests/latest?ns=registry", nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
}

func (r *headRegistry) read(t *testing.T, rt http.RoundTripper, rng, auth string) []byte {
	t.Helper()
	res := rangeGet(t, rt, context.Background(), r.URL+"/v2/x/blobs/"+r.digest.String(), rng, auth)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read %s: %v", rng, err)
	}
	return b
}

func TestHeadStart(t *testing.T) {
	const size, prefetch = 3 << 20, 2<<20 + 500 // rounded up: 2098000
	r := newHeadRegistry(t, size, prefetch)
	manifests, layer := headSetup(t, r)
	blob := "/v2/x/blobs/" + r.digest.String()

	// Reading the manifest starts the download of the head of the
	// prefetch range, from the snapshotter's blob URL, with the manifest's
	// credentials.
	r.getManifest(t, manifests, "Basic cw==")
	headEnd := roundUp(headStartSize, 1000) - 1
	want := []string{"/v2/x/manifests/latest  Basic cw==", fmt.Sprintf("%s bytes=0-%d Basic cw==", blob, headEnd)}
	if reqs := r.waitRequests(t, 2); !slices.Equal(reqs, want) {
		t.Fatalf("registry saw %q, want %q", reqs, want)
	}

	// The snapshotter's first request for the layer is served from it and
	// starts the download of the rest of the range; the HEAD after it is
	// answered from what the head start told.
	rt := layer()
	if b := r.read(t, rt, "bytes=0-1", "Basic cw=="); !bytes.Equal(b, r.blob[:2]) {
		t.Fatal("bytes 0-1 differ")
	}
	want = append(want, fmt.Sprintf("%s bytes=%d-2097999 Basic cw==", blob, headEnd+1))
	if reqs := r.waitRequests(t, 3); !slices.Equal(reqs, want) {
		t.Fatalf("registry saw %q, want %q", reqs, want)
	}
	head, _ := http.NewRequest(http.MethodHead, r.URL+blob, nil)
	head.Header.Set("Authorization", "Basic cw==")
	res, err := rt.RoundTrip(head)
	if err != nil || res.ContentLength != size {
		t.Fatalf("HEAD: %v, %v", res, err)
	}

	// The prefetch follows the head start, then the rest.
	if b := r.read(t, rt, "bytes=0-2097999", "Basic cw=="); !bytes.Equal(b, r.blob[:2098000]) {
		t.Fatal("prefetch range differs")
	}
	if reqs := r.requests(); len(reqs) != 3 {
		t.Errorf("registry saw %q, want no more requests", reqs)
	}
	// Both downloads are let go once the prefetch has read them.
	if f := rt.(*rangeShare).flights; len(f) != 0 {
		t.Errorf("%d flights kept", len(f))
	}
	if f := rt.(*rangeShare).heads.flight(rangeKey(r.URL+blob, "Basic cw==")); f != nil {
		t.Error("head start kept")
	}

	// The layer is the snapshotter's now: reading the manifest again, as
	// a build whose steps are cached does, starts nothing.
	r.getManifest(t, manifests, "Basic cw==")
	time.Sleep(50 * time.Millisecond)
	if reqs := r.requests(); len(reqs) != 4 {
		t.Errorf("registry saw %q, want only the manifest again", reqs)
	}
}

func TestHeadStartOtherCredentials(t *testing.T) {
	r := newHeadRegistry(t, 10000, 5000)
	manifests, layer := headSetup(t, r)
	blob := "/v2/x/blobs/" + r.digest.String()
	r.getManifest(t, manifests, "Bearer manifest")
	r.waitRequests(t, 2)
	// Other credentials share nothing with the head start: their first
	// request starts a download of the whole range of their own.
	rt := layer()
	if b := r.read(t, rt, "bytes=0-4999", "Bearer layer"); !bytes.Equal(b, r.blob[:5000]) {
		t.Fatal("prefetch range differs")
	}
	want := []string{
		"/v2/x/manifests/latest  Bearer manifest",
		blob + " bytes=0-4999 Bearer manifest",
		blob + " bytes=0-4999 Bearer layer",
	}
	if reqs := r.requests(); !slices.Equal(reqs, want) {
		t.Errorf("registry saw %q, want %q", reqs, want)
	}
}

func TestHeadStartPrefetchFollows(t *testing.T) {
	for _, tt := range []struct {
		name     string
		prefetch int
		cut      string
		want     []string // the ranges of the blob requests
	}{
		// A prefetch range smaller than a head start is downloaded whole
		// by it.
		{"whole", 4200, "", []string{"bytes=0-4999"}},
		// The head start's answer breaks off after 100 bytes: the
		// prefetch follows it that far and fetches the rest itself.
		{"broken off", 5000, "bytes=0-4999", []string{"bytes=0-4999", "bytes=100-4999"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newHeadRegistry(t, 10000, tt.prefetch)
			r.cut = tt.cut
			manifests, layer := headSetup(t, r)
			r.getManifest(t, manifests, "")
			r.waitRequests(t, 2)
			if b := r.read(t, layer(), "bytes=0-4999", ""); !bytes.Equal(b, r.blob[:5000]) {
				t.Fatal("prefetch range differs")
			}
			var want []string
			for _, rng := range tt.want {
				want = append(want, "/v2/x/blobs/"+r.digest.String()+" "+rng+" ")
			}
			if reqs := r.requests(); !slices.Equal(reqs[1:], want) {
				t.Errorf("registry saw %q, want the manifest and %q", reqs, want)
			}
		})
	}
}
