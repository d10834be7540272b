package convert_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/convert"
	ct "github.com/stargazer-build/stargazer/exporter/convert/converttest"
	"github.com/stargazer-build/stargazer/exporter/verify"
)

var (
	amd64 = ocispec.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
)

// guardedStore fails the test when a forbidden blob is read: kept base
// layers may be remote, lazily pulled blobs that must not be fetched.
type guardedStore struct {
	content.Store
	t         *testing.T
	forbidden map[digest.Digest]bool
	mu        sync.Mutex
	reads     map[digest.Digest]int
}

func (s *guardedStore) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	if s.reads == nil {
		s.reads = map[digest.Digest]int{}
	}
	s.reads[desc.Digest]++
	s.mu.Unlock()
	if s.forbidden[desc.Digest] {
		s.t.Errorf("blob %s was read", desc.Digest)
		return nil, errors.New("forbidden read")
	}
	return s.Store.ReaderAt(ctx, desc)
}

// testImage is a two-platform image sharing an eStargz base layer, with
// gzip and zstd layers on top and an attestation manifest per platform.
type testImage struct {
	index ocispec.Descriptor
	base  ct.Layer
	lists map[string][][]string // platform → layer → prioritized
}

func (ti testImage) prioritized(p ocispec.Platform, i int) []string {
	l := ti.lists[p.Architecture]
	if i < len(l) {
		return l[i]
	}
	return nil
}

// expected is the prioritized list verify expects: kept base layers (index
// 0) were not converted with one, so their order is not checked.
func (ti testImage) expected(p ocispec.Platform, i int) []string {
	if i == 0 {
		return nil
	}
	return ti.prioritized(p, i)
}

func writeTestImage(t *testing.T, cs content.Store, docker bool) testImage {
	base := ct.NewLayer(t, ct.EStargz, docker,
		ct.Dir("bin/"), ct.File("bin/sh", "sh"), ct.Dir("etc/"), ct.File("etc/os-release", "ID=test\n"))
	app := func(arch string, c ct.Compression) ct.Layer {
		return ct.NewLayer(t, c, docker,
			ct.Dir("app/"), ct.File("app/main-"+arch, strings.Repeat(arch, 10000)), ct.File("app/data", "data "+arch),
			ct.Dir("app/lib/"), ct.File("app/lib/a.so", "a"), ct.Hardlink("app/lib/a.so.1", "app/lib/a.so"), ct.Symlink("app/current", "main-"+arch))
	}
	extra := ct.NewLayer(t, ct.Zstd, docker, ct.Dir("srv/"), ct.RandomFile("srv/blob", 300<<10, 7))
	m1 := ct.WriteManifest(t, cs, amd64, docker, base, app("amd64", ct.Gzip))
	var m2 ocispec.Descriptor
	if docker {
		m2 = ct.WriteManifest(t, cs, arm64, docker, base, app("arm64", ct.Uncompressed), ct.NewLayer(t, ct.Gzip, docker, ct.Dir("srv/"), ct.File("srv/x", "x")))
	} else {
		m2 = ct.WriteManifest(t, cs, arm64, docker, base, app("arm64", ct.Uncompressed), extra)
	}
	manifests := []ocispec.Descriptor{m1, m2}
	if !docker {
		manifests = append(manifests, ct.WriteAttestation(t, cs, m1, false), ct.WriteAttestation(t, cs, m2, true))
	}
	return testImage{
		index: ct.WriteIndex(t, cs, docker, manifests...),
		base:  base,
		lists: map[string][][]string{
			"amd64": {{"bin/sh"}, {"app/main-amd64", "app/lib/a.so.1", "/app/current", "nope"}},
			"arm64": {nil, {"app/data"}, {"srv/blob", "srv/x"}},
		},
	}
}

