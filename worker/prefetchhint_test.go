package worker

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/compression"
)

func hintedManifest(layers map[digest.Digest][2]string) []byte {
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest}
	m.SchemaVersion = 2
	for d, v := range layers {
		l := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d, Annotations: map[string]string{}}
		fmt.Sscan(v[0], &l.Size)
		if v[1] != "" {
			l.Annotations[compression.PrefetchSizeAnnotation] = v[1]
		}
		m.Layers = append(m.Layers, l)
	}
	b, _ := json.Marshal(m)
	return b
}

// TestPrefetchHintsFromManifests pulls manifests through watched hosts, as
// BuildKit's resolver does, and checks what the hints learned.
func TestPrefetchHintsFromManifests(t *testing.T) {
	good, bad, big, neg, none, nan := digest.FromString("good"), digest.FromString("bad"), digest.FromString("big"),
		digest.FromString("neg"), digest.FromString("none"), digest.FromString("nan")
	other := digest.FromString("other")
	manifest := hintedManifest(map[digest.Digest][2]string{
		good: {"1000", "600"},
		big:  {"1000", "1001"}, // past the layer's end
		neg:  {"1000", "-1"},
		none: {"1000", ""},
		nan:  {"1000", "lots"},
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/x/manifests/oci":
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Write(manifest)
		case "/v2/x/manifests/docker":
			w.Header().Set("Content-Type", images.MediaTypeDockerSchema2Manifest)
			w.Write(hintedManifest(map[digest.Digest][2]string{other: {"50", "10"}}))
		case "/v2/x/manifests/index":
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.Write(hintedManifest(map[digest.Digest][2]string{bad: {"50", "10"}}))
		case "/v2/x/blobs/" + bad.String():
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Write(hintedManifest(map[digest.Digest][2]string{bad: {"50", "10"}}))
		case "/v2/x/manifests/huge":
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Write(hintedManifest(map[digest.Digest][2]string{bad: {"50", "10"}}))
			w.Write([]byte(strings.Repeat(" ", maxManifestSize)))
		}
	}))
	defer srv.Close()

	hints := newPrefetchHints()
	hosts := hints.watch(func(string) ([]docker.RegistryHost, error) {
		return []docker.RegistryHost{{Client: srv.Client(), Host: srv.Listener.Addr().String(), Scheme: "http", Path: "/v2"}}, nil
	})
	list, err := hosts("registry")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"manifests/oci", "manifests/docker", "manifests/index", "blobs/" + bad.String(), "manifests/huge"} {
		res, err := list[0].Client.Get(srv.URL + "/v2/x/" + p)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	for d, want := range map[digest.Digest]int64{good: 600, other: 10} {
		if n, ok := hints.size(d); !ok || n.prefetch != want {
			t.Errorf("hint of %s: %d, %v; want %d", d, n, ok, want)
		}
	}
	for _, d := range []digest.Digest{bad, big, neg, none, nan} {
		if n, ok := hints.size(d); ok {
			t.Errorf("hint of %s learned (%d)", d, n)
		}
	}
}

func TestPrefetchHintsBounded(t *testing.T) {
	h := newPrefetchHints()
	first := digest.FromString("0")
	h.learn(hintedManifest(map[digest.Digest][2]string{first: {"10", "5"}}))
	for i := 1; i <= maxHints; i++ {
		h.learn(hintedManifest(map[digest.Digest][2]string{digest.FromString(fmt.Sprint(i)): {"10", "5"}}))
	}
	if _, ok := h.size(first); ok {
		t.Error("the oldest hint is still there")
	}
	if _, ok := h.size(digest.FromString(fmt.Sprint(maxHints))); !ok || len(h.sizes) != maxHints {
		t.Errorf("%d hints, newest known: %v", len(h.sizes), ok)
	}
}

func FuzzPrefetchHintsLearn(f *testing.F) {
	f.Add(hintedManifest(map[digest.Digest][2]string{digest.FromString("a"): {"100", "50"}}))
	f.Add([]byte(`{"layers":[{"digest":"sha256:x","size":-1,"annotations":{"` + compression.PrefetchSizeAnnotation + `":"9"}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h := newPrefetchHints()
		h.learn(b)
		for d, n := range h.sizes {
			if d.Validate() != nil || n.prefetch <= 0 || n.prefetch > n.blob {
				t.Fatalf("learned %q: %d", d, n)
			}
		}
	})
}
