package convert

import (
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Annotations the BuildKit attestation layout puts on index entries.
const (
	annotationReferenceType   = "vnd.docker.reference.type"
	annotationReferenceDigest = "vnd.docker.reference.digest"
	attestationManifestType   = "attestation-manifest"
)

func isDockerType(mt string) bool { return strings.HasPrefix(mt, "application/vnd.docker.") }

// isAttestation reports whether an index entry is a BuildKit attestation
// manifest, which describes another entry rather than being an image.
func isAttestation(desc ocispec.Descriptor) bool {
	return desc.Annotations[annotationReferenceType] == attestationManifestType
}

// convertibleLayer reports whether conversion can read a layer of media type
// mt as a (possibly compressed) tar. Non-distributable layers are excluded
// because their blobs are usually absent and must not be re-uploaded, and
// encrypted ones because their content cannot be read.
func convertibleLayer(mt string) bool {
	switch mt {
	case images.MediaTypeDockerSchema2Layer,
		images.MediaTypeDockerSchema2LayerGzip,
		images.MediaTypeDockerSchema2LayerZstd,
		ocispec.MediaTypeImageLayer,
		ocispec.MediaTypeImageLayerGzip,
		ocispec.MediaTypeImageLayerZstd:
		return true
	}
	return false
}

// outputLayerType is the media type of a converted layer.
func outputLayerType(f Format, docker bool) string {
	switch {
	case f == ZstdChunked:
		return ocispec.MediaTypeImageLayerZstd
	case docker:
		return images.MediaTypeDockerSchema2LayerGzip
	default:
		return ocispec.MediaTypeImageLayerGzip
	}
}

// ociType maps a Docker media type to its OCI counterpart; others are
// returned unchanged.
func ociType(mt string) string {
	switch mt {
	case images.MediaTypeDockerSchema2ManifestList:
		return ocispec.MediaTypeImageIndex
	case images.MediaTypeDockerSchema2Manifest:
		return ocispec.MediaTypeImageManifest
	case images.MediaTypeDockerSchema2Config:
		return ocispec.MediaTypeImageConfig
	case images.MediaTypeDockerSchema2Layer:
		return ocispec.MediaTypeImageLayer
	case images.MediaTypeDockerSchema2LayerGzip:
		return ocispec.MediaTypeImageLayerGzip
	case images.MediaTypeDockerSchema2LayerZstd:
		return ocispec.MediaTypeImageLayerZstd
	case images.MediaTypeDockerSchema2LayerForeign:
		return ocispec.MediaTypeImageLayerNonDistributable //nolint:staticcheck // the OCI counterpart, deprecated or not
	case images.MediaTypeDockerSchema2LayerForeignGzip:
		return ocispec.MediaTypeImageLayerNonDistributableGzip //nolint:staticcheck // as above
	}
	return mt
}