func TestImage(t *testing.T) {
	ctx := context.Background()
	for _, format := range []convert.Format{convert.EStargz, convert.ZstdChunked} {
		t.Run(string(format), func(t *testing.T) {
			cs := ct.NewStore(t)
			ti := writeTestImage(t, cs, false)
			gs := &guardedStore{Store: cs, t: t, forbidden: map[digest.Digest]bool{ti.base.Descriptor().Digest: true}}

			out, report, err := convert.Image(ctx, gs, ti.index, convert.WithFormat(format), convert.WithPrioritizedFiles(ti.prioritized))
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			report.WriteTable(&buf)
			t.Logf("conversion:\n%s", buf.String())

			vr, err := verify.Image(ctx, cs, out, verify.WithPrioritizedFiles(ti.expected))
			buf.Reset()
			vr.WriteTable(&buf)
			t.Logf("verification:\n%s", buf.String())
			if err != nil {
				t.Fatalf("verify: %v", err)
			}

			if len(report.Manifests) != 2 {
				t.Fatalf("%d manifests reported", len(report.Manifests))
			}
			for _, m := range report.Manifests {
				base := m.Layers[0]
				if !base.Kept || base.NewDigest != ti.base.Descriptor().Digest {
					t.Errorf("%s: base layer not kept: %+v", m.Platform.Architecture, base)
				}
				for _, l := range m.Layers[1:] {
					if l.Kept || l.NewDigest == l.OldDigest {
						t.Errorf("%s layer %d not converted", m.Platform.Architecture, l.Index)
					}
				}
			}
			amd := report.Manifests[0].Layers[1]
			if amd.Prioritized != 3 || !slices.Equal(amd.Missing, []string{"nope"}) {
				t.Errorf("amd64 app layer: prioritized %d, missing %q", amd.Prioritized, amd.Missing)
			}

			// Index: same platforms, order and annotations; attestations
			// point at the new manifests.
			var idx ocispec.Index
			ct.ReadJSON(t, cs, out, &idx)
			if len(idx.Manifests) != 4 {
				t.Fatalf("index has %d entries", len(idx.Manifests))
			}
			for i, want := range []ocispec.Platform{amd64, arm64} {
				if p := idx.Manifests[i].Platform; p == nil || p.Architecture != want.Architecture || p.Variant != want.Variant {
					t.Errorf("entry %d platform %v", i, p)
				}
				if idx.Manifests[i].Digest != report.Manifests[i].NewDigest {
					t.Errorf("entry %d is %s, report says %s", i, idx.Manifests[i].Digest, report.Manifests[i].NewDigest)
				}
			}
			for i, att := range idx.Manifests[2:] {
				subject := idx.Manifests[i].Digest
				if got := att.Annotations["vnd.docker.reference.digest"]; got != subject.String() {
					t.Errorf("attestation %d refers to %s, want %s", i, got, subject)
				}
				var m ocispec.Manifest
				ct.ReadJSON(t, cs, att, &m)
				var st ct.Statement
				ct.ReadJSON(t, cs, m.Layers[0], &st)
				if st.Subject[0].Digest["sha256"] != subject.Encoded() {
					t.Errorf("statement subject %v, want %s", st.Subject[0].Digest, subject)
				}
				if !strings.HasPrefix(st.Subject[0].Name, "pkg:docker/") || st.PredicateType == "" || len(st.Predicate) == 0 {
					t.Errorf("statement lost fields: %+v", st)
				}
				var cfg ocispec.Image
				ct.ReadJSON(t, cs, m.Config, &cfg)
				if cfg.RootFS.DiffIDs[0] != m.Layers[0].Digest {
					t.Errorf("attestation config diff_id %s, statement %s", cfg.RootFS.DiffIDs[0], m.Layers[0].Digest)
				}
				if i == 1 && (m.Subject == nil || m.Subject.Digest != subject) {
					t.Errorf("OCI subject %v, want %s", m.Subject, subject)
				}
			}
			if len(report.Attestations) != 2 {
				t.Errorf("%d attestations reported", len(report.Attestations))
			}
		})
	}
}

