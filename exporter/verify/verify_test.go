package verify_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/compression"
	"github.com/stargazer-build/stargazer/exporter/convert"
	ct "github.com/stargazer-build/stargazer/exporter/convert/converttest"
	"github.com/stargazer-build/stargazer/exporter/verify"
)

var linux = ocispec.Platform{OS: "linux", Architecture: "amd64"}

func entries() []ct.Entry {
	return []ct.Entry{
		ct.Dir("etc/"), ct.File("etc/a", "a"), ct.File("etc/b", strings.Repeat("b", 10000)),
		ct.Dir("lib/"), ct.RandomFile("lib/big", 300<<10, 3), ct.Hardlink("lib/big.1", "lib/big"), ct.Symlink("l", "lib"),
	}
}

var list = []string{"etc/b", "lib/big.1"}

// converted returns a store holding a converted single-layer image and the
// converted layer's descriptor, blob and diff_id.
func converted(t *testing.T, opts ...convert.Option) (content.Store, ocispec.Descriptor, []byte, digest.Digest) {
	t.Helper()
	cs := ct.NewStore(t)
	src := ct.NewLayer(t, ct.Gzip, false, entries()...)
	ra, err := readerAt(src.Blob)
	if err != nil {
		t.Fatal(err)
	}
	l, err := convert.ConvertLayer(context.Background(), ra, src.Descriptor(), list, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Commit(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(l.Reader())
	if err != nil {
		t.Fatal(err)
	}
	return cs, l.Descriptor, blob, l.DiffID
}

type memRA struct{ *bytes.Reader }

func (memRA) Close() error { return nil }

func readerAt(b []byte) (content.ReaderAt, error) { return memRA{bytes.NewReader(b)}, nil }

// image writes a manifest with the given layer descriptors (whose blobs
// must be in cs) and diff_ids.
func image(t *testing.T, cs content.Store, layers []ocispec.Descriptor, diffIDs []digest.Digest) ocispec.Descriptor {
	t.Helper()
	ls := make([]ct.Layer, len(layers))
	for i, d := range layers {
		ls[i] = ct.Layer{Blob: ct.ReadBlob(t, cs, d), MediaType: d.MediaType, Annotations: d.Annotations, DiffID: diffIDs[i]}
	}
	return ct.WriteManifest(t, cs, linux, false, ls...)
}

func expect(files []string) verify.Option {
	return verify.WithPrioritizedFiles(func(ocispec.Platform, int) []string { return files })
}

func TestImagePasses(t *testing.T) {
	for _, format := range []convert.Format{convert.EStargz, convert.ZstdChunked} {
		t.Run(string(format), func(t *testing.T) {
			cs, desc, _, diffID := converted(t, convert.WithFormat(format), convert.WithChunkSize(64<<10))
			m := image(t, cs, []ocispec.Descriptor{desc}, []digest.Digest{diffID})
			r, err := verify.Image(context.Background(), cs, m, expect(list))
			if err != nil {
				t.Fatal(err)
			}
			l := r.Manifests[0].Layers[0]
			if string(l.Format) != string(format) || !l.Lazy || l.Landmark != estargz.PrefetchLandmark {
				t.Errorf("report %+v", l)
			}
			// etc/b, lib/big and its hardlink; chunks: etc/a, etc/b, the
			// landmark and lib/big's 300 KiB in 64 KiB chunks.
			if l.PrioritizedFiles != 3 || l.Chunks != 3+5 || l.PrefetchSize <= 100<<10 || l.PrefetchSize >= desc.Size {
				t.Errorf("prioritized %d, chunks %d, prefetch %d of %d", l.PrioritizedFiles, l.Chunks, l.PrefetchSize, desc.Size)
			}
			var buf bytes.Buffer
			if err := r.WriteTable(&buf); err != nil {
				t.Fatal(err)
			}
			if out := buf.String(); !strings.Contains(out, "linux/amd64") || !strings.Contains(out, string(format)) || !strings.Contains(out, " ok") {
				t.Errorf("table:\n%s", out)
			}
		})
	}
}

func withAnnotation(d ocispec.Descriptor, k, v string) ocispec.Descriptor {
	a := map[string]string{}
	for key, val := range d.Annotations {
		a[key] = val
	}
	a[k] = v
	d.Annotations = a
	return d
}

// rewriteTOC rebuilds a gzip eStargz blob with its TOC passed through fn,
// keeping the payload: a well-formed blob whose TOC lies.
func rewriteTOC(t *testing.T, blob []byte, fn func(*estargz.JTOC)) ([]byte, digest.Digest) {
	t.Helper()
	g, _ := compression.NewGzip(6)
	_, tocOff, _, err := g.ParseFooter(blob[len(blob)-estargz.FooterSize:])
	if err != nil {
		t.Fatal(err)
	}
	toc, _, err := g.ParseTOC(bytes.NewReader(blob[tocOff : len(blob)-estargz.FooterSize]))
	if err != nil {
		t.Fatal(err)
	}
	fn(toc)
	var buf bytes.Buffer
	buf.Write(blob[:tocOff])
	tocDigest, err := g.WriteTOCAndFooter(&buf, tocOff, toc, nil)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), tocDigest
}

func TestImageFailures(t *testing.T) {
	ctx := context.Background()
	cs, desc, blob, diffID := converted(t)

	put := func(b []byte, like ocispec.Descriptor) ocispec.Descriptor {
		d := ct.WriteBlob(t, cs, like.MediaType, b)
		d.Annotations = like.Annotations
		return d
	}

	// A TOC whose chunk digest is wrong, re-annotated so that only the
	// chunk check (and the DiffID, which covers the TOC) can catch it.
	badChunk, badChunkTOC := rewriteTOC(t, blob, func(toc *estargz.JTOC) {
		for _, e := range toc.Entries {
			if e.Name == "etc/b" {
				e.ChunkDigest = digest.FromString("not it").String()
			}
		}
	})
	badChunkDesc := withAnnotation(put(badChunk, desc), estargz.TOCJSONDigestAnnotation, badChunkTOC.String())

	// A hardlink cycle in the TOC: must be an error, not a crash.
	cycle, cycleTOC := rewriteTOC(t, blob, func(toc *estargz.JTOC) {
		toc.Entries = append(toc.Entries,
			&estargz.TOCEntry{Name: "x", Type: "hardlink", LinkName: "y"},
			&estargz.TOCEntry{Name: "y", Type: "hardlink", LinkName: "x"})
	})
	cycleDesc := withAnnotation(put(cycle, desc), estargz.TOCJSONDigestAnnotation, cycleTOC.String())

	// An eStargz without landmark, as estargz.Writer writes it.
	var noLandmark bytes.Buffer
	w := estargz.NewWriter(&noLandmark)
	if err := w.AppendTar(bytes.NewReader(ct.Tar(t, entries()...))); err != nil {
		t.Fatal(err)
	}
	nlTOC, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	nlDesc := put(noLandmark.Bytes(), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip})
	nlDesc.Annotations = map[string]string{estargz.TOCJSONDigestAnnotation: nlTOC.String(), estargz.StoreUncompressedSizeAnnotation: "1"}

	plain := ct.NewLayer(t, ct.Gzip, false, entries()...)
	plainDesc := ct.WriteBlob(t, cs, plain.MediaType, plain.Blob)

	for _, tc := range []struct {
		name   string
		layer  ocispec.Descriptor
		diffID digest.Digest
		opts   []verify.Option
		want   []string
	}{
		{name: "TOC digest", layer: withAnnotation(desc, estargz.TOCJSONDigestAnnotation, digest.FromString("x").String()), diffID: diffID, want: []string{"TOC digest"}},
		{name: "diff_id", layer: desc, diffID: digest.FromString("x"), want: []string{"config diff_id"}},
		{name: "uncompressed size", layer: withAnnotation(desc, estargz.StoreUncompressedSizeAnnotation, "12"), diffID: diffID, want: []string{"uncompressed size is"}},
		{name: "order", layer: desc, diffID: diffID, opts: []verify.Option{expect([]string{"lib/big.1", "etc/b"})}, want: []string{`prefetch entry 0 is "etc", expected "lib"`}},
		{name: "expected no prefetch", layer: desc, diffID: diffID, opts: []verify.Option{expect([]string{})}, want: []string{`prefetch range has 5 entries, expected 0; first unexpected "etc"`}},
		{name: "chunk digest", layer: badChunkDesc, diffID: diffID, want: []string{`file "etc/b"`, "chunk digest"}},
		{name: "hardlink cycle", layer: cycleDesc, diffID: diffID, want: []string{"cycle"}},
		{name: "no landmark", layer: nlDesc, diffID: digest.Digest(w.DiffID()), want: []string{"no .prefetch.landmark"}},
		{name: "prefetch size annotation", layer: withAnnotation(desc, compression.PrefetchSizeAnnotation, "4096"), diffID: diffID, want: []string{compression.PrefetchSizeAnnotation + " annotation says 4096, the landmark is at"}},
		{name: "prefetch size annotation not a number", layer: withAnnotation(desc, compression.PrefetchSizeAnnotation, "-1"), diffID: diffID, want: []string{"not a positive number"}},
		{name: "prefetch size annotation without landmark", layer: withAnnotation(nlDesc, compression.PrefetchSizeAnnotation, "10"), diffID: digest.Digest(w.DiffID()), want: []string{"has no .prefetch.landmark"}},
		{name: "not lazy", layer: plainDesc, diffID: plain.DiffID, want: []string{"not lazy-pullable"}},
		{name: "gzip labelled zstd", layer: withAnnotation(func() ocispec.Descriptor { d := desc; d.MediaType = ocispec.MediaTypeImageLayerZstd; return d }(), "x", "y"), diffID: diffID, want: []string{"zstd:chunked footer"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := image(t, cs, []ocispec.Descriptor{tc.layer}, []digest.Digest{tc.diffID})
			r, err := verify.Image(ctx, cs, m, tc.opts...)
			if err == nil {
				t.Fatal("verification passed")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
			if !strings.Contains(err.Error(), m.Digest.String()) || !strings.Contains(err.Error(), "layer 0") {
				t.Errorf("error does not say where: %v", err)
			}
			if r == nil || r.Manifests[0].Layers[0].Err == nil {
				t.Error("report does not carry the failure")
			}
		})
	}

	t.Run("allow non-lazy", func(t *testing.T) {
		m := image(t, cs, []ocispec.Descriptor{plainDesc, desc}, []digest.Digest{plain.DiffID, diffID})
		r, err := verify.Image(ctx, cs, m, verify.WithAllowNonLazy())
		if err != nil {
			t.Fatal(err)
		}
		if l := r.Manifests[0].Layers[0]; l.Lazy || l.Format != verify.FormatGzip {
			t.Errorf("plain gzip layer reported %+v", l)
		}
		var buf bytes.Buffer
		r.WriteTable(&buf)
		if !strings.Contains(buf.String(), "not lazy") {
			t.Errorf("table:\n%s", buf.String())
		}
	})

	t.Run("every failure reported", func(t *testing.T) {
		m := image(t, cs, []ocispec.Descriptor{plainDesc, withAnnotation(desc, estargz.StoreUncompressedSizeAnnotation, "12")}, []digest.Digest{plain.DiffID, diffID})
		_, err := verify.Image(ctx, cs, m)
		if err == nil || !strings.Contains(err.Error(), "layer 0") || !strings.Contains(err.Error(), "layer 1") {
			t.Errorf("want failures of both layers, got %v", err)
		}
	})

	t.Run("blob content", func(t *testing.T) {
		m := image(t, cs, []ocispec.Descriptor{desc}, []digest.Digest{diffID})
		swapped := swapProvider{Provider: cs, digest: desc.Digest, blob: cycle[:len(blob)]}
		if len(cycle) < len(blob) {
			t.Skip("rewritten blob shorter")
		}
		if _, err := verify.Image(ctx, swapped, m); err == nil || !strings.Contains(err.Error(), "does not match digest") {
			t.Errorf("swapped blob: %v", err)
		}
	})
}

type swapProvider struct {
	content.Provider
	digest digest.Digest
	blob   []byte
}

func (p swapProvider) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if desc.Digest == p.digest {
		return readerAt(p.blob)
	}
	return p.Provider.ReaderAt(ctx, desc)
}

