//go:build linux && (amd64 || arm64)

package tracer

import (
	"encoding/binary"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ptrace mechanism's fast path. Stopping the workload at every open
// costs two context switches through ptrace, often across CPUs; with a
// seccomp user-notification listener the workload waits instead for one
// thread of ours that is woken on the workload's own CPU
// (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP), copies what it must while the call
// is held (the name, and the directory a relative name starts from) and
// lets the call go on. Resolving the name to a file happens afterwards on
// another goroutine, off the workload's path. ptrace still follows every
// process, stops at execs and kills the tree.

// seccompNotif mirrors struct seccomp_notif.
type seccompNotif struct {
	id    uint64
	pid   uint32
	flags uint32
	nr    int32
	arch  uint32
	ip    uint64
	args  [6]uint64
}

// seccompNotifResp mirrors struct seccomp_notif_resp.
type seccompNotifResp struct {
	id    uint64
	val   int64
	error int32
	flags uint32
}

// seccompIoctlNotifSetFlags is SECCOMP_IOCTL_NOTIF_SET_FLAGS (Linux 6.6),
// _IOW('!', 4, __u64), the same on amd64 and arm64.
const seccompIoctlNotifSetFlags = 0x40082104

// access is one open or exec to record, in the order the workload made
// them. Either name is a path still to resolve (the workload's view, in
// our root), or path is resolved already, with its stat result.
type access struct {
	at       time.Duration
	name     string
	nofollow bool
	path     string
	size     int64
}

// recordSink owns the recorder while a ptrace trace runs: both the ptrace
// thread and the notification thread hand it accesses in order. They only
// append under a lock; waking a goroutine per access would cost the
// workload a cross-CPU wake-up each time, so the sink picks up batches on
// a short tick instead.
type recordSink struct {
	rec     *recorder
	mu      sync.Mutex
	pending []access
	closed  bool
	done    chan struct{}
	// names are names already resolved to something, so an open of the
	// same name again costs nothing.
	names map[string]struct{}
	// dirs maps directories named to their real paths.
	dirs    map[string]string
	linkBuf []byte
}

// sinkTick is how often the sink picks up what was handed over.
const sinkTick = 5 * time.Millisecond

func newRecordSink(rec *recorder) *recordSink {
	k := &recordSink{
		rec:     rec,
		done:    make(chan struct{}),
		names:   make(map[string]struct{}),
		dirs:    make(map[string]string),
		linkBuf: make([]byte, unix.PathMax+64),
	}
	go k.run()
	return k
}

// push hands over one access.
func (k *recordSink) push(a access) {
	k.mu.Lock()
	k.pending = append(k.pending, a)
	k.mu.Unlock()
}

// close waits until every access handed over is recorded.
func (k *recordSink) close() {
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	<-k.done
}

func (k *recordSink) run() {
	defer close(k.done)
	tick := time.NewTicker(sinkTick)
	defer tick.Stop()
	var batch []access
	for {
		k.mu.Lock()
		batch, k.pending = k.pending, batch[:0]
		closed := k.closed
		k.mu.Unlock()
		for _, a := range batch {
			if a.path == "" {
				k.resolve(a)
			} else if !k.rec.has(a.path) {
				k.rec.addAt(a.path, a.size, a.at)
			}
		}
		if closed {
			return
		}
		<-tick.C
	}
}

// resolve records the regular file a name reached, by its real path. The
// directory part is resolved once per directory and remembered, so most
// names cost one lstat.
func (k *recordSink) resolve(a access) {
	if _, ok := k.names[a.name]; ok {
		return
	}
	if strings.HasSuffix(a.name, "/") || slices.Contains(strings.Split(a.name, "/"), "..") {
		// ".." after a symlink, or a name that must be a directory:
		// only the kernel resolves these right.
		k.resolveWhole(a)
		return
	}
	name := path.Clean(a.name)
	dir, base := path.Split(name)
	if base == "" || base == ".." {
		return // "/" or a name ending in "..": a directory
	}
	real, ok := k.dirs[dir]
	if !ok {
		real = k.realPath(dir)
		k.dirs[dir] = real
	}
	if real == "" {
		return
	}
	full := path.Join(real, base)
	var st unix.Stat_t
	if unix.Lstat(full, &st) != nil {
		return // it did not exist: nothing of the image
	}
	k.names[a.name] = struct{}{}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK && !a.nofollow:
		// Followed: the target is what was read.
		full = k.realPath(full)
		if full == "" || unix.Stat(full, &st) != nil {
			return
		}
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && !k.rec.has(full) {
		k.rec.addAt(full, st.Size, a.at)
	}
}

// resolveWhole records the regular file a name reached, resolved by the
// kernel in one go.
func (k *recordSink) resolveWhole(a access) {
	p, st, err := realStat(a.name, a.nofollow, k.linkBuf)
	if err != nil {
		return
	}
	k.names[a.name] = struct{}{}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && !k.rec.has(p) {
		k.rec.addAt(p, st.Size, a.at)
	}
}

// realPath returns p with every symlink resolved, "" when it does not
// exist.
func (k *recordSink) realPath(p string) string {
	real, _, err := realStat(p, false, k.linkBuf)
	if err != nil {
		return ""
	}
	return real
}

// notifier serves the seccomp listener on a locked thread of its own.
type notifier struct {
	e  *ptraceEngine
	fd int
	// done asks the thread to end once no process is left to notify.
	done    atomic.Bool
	tid     atomic.Int32 // the thread, to interrupt its wait
	ended   chan struct{}
	mem     memReader
	linkBuf []byte
	lost    int // names whose starting directory could not be read
}

// startNotifier serves listener until every workload process is gone.
func (e *ptraceEngine) startNotifier(listener int) *notifier {
	n := &notifier{
		e:       e,
		fd:      listener,
		ended:   make(chan struct{}),
		mem:     memReader{buf: make([]byte, unix.PathMax), as: e.asWorkload},
		linkBuf: make([]byte, unix.PathMax+64),
	}
	// Where the kernel has it, wake this thread on the CPU of the
	// workload thread that waits for it, rather than sending an
	// interrupt to another CPU.
	unix.Syscall(unix.SYS_IOCTL, uintptr(listener), seccompIoctlNotifSetFlags, unix.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
	go func() {
		defer close(n.ended)
		defer unix.Close(listener)
		// Never unlocked: setfsuid in asWorkload acts on this thread.
		runtime.LockOSThread()
		n.tid.Store(int32(unix.Gettid()))
		n.serve()
	}()
	return n
}

// stop ends the thread once no workload process is left. Its wait for a
// call is not woken by the last process going, so a signal the Go runtime
// ignores interrupts it, again until it is seen: one sent just before the
// wait began would be lost.
func (n *notifier) stop() {
	n.done.Store(true)
	for {
		if tid := int(n.tid.Load()); tid != 0 {
			unix.Tgkill(unix.Getpid(), tid, unix.SIGURG)
		}
		select {
		case <-n.ended:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (n *notifier) serve() {
	var (
		req  seccompNotif
		resp seccompNotifResp
	)
	for !n.done.Load() {
		req = seccompNotif{}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(n.fd), unix.SECCOMP_IOCTL_NOTIF_RECV, uintptr(unsafe.Pointer(&req)))
		switch errno {
		case 0:
		case unix.EINTR, unix.ENOENT:
			// ENOENT: the call went away (a signal, a kill) before
			// we took it.
			continue
		default:
			return
		}
		if !n.e.s.cfg.notifyNothing {
			n.handle(&req)
		}
		resp = seccompNotifResp{id: req.id, flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE}
		unix.Syscall(unix.SYS_IOCTL, uintptr(n.fd), unix.SECCOMP_IOCTL_NOTIF_SEND, uintptr(unsafe.Pointer(&resp)))
	}
}

// handle takes what a held open needs for its resolution later: its name,
// and for a relative name the directory it starts from.
func (n *notifier) handle(req *seccompNotif) {
	at := time.Since(n.e.s.start)
	tid := int(req.pid)
	dirfd, addr, flags, ok := openCall(int(req.nr), req.args)
	if !ok {
		if int(req.nr) != nativeSysTable.openat2 {
			return
		}
		// struct open_how starts with the u64 flags.
		var how [8]byte
		if n.mem.read(tid, req.args[2], how[:]) != nil {
			return
		}
		dirfd, addr, flags = int(int32(req.args[0])), req.args[1], binary.LittleEndian.Uint64(how[:])
		if flags&(unix.O_PATH|unix.O_DIRECTORY) != 0 {
			return
		}
	}
	name, err := n.mem.readString(tid, addr)
	if err != nil || name == "" {
		return
	}
	nofollow := flags&unix.O_NOFOLLOW != 0
	if magicPath(name) || n.e.rootMoved.Load() {
		// Only /proc of the caller resolves these as the kernel will.
		if p, size, ok := n.e.resolveRegular(tid, dirfd, name, nofollow); ok {
			n.e.sink.push(access{at: at, path: p, size: size})
		}
		return
	}
	if name[0] != '/' {
		base, ok := n.startDir(tid, dirfd)
		if !ok {
			n.lost++
			return
		}
		name = base + "/" + name
	}
	n.e.sink.push(access{at: at, name: name, nofollow: nofollow})
}

// startDir returns the directory a relative name of tid starts from: its
// cwd or dirfd, as a path of ours.
func (n *notifier) startDir(tid, dirfd int) (string, bool) {
	b := n.linkBuf[:0]
	b = append(b, "/proc/"...)
	b = strconv.AppendInt(b, int64(tid), 10)
	if dirfd == unix.AT_FDCWD {
		b = append(b, "/cwd"...)
	} else {
		b = append(b, "/fd/"...)
		b = strconv.AppendInt(b, int64(dirfd), 10)
	}
	link := string(b)
	var k int
	err := n.e.asWorkload(func() (err error) {
		k, err = unix.Readlink(link, n.linkBuf)
		return err
	})
	if err != nil || k == 0 || n.linkBuf[0] != '/' {
		return "", false
	}
	return string(n.linkBuf[:k]), true
}

// readShimStatus reads the shim's status socket to its end: a descriptor
// that comes along is the notification listener, sent on listener, and
// the text is the reason the workload was not executed ("" when it was).
// listener is closed before it returns.
func readShimStatus(fd int, listener chan<- int) string {
	defer close(listener)
	var (
		text []byte
		buf  = make([]byte, 4096)
		oob  = make([]byte, unix.CmsgSpace(4))
	)
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || (n == 0 && oobn == 0) {
			return string(text)
		}
		if oobn == 0 {
			text = append(text, buf[:n]...)
			continue
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			fds, _ := unix.ParseUnixRights(&m)
			for _, f := range fds {
				select {
				case listener <- f:
				default:
					unix.Close(f) // only one is expected
				}
			}
		}
	}
}
