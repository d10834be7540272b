package verify

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Format is how a layer is encoded.
type Format string

// Formats a layer can be reported as. Only EStargz and ZstdChunked are
// lazy; the others appear with WithAllowNonLazy or in failures.
const (
	EStargz     Format = "estargz"
	ZstdChunked Format = "zstd:chunked"
	FormatGzip  Format = "gzip"
	FormatZstd  Format = "zstd"
	FormatTar   Format = "uncompressed"
	FormatOther Format = "not a layer"
)

// Report is what Image found.
type Report struct {
	Image        ocispec.Descriptor
	Manifests    []*ManifestReport
	Attestations []*AttestationReport
}

// ManifestReport covers one image manifest.
type ManifestReport struct {
	Digest   digest.Digest
	Platform ocispec.Platform
	Layers   []LayerReport
	// Err is a failure of the manifest itself (unreadable, config
	// mismatch); layer failures are in Layers.
	Err error
}

// LayerReport covers one layer.
type LayerReport struct {
	Index     int
	Digest    digest.Digest
	MediaType string
	Size      int64
	Format    Format
	// Lazy is set for layers with a TOC digest annotation.
	Lazy             bool
	UncompressedSize int64
	// Landmark is the landmark entry found, estargz.PrefetchLandmark or
	// estargz.NoPrefetchLandmark.
	Landmark string
	// PrefetchSize is the number of blob bytes before the prefetch
	// landmark, which the stargz snapshotter prefetches in one request
	// (0 with no prefetch).
	PrefetchSize int64
	// PrioritizedFiles counts the non-directory entries before the
	// prefetch landmark.
	PrioritizedFiles int
	// Entries counts TOC entries other than chunk continuations; Chunks
	// the file chunks whose digests were checked.
	Entries int
	Chunks  int
	// Err joins every failure of this layer; nil when it passed.
	Err error
}

// AttestationReport covers one BuildKit attestation manifest of an index.
type AttestationReport struct {
	Digest digest.Digest
	// Subject is the manifest its vnd.docker.reference.digest names.
	Subject    digest.Digest
	Statements int
	Err        error
}

// Err joins every failure in the report, each prefixed with where it was
// found; nil when everything passed.
func (r *Report) Err() error {
	var errs []error
	for _, m := range r.Manifests {
		where := fmt.Sprintf("manifest %s (%s)", m.Digest, platformString(m.Platform))
		if m.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, m.Err))
		}
		for _, l := range m.Layers {
			if l.Err != nil {
				errs = append(errs, fmt.Errorf("%s layer %d (%s): %w", where, l.Index, l.Digest, l.Err))
			}
		}
	}
	for _, a := range r.Attestations {
		if a.Err != nil {
			errs = append(errs, fmt.Errorf("attestation manifest %s: %w", a.Digest, a.Err))
		}
	}
	return errors.Join(errs...)
}

// WriteTable writes one aligned row per layer (and attestation) with its
// format, sizes, prefetch range and status.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLATFORM\tLAYER\tDIGEST\tFORMAT\tSIZE\tUNCOMPRESSED\tPREFETCH\tPRIORITIZED\tSTATUS")
	for _, m := range r.Manifests {
		if m.Err != nil {
			fmt.Fprintf(tw, "%s\t-\t%s\t\t\t\t\t\tFAIL: %s\n", platformString(m.Platform), short(m.Digest), oneLine(m.Err))
		}
		for _, l := range m.Layers {
			prefetch := "-"
			switch l.Landmark {
			case estargz.PrefetchLandmark:
				prefetch = fmt.Sprint(l.PrefetchSize)
			case estargz.NoPrefetchLandmark:
				prefetch = "none"
			}
			status := "ok"
			switch {
			case l.Err != nil:
				status = "FAIL: " + oneLine(l.Err)
			case !l.Lazy:
				status = "ok (not lazy)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%s\t%d\t%s\n",
				platformString(m.Platform), l.Index, short(l.Digest), l.Format, l.Size,
				l.UncompressedSize, prefetch, l.PrioritizedFiles, status)
		}
	}
	for _, a := range r.Attestations {
		status := "ok"
		if a.Err != nil {
			status = "FAIL: " + oneLine(a.Err)
		}
		fmt.Fprintf(tw, "attestation\t-\t%s\tsubject %s\t\t\t\t\t%s\n", short(a.Digest), short(a.Subject), status)
	}
	return tw.Flush()
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

func short(d digest.Digest) string {
	if d.Validate() != nil {
		return string(d)
	}
	enc := d.Encoded()
	if len(enc) > 12 {
		enc = enc[:12]
	}
	return d.Algorithm().String() + ":" + enc
}
