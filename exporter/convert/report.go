package convert

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Report describes what Image did.
type Report struct {
	// Image is the descriptor of the converted image.
	Image ocispec.Descriptor
	// Manifests has one entry per image manifest, in index order.
	Manifests []ManifestReport
	// Attestations has one entry per attestation manifest rewritten to
	// point at a converted manifest.
	Attestations []AttestationReport
}

// ManifestReport describes the conversion of one image manifest.
type ManifestReport struct {
	Platform  ocispec.Platform
	OldDigest digest.Digest
	NewDigest digest.Digest
	Layers    []LayerReport
}

// LayerReport describes one layer of a manifest.
type LayerReport struct {
	Index     int
	OldDigest digest.Digest
	NewDigest digest.Digest
	OldSize   int64
	NewSize   int64
	MediaType string // of the new layer
	// Kept is set when the layer was left as it was; KeptReason says why
	// (e.g. "already lazy").
	Kept       bool
	KeptReason string
	// Prioritized is the number of prioritized files placed before the
	// landmark, Missing the prioritized paths that could not be.
	Prioritized int
	Missing     []string
	// Duration of the conversion; layers shared between manifests report
	// the same conversion.
	Duration time.Duration
}

// AttestationReport describes a rewritten attestation manifest.
type AttestationReport struct {
	OldDigest digest.Digest
	NewDigest digest.Digest
	// Subject is the converted image manifest it now refers to.
	Subject digest.Digest
}

func (c *imageConverter) report(out ocispec.Descriptor) *Report {
	r := &Report{Image: out}
	for _, n := range c.manifests {
		mr := ManifestReport{Platform: n.platform, OldDigest: n.desc.Digest, NewDigest: n.newDesc.Digest}
		for i, l := range n.manifest.Layers {
			lr := LayerReport{Index: i, OldDigest: l.Digest, OldSize: l.Size}
			if t := n.layers[i]; t != nil {
				lr.NewDigest, lr.NewSize, lr.MediaType = t.desc.Digest, t.desc.Size, t.desc.MediaType
				lr.Prioritized, lr.Missing, lr.Duration = t.placed, t.missing, t.duration
			} else {
				lr.NewDigest, lr.NewSize, lr.MediaType = l.Digest, l.Size, l.MediaType
				lr.Kept, lr.KeptReason = true, n.kept[i]
			}
			mr.Layers = append(mr.Layers, lr)
		}
		r.Manifests = append(r.Manifests, mr)
	}
	r.Attestations = c.attestations
	return r
}

// WriteTable writes the report as an aligned text table, one row per
// layer.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "PLATFORM\tLAYER\tOLD\tNEW\tOLD SIZE\tNEW SIZE\tPRIORITIZED\tMISSING\tNOTE\n")
	for _, m := range r.Manifests {
		for _, l := range m.Layers {
			note := ""
			if l.Kept {
				note = "kept: " + l.KeptReason
			} else if l.Duration > 0 {
				note = l.Duration.Round(time.Millisecond).String()
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n",
				platformString(m.Platform), l.Index, short(l.OldDigest), short(l.NewDigest),
				l.OldSize, l.NewSize, l.Prioritized, len(l.Missing), note)
		}
	}
	for _, a := range r.Attestations {
		fmt.Fprintf(tw, "attestation\t-\t%s\t%s\t\t\t\t\tsubject %s\n", short(a.OldDigest), short(a.NewDigest), short(a.Subject))
	}
	fmt.Fprintf(tw, "image\t-\t\t%s\t\t%d\t\t\t%s\n", short(r.Image.Digest), r.Image.Size, r.Image.MediaType)
	return tw.Flush()
}

// short abbreviates a digest to its algorithm and 12 hex digits.
func short(d digest.Digest) string {
	if err := d.Validate(); err != nil {
		return string(d)
	}
	enc := d.Encoded()
	if len(enc) > 12 {
		enc = enc[:12]
	}
	return d.Algorithm().String() + ":" + enc
}
