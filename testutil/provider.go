package testutil

import (
	"bytes"
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Provider serves the image's blobs, for checkers such as exporter/verify.
func (img Image) Provider() content.Provider { return blobProvider(img.blobs) }

// Provider serves the layout's blobs.
func (l *OCILayout) Provider() content.Provider { return blobProvider(l.Blobs) }

type blobProvider map[digest.Digest][]byte

func (p blobProvider) ReaderAt(_ context.Context, d ocispec.Descriptor) (content.ReaderAt, error) {
	b, ok := p[d.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, errdefs.ErrNotFound)
	}
	return readerAt{bytes.NewReader(b)}, nil
}

type readerAt struct{ *bytes.Reader }

func (readerAt) Close() error { return nil }
