package buildx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/platforms"
	"github.com/docker/cli/cli/config"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// imageSource is an image to read: in a registry, or in an OCI layout tar
// imported into a local content store.
type imageSource struct {
	// Ref is the registry reference, or a name for an image from a tar.
	Ref string
	// Root is what the reference or the tar names: an index or a manifest.
	Root ocispec.Descriptor
	// Manifest is the platform's image manifest.
	Manifest    ocispec.Descriptor
	ManifestDoc ocispec.Manifest
	Config      ocispec.Image
	// Provider reads the image's blobs. Registry blobs are read with Range
	// requests, so a reader that reads only part of a blob fetches only
	// that part.
	Provider content.Provider
	// Store holds an image from a tar; nil for a registry image.
	Store content.Store
}

// openImage opens arg, a registry reference or the path of an OCI layout
// tar, for platform.
func openImage(ctx context.Context, arg string, platform ocispec.Platform, tmpDir string) (*imageSource, error) {
	if st, err := os.Stat(arg); err == nil && !st.IsDir() {
		return openImageTar(ctx, arg, platform, tmpDir)
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: clientRegistryHosts()})
	name, root, err := resolver.Resolve(ctx, arg)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", arg, err)
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", arg, err)
	}
	src := &imageSource{Ref: name, Provider: &remoteProvider{fetcher: fetcher}}
	return src.load(ctx, root, platform)
}

func openImageTar(ctx context.Context, path string, platform ocispec.Platform, tmpDir string) (*imageSource, error) {
	store, err := local.NewStore(tmpDir)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	idx, err := archive.ImportIndex(ctx, store, f)
	if err != nil {
		return nil, fmt.Errorf("read OCI tar %s: %w", path, err)
	}
	src := &imageSource{Ref: "stargazer-input", Provider: store, Store: store}
	return src.load(ctx, idx, platform)
}

// load picks the platform's manifest below root and reads it and its config.
func (s *imageSource) load(ctx context.Context, root ocispec.Descriptor, platform ocispec.Platform) (*imageSource, error) {
	s.Root = root
	m, err := platformManifest(ctx, s.Provider, root, platforms.Only(platform))
	if err != nil {
		return nil, err
	}
	s.Manifest = m
	b, err := content.ReadBlob(ctx, s.Provider, m)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", m.Digest, err)
	}
	if err := json.Unmarshal(b, &s.ManifestDoc); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", m.Digest, err)
	}
	cb, err := content.ReadBlob(ctx, s.Provider, s.ManifestDoc.Config)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", s.ManifestDoc.Config.Digest, err)
	}
	if err := json.Unmarshal(cb, &s.Config); err != nil {
		return nil, fmt.Errorf("config %s: %w", s.ManifestDoc.Config.Digest, err)
	}
	return s, nil
}

// platformManifest finds the manifest for platform below desc, descending
// through indexes.
func platformManifest(ctx context.Context, p content.Provider, desc ocispec.Descriptor, platform platforms.MatchComparer) (ocispec.Descriptor, error) {
	switch {
	case images.IsManifestType(desc.MediaType):
		return desc, nil
	case images.IsIndexType(desc.MediaType):
		b, err := content.ReadBlob(ctx, p, desc)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("read index %s: %w", desc.Digest, err)
		}
		var idx ocispec.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		var found []ocispec.Descriptor
		for _, m := range idx.Manifests {
			if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
				continue
			}
			if m.Platform == nil || platform.Match(*m.Platform) {
				found = append(found, m)
			}
		}
		for _, m := range found {
			if d, err := platformManifest(ctx, p, m, platform); err == nil {
				return d, nil
			}
		}
		return ocispec.Descriptor{}, fmt.Errorf("index %s has no manifest for the platform", desc.Digest)
	}
	return ocispec.Descriptor{}, fmt.Errorf("%s: unsupported media type %q", desc.Digest, desc.MediaType)
}

// clientRegistryHosts is the client's view of registries: credentials from
// the Docker config, plain HTTP for loopback registries.
func clientRegistryHosts() docker.RegistryHosts {
	cfg := config.LoadDefaultConfigFile(io.Discard)
	auth := docker.NewDockerAuthorizer(docker.WithAuthCreds(func(host string) (string, string, error) {
		a, err := cfg.GetAuthConfig(host)
		if err != nil {
			return "", "", err
		}
		if a.IdentityToken != "" {
			return "", a.IdentityToken, nil
		}
		return a.Username, a.Password, nil
	}))
	return docker.ConfigureDefaultRegistries(docker.WithAuthorizer(auth), docker.WithPlainHTTP(docker.MatchLocalhost))
}

// remoteProvider reads registry blobs; ReadAt issues Range requests.
type remoteProvider struct {
	fetcher remotes.Fetcher
}

func (p *remoteProvider) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	rc, err := p.fetcher.Fetch(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", desc.Digest, err)
	}
	rs, ok := rc.(io.ReadSeeker)
	if !ok {
		rc.Close()
		return nil, errors.New("registry fetcher cannot seek")
	}
	return &seekReaderAt{rs: rs, c: rc, size: desc.Size}, nil
}

// seekReaderAt turns containerd's seekable HTTP body, which re-requests
// with a Range header after a seek, into a ReaderAt.
type seekReaderAt struct {
	mu   sync.Mutex
	rs   io.ReadSeeker
	c    io.Closer
	size int64
	pos  int64
}

func (r *seekReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if off >= r.size {
		return 0, io.EOF
	}
	if off != r.pos {
		if _, err := r.rs.Seek(off, io.SeekStart); err != nil {
			return 0, err
		}
		r.pos = off
	}
	n, err := io.ReadFull(r.rs, p)
	r.pos += int64(n)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}

func (r *seekReaderAt) Size() int64  { return r.size }
func (r *seekReaderAt) Close() error { return r.c.Close() }
