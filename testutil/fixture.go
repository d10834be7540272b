package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/stargazer-build/stargazer/tracer"
)

// Compression is how a fixture's layers are compressed.
type Compression string

const (
	// Gzip layers are plain gzip-compressed tars.
	Gzip Compression = "gzip"
	// EStargz layers are converted with estargz.Build and its default
	// options: no prioritized files, so each layer carries a
	// .no.prefetch.landmark. Their descriptors carry the TOC digest and
	// uncompressed size annotations a lazy snapshotter reads.
	EStargz Compression = "estargz"
)

const (
	// DefaultLargeSize is the size of /data/large.bin in PushLarge's image.
	DefaultLargeSize = 32 << 20
	// DefaultPath is the PATH in a fixture's config unless the spec sets one.
	DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// SmallText is /data/small.txt in DataLayer.
	SmallText = "hello from the stargazer base fixture\n"
	// LargeSmallText is /data/small.txt in LargeLayer, which sits beside
	// /data/large.bin and hides DataLayer's file of that name.
	LargeSmallText = "small file beside large.bin\n"
	// MediumSize is the size of /data/medium.bin in DataLayer.
	MediumSize = 1 << 20
)

// FixtureTime is the modification time of every entry and the creation time
// of every config the fixtures write, so builds are reproducible.
var FixtureTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// File is one entry of a layer built by LayerTar or FileLayer. The zero
// value is an empty regular file.
type File struct {
	// Data is a regular file's content.
	Data []byte
	// Mode holds permission bits and fs.ModeSetuid, fs.ModeSetgid and
	// fs.ModeSticky; type bits are ignored. Zero means 0644 for files and
	// 0755 for directories; symlinks are always 0777.
	Mode fs.FileMode
	// Dir makes the entry a directory.
	Dir bool
	// Symlink makes the entry a symbolic link to this target.
	Symlink string
	// Hardlink makes the entry a hard link to this path in the same layer.
	Hardlink string
	// Whiteout deletes the path from the layers below: the layer gets the
	// whiteout entry ".wh.<name>" instead of the path itself.
	Whiteout bool
	// Opaque makes the entry a directory that hides the contents of the
	// same directory in the layers below (".wh..wh..opq").
	Opaque bool
	// UID and GID own the entry; zero is root.
	UID, GID int
}

// Layer is the content of one image layer: an uncompressed tar, built when
// first needed and shared by all copies of the Layer. The zero Layer is
// invalid.
type Layer struct {
	src *layerSource
}

type layerSource struct {
	desc string
	tar  func() (*tarBlob, error)
}

// tarBlob is an uncompressed layer and its digest, the layer's diff ID.
type tarBlob struct {
	data   []byte
	diffID digest.Digest
}

func newTarBlob(data []byte) *tarBlob {
	return &tarBlob{data: data, diffID: digest.FromBytes(data)}
}

// FileLayer is a layer holding files, keyed by path; parent directories
// not listed are added with mode 0755. Errors in files surface when the
// layer is built, in BuildImage or PushImage.
func FileLayer(files map[string]File) Layer {
	files = maps.Clone(files)
	return Layer{&layerSource{
		desc: "files",
		tar: sync.OnceValues(func() (*tarBlob, error) {
			data, err := buildTar(files)
			if err != nil {
				return nil, err
			}
			return newTarBlob(data), nil
		}),
	}}
}

// TarLayer is a layer whose uncompressed tar is data; data must not be
// modified afterwards.
func TarLayer(data []byte) Layer {
	return Layer{&layerSource{
		desc: "tar",
		tar:  sync.OnceValues(func() (*tarBlob, error) { return newTarBlob(data), nil }),
	}}
}

// LayerTar builds an uncompressed layer tar holding files, keyed by path
// (a leading "/" is allowed). Parent directories not listed are added with
// mode 0755; entries are sorted and stamped with FixtureTime.
func LayerTar(t testing.TB, files map[string]File) []byte {
	t.Helper()
	data, err := buildTar(files)
	if err != nil {
		t.Fatalf("testutil: layer tar: %v", err)
	}
	return data
}

