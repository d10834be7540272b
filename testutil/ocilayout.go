package testutil

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// OCILayout is an OCI image layout read from a tar.
type OCILayout struct {
	Index ocispec.Index
	Blobs map[digest.Digest][]byte
}

// ReadOCILayoutTar reads an OCI image layout tar and checks it: an
// oci-layout file of version 1.0.0, an index.json, every blob stored under
// its own digest, and every descriptor reachable from the index present
// with the right size.
func ReadOCILayoutTar(t testing.TB, path string) *OCILayout {
	t.Helper()
	l, err := readOCILayoutTar(path)
	if err != nil {
		t.Fatalf("OCI layout %s: %v", path, err)
	}
	return l
}

func readOCILayoutTar(path string) (*OCILayout, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l := &OCILayout{Blobs: map[digest.Digest][]byte{}}
	var layoutFile, indexFile []byte
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read tar: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(h.Name, "./")
		switch {
		case name == ocispec.ImageLayoutFile:
			layoutFile = data
		case name == ocispec.ImageIndexFile:
			indexFile = data
		case strings.HasPrefix(name, ocispec.ImageBlobsDir+"/"):
			parts := strings.Split(strings.TrimPrefix(name, ocispec.ImageBlobsDir+"/"), "/")
			if len(parts) != 2 {
				return nil, fmt.Errorf("unexpected blob path %s", name)
			}
			d := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[1])
			if err := d.Validate(); err != nil {
				return nil, fmt.Errorf("blob %s: %w", name, err)
			}
			if got := d.Algorithm().FromBytes(data); got != d {
				return nil, fmt.Errorf("blob %s has digest %s", d, got)
			}
			l.Blobs[d] = data
		}
	}
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(layoutFile, &layout); err != nil || layout.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("oci-layout file missing or wrong (%q)", layoutFile)
	}
	if err := json.Unmarshal(indexFile, &l.Index); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	if len(l.Index.Manifests) == 0 {
		return nil, errors.New("index.json lists no manifest")
	}
	for _, d := range l.Index.Manifests {
		if err := l.walk(d); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *OCILayout) walk(d ocispec.Descriptor) error {
	b, ok := l.Blobs[d.Digest]
	if !ok {
		return fmt.Errorf("blob %s (%s) missing", d.Digest, d.MediaType)
	}
	if int64(len(b)) != d.Size {
		return fmt.Errorf("blob %s: %d bytes, descriptor says %d", d.Digest, len(b), d.Size)
	}
	switch d.MediaType {
	case ocispec.MediaTypeImageIndex, "application/vnd.docker.distribution.manifest.list.v2+json":
		var idx ocispec.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			return fmt.Errorf("index %s: %w", d.Digest, err)
		}
		for _, m := range idx.Manifests {
			if err := l.walk(m); err != nil {
				return err
			}
		}
	case ocispec.MediaTypeImageManifest, "application/vnd.docker.distribution.manifest.v2+json":
		var m ocispec.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("manifest %s: %w", d.Digest, err)
		}
		for _, c := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			if err := l.walk(c); err != nil {
				return err
			}
		}
	}
	return nil
}
