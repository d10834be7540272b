package convert

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/exporter/compression"
	"github.com/stargazer-build/stargazer/exporter/internal/tarname"
)

// staged is a source layer decompressed into a temporary plain tar, with
// what conversion needs to know about its entries.
type staged struct {
	file   *os.File
	size   int64
	diffID digest.Digest
	// entries maps each cleaned entry name to its last definition, which
	// is the one that counts (estargz keeps the last of duplicates too).
	entries map[string]entryInfo
}

type entryInfo struct {
	typeflag byte
	linkname string // cleaned hardlink target; empty for other types
}

func (s *staged) close() {
	if s.file != nil {
		s.file.Close()
		os.Remove(s.file.Name())
	}
}

// stage reads the blob once, front to back: the compressed bytes go through
// the digest check, the decompressed ones into a temporary tar file and
// through a tar reader that validates every header on the way. estargz.Build
// then works on a plain tar it will not decompress again.
func stage(ctx context.Context, ra content.ReaderAt, desc ocispec.Descriptor, dir string) (_ *staged, retErr error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("layer descriptor digest %q: %w", desc.Digest, err)
	}
	if ra.Size() != desc.Size {
		return nil, fmt.Errorf("layer %s: blob is %d bytes, descriptor says %d: %w", desc.Digest, ra.Size(), desc.Size, ErrDigestMismatch)
	}
	f, err := os.CreateTemp(dir, "stargazer-tar-*")
	if err != nil {
		return nil, fmt.Errorf("stage layer %s: %w", desc.Digest, err)
	}
	st := &staged{file: f, entries: make(map[string]entryInfo)}
	defer func() {
		if retErr != nil {
			st.close()
		}
	}()

	verifier := desc.Digest.Verifier()
	src := bufio.NewReaderSize(tarname.ContextReader(ctx, io.TeeReader(io.NewSectionReader(ra, 0, desc.Size), verifier)), 1<<20)
	readErr := st.fill(src)
	// Hash whatever the decompressor left (trailing data, or everything
	// after a decode error) so a corrupt blob is reported as such rather
	// than as the decode error it caused.
	_, drainErr := io.Copy(io.Discard, src)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if drainErr == nil && !verifier.Verified() {
		if readErr != nil {
			return nil, fmt.Errorf("layer %s: %w (content unreadable: %v)", desc.Digest, ErrDigestMismatch, readErr)
		}
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, ErrDigestMismatch)
	}
	if readErr != nil {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, readErr)
	}
	if drainErr != nil {
		return nil, fmt.Errorf("read layer %s: %w", desc.Digest, drainErr)
	}
	if err := st.checkLinks(); err != nil {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	// estargz.Build sniffs its input for compression magic; a plain tar
	// whose first name starts with those bytes would be misread.
	var magic [4]byte
	if n, _ := st.file.ReadAt(magic[:], 0); compression.Detect(magic[:n]) != compression.KindUncompressed {
		return nil, fmt.Errorf("layer %s: first tar entry name starts with compression magic bytes: %w", desc.Digest, ErrUnsupportedLayer)
	}
	return st, nil
}

// fill decompresses src into the staging file, validating the tar.
func (s *staged) fill(src *bufio.Reader) error {
	dec, kind, err := compression.NewReader(src)
	if err != nil {
		return err
	}
	defer dec.Close()
	diff := digest.Canonical.Digester()
	w := bufio.NewWriterSize(io.MultiWriter(s.file, diff.Hash()), 1<<20)
	cw := &countWriter{w: w}
	tr := tar.NewReader(io.TeeReader(dec, cw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s tar: %w", kind, noEOF(err))
		}
		if err := s.add(h); err != nil {
			return err
		}
	}
	// Keep the end-of-archive padding and let the decompressor reach its
	// end, where gzip checks its CRC and zstd its frame checksums.
	if _, err := io.Copy(cw, dec); err != nil {
		return fmt.Errorf("read %s tar: %w", kind, noEOF(err))
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write staged tar: %w", err)
	}
	s.size = cw.n
	s.diffID = diff.Digest()
	return nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (s *staged) add(h *tar.Header) error {
	if escapes(h.Name) {
		return fmt.Errorf("tar entry %q: %w", h.Name, ErrPathEscapes)
	}
	info := entryInfo{typeflag: h.Typeflag}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	case tar.TypeLink:
		if escapes(h.Linkname) {
			return fmt.Errorf("tar entry %q links to %q: %w", h.Name, h.Linkname, ErrPathEscapes)
		}
		info.linkname = tarname.Clean(h.Linkname)
	default:
		// eStargz has no representation for other types (sparse files,
		// global PAX headers, ...).
		return fmt.Errorf("tar entry %q has type %q: %w", h.Name, h.Typeflag, ErrUnsupportedLayer)
	}
	name := tarname.Clean(h.Name)
	switch name {
	case estargz.PrefetchLandmark, estargz.NoPrefetchLandmark, estargz.TOCTarName:
		// Left over from an earlier eStargz encoding; estargz drops these.
		return nil
	}
	s.entries[name] = info
	return nil
}

// checkLinks rejects hardlinks eStargz readers cannot resolve: a target
// missing from the layer, a directory, or a cycle (which would also send
// estargz's own resolution into unbounded recursion).
func (s *staged) checkLinks() error {
	for name, e := range s.entries {
		seen := map[string]bool{name: true}
		for e.typeflag == tar.TypeLink {
			target, ok := s.entries[e.linkname]
			switch {
			case !ok:
				return fmt.Errorf("hardlink %q to %q, which is not in the layer: %w", name, e.linkname, ErrUnsupportedLayer)
			case seen[e.linkname]:
				return fmt.Errorf("hardlink %q is part of a cycle: %w", name, ErrUnsupportedLayer)
			case target.typeflag == tar.TypeDir:
				return fmt.Errorf("hardlink %q to directory %q: %w", name, e.linkname, ErrUnsupportedLayer)
			}
			seen[e.linkname] = true
			e = target
		}
	}
	return nil
}

// placeable splits prioritized paths into the ones estargz can move to the
// front, deduplicated and cleaned, and the rest. estargz moves a file along
// with the entries of its parent directories and hardlink targets, and
// counts it as not found when any of those has no entry of its own.
func (s *staged) placeable(prioritized []string) (list, missing []string) {
	seen := make(map[string]bool)
	for _, p := range prioritized {
		name := tarname.Clean(p)
		if seen[name] || name == "" {
			continue
		}
		seen[name] = true
		if s.resolvable(name) {
			list = append(list, name)
		} else {
			missing = append(missing, p)
		}
	}
	return list, missing
}

func (s *staged) resolvable(name string) bool {
	for name != "" {
		e, ok := s.entries[name]
		if !ok {
			return false
		}
		if e.typeflag == tar.TypeLink && !s.resolvable(e.linkname) {
			return false // checkLinks guarantees this terminates
		}
		name = tarname.Parent(name)
	}
	return true
}

// escapes reports whether name climbs above the root when its components
// are applied from the root in order. A leading "/" does not anchor it:
// "/../x" escapes just like "../x", since extracting tools differ in
// whether they clean before or after joining.
func escapes(name string) bool {
	c := path.Clean(strings.TrimLeft(name, "/"))
	return c == ".." || strings.HasPrefix(c, "../")
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