// BusyboxLayer is a root filesystem made from the host's static busybox:
// /bin/busybox with symlinks for common applets, /etc/passwd and
// /etc/group with root and nobody, and the usual top-level directories
// (/tmp with mode 1777). The busybox used is $STARGAZER_BUSYBOX, else
// /bin/busybox (Debian's busybox-static); the test fails when it is missing
// or not statically linked.
func BusyboxLayer(t testing.TB) Layer {
	t.Helper()
	if _, err := busyboxTar(); err != nil {
		t.Fatalf("testutil: busybox layer: %v", err)
	}
	return Layer{&layerSource{desc: "busybox", tar: busyboxTar}}
}

// DataLayer holds known files under /data: small.txt (SmallText),
// medium.bin (MediumSize pseudo-random bytes), hello.sh (prints "hello"),
// dir/nested.txt and link.txt, a symlink to small.txt.
func DataLayer() Layer {
	return Layer{&layerSource{
		desc: "data",
		tar: func() (*tarBlob, error) {
			return cached("tar:data", func() (*tarBlob, error) {
				data, err := buildTar(DataFiles())
				if err != nil {
					return nil, err
				}
				return newTarBlob(data), nil
			})
		},
	}}
}

// DataFiles are the files of DataLayer, for tests that compare contents.
func DataFiles() map[string]File {
	return map[string]File{
		"data/small.txt":      {Data: []byte(SmallText)},
		"data/medium.bin":     {Data: PseudoRandom("medium", MediumSize)},
		"data/hello.sh":       {Data: []byte("#!/bin/sh\necho hello\n"), Mode: 0o755},
		"data/dir/nested.txt": {Data: []byte("nested\n")},
		"data/link.txt":       {Symlink: "small.txt"},
	}
}

// LargeLayer holds /data/large.bin, size incompressible pseudo-random bytes
// (LargeData(size)), and /data/small.txt (LargeSmallText) after it, so a
// test can read the small file and show the large one was not fetched.
func LargeLayer(size int64) Layer {
	return Layer{&layerSource{
		desc: "large " + strconv.FormatInt(size, 10),
		tar: func() (*tarBlob, error) {
			if size < 0 {
				return nil, fmt.Errorf("negative large file size %d", size)
			}
			return cached("tar:large:"+strconv.FormatInt(size, 10), func() (*tarBlob, error) {
				data, err := buildTar(map[string]File{
					"data/large.bin": {Data: LargeData(size)},
					"data/small.txt": {Data: []byte(LargeSmallText)},
				})
				if err != nil {
					return nil, err
				}
				return newTarBlob(data), nil
			})
		},
	}}
}

// LargeData is the content of LargeLayer's /data/large.bin; it must not be
// modified.
func LargeData(size int64) []byte {
	return PseudoRandom("large", size)
}

// PseudoRandom returns size deterministic, incompressible bytes derived
// from seed. Results are cached for the test binary and must not be
// modified.
func PseudoRandom(seed string, size int64) []byte {
	b, _ := cached("random:"+seed+":"+strconv.FormatInt(size, 10), func() ([]byte, error) {
		var key [32]byte
		copy(key[:], digest.FromString(seed).Encoded())
		b := make([]byte, size)
		_, _ = rand.NewChaCha8(key).Read(b)
		return b, nil
	})
	return b
}

// FixtureSpec describes an image to build.
type FixtureSpec struct {
	// Layers, bottom first.
	Layers []Layer
	// Compression of every layer; empty means Gzip.
	Compression Compression
	// DockerMediaTypes writes Docker schema 2 media types instead of OCI
	// ones. Only Gzip images can use them.
	DockerMediaTypes bool
	// Config is the image's runtime config. Env gets PATH=DefaultPath
	// unless it sets PATH; Cmd defaults to ["/bin/sh"] when neither
	// Entrypoint nor Cmd is set (a non-nil empty Cmd keeps the image
	// without a command).
	Config ocispec.ImageConfig
}