func TestZstdChunkedAnnotations(t *testing.T) {
	cs, desc, _, diffID := converted(t, convert.WithFormat(convert.ZstdChunked))
	for _, k := range []string{zstdchunked.ManifestChecksumAnnotation, zstdchunked.ManifestPositionAnnotation} {
		m := image(t, cs, []ocispec.Descriptor{withAnnotation(desc, k, "0:0:0:1")}, []digest.Digest{diffID})
		if _, err := verify.Image(context.Background(), cs, m); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("wrong %s: %v", k, err)
		}
	}
}

func TestAttestations(t *testing.T) {
	ctx := context.Background()
	cs := ct.NewStore(t)
	m := ct.WriteManifest(t, cs, linux, false, ct.NewLayer(t, ct.Gzip, false, entries()...))
	att := ct.WriteAttestation(t, cs, m, true)
	idx := ct.WriteIndex(t, cs, false, m, att)

	out, _, err := convert.Image(ctx, cs, idx)
	if err != nil {
		t.Fatal(err)
	}
	r, err := verify.Image(ctx, cs, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Attestations) != 1 || r.Attestations[0].Statements != 1 {
		t.Errorf("attestations %+v", r.Attestations)
	}

	// An index pairing the converted manifest with the stale attestation,
	// as a conversion that forgot attestations would write.
	var conv ocispec.Index
	ct.ReadJSON(t, cs, out, &conv)
	stale := ct.WriteIndex(t, cs, false, conv.Manifests[0], att)
	if _, err := verify.Image(ctx, cs, stale); err == nil || !strings.Contains(err.Error(), "not a manifest of the index") {
		t.Errorf("stale reference: %v", err)
	}
	// Reference updated but statements not.
	half := att
	half.Annotations = map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": conv.Manifests[0].Digest.String()}
	stale = ct.WriteIndex(t, cs, false, conv.Manifests[0], half)
	_, err = verify.Image(ctx, cs, stale)
	if err == nil || !strings.Contains(err.Error(), "among its subjects") || !strings.Contains(err.Error(), "subject sha256:") {
		t.Errorf("stale statements: %v", err)
	}
}

