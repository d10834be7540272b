package verify

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	annotationReferenceType   = "vnd.docker.reference.type"
	annotationReferenceDigest = "vnd.docker.reference.digest"
	attestationManifestType   = "attestation-manifest"
)

func isAttestation(desc ocispec.Descriptor) bool {
	return desc.Annotations[annotationReferenceType] == attestationManifestType
}

// checkAttestation checks that an attestation manifest still describes an
// image of its index: the reference annotation names a manifest there, an
// OCI subject (if any) agrees, and every in-toto statement that lists
// subjects lists that manifest among them. A conversion that forgets to rewrite them
// leaves stale digests that fail here.
func checkAttestation(ctx context.Context, provider content.Provider, desc ocispec.Descriptor, inIndex map[digest.Digest]bool) *AttestationReport {
	ar := &AttestationReport{Digest: desc.Digest}
	subject, err := digest.Parse(desc.Annotations[annotationReferenceDigest])
	if err != nil {
		ar.Err = fmt.Errorf("%s annotation: %w", annotationReferenceDigest, err)
		return ar
	}
	ar.Subject = subject
	var errs []error
	if !inIndex[subject] {
		errs = append(errs, fmt.Errorf("refers to %s, which is not a manifest of the index", subject))
	}
	var m ocispec.Manifest
	if err := readJSON(ctx, provider, desc, &m); err != nil {
		ar.Err = errors.Join(append(errs, err)...)
		return ar
	}
	if m.Subject != nil && m.Subject.Digest != subject {
		errs = append(errs, fmt.Errorf("subject %s, annotation says %s", m.Subject.Digest, subject))
	}
	for _, l := range m.Layers {
		if l.MediaType != images.MediaTypeInToto {
			continue
		}
		ar.Statements++
		var st struct {
			Subject []struct {
				Name   string            `json:"name"`
				Digest map[string]string `json:"digest"`
			} `json:"subject"`
		}
		if err := readJSON(ctx, provider, l, &st); err != nil {
			errs = append(errs, fmt.Errorf("statement: %w", err))
			continue
		}
		found := false
		for _, s := range st.Subject {
			if s.Digest[subject.Algorithm().String()] == subject.Encoded() {
				found = true
			}
		}
		// BuildKit names subjects after the image's names, so the
		// statement of an unnamed image has none, and nothing to go stale.
		if !found && len(st.Subject) > 0 {
			errs = append(errs, fmt.Errorf("statement %s does not name %s among its subjects", l.Digest, subject))
		}
	}
	ar.Err = errors.Join(errs...)
	return ar
}