// Image is a built fixture image and its blobs.
type Image struct {
	// Ref is where the image was pushed or fetched from, empty for an
	// image only built.
	Ref string
	// Index is the index Manifest was chosen from, zero when Ref names a
	// manifest.
	Index ocispec.Descriptor
	// Manifest is the image manifest's descriptor.
	Manifest ocispec.Descriptor
	// Config is the image config's descriptor.
	Config ocispec.Descriptor
	// Layers are the manifest's layer descriptors, bottom first; eStargz
	// layers carry the TOC digest and uncompressed size annotations.
	Layers []ocispec.Descriptor
	// DiffIDs are the config's diff IDs: digests of the uncompressed
	// layers.
	DiffIDs []digest.Digest

	blobs map[digest.Digest][]byte
}

// Blob returns the content of one of the image's blobs (manifest, config,
// layer, or index), nil for other digests. It must not be modified.
func (img Image) Blob(d digest.Digest) []byte { return img.blobs[d] }

// DigestRef is the image's reference pinned to its manifest digest,
// "host/name@sha256:...", empty when the image has no Ref.
func (img Image) DigestRef() string {
	spec, err := reference.Parse(img.Ref)
	if err != nil {
		return ""
	}
	return spec.Locator + "@" + img.Manifest.Digest.String()
}

// DecodeManifest decodes the image's manifest.
func (img Image) DecodeManifest(t testing.TB) ocispec.Manifest {
	t.Helper()
	var m ocispec.Manifest
	if err := json.Unmarshal(img.Blob(img.Manifest.Digest), &m); err != nil {
		t.Fatalf("testutil: decode manifest %s: %v", img.Manifest.Digest, err)
	}
	return m
}

// DecodeConfig decodes the image's config.
func (img Image) DecodeConfig(t testing.TB) ocispec.Image {
	t.Helper()
	var c ocispec.Image
	if err := json.Unmarshal(img.Blob(img.Config.Digest), &c); err != nil {
		t.Fatalf("testutil: decode config %s: %v", img.Config.Digest, err)
	}
	return c
}

// BuildImage builds the image spec describes without pushing it.
// Compressed layers are cached for the test binary, keyed by content and
// compression, so building the same layers again is cheap.
func BuildImage(t testing.TB, spec FixtureSpec) Image {
	t.Helper()
	img, err := buildImage(spec)
	if err != nil {
		t.Fatalf("testutil: build image: %v", err)
	}
	return img
}

// PushImage builds the image spec describes and pushes it to reg as ref,
// which is relative to reg ("name:tag", tag "latest" when absent) or a full
// reference on reg. It returns the image with Ref set to the full reference.
func PushImage(t testing.TB, reg *Registry, ref string, spec FixtureSpec) Image {
	t.Helper()
	if !strings.HasPrefix(ref, reg.Host()+"/") {
		ref = reg.Ref(ref)
	}
	return BuildImage(t, spec).PushTo(t, ref)
}

// PushTo pushes the image's blobs and manifest to the full reference ref on
// a loopback registry, through containerd's docker resolver over plain
// HTTP. A ref without tag or digest gets the tag "latest". It returns the
// image with Ref set.
func (img Image) PushTo(t testing.TB, ref string) Image {
	t.Helper()
	ref, err := withDefaultTag(ref)
	if err != nil {
		t.Fatalf("testutil: push: %v", err)
	}
	ctx, cancel := clientContext(t)
	defer cancel()
	if err := pushImage(ctx, ref, img); err != nil {
		t.Fatalf("testutil: push %s: %v", ref, err)
	}
	img.Ref = ref
	return img
}