func TestLayerOptions(t *testing.T) {
	if _, err := verify.Image(context.Background(), ct.NewStore(t), ocispec.Descriptor{}, verify.WithConcurrency(0)); err == nil {
		t.Error("concurrency 0 accepted")
	}
	cs, desc, _, diffID := converted(t)
	if _, err := verify.Layer(context.Background(), cs, desc, diffID, list); err != nil {
		t.Error(err)
	}
	if _, err := verify.Layer(context.Background(), cs, desc, "", nil); err != nil {
		t.Error(err)
	}
	lr, err := verify.Layer(context.Background(), cs, desc, diffID, []string{"etc/a"})
	if err == nil || lr.Err == nil {
		t.Error("wrong expected list passed")
	}
	if !errors.Is(err, lr.Err) {
		t.Errorf("error %v does not wrap the report's %v", err, lr.Err)
	}
}

func FuzzLayer(f *testing.F) {
	ctx := context.Background()
	src := ct.NewLayer(f, ct.Gzip, false, ct.File("a", "a"), ct.Hardlink("b", "a"))
	ra, _ := readerAt(src.Blob)
	l, err := convert.ConvertLayer(ctx, ra, src.Descriptor(), []string{"b"})
	if err != nil {
		f.Fatal(err)
	}
	good, _ := io.ReadAll(l.Reader())
	l.Close()
	f.Add(good, l.TOCDigest.String(), false)
	f.Add(good[:len(good)-1], l.TOCDigest.String(), false)
	f.Add([]byte("not a layer"), l.TOCDigest.String(), true)
	f.Fuzz(func(t *testing.T, blob []byte, toc string, zstd bool) {
		desc := ocispec.Descriptor{
			MediaType:   ocispec.MediaTypeImageLayerGzip,
			Digest:      digest.FromBytes(blob),
			Size:        int64(len(blob)),
			Annotations: map[string]string{estargz.TOCJSONDigestAnnotation: toc, estargz.StoreUncompressedSizeAnnotation: strconv.Itoa(len(blob))},
		}
		if zstd {
			desc.MediaType = ocispec.MediaTypeImageLayerZstd
		}
		p := swapProvider{digest: desc.Digest, blob: blob}
		verify.Layer(ctx, p, desc, "", []string{"b"}) // must not panic or hang
	})
}
