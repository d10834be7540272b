package worker

import (
	"cmp"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/metadata"
	remotesn "github.com/containerd/stargz-snapshotter/snapshot"
	"github.com/moby/buildkit/util/bklog"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// warmer reads the prefetched files of each lazily mounted layer through
// its mount, in blob order, while the prefetch download brings them.
//
// The stargz filesystem decompresses, verifies and caches the files of a
// layer's prefetch range only once the whole range has arrived, and a
// workload that starts meanwhile (prefetch_async_size) waits on each file
// it opens for the same work, one file at a time, competing with that
// bulk pass for the CPU at the end. Read ahead through the mount, each file
// takes its turn as soon as its bytes arrive, while the CPU is otherwise
// idle waiting for the link; the workload then finds it decompressed, and
// in the kernel's page cache. Only files before the layer's
// .prefetch.landmark are read: the bytes are the ones the prefetch
// downloads anyway.
type warmer struct {
	mu sync.Mutex
	// tocs are the layers resolved but not mounted yet, by TOC digest, as
	// the filesystem's metadata store read them; order is oldest first.
	tocs  map[digest.Digest]metadata.Reader
	order []digest.Digest
	// running are the warm-ups under way, by mountpoint.
	running map[string]*warmup
}

type warmup struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// maxPendingTOCs bounds the layers remembered between their resolution
// and their mount; the oldest are forgotten first.
const maxPendingTOCs = 256

// warmStopWait is how long an unmount waits for the warm-up of its mount
// to close the file it is reading.
const warmStopWait = 10 * time.Second

func newWarmer() *warmer {
	return &warmer{tocs: make(map[digest.Digest]metadata.Reader), running: make(map[string]*warmup)}
}

// store is the filesystem's metadata store (openLayerIndex), remembering
// each layer's index for the warm-up of its mount.
func (w *warmer) store(sr *io.SectionReader, opts ...metadata.Option) (metadata.Reader, error) {
	r, err := openLayerIndex(sr, opts...)
	if err != nil {
		return nil, err
	}
	d := r.TOCDigest()
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.tocs[d]; !ok {
		w.order = append(w.order, d)
	}
	w.tocs[d] = r
	for len(w.order) > maxPendingTOCs {
		delete(w.tocs, w.order[0])
		w.order = w.order[1:]
	}
	return r, nil
}

// take returns and forgets the index of the layer whose TOC digest is d.
func (w *warmer) take(d digest.Digest) (metadata.Reader, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.tocs[d]
	if ok {
		delete(w.tocs, d)
		w.order = slices.DeleteFunc(w.order, func(x digest.Digest) bool { return x == d })
	}
	return r, ok
}

// filesystem wraps the stargz filesystem: a layer it mounts is warmed, and
// its warm-up stops before it is unmounted.
func (w *warmer) filesystem(fs remotesn.FileSystem) remotesn.FileSystem {
	return &warmFS{FileSystem: fs, w: w}
}

type warmFS struct {
	remotesn.FileSystem
	w *warmer
}

func (fs *warmFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	if err := fs.FileSystem.Mount(ctx, mountpoint, labels); err != nil {
		return err
	}
	d, err := digest.Parse(labels[estargz.TOCJSONDigestAnnotation])
	if err != nil {
		return nil
	}
	r, ok := fs.w.take(d)
	if !ok {
		return nil // resolved before, and warmed then
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	wu := &warmup{cancel: cancel, done: make(chan struct{})}
	fs.w.mu.Lock()
	if old := fs.w.running[mountpoint]; old != nil {
		old.cancel()
	}
	fs.w.running[mountpoint] = wu
	fs.w.mu.Unlock()
	go func() {
		defer close(wu.done)
		defer cancel()
		files, err := prefetchedFiles(r)
		if err == nil {
			err = warmFiles(wctx, mountpoint, files)
		}
		if err != nil && wctx.Err() == nil {
			bklog.G(wctx).WithError(err).Debugf("warming the prefetched files of %s stopped", mountpoint)
		}
	}()
	return nil
}

func (fs *warmFS) Unmount(ctx context.Context, mountpoint string) error {
	fs.w.mu.Lock()
	wu := fs.w.running[mountpoint]
	delete(fs.w.running, mountpoint)
	fs.w.mu.Unlock()
	if wu != nil {
		wu.cancel()
		select {
		case <-wu.done:
		case <-time.After(warmStopWait):
			bklog.G(ctx).Warnf("a read of %s is still under way; unmounting anyway", mountpoint)
		}
	}
	return fs.FileSystem.Unmount(ctx, mountpoint)
}

// maxWarmDepth bounds the directory depth walked in a layer index.
const maxWarmDepth = 256

// prefetchedFiles returns the regular files of a layer that lie before
// its .prefetch.landmark, by their paths from the layer root, in blob
// order; none when the layer has no such landmark.
func prefetchedFiles(r metadata.Reader) ([]string, error) {
	root := r.RootID()
	id, _, err := r.GetChild(root, estargz.PrefetchLandmark)
	if err != nil {
		return nil, nil
	}
	end, err := r.GetOffset(id)
	if err != nil {
		return nil, err
	}
	type file struct {
		path   string
		offset int64
	}
	var files []file
	var walk func(dir uint32, dirPath string, depth int) error
	walk = func(dir uint32, dirPath string, depth int) error {
		if depth > maxWarmDepth {
			return errors.New("layer tree too deep")
		}
		var werr error
		err := r.ForeachChild(dir, func(name string, id uint32, mode os.FileMode) bool {
			p := path.Join(dirPath, name)
			switch {
			case mode.IsDir():
				if dir == root && name == "" {
					return true
				}
				werr = walk(id, p, depth+1)
			case mode.IsRegular():
				if dir == root && name == estargz.PrefetchLandmark {
					return true
				}
				attr, err := r.GetAttr(id)
				if err != nil || attr.Size == 0 {
					return true
				}
				off, err := r.GetOffset(id)
				if err == nil && off < end {
					files = append(files, file{p, off})
				}
			}
			return werr == nil
		})
		if werr != nil {
			return werr
		}
		return err
	}
	if err := walk(root, "", 0); err != nil {
		return nil, err
	}
	slices.SortStableFunc(files, func(a, b file) int { return cmp.Compare(a.offset, b.offset) })
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.path
	}
	return paths, nil
}

// warmFiles reads each file, by its path below root, to its end, until
// ctx ends. Paths resolve beneath root without following symlinks; a file
// that cannot be opened is skipped.
func warmFiles(ctx context.Context, root string, files []string) error {
	dir, err := os.Open(root)
	if err != nil {
		return err
	}
	defer dir.Close()
	buf := make([]byte, 1<<20)
	for _, p := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		fd, err := unix.Openat2(int(dir.Fd()), p, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
		})
		if errors.Is(err, unix.ENOSYS) {
			return nil // kernel before 5.6: no warm-up
		}
		if err != nil {
			continue
		}
		f := os.NewFile(uintptr(fd), p)
		for ctx.Err() == nil {
			if _, err := f.Read(buf); err != nil {
				break
			}
		}
		f.Close()
	}
	return ctx.Err()
}