// BaseSpec is the base fixture: BusyboxLayer and DataLayer, OCI media
// types.
func BaseSpec(t testing.TB, c Compression) FixtureSpec {
	t.Helper()
	return FixtureSpec{
		Layers:      []Layer{BusyboxLayer(t), DataLayer()},
		Compression: c,
	}
}

// LargeSpec is the large fixture: BaseSpec's layers and LargeLayer(size).
func LargeSpec(t testing.TB, c Compression, size int64) FixtureSpec {
	t.Helper()
	spec := BaseSpec(t, c)
	spec.Layers = append(spec.Layers, LargeLayer(size))
	return spec
}

// PushBase pushes BaseSpec(c) to reg as "base:<c>", that is "base:gzip" or
// "base:estargz".
func PushBase(t testing.TB, reg *Registry, c Compression) Image {
	t.Helper()
	return PushImage(t, reg, "base:"+string(c), BaseSpec(t, c))
}

// PushLarge pushes LargeSpec(c, DefaultLargeSize) to reg as "large:<c>",
// that is "large:gzip" or "large:estargz".
func PushLarge(t testing.TB, reg *Registry, c Compression) Image {
	t.Helper()
	return PushImage(t, reg, "large:"+string(c), LargeSpec(t, c, DefaultLargeSize))
}

// FetchImage pulls ref from a loopback registry through containerd's docker
// resolver over plain HTTP, verifying every blob's digest. From an index
// it takes the manifest for the host's platform. The pull shows in the
// registry's counters.
func FetchImage(t testing.TB, ref string) Image {
	t.Helper()
	ctx, cancel := clientContext(t)
	defer cancel()
	img, err := fetchImage(ctx, ref)
	if err != nil {
		t.Fatalf("testutil: fetch %s: %v", ref, err)
	}
	return img
}

// WriteOCILayout writes the image as an OCI image layout into dir. Its
// index.json names the image by the annotations
// org.opencontainers.image.ref.name (the tag) and io.containerd.image.name
// (the full reference) when the image has a Ref.
func WriteOCILayout(t testing.TB, img Image, dir string) {
	t.Helper()
	files, err := ociLayoutFiles(img)
	if err != nil {
		t.Fatalf("testutil: OCI layout: %v", err)
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatalf("testutil: OCI layout: %v", err)
		}
		if err := os.WriteFile(p, files[name], 0o644); err != nil {
			t.Fatalf("testutil: OCI layout: %v", err)
		}
	}
}

// OCITar returns the image as a tar of an OCI image layout, as
// WriteOCILayout writes it, for tests that need an archive input (such as
// `ctr image import`).
func OCITar(t testing.TB, img Image) []byte {
	t.Helper()
	files, err := ociLayoutFiles(img)
	if err != nil {
		t.Fatalf("testutil: OCI tar: %v", err)
	}
	entries := make(map[string]File, len(files))
	for name, data := range files {
		entries[name] = File{Data: data}
	}
	data, err := buildTar(entries)
	if err != nil {
		t.Fatalf("testutil: OCI tar: %v", err)
	}
	return data
}

// --- building ---

