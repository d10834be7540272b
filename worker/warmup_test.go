package worker

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/metadata"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	ct "github.com/stargazer-build/stargazer/exporter/convert/converttest"
)

// indexOf builds an eStargz blob of entries, prioritizing the given paths,
// and reads its index as the stargz filesystem does.
func indexOf(t *testing.T, prioritized []string, entries ...ct.Entry) metadata.Reader {
	t.Helper()
	var opts []estargz.Option
	if prioritized != nil {
		opts = append(opts, estargz.WithPrioritizedFiles(prioritized))
	}
	b := buildBlob(t, entries, opts...)
	w := newWarmer()
	r, err := w.store(io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b))))
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := w.take(r.TOCDigest()); !ok || got != r {
		t.Fatal("the store did not keep the index for the mount")
	}
	return r
}

// buildBlob builds an eStargz (or, with its compression, zstd:chunked)
// blob of entries.
func buildBlob(t *testing.T, entries []ct.Entry, opts ...estargz.Option) []byte {
	t.Helper()
	src := ct.Tar(t, entries...)
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(src), 0, int64(len(src))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	b, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPrefetchedFiles(t *testing.T) {
	entries := []ct.Entry{
		ct.Dir("etc/"), ct.File("etc/a", "a"), ct.File("etc/empty", ""),
		ct.Dir("usr/"), ct.Dir("usr/lib/"), ct.File("usr/lib/big", strings.Repeat("x", 3<<20)),
		ct.File("usr/lib/c", "c"), ct.Symlink("usr/lib/link", "c"), ct.File("late", "late"),
	}
	r := indexOf(t, []string{"usr/lib/c", "etc/empty", "usr/lib/link", "usr/lib/big", "etc/a"}, entries...)
	got, err := prefetchedFiles(r)
	if err != nil {
		t.Fatal(err)
	}
	// In blob order; empty files and symlinks have nothing to read.
	if want := []string{"usr/lib/c", "usr/lib/big", "etc/a"}; !slices.Equal(got, want) {
		t.Errorf("prefetched files %q, want %q", got, want)
	}

	none, err := prefetchedFiles(indexOf(t, nil, entries...))
	if err != nil || len(none) != 0 {
		t.Errorf("a layer without prefetch landmark gave %q, %v", none, err)
	}
}

// watchOpens reports the names of files opened in dir from now on.
func watchOpens(t *testing.T, dir string) func() []string {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Skipf("inotify: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_OPEN|unix.IN_ACCESS); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		var names []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || err != nil {
				return names
			}
			for off := 0; off < n; {
				ev := (*unix.InotifyEvent)(unsafePointer(&buf[off]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
				if ev.Mask&unix.IN_ACCESS != 0 {
					name += " read"
				}
				names = append(names, name)
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

func TestWarmFilesStaysBeneathRoot(t *testing.T) {
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(root, "sub"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(root, "a"), filepath.Join(root, "sub", "b"), filepath.Join(outside, "secret")} {
		if err := os.WriteFile(f, []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "dirlink")); err != nil {
		t.Fatal(err)
	}
	opened := watchOpens(t, outside)
	openedInRoot := watchOpens(t, root)

	err := warmFiles(context.Background(), root, []string{"a", "missing", "../outside/secret", "link", "dirlink/secret", "/abs", "sub/b"})
	if err != nil {
		t.Fatal(err)
	}
	if got := opened(); len(got) != 0 {
		t.Errorf("warm-up opened %q outside its root", got)
	}
	if got := openedInRoot(); !slices.Contains(got, "a read") {
		t.Errorf("warm-up did not read a: %q", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := warmFiles(ctx, root, []string{"a"}); err == nil {
		t.Error("a canceled warm-up reported success")
	}
}

// fakeFS records the calls a warmFS passes on.
type fakeFS struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeFS) Mount(ctx context.Context, mp string, labels map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "mount "+mp)
	return nil
}

func (f *fakeFS) Check(ctx context.Context, mp string, labels map[string]string) error { return nil }

func (f *fakeFS) Unmount(ctx context.Context, mp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "unmount "+mp)
	return nil
}

func TestWarmFSStopsBeforeUnmount(t *testing.T) {
	w := newWarmer()
	r := indexOf(t, []string{"f"}, ct.File("f", "body"), ct.File("g", "other"))
	w.tocs[r.TOCDigest()] = r
	inner := &fakeFS{}
	fs := w.filesystem(inner)
	mp := t.TempDir()
	labels := map[string]string{estargz.TOCJSONDigestAnnotation: r.TOCDigest().String()}
	if err := fs.Mount(context.Background(), mp, labels); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	wu := w.running[mp]
	w.mu.Unlock()
	if wu == nil {
		t.Fatal("mount started no warm-up")
	}
	if err := fs.Unmount(context.Background(), mp); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wu.done:
	default:
		t.Error("unmounted before the warm-up stopped")
	}
	if _, ok := w.take(r.TOCDigest()); ok {
		t.Error("the index is still kept after the mount")
	}
	// A layer mounted again is not warmed again, and an unknown one not at all.
	for _, l := range []map[string]string{labels, {estargz.TOCJSONDigestAnnotation: digest.FromString("x").String()}, nil} {
		if err := fs.Mount(context.Background(), mp, l); err != nil {
			t.Fatal(err)
		}
		w.mu.Lock()
		n := len(w.running)
		w.mu.Unlock()
		if n != 0 {
			t.Errorf("mount with labels %v started a warm-up", l)
		}
	}
	if want := []string{"mount " + mp, "unmount " + mp, "mount " + mp, "mount " + mp, "mount " + mp}; !slices.Equal(inner.calls, want) {
		t.Errorf("calls %q, want %q", inner.calls, want)
	}
}

func unsafePointer(b *byte) unsafe.Pointer { return unsafe.Pointer(b) }