func TestImageDockerMediaTypes(t *testing.T) {
	ctx := context.Background()
	cs := ct.NewStore(t)
	ti := writeTestImage(t, cs, true)

	out, _, err := convert.Image(ctx, cs, ti.index, convert.WithPrioritizedFiles(ti.prioritized))
	if err != nil {
		t.Fatal(err)
	}
	if out.MediaType != images.MediaTypeDockerSchema2ManifestList {
		t.Errorf("index media type %s", out.MediaType)
	}
	assertMediaTypes(t, cs, out, "application/vnd.docker.")
	if _, err := verify.Image(ctx, cs, out, verify.WithPrioritizedFiles(ti.expected)); err != nil {
		t.Fatalf("verify: %v", err)
	}

	_, _, err = convert.Image(ctx, cs, ti.index, convert.WithFormat(convert.ZstdChunked))
	if !errors.Is(err, convert.ErrDockerZstdChunked) {
		t.Fatalf("zstd:chunked on a Docker image: %v", err)
	}

	out, _, err = convert.Image(ctx, cs, ti.index, convert.WithFormat(convert.ZstdChunked), convert.WithOCIMediaTypes(true))
	if err != nil {
		t.Fatal(err)
	}
	if out.MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("index media type %s", out.MediaType)
	}
	assertMediaTypes(t, cs, out, "application/vnd.oci.")
	if _, err := verify.Image(ctx, cs, out); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

// assertMediaTypes checks every manifest, config and layer media type below
// index starts with prefix.
func assertMediaTypes(t *testing.T, cs content.Store, index ocispec.Descriptor, prefix string) {
	t.Helper()
	var idx ocispec.Index
	ct.ReadJSON(t, cs, index, &idx)
	if idx.MediaType != index.MediaType {
		t.Errorf("index says %s, descriptor %s", idx.MediaType, index.MediaType)
	}
	for _, md := range idx.Manifests {
		var m ocispec.Manifest
		ct.ReadJSON(t, cs, md, &m)
		types := []string{md.MediaType, m.MediaType, m.Config.MediaType}
		for _, l := range m.Layers {
			types = append(types, l.MediaType)
		}
		for _, mt := range types {
			if !strings.HasPrefix(mt, prefix) {
				t.Errorf("manifest %s: media type %s", md.Digest, mt)
			}
		}
	}
}

