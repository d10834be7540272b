package convert

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// WithFallback returns cs reading the blobs it does not hold from p: an
// image whose manifest and config were copied into cs can be converted
// while its layers stay where they are (a registry, a lazy snapshot), and
// layers Image keeps are never read at all.
func WithFallback(cs content.Store, p content.Provider) content.Store {
	return &fallbackStore{Store: cs, fallback: p}
}

type fallbackStore struct {
	content.Store
	fallback content.Provider
}

func (s *fallbackStore) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ra, err := s.Store.ReaderAt(ctx, desc)
	if err == nil {
		return ra, nil
	}
	return s.fallback.ReaderAt(ctx, desc)
}

func (s *fallbackStore) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	info, err := s.Store.Info(ctx, dgst)
	if err == nil {
		return info, nil
	}
	if ip, ok := s.fallback.(content.InfoProvider); ok {
		return ip.Info(ctx, dgst)
	}
	return info, err
}
