// Package converttest builds real layers and images in a content store for
// tests of conversion and verification: tars with regular files,
// directories, symlinks and hardlinks, compressed as plain tar, gzip, zstd
// or eStargz, assembled into Docker or OCI manifests, multi-platform
// indexes and BuildKit-style attestation manifests.
package converttest

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"encoding/json"
	"io"
	"math/rand"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Entry is one tar entry.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg when zero
	Body     []byte
	Linkname string
	Mode     int64
}

// Dir is a directory entry.
func Dir(name string) Entry { return Entry{Name: name, Type: tar.TypeDir, Mode: 0o755} }

// File is a regular file with body.
func File(name, body string) Entry { return Entry{Name: name, Body: []byte(body), Mode: 0o644} }

// RandomFile is a regular file of size pseudo-random bytes from seed; half
// of them come from a small alphabet so it compresses somewhat.
func RandomFile(name string, size int, seed int64) Entry {
	rnd := rand.New(rand.NewSource(seed))
	b := make([]byte, size)
	rnd.Read(b)
	for i := 0; i < len(b); i += 2 {
		b[i] = "stargazer"[b[i]%9]
	}
	return Entry{Name: name, Body: b, Mode: 0o644}
}

// Symlink is a symbolic link to target.
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Linkname: target, Mode: 0o777}
}

// Hardlink is a hard link to the earlier entry target.
func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Linkname: target, Mode: 0o644}
}

// Tar writes the entries, in order, as a tar with fixed times and owners so
// that the same entries always give the same bytes.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, e := range entries {
		typ := e.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.Name, Typeflag: typ, Linkname: e.Linkname, Mode: e.Mode, ModTime: mtime, Uname: "root", Gname: "root"}
		switch typ {
		case tar.TypeReg:
			h.Size = int64(len(e.Body))
		case tar.TypeXGlobalHeader:
			h = &tar.Header{Name: e.Name, Typeflag: typ, PAXRecords: map[string]string{"comment": "global"}}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.Name, err)
		}
		if _, err := tw.Write(e.Body); err != nil {
			t.Fatalf("tar body %s: %v", e.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Compression is how a test layer is encoded.
type Compression string

// Encodings of test layers. EStargz is stock estargz.Build output (no
// prioritized files) with the TOC digest and uncompressed size
// annotations, like a base image built with BuildKit's compression=estargz.
const (
	Uncompressed Compression = "tar"
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	EStargz      Compression = "estargz"
)

// Layer is a layer blob with what a manifest and config need about it.
type Layer struct {
	Blob        []byte
	MediaType   string
	Annotations map[string]string
	DiffID      digest.Digest
}

// Descriptor is the layer's manifest descriptor.
func (l Layer) Descriptor() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: l.MediaType, Digest: digest.FromBytes(l.Blob), Size: int64(len(l.Blob)), Annotations: l.Annotations}
}

// NewLayer encodes a tar of entries with c, using Docker media types when
// docker is set.
func NewLayer(t testing.TB, c Compression, docker bool, entries ...Entry) Layer {
	t.Helper()
	return FromTar(t, Tar(t, entries...), c, docker)
}

// FromTar encodes tarball with c.
func FromTar(t testing.TB, tarball []byte, c Compression, docker bool) Layer {
	t.Helper()
	l := Layer{}
	var buf bytes.Buffer
	switch c {
	case Uncompressed:
		buf.Write(tarball)
		l.MediaType = ocispec.MediaTypeImageLayer
		if docker {
			l.MediaType = images.MediaTypeDockerSchema2Layer
		}
	case Gzip:
		z := stdgzip.NewWriter(&buf)
		z.Write(tarball)
		if err := z.Close(); err != nil {
			t.Fatal(err)
		}
		l.MediaType = ocispec.MediaTypeImageLayerGzip
		if docker {
			l.MediaType = images.MediaTypeDockerSchema2LayerGzip
		}
	case Zstd:
		z, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		z.Write(tarball)
		if err := z.Close(); err != nil {
			t.Fatal(err)
		}
		l.MediaType = ocispec.MediaTypeImageLayerZstd
		if docker {
			l.MediaType = images.MediaTypeDockerSchema2LayerZstd
		}
	case EStargz:
		blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarball), 0, int64(len(tarball))), estargz.WithCompressionLevel(stdgzip.BestSpeed))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(&buf, blob); err != nil {
			t.Fatal(err)
		}
		if err := blob.Close(); err != nil {
			t.Fatal(err)
		}
		usize, err := blob.UncompressedSize()
		if err != nil {
			t.Fatal(err)
		}
		l.MediaType = ocispec.MediaTypeImageLayerGzip
		if docker {
			l.MediaType = images.MediaTypeDockerSchema2LayerGzip
		}
		l.Annotations = map[string]string{
			estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
			estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(usize, 10),
		}
		l.DiffID = blob.DiffID()
		l.Blob = buf.Bytes()
		return l
	default:
		t.Fatalf("unknown compression %q", c)
	}
	l.Blob = buf.Bytes()
	l.DiffID = digest.FromBytes(tarball)
	return l
}