func TestImageReoptimizeBase(t *testing.T) {
	ctx := context.Background()
	cs := ct.NewStore(t)
	ti := writeTestImage(t, cs, false)
	out, report, err := convert.Image(ctx, cs, ti.index, convert.WithPrioritizedFiles(ti.prioritized), convert.WithReoptimizeBase(true))
	if err != nil {
		t.Fatal(err)
	}
	amdBase, armBase := report.Manifests[0].Layers[0], report.Manifests[1].Layers[0]
	if amdBase.Kept || amdBase.NewDigest == amdBase.OldDigest || amdBase.Prioritized != 1 {
		t.Errorf("amd64 base layer not reoptimized: %+v", amdBase)
	}
	// Different prioritized lists give different blobs for the same
	// source layer.
	if armBase.NewDigest == amdBase.NewDigest {
		t.Error("arm64 base (no list) converted like amd64's (with list)")
	}
	if _, err := verify.Image(ctx, cs, out, verify.WithPrioritizedFiles(ti.prioritized)); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

func TestImageSharedLayerConvertedOnce(t *testing.T) {
	ctx := context.Background()
	cs := ct.NewStore(t)
	shared := ct.NewLayer(t, ct.Gzip, false, ct.File("f", "f"))
	m1 := ct.WriteManifest(t, cs, amd64, false, shared)
	m2 := ct.WriteManifest(t, cs, arm64, false, shared)
	idx := ct.WriteIndex(t, cs, false, m1, m2)
	gs := &guardedStore{Store: cs, t: t}
	_, report, err := convert.Image(ctx, gs, idx, convert.WithConcurrency(2))
	if err != nil {
		t.Fatal(err)
	}
	if n := gs.reads[shared.Descriptor().Digest]; n != 1 {
		t.Errorf("shared layer read %d times", n)
	}
	if report.Manifests[0].Layers[0].NewDigest != report.Manifests[1].Layers[0].NewDigest {
		t.Error("shared layer converted differently")
	}
}

func TestImageUnchanged(t *testing.T) {
	ctx := context.Background()
	cs := ct.NewStore(t)
	m := ct.WriteManifest(t, cs, amd64, false, ct.NewLayer(t, ct.EStargz, false, ct.File("f", "f")))
	for name, desc := range map[string]ocispec.Descriptor{"manifest": m, "index": ct.WriteIndex(t, cs, false, m)} {
		out, report, err := convert.Image(ctx, cs, desc)
		if err != nil {
			t.Fatal(err)
		}
		if out.Digest != desc.Digest {
			t.Errorf("%s: all-lazy image changed from %s to %s", name, desc.Digest, out.Digest)
		}
		if !report.Manifests[0].Layers[0].Kept {
			t.Errorf("%s: layer not kept", name)
		}
	}
}

func TestImagePrioritizedByManifest(t *testing.T) {
	ctx := context.Background()
	cs := ct.NewStore(t)
	ti := writeTestImage(t, cs, false)
	var idx ocispec.Index
	ct.ReadJSON(t, cs, ti.index, &idx)
	amdManifest := idx.Manifests[0].Digest
	byManifest := func(m digest.Digest, i int) []string {
		if m == amdManifest && i == 1 {
			return []string{"app/data"}
		}
		return nil
	}
	_, report, err := convert.Image(ctx, cs, ti.index, convert.WithPrioritizedFilesByManifest(byManifest))
	if err != nil {
		t.Fatal(err)
	}
	if got := report.Manifests[0].Layers[1].Prioritized; got != 1 {
		t.Errorf("amd64 app layer has %d prioritized files", got)
	}
	if got := report.Manifests[1].Layers[1].Prioritized; got != 0 {
		t.Errorf("arm64 app layer has %d prioritized files", got)
	}
	if _, _, err := convert.Image(ctx, cs, ti.index, convert.WithPrioritizedFilesByManifest(byManifest), convert.WithPrioritizedFiles(ti.prioritized)); err == nil {
		t.Error("both prioritized options accepted")
	}
}

func TestImageSingleManifestPlatformFromConfig(t *testing.T) {
	ctx := context.Background()
	cs := ct.NewStore(t)
	m := ct.WriteManifest(t, cs, arm64, false, ct.NewLayer(t, ct.Gzip, false, ct.File("f", "f"), ct.File("g", "g")))
	m.Platform = nil
	var seen []ocispec.Platform
	var mu sync.Mutex
	fn := func(p ocispec.Platform, i int) []string {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, p)
		return []string{"g"}
	}
	out, report, err := convert.Image(ctx, cs, m, convert.WithPrioritizedFiles(fn))
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0].Architecture != "arm64" || seen[0].Variant != "v8" {
		t.Errorf("callback saw platforms %v", seen)
	}
	if !images.IsManifestType(out.MediaType) || report.Manifests[0].Layers[0].Prioritized != 1 {
		t.Errorf("converted to %v, report %+v", out, report.Manifests[0])
	}
	if _, err := verify.Image(ctx, cs, out, verify.WithPrioritizedFiles(fn)); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