func buildImage(spec FixtureSpec) (Image, error) {
	c := spec.Compression
	if c == "" {
		c = Gzip
	}
	if c != Gzip && c != EStargz {
		return Image{}, fmt.Errorf("unknown compression %q", c)
	}
	if c == EStargz && spec.DockerMediaTypes {
		return Image{}, errors.New("eStargz fixtures use OCI media types")
	}
	if len(spec.Layers) == 0 {
		return Image{}, errors.New("no layers")
	}

	manifestType, configType, layerType := ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, ocispec.MediaTypeImageLayerGzip
	if spec.DockerMediaTypes {
		manifestType, configType, layerType = images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2Config, images.MediaTypeDockerSchema2LayerGzip
	}

	img := Image{blobs: map[digest.Digest][]byte{}}
	var history []ocispec.History
	for i, l := range spec.Layers {
		if l.src == nil {
			return Image{}, fmt.Errorf("layer %d: zero Layer", i)
		}
		tb, err := l.src.tar()
		if err != nil {
			return Image{}, fmt.Errorf("layer %d (%s): %w", i, l.src.desc, err)
		}
		lb, err := compressLayer(tb, c)
		if err != nil {
			return Image{}, fmt.Errorf("layer %d (%s): %w", i, l.src.desc, err)
		}
		img.Layers = append(img.Layers, ocispec.Descriptor{
			MediaType:   layerType,
			Digest:      lb.digest,
			Size:        int64(len(lb.data)),
			Annotations: maps.Clone(lb.annotations),
		})
		img.DiffIDs = append(img.DiffIDs, lb.diffID)
		img.blobs[lb.digest] = lb.data
		history = append(history, ocispec.History{
			Created:   &FixtureTime,
			CreatedBy: "stargazer testutil: " + l.src.desc + " layer",
		})
	}

	platform := platforms.DefaultSpec()
	platform.OS = "linux"
	config := ocispec.Image{
		Created:  &FixtureTime,
		Platform: platform,
		Config:   imageConfig(spec.Config),
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: img.DiffIDs},
		History:  history,
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return Image{}, err
	}
	img.Config = ocispec.Descriptor{MediaType: configType, Digest: digest.FromBytes(configJSON), Size: int64(len(configJSON))}
	img.blobs[img.Config.Digest] = configJSON

	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: manifestType,
		Config:    img.Config,
		Layers:    img.Layers,
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return Image{}, err
	}
	img.Manifest = ocispec.Descriptor{MediaType: manifestType, Digest: digest.FromBytes(manifestJSON), Size: int64(len(manifestJSON))}
	img.blobs[img.Manifest.Digest] = manifestJSON
	return img, nil
}

func imageConfig(c ocispec.ImageConfig) ocispec.ImageConfig {
	c.Env = slices.Clone(c.Env)
	if !slices.ContainsFunc(c.Env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		c.Env = append([]string{"PATH=" + DefaultPath}, c.Env...)
	}
	// A non-nil empty Cmd asks for an image with no command at all.
	if len(c.Entrypoint) == 0 && c.Cmd == nil {
		c.Cmd = []string{"/bin/sh"}
	}
	return c
}

// layerBlob is a compressed layer.
type layerBlob struct {
	data        []byte
	digest      digest.Digest
	diffID      digest.Digest
	annotations map[string]string
}

// compressLayer compresses tb, cached by content and compression.
func compressLayer(tb *tarBlob, c Compression) (*layerBlob, error) {
	return cached("blob:"+string(c)+":"+tb.diffID.String(), func() (*layerBlob, error) {
		switch c {
		case Gzip:
			var buf bytes.Buffer
			zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
			if err != nil {
				return nil, err
			}
			if _, err := zw.Write(tb.data); err != nil {
				return nil, err
			}
			if err := zw.Close(); err != nil {
				return nil, err
			}
			return &layerBlob{data: buf.Bytes(), digest: digest.FromBytes(buf.Bytes()), diffID: tb.diffID}, nil
		case EStargz:
			blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tb.data), 0, int64(len(tb.data))))
			if err != nil {
				return nil, fmt.Errorf("estargz build: %w", err)
			}
			data, err := io.ReadAll(blob)
			if cerr := blob.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, fmt.Errorf("estargz build: %w", err)
			}
			size, err := blob.UncompressedSize()
			if err != nil {
				return nil, fmt.Errorf("estargz build: %w", err)
			}
			return &layerBlob{
				data:   data,
				digest: digest.FromBytes(data),
				diffID: blob.DiffID(),
				annotations: map[string]string{
					estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
					estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(size, 10),
				},
			}, nil
		}
		return nil, fmt.Errorf("unknown compression %q", c)
	})
}