// NewStore returns a content store in a fresh temporary directory.
func NewStore(t testing.TB) content.Store {
	t.Helper()
	cs, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// WriteBlob stores b and returns its descriptor.
func WriteBlob(t testing.TB, cs content.Ingester, mediaType string, b []byte) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := content.WriteBlob(context.Background(), cs, desc.Digest.String(), bytes.NewReader(b), desc); err != nil {
		t.Fatal(err)
	}
	return desc
}

func writeJSON(t testing.TB, cs content.Ingester, mediaType string, v any) ocispec.Descriptor {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "   ")
	if err != nil {
		t.Fatal(err)
	}
	return WriteBlob(t, cs, mediaType, b)
}

// WriteManifest stores the layers, a config for platform with their
// diff_ids and a manifest, and returns the manifest's descriptor with
// Platform set. Media types are Docker's when docker is set.
func WriteManifest(t testing.TB, cs content.Ingester, platform ocispec.Platform, docker bool, layers ...Layer) ocispec.Descriptor {
	t.Helper()
	cfg := ocispec.Image{Platform: platform, RootFS: ocispec.RootFS{Type: "layers"}}
	cfg.Config.Env = []string{"PATH=/usr/bin:/bin"}
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
	cfgType := ocispec.MediaTypeImageConfig
	if docker {
		m.MediaType = images.MediaTypeDockerSchema2Manifest
		cfgType = images.MediaTypeDockerSchema2Config
	}
	for _, l := range layers {
		WriteBlob(t, cs, l.MediaType, l.Blob)
		m.Layers = append(m.Layers, l.Descriptor())
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID)
	}
	m.Config = writeJSON(t, cs, cfgType, cfg)
	desc := writeJSON(t, cs, m.MediaType, m)
	desc.Platform = &platform
	return desc
}

// WriteIndex stores an index of manifests (in order) and returns its
// descriptor.
func WriteIndex(t testing.TB, cs content.Ingester, docker bool, manifests ...ocispec.Descriptor) ocispec.Descriptor {
	t.Helper()
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: manifests}
	if docker {
		idx.MediaType = images.MediaTypeDockerSchema2ManifestList
	}
	return writeJSON(t, cs, idx.MediaType, idx)
}

// Statement is the in-toto statement shape BuildKit writes.
type Statement struct {
	Type          string          `json:"_type"`
	PredicateType string          `json:"predicateType"`
	Subject       []Subject       `json:"subject"`
	Predicate     json.RawMessage `json:"predicate"`
}

// Subject is an in-toto statement subject.
type Subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// WriteAttestation stores a BuildKit-style attestation manifest for the
// image manifest subject (a provenance statement naming it, a config whose
// diff_ids are the statement digests, and with oci an OCI subject field)
// and returns its index entry.
func WriteAttestation(t testing.TB, cs content.Ingester, subject ocispec.Descriptor, oci bool) ocispec.Descriptor {
	t.Helper()
	st := Statement{
		Type:          "https://in-toto.io/Statement/v0.1",
		PredicateType: "https://slsa.dev/provenance/v0.2",
		Subject: []Subject{{
			Name:   "pkg:docker/example/app@latest?platform=" + subject.Platform.OS + "%2F" + subject.Platform.Architecture,
			Digest: map[string]string{"sha256": subject.Digest.Encoded()},
		}},
		Predicate: json.RawMessage(`{"builder":{"id":"stargazer-test"}}`),
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	layer := WriteBlob(t, cs, images.MediaTypeInToto, b)
	layer.Annotations = map[string]string{"in-toto.io/predicate-type": st.PredicateType}
	cfg := ocispec.Image{Platform: ocispec.Platform{OS: "unknown", Architecture: "unknown"}, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layer.Digest}}}
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    writeJSON(t, cs, ocispec.MediaTypeImageConfig, cfg),
		Layers:    []ocispec.Descriptor{layer},
	}
	if oci {
		m.Subject = &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	}
	desc := writeJSON(t, cs, m.MediaType, m)
	desc.Platform = &ocispec.Platform{OS: "unknown", Architecture: "unknown"}
	desc.Annotations = map[string]string{
		"vnd.docker.reference.type":   "attestation-manifest",
		"vnd.docker.reference.digest": subject.Digest.String(),
	}
	return desc
}

// ReadJSON decodes the blob desc describes.
func ReadJSON(t testing.TB, p content.Provider, desc ocispec.Descriptor, v any) {
	t.Helper()
	b, err := content.ReadBlob(context.Background(), p, desc)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// ReadBlob returns the blob desc describes.
func ReadBlob(t testing.TB, p content.Provider, desc ocispec.Descriptor) []byte {
	t.Helper()
	b, err := content.ReadBlob(context.Background(), p, desc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
