package compression

import (
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// PrefetchSizeAnnotation is the layer descriptor annotation stargazer's
// exporter writes on every layer that has a .prefetch.landmark: the offset
// of the landmark entry in the blob, as a decimal number of bytes. That is
// exactly the range [0, size) the stargz snapshotter prefetches, which it
// otherwise learns only from the TOC, after fetching and parsing it;
// stargazerd reads it from the manifest to start that download with the
// layer's first request.
const PrefetchSizeAnnotation = "io.github.stargazer-build.prefetch-size"

// LocateTOC reads the footer of an eStargz or zstd:chunked blob with d and
// returns it with where the compressed TOC lies: tocSize bytes from
// tocOffset, between the payload and the footer. kind names the format in
// errors ("eStargz", "zstd:chunked").
func LocateTOC(sr *io.SectionReader, d estargz.Decompressor, kind string) (footer []byte, tocOffset, tocSize int64, err error) {
	fsize := d.FooterSize()
	if sr.Size() < fsize {
		return nil, 0, 0, fmt.Errorf("blob is %d bytes, smaller than the %s footer", sr.Size(), kind)
	}
	footer = make([]byte, fsize)
	if _, err := sr.ReadAt(footer, sr.Size()-fsize); err != nil {
		return nil, 0, 0, fmt.Errorf("read footer: %w", err)
	}
	_, tocOffset, tocSize, err = d.ParseFooter(footer)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("parse %s footer: %w", kind, err)
	}
	if tocSize <= 0 {
		tocSize = sr.Size() - fsize - tocOffset
	}
	if tocOffset < 0 || tocSize <= 0 || tocOffset+tocSize > sr.Size()-fsize {
		return nil, 0, 0, fmt.Errorf("footer places the TOC at [%d, +%d) in a %d-byte blob", tocOffset, tocSize, sr.Size())
	}
	return footer, tocOffset, tocSize, nil
}
