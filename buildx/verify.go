package buildx

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/verify"
	"github.com/stargazer-build/stargazer/tracer"
)

// Verify checks image (registry reference or OCI tar) with exporter/verify
// and writes the per-layer table to out: every platform of a multi-platform
// image unless platform names one. With a record, each layer of that
// platform's manifest must prioritize the record's files attributed to it,
// in record order.
func Verify(ctx context.Context, image, platform, record string, out io.Writer) error {
	p := platforms.DefaultSpec()
	if platform != "" {
		var err error
		if p, err = platforms.Parse(platform); err != nil {
			return fmt.Errorf("--platform: %w", err)
		}
	}
	tmp, err := os.MkdirTemp("", "stargazer-verify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	img, err := openImage(ctx, image, p, filepath.Join(tmp, "content"))
	if err != nil {
		return err
	}
	target := img.Root
	if platform != "" || record != "" {
		target = img.Manifest
	}
	var opts []verify.Option
	if record != "" {
		f, err := os.Open(record)
		if err != nil {
			return fmt.Errorf("--record: %w", err)
		}
		entries, err := tracer.ReadRecord(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("--record %s: %w", record, err)
		}
		lists, _, err := tracer.AttributeImage(ctx, img.Provider, img.ManifestDoc, img.Manifest.Digest, entries, nil)
		if err != nil {
			return err
		}
		opts = append(opts, verify.WithPrioritizedFiles(func(_ ocispec.Platform, i int) []string { return lists[i] }))
	}
	rep, err := verify.Image(ctx, img.Provider, target, opts...)
	if rep != nil {
		rep.WriteTable(out)
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errVerifyFailed, image, err)
	}
	return nil
}
