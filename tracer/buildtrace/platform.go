package buildtrace

import (
	"encoding/json"
	"fmt"

	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	"github.com/moby/buildkit/solver/result"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// PlatformImage returns, for the platform id of a build result, its
// reference, the image config the Dockerfile frontend attached to it, and
// the suffix of that platform's metadata keys: "/<id>" when the result
// holds one reference per platform, "" when it holds a single reference.
// The frontend's record and the exporter read it the same way.
func PlatformImage[T comparable](res *result.Result[T], id string) (ref T, img ocispec.Image, suffix string, err error) {
	ref = res.Ref
	var zero T
	if ref == zero || len(res.Refs) > 0 {
		ref, suffix = res.Refs[id], "/"+id
	}
	if b := res.Metadata[exptypes.ExporterImageConfigKey+suffix]; len(b) > 0 {
		if err := json.Unmarshal(b, &img); err != nil {
			return ref, img, suffix, fmt.Errorf("image config of %s: %w", id, err)
		}
	}
	return ref, img, suffix, nil
}