func TestImageErrors(t *testing.T) {
	ctx := context.Background()
	cs := ct.NewStore(t)
	layer := ct.NewLayer(t, ct.Gzip, false, ct.File("f", "f"))

	wrongDiffID := layer
	wrongDiffID.DiffID = digest.FromString("something else")
	m := ct.WriteManifest(t, cs, amd64, false, wrongDiffID)
	if _, _, err := convert.Image(ctx, cs, m); !errors.Is(err, convert.ErrDigestMismatch) || !strings.Contains(err.Error(), "config says") {
		t.Errorf("wrong diff_id: %v", err)
	}

	corrupt := ct.NewLayer(t, ct.Gzip, false, ct.File("g", "g"))
	m = ct.WriteManifest(t, cs, amd64, false, corrupt)
	// Replace the blob with other bytes under the same digest, as a broken
	// store or registry would serve.
	other := ct.NewLayer(t, ct.Gzip, false, ct.File("g", "G")).Blob
	badStore := &swapStore{Store: cs, swap: map[digest.Digest][]byte{corrupt.Descriptor().Digest: other}}
	if _, _, err := convert.Image(ctx, badStore, m); !errors.Is(err, convert.ErrDigestMismatch) || !strings.Contains(err.Error(), corrupt.Descriptor().Digest.String()) {
		t.Errorf("corrupt blob: %v", err)
	}

	missing := ct.WriteManifest(t, ct.NewStore(t), amd64, false, layer) // blobs in another store
	if _, _, err := convert.Image(ctx, cs, missing); err == nil || !strings.Contains(err.Error(), missing.Digest.String()) {
		t.Errorf("missing manifest: %v", err)
	}
	if _, _, err := convert.Image(ctx, cs, m, convert.WithCompressionLevel(42)); err == nil {
		t.Error("level 42 accepted")
	}
	if _, _, err := convert.Image(ctx, cs, m, convert.WithFormat("lz4")); err == nil {
		t.Error("format lz4 accepted")
	}
	if _, _, err := convert.Image(ctx, cs, layer.Descriptor()); err == nil || !strings.Contains(err.Error(), "not an image index or manifest") {
		t.Errorf("layer as image: %v", err)
	}
}

type swapStore struct {
	content.Store
	swap map[digest.Digest][]byte
}

func (s *swapStore) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if b, ok := s.swap[desc.Digest]; ok {
		return ra(b), nil
	}
	return s.Store.ReaderAt(ctx, desc)
}

// TestImageOCIArchive round-trips through OCI image layout tars, as the
// exporter's tar output and `ctr import` do.
func TestImageOCIArchive(t *testing.T) {
	ctx := context.Background()
	src := ct.NewStore(t)
	ti := writeTestImage(t, src, false)
	var tarball bytes.Buffer
	if err := archive.Export(ctx, src, &tarball, archive.WithManifest(ti.index, "example.com/app:v1"), archive.WithAllPlatforms()); err != nil {
		t.Fatal(err)
	}

	cs := ct.NewStore(t)
	imported, err := archive.ImportIndex(ctx, cs, &tarball)
	if err != nil {
		t.Fatal(err)
	}
	// The layout's index.json wraps the image: a nested index.
	out, report, err := convert.Image(ctx, cs, imported, convert.WithPrioritizedFiles(ti.prioritized))
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Manifests) != 2 || len(report.Attestations) != 2 {
		t.Errorf("report has %d manifests, %d attestations", len(report.Manifests), len(report.Attestations))
	}
	var outer ocispec.Index
	ct.ReadJSON(t, cs, out, &outer)
	if len(outer.Manifests) != 1 || outer.Manifests[0].Annotations[images.AnnotationImageName] == "" {
		t.Fatalf("outer index %+v lost the image name", outer)
	}

	tarball.Reset()
	if err := archive.Export(ctx, cs, &tarball, archive.WithManifest(outer.Manifests[0], "example.com/app:v1-esgz"), archive.WithAllPlatforms()); err != nil {
		t.Fatal(err)
	}
	final := ct.NewStore(t)
	reimported, err := archive.ImportIndex(ctx, final, &tarball)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.Image(ctx, final, reimported, verify.WithPrioritizedFiles(ti.expected)); err != nil {
		t.Fatalf("verify after OCI tar round trip: %v", err)
	}
}

func TestReportTable(t *testing.T) {
	cs := ct.NewStore(t)
	ti := writeTestImage(t, cs, false)
	_, report, err := convert.Image(context.Background(), cs, ti.index, convert.WithPrioritizedFiles(ti.prioritized))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := report.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"PLATFORM", "linux/amd64", "linux/arm64/v8", "kept: already lazy", "attestation", "image"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 1+5+2+1 {
		t.Errorf("table has %d lines:\n%s", n, out)
	}
}