// buildTar writes files as a sorted tar with implicit parent directories.
func buildTar(files map[string]File) ([]byte, error) {
	type item struct {
		name string
		f    File
	}
	entries := map[string]File{}
	add := func(name string, f File) error {
		if prev, ok := entries[name]; ok && !(prev.Dir && f.Dir) {
			return fmt.Errorf("%s: listed twice", name)
		}
		entries[name] = f
		return nil
	}
	for raw, f := range files {
		name := path.Clean(strings.TrimPrefix(raw, "/"))
		if name == "." || name == ".." || strings.HasPrefix(name, "../") {
			return nil, fmt.Errorf("%q: not a path inside the layer", raw)
		}
		kinds := 0
		for _, set := range []bool{f.Dir || f.Opaque, f.Symlink != "", f.Hardlink != "", f.Whiteout} {
			if set {
				kinds++
			}
		}
		if kinds > 1 {
			return nil, fmt.Errorf("%s: more than one of Dir/Opaque, Symlink, Hardlink, Whiteout", name)
		}
		if len(f.Data) > 0 && kinds > 0 {
			return nil, fmt.Errorf("%s: Data on a non-regular entry", name)
		}
		switch {
		case f.Whiteout:
			dir, base := path.Split(name)
			if err := add(dir+".wh."+base, File{}); err != nil {
				return nil, err
			}
		case f.Opaque:
			f.Dir, f.Opaque = true, false
			if err := add(name, f); err != nil {
				return nil, err
			}
			if err := add(name+"/.wh..wh..opq", File{}); err != nil {
				return nil, err
			}
		default:
			if err := add(name, f); err != nil {
				return nil, err
			}
		}
	}
	for name := range maps.Clone(entries) {
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if prev, ok := entries[dir]; ok {
				if !prev.Dir {
					return nil, fmt.Errorf("%s: parent %s is not a directory", name, dir)
				}
				continue
			}
			entries[dir] = File{Dir: true}
		}
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		f := entries[name]
		hdr := &tar.Header{
			Name:    name,
			Uid:     f.UID,
			Gid:     f.GID,
			ModTime: FixtureTime,
		}
		perm := f.Mode
		switch {
		case f.Dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
			if perm.Perm() == 0 {
				perm |= 0o755
			}
		case f.Symlink != "":
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = f.Symlink
			perm = 0o777
		case f.Hardlink != "":
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = path.Clean(strings.TrimPrefix(f.Hardlink, "/"))
			if perm.Perm() == 0 {
				perm |= 0o644
			}
		default:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.Data))
			if perm.Perm() == 0 {
				perm |= 0o644
			}
		}
		hdr.Mode = tarMode(perm)
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// busyboxApplets are linked into /bin when the host's busybox has them.
var busyboxApplets = []string{
	"[", "ash", "awk", "base64", "basename", "cat", "chmod", "chown", "cmp", "cp",
	"cut", "date", "dd", "df", "diff", "dirname", "du", "echo", "env", "expr",
	"false", "find", "getopt", "grep", "gunzip", "gzip", "head", "hexdump",
	"hostname", "id", "kill", "less", "ln", "ls", "md5sum", "mkdir", "mktemp",
	"more", "mount", "mv", "nc", "nproc", "od", "printf", "ps", "pwd",
	"readlink", "realpath", "rev", "rm", "rmdir", "sed", "seq", "sh",
	"sha1sum", "sha256sum", "sha512sum", "sleep", "sort", "stat", "sync",
	"tac", "tail", "tar", "tee", "test", "timeout", "touch", "tr", "true",
	"umount", "uname", "uniq", "usleep", "vi", "wc", "wget", "which",
	"whoami", "xargs", "xxd", "yes", "zcat",
}

func busyboxPath() string {
	if p := os.Getenv("STARGAZER_BUSYBOX"); p != "" {
		return p
	}
	return "/bin/busybox"
}

