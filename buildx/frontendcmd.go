package buildx

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/moby/buildkit/util/contentutil"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/stargazer-build/stargazer/frontend"
)

func newFrontendCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "frontend",
		Short: "Manage the stargazer Dockerfile frontend image",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "push REF",
		Short: "Assemble the frontend image from this executable and push it",
		Long: `Assemble the image a "# syntax=REF" line runs, offline: one layer with this
static executable as /bin/stargazer-frontend, no base image, no docker.
Push it to REF with the credentials of the Docker config.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := PushFrontend(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s\n", args[0], d)
			return nil
		},
	})
	return cmd
}

// PushFrontend pushes the frontend image built from the running executable
// to ref and returns its manifest digest.
func PushFrontend(ctx context.Context, ref string) (digest.Digest, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if err := checkStatic(self); err != nil {
		return "", err
	}
	blobs, manifest, err := frontendImage(self)
	if err != nil {
		return "", err
	}
	var descs []ocispec.Descriptor
	store := contentutil.NewBuffer()
	for _, b := range append(blobs, manifest) {
		descs = append(descs, b.desc)
		if err := content.WriteBlob(ctx, store, b.desc.Digest.String(), bytes.NewReader(b.data), b.desc); err != nil {
			return "", err
		}
	}
	if err := pushBlobs(ctx, ref, descs, store); err != nil {
		return "", err
	}
	return manifest.desc.Digest, nil
}

// pushBlobs pushes descs to ref in order (blobs before the manifests that
// refer to them), reading them from p. A blob the registry has, or mounts
// from the repository a "containerd.io/distribution.source.<host>"
// annotation names, is not uploaded.
func pushBlobs(ctx context.Context, ref string, descs []ocispec.Descriptor, p content.Provider) error {
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: clientRegistryHosts()})
	pusher, err := resolver.Pusher(ctx, ref)
	if err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	for _, d := range descs {
		w, err := pusher.Push(ctx, d)
		if errdefs.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("push %s: %s: %w", ref, d.Digest, err)
		}
		ra, err := p.ReaderAt(ctx, d)
		if err != nil {
			w.Close()
			return fmt.Errorf("push %s: read %s: %w", ref, d.Digest, err)
		}
		err = content.Copy(ctx, w, content.NewReader(ra), d.Size, d.Digest)
		ra.Close()
		w.Close()
		if err != nil && !errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("push %s: %s: %w", ref, d.Digest, err)
		}
	}
	return nil
}

type blob struct {
	desc ocispec.Descriptor
	data []byte
}

func newBlob(mediaType string, data []byte) blob {
	return blob{desc: ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}, data: data}
}

// frontendImage assembles the frontend image around the executable at exe.
func frontendImage(exe string) (blobs []blob, manifest blob, err error) {
	data, err := os.ReadFile(exe)
	if err != nil {
		return nil, blob{}, err
	}
	// Fixed times keep the image reproducible from the same executable.
	mtime := time.Unix(0, 0)
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	hdrs := []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "bin/stargazer-frontend", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data)), ModTime: mtime},
	}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			return nil, blob{}, err
		}
	}
	if _, err := tw.Write(data); err != nil {
		return nil, blob{}, err
	}
	if err := tw.Close(); err != nil {
		return nil, blob{}, err
	}
	diffID := digest.FromBytes(tarBuf.Bytes())
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := io.Copy(zw, &tarBuf); err != nil {
		return nil, blob{}, err
	}
	if err := zw.Close(); err != nil {
		return nil, blob{}, err
	}
	layer := newBlob(ocispec.MediaTypeImageLayerGzip, gz.Bytes())

	created := mtime.UTC()
	cfg := ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config: ocispec.ImageConfig{
			Entrypoint: []string{frontend.TracerPath},
			Env:        []string{"PATH=/bin"},
			Labels:     frontend.ImageLabels,
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
	}
	cfgData, err := json.Marshal(cfg)
	if err != nil {
		return nil, blob{}, err
	}
	config := newBlob(ocispec.MediaTypeImageConfig, cfgData)
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    config.desc,
		Layers:    []ocispec.Descriptor{layer.desc},
	}
	mData, err := json.Marshal(m)
	if err != nil {
		return nil, blob{}, err
	}
	return []blob{layer, config}, newBlob(ocispec.MediaTypeImageManifest, mData), nil
}