func busyboxTar() (*tarBlob, error) {
	return cached("tar:busybox", func() (*tarBlob, error) {
		p := busyboxPath()
		bin, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read busybox (install Debian's busybox-static or set STARGAZER_BUSYBOX): %w", err)
		}
		if err := checkStatic(p); err != nil {
			return nil, err
		}
		out, err := exec.Command(p, "--list").Output()
		if err != nil {
			return nil, fmt.Errorf("%s --list: %w", p, err)
		}
		have := map[string]bool{}
		for _, a := range strings.Fields(string(out)) {
			have[a] = true
		}
		files := map[string]File{
			"bin/busybox": {Data: bin, Mode: 0o755},
			"etc/passwd": {Data: []byte("root:x:0:0:root:/root:/bin/sh\n" +
				"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
			"etc/group":    {Data: []byte("root:x:0:\nnobody:x:65534:\n")},
			"etc/hostname": {Data: []byte("stargazer\n")},
			"dev":          {Dir: true},
			"proc":         {Dir: true},
			"sys":          {Dir: true},
			"root":         {Dir: true, Mode: 0o700},
			"tmp":          {Dir: true, Mode: 0o777 | fs.ModeSticky},
			"var/tmp":      {Dir: true, Mode: 0o777 | fs.ModeSticky},
			"usr/bin/env":  {Symlink: "/bin/busybox"},
		}
		for _, a := range busyboxApplets {
			if have[a] {
				files["bin/"+a] = File{Symlink: "busybox"}
			}
		}
		if !have["sh"] {
			return nil, fmt.Errorf("%s has no sh applet", p)
		}
		data, err := buildTar(files)
		if err != nil {
			return nil, err
		}
		return newTarBlob(data), nil
	})
}

// checkStatic fails for an executable that needs a program interpreter,
// which a busybox-only root filesystem does not have.
func checkStatic(p string) error {
	static, err := tracer.IsStaticExecutable(p)
	if err != nil {
		return fmt.Errorf("busybox: %w", err)
	}
	if !static {
		return fmt.Errorf("busybox %s is dynamically linked; install Debian's busybox-static", p)
	}
	return nil
}

// --- registry transfer ---

// clientContext bounds a push or pull by the test's life and five minutes,
// and silences containerd's client log, which would otherwise go to
// logrus's standard logger; failures come back as errors.
func clientContext(t testing.TB) (context.Context, context.CancelFunc) {
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	ctx := log.WithLogger(t.Context(), logrus.NewEntry(logger))
	return context.WithTimeout(ctx, 5*time.Minute)
}

func withDefaultTag(ref string) (string, error) {
	spec, err := reference.Parse(ref)
	if err != nil {
		return "", fmt.Errorf("parse reference %q: %w", ref, err)
	}
	if spec.Object == "" {
		return ref + ":latest", nil
	}
	return ref, nil
}

func pushImage(ctx context.Context, ref string, img Image) error {
	if img.Manifest.Digest == "" {
		return errors.New("image has no manifest")
	}
	pusher, err := loopbackResolver().Pusher(ctx, ref)
	if err != nil {
		return err
	}
	descs := append(slices.Clone(img.Layers), img.Config, img.Manifest)
	for _, desc := range descs {
		data, ok := img.blobs[desc.Digest]
		if !ok {
			return fmt.Errorf("blob %s missing from image", desc.Digest)
		}
		w, err := pusher.Push(ctx, desc)
		if errdefs.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("push %s: %w", desc.Digest, err)
		}
		err = content.Copy(ctx, w, bytes.NewReader(data), desc.Size, desc.Digest)
		if cerr := w.Close(); err == nil && cerr != nil && !errdefs.IsAlreadyExists(cerr) {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("push %s: %w", desc.Digest, err)
		}
	}
	return nil
}

func fetchImage(ctx context.Context, ref string) (Image, error) {
	resolver := loopbackResolver()
	name, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return Image{}, err
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return Image{}, err
	}
	img := Image{Ref: ref, blobs: map[digest.Digest][]byte{}}
	read := func(desc ocispec.Descriptor) ([]byte, error) {
		rc, err := fetcher.Fetch(ctx, desc)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: %w", desc.Digest, err)
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: %w", desc.Digest, err)
		}
		if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
			return nil, fmt.Errorf("fetch %s: content does not match its descriptor (%d bytes, want %d)", desc.Digest, len(data), desc.Size)
		}
		img.blobs[desc.Digest] = data
		return data, nil
	}

	data, err := read(desc)
	if err != nil {
		return Image{}, err
	}
	if images.IsIndexType(desc.MediaType) {
		var index ocispec.Index
		if err := json.Unmarshal(data, &index); err != nil {
			return Image{}, fmt.Errorf("decode index: %w", err)
		}
		img.Index = desc
		match := platforms.Only(platforms.DefaultSpec())
		found := false
		for _, m := range index.Manifests {
			if m.Platform != nil && match.Match(*m.Platform) {
				desc, found = m, true
				break
			}
		}
		if !found {
			return Image{}, fmt.Errorf("index %s has no manifest for %s", img.Index.Digest, platforms.DefaultString())
		}
		if data, err = read(desc); err != nil {
			return Image{}, err
		}
	}
	if !images.IsManifestType(desc.MediaType) {
		return Image{}, fmt.Errorf("%s: unexpected media type %s", desc.Digest, desc.MediaType)
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal(data, &manifest); err != nil {
		return Image{}, fmt.Errorf("decode manifest: %w", err)
	}
	img.Manifest = ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}
	img.Config = manifest.Config
	img.Layers = manifest.Layers
	configJSON, err := read(manifest.Config)
	if err != nil {
		return Image{}, err
	}
	var config ocispec.Image
	if err := json.Unmarshal(configJSON, &config); err != nil {
		return Image{}, fmt.Errorf("decode config: %w", err)
	}
	img.DiffIDs = config.RootFS.DiffIDs
	for _, l := range manifest.Layers {
		if _, err := read(l); err != nil {
			return Image{}, err
		}
	}
	return img, nil
}

// --- OCI layout ---

func ociLayoutFiles(img Image) (map[string][]byte, error) {
	if img.Manifest.Digest == "" {
		return nil, errors.New("image has no manifest")
	}
	files := map[string][]byte{
		ocispec.ImageLayoutFile: []byte(`{"imageLayoutVersion":"` + ocispec.ImageLayoutVersion + `"}`),
	}
	for _, desc := range append(slices.Clone(img.Layers), img.Config, img.Manifest) {
		data, ok := img.blobs[desc.Digest]
		if !ok {
			return nil, fmt.Errorf("blob %s missing from image", desc.Digest)
		}
		files[path.Join("blobs", desc.Digest.Algorithm().String(), desc.Digest.Encoded())] = data
	}
	manifest := img.Manifest
	if img.Ref != "" {
		spec, err := reference.Parse(img.Ref)
		if err != nil {
			return nil, fmt.Errorf("parse reference %q: %w", img.Ref, err)
		}
		manifest.Annotations = map[string]string{images.AnnotationImageName: img.Ref}
		if tag, _, _ := strings.Cut(spec.Object, "@"); tag != "" {
			manifest.Annotations[ocispec.AnnotationRefName] = tag
		}
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifest},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return nil, err
	}
	files[ocispec.ImageIndexFile] = indexJSON
	return files, nil
}

// --- caching ---

type onceEntry[T any] struct {
	once sync.Once
	v    T
	err  error
}

var fixtureCache sync.Map // key → *onceEntry[T]

// cached runs build once per key for the test binary and returns its
// result, error included, to every caller. Keys must be unique per T.
func cached[T any](key string, build func() (T, error)) (T, error) {
	e, _ := fixtureCache.LoadOrStore(key, &onceEntry[T]{})
	oe := e.(*onceEntry[T])
	oe.once.Do(func() { oe.v, oe.err = build() })
	return oe.v, oe.err
}
