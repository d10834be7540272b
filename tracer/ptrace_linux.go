//go:build linux && (amd64 || arm64)

package tracer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ptraceOptions: stop at the filter's SECCOMP_RET_TRACE, follow every new
// process and thread, see execs and exits, tell syscall stops from
// SIGTRAPs, and have the kernel kill the tracees if the tracer dies.
const ptraceOptions = unix.PTRACE_O_TRACESYSGOOD | unix.PTRACE_O_TRACESECCOMP |
	unix.PTRACE_O_TRACEFORK | unix.PTRACE_O_TRACEVFORK | unix.PTRACE_O_TRACECLONE |
	unix.PTRACE_O_TRACEEXEC | unix.PTRACE_O_TRACEEXIT | unix.PTRACE_O_EXITKILL

// syscallStopSig is the stop signal of a syscall stop with TRACESYSGOOD.
const syscallStopSig = unix.SIGTRAP | 0x80

// tracee is the per-thread state of the ptrace engine.
type tracee struct {
	// fresh: auto-attached and its initial SIGSTOP not yet seen; that
	// SIGSTOP comes from the attach, not from anyone's kill.
	fresh bool
	// inOpen: a traced open was let through with PTRACE_SYSCALL and the
	// thread will stop again at its exit, where the fd is resolved.
	inOpen bool
	// exec is the file the thread's last execve named, resolved at entry
	// while its memory and cwd still exist; consumed at PTRACE_EVENT_EXEC.
	exec string
}

// ptraceEngine runs on one locked OS thread: ptrace requests are only
// accepted from the thread that is the tracer.
type ptraceEngine struct {
	s       *session
	root    int
	threads map[int]*tracee
	info    syscallInfo
	// noInfo is set when PTRACE_GET_SYSCALL_INFO (Linux 5.3) is missing
	// and registers are read instead.
	noInfo bool
	// fsAs is set when /proc/PID/fd of the workload needs our fsuid to
	// match its uid (workload runs as another user, no CAP_SYS_PTRACE).
	fsAs    *User
	linkBuf []byte
	mem     memReader
	interps map[string]string // PT_INTERP cache by executable path
	lostFDs int
	// inodes are the recorded files that have a single name: opening
	// one again needs no look at the result.
	inodes map[fileID]struct{}
	// sink records, in order, what this thread and the notifier saw;
	// recorded are the paths this thread handed it.
	sink     *recordSink
	recorded map[string]struct{}
	// rootMoved: a process called chroot, pivot_root, unshare or setns,
	// so a name may mean another file to it than to us; the notifier
	// then resolves names through /proc while their call is held.
	rootMoved atomic.Bool
}

// fileID identifies a file by device and inode.
type fileID struct{ dev, ino uint64 }

type ptraceOutcome struct {
	res *Result
	err error
}

// runPtrace starts the workload under the shim and traces it. The whole
// trace runs on a dedicated, locked OS thread that ends with it.
func (s *session) runPtrace(ctx context.Context) (*Result, error) {
	ch := make(chan ptraceOutcome, 1)
	go func() {
		// Never unlocked: the thread was the tracer, so let it exit
		// with the goroutine rather than serve other goroutines.
		runtime.LockOSThread()
		res, err := s.tracePtrace(ctx)
		ch <- ptraceOutcome{res, err}
	}()
	o := <-ch
	return o.res, o.err
}

func (s *session) tracePtrace(ctx context.Context) (*Result, error) {
	status, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("run workload: %w", err)
	}
	defer unix.Close(status[0])

	attr := s.sysProcAttr()
	attr.Ptrace = true
	mode := shimNotify
	if s.cfg.ptraceStops {
		mode = shimStops
	}
	argv := append([]string{os.Args[0], shimMarker, mode, s.exe}, s.cfg.Argv...)
	s.start = time.Now()
	s.rec = newRecorder(s.start)
	pid, err := syscall.ForkExec("/proc/self/exe", argv, &syscall.ProcAttr{
		Dir:   s.dir,
		Env:   s.env,
		Files: []uintptr{s.files[0].Fd(), s.files[1].Fd(), s.files[2].Fd(), uintptr(status[1])},
		Sys:   attr,
	})
	unix.Close(status[1])
	s.closeIO()
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			err = fmt.Errorf("%w: %w", ErrNotPermitted, err)
		}
		return nil, fmt.Errorf("run workload: start ptrace shim: %w", err)
	}
	s.known.add(pid)

	e := &ptraceEngine{
		s:        s,
		root:     pid,
		threads:  map[int]*tracee{pid: {}},
		linkBuf:  make([]byte, unix.PathMax+64),
		interps:  make(map[string]string),
		inodes:   make(map[fileID]struct{}),
		sink:     newRecordSink(s.rec),
		recorded: make(map[string]struct{}),
	}
	if u := s.cfg.User; u != nil && (int(u.UID) != os.Geteuid() || int(u.GID) != os.Getegid()) {
		e.fsAs = u
	}
	e.mem = memReader{buf: make([]byte, unix.PathMax), stopped: true, as: e.asWorkload}
	// The shim hands over the notification listener, if it got one,
	// before it executes the workload, then reports how that went.
	shimStatus := make(chan string, 1)
	notif := make(chan *notifier, 1)
	go func() {
		listener := make(chan int, 1)
		go func() {
			shimStatus <- readShimStatus(status[0], listener)
		}()
		if fd, ok := <-listener; ok {
			notif <- e.startNotifier(fd)
		}
		close(notif)
	}()
	// Whatever happens below, every access handed over is recorded and
	// the notifier is gone before the result is read.
	finish := func() (listener bool) {
		if n := <-notif; n != nil {
			n.stop()
			e.lostFDs += n.lost
			listener = true
		}
		e.sink.close()
		return listener
	}

	// The shim stops with SIGTRAP right after its own exec (TRACEME);
	// options must be set before it runs, or its seccomp filter's
	// RET_TRACE would fail the calls with ENOSYS for want of a tracer.
	var ws unix.WaitStatus
	for {
		_, err = unix.Wait4(pid, &ws, unix.WALL, nil)
		if err != unix.EINTR {
			break
		}
	}
	// abandon gives up on a shim that is still our unreaped child.
	abandon := func(err error) (*Result, error) {
		unix.Kill(pid, unix.SIGKILL)
		e.loop() // reap it
		<-shimStatus
		finish()
		return nil, err
	}
	if err != nil {
		return abandon(fmt.Errorf("run workload: wait for shim: %w", err))
	}
	if !ws.Stopped() {
		// Reaped already: nothing to kill.
		<-shimStatus
		finish()
		return nil, fmt.Errorf("run workload: shim ended before tracing started (%v)", exitStatus(ws))
	}
	if err := unix.PtraceSetOptions(pid, ptraceOptions); err != nil {
		return abandon(fmt.Errorf("run workload: set ptrace options: %w", err))
	}
	defer quietStops()()
	go s.watch(ctx)
	e.resume(pid, e.threads[pid], 0)

	res := &Result{}
	res.Exit, err = e.loop()
	res.Duration = time.Since(s.start)
	if err != nil {
		// Not every process may be gone: kill them, or the notifier
		// would wait for them.
		s.stop(StopExited)
		e.loop()
	}
	msg := <-shimStatus
	res.SeccompListener = finish()
	if err != nil {
		return nil, err
	}
	if msg != "" {
		return nil, fmt.Errorf("run workload: %s: %w", s.cfg.Argv[0], errors.New(msg))
	}
	if e.lostFDs > 0 {
		s.warn("%d opened files could not be resolved through /proc", e.lostFDs)
	}
	res.Files = s.rec.files
	res.Warnings = s.warns
	return res, nil
}

// quietStops sets SA_NOCLDSTOP on our SIGCHLD action until the returned
// function runs. Every ptrace stop would otherwise also send us a SIGCHLD
// and run the Go runtime's signal handler on some thread, for nothing:
// wait4 is woken either way. The handler and its other flags are left as
// the runtime set them.
func quietStops() (restore func()) {
	// struct sigaction as the kernel takes it on amd64 and arm64:
	// handler, flags, restorer, mask. Only flags is touched.
	var act [4]uint64
	get := func() bool {
		_, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(unix.SIGCHLD), 0, uintptr(unsafe.Pointer(&act)), 8, 0, 0)
		return e == 0
	}
	set := func() {
		unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(unix.SIGCHLD), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	}
	if !get() || act[1]&saNoCldStop != 0 {
		return func() {}
	}
	act[1] |= saNoCldStop
	set()
	return func() {
		if get() {
			act[1] &^= saNoCldStop
			set()
		}
	}
}

// saNoCldStop is SA_NOCLDSTOP, the same on every Linux architecture.
const saNoCldStop = 1

// loop handles stops until no tracee and no child is left. It returns the
// exit status of the root process.
func (e *ptraceEngine) loop() (ExitStatus, error) {
	var rootExit ExitStatus
	for {
		var ws unix.WaitStatus
		tid, err := unix.Wait4(-1, &ws, unix.WALL, nil)
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.ECHILD:
			return rootExit, nil
		default:
			return rootExit, fmt.Errorf("trace workload: wait: %w", err)
		}
		if ws.Exited() || ws.Signaled() {
			delete(e.threads, tid)
			e.s.known.remove(tid)
			if tid == e.root {
				rootExit = exitStatus(ws)
				e.s.stop(StopExited)
			}
			continue
		}
		if !ws.Stopped() {
			continue
		}
		t := e.threads[tid]
		if t == nil {
			// A new tracee whose first stop beat its parent's
			// fork/clone event.
			t = &tracee{fresh: true}
			e.threads[tid] = t
			e.s.known.add(tid)
		}
		if e.s.stopped.Load() {
			// Tracing is over: make sure this one dies too.
			unix.Kill(tid, unix.SIGKILL)
			t.inOpen = false
			e.resume(tid, t, 0)
			continue
		}
		sig := ws.StopSignal()
		fresh := t.fresh
		t.fresh = false
		switch {
		case sig == syscallStopSig:
			e.syscallStop(tid, t)
		case sig == unix.SIGTRAP && ws.TrapCause() > 0:
			e.eventStop(tid, t, ws.TrapCause())
		case fresh && sig == unix.SIGSTOP:
			e.resume(tid, t, 0)
		default:
			e.signalStop(tid, t, sig)
		}
	}
}

// resume restarts a stopped tracee, to the exit of its current call when
// an open is being followed, otherwise until the filter stops it again.
func (e *ptraceEngine) resume(tid int, t *tracee, sig syscall.Signal) {
	req := unix.PTRACE_CONT
	if t != nil && t.inOpen {
		req = unix.PTRACE_SYSCALL
	}
	// ESRCH: the tracee was killed meanwhile; its exit is reported next.
	unix.RawSyscall6(unix.SYS_PTRACE, uintptr(req), uintptr(tid), 0, uintptr(sig), 0, 0)
}

// signalStop passes a signal on. A stop signal that is a group-stop (no
// siginfo) is not a signal to deliver: resume without one.
func (e *ptraceEngine) signalStop(tid int, t *tracee, sig syscall.Signal) {
	switch sig {
	case unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
		var si [128]byte
		_, _, errno := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_GETSIGINFO, uintptr(tid), 0, uintptr(unsafe.Pointer(&si[0])), 0, 0)
		if errno == unix.EINVAL {
			e.resume(tid, t, 0)
			return
		}
	}
	e.resume(tid, t, sig)
}

func (e *ptraceEngine) eventStop(tid int, t *tracee, event int) {
	switch event {
	case unix.PTRACE_EVENT_FORK, unix.PTRACE_EVENT_VFORK, unix.PTRACE_EVENT_CLONE:
		if msg, err := unix.PtraceGetEventMsg(tid); err == nil {
			child := int(msg)
			if e.threads[child] == nil {
				e.threads[child] = &tracee{fresh: true}
				e.s.known.add(child)
			}
		}
	case unix.PTRACE_EVENT_EXEC:
		// A non-leader thread that execs takes over the leader's tid;
		// the event reports the tid it had before.
		former := tid
		if msg, err := unix.PtraceGetEventMsg(tid); err == nil {
			former = int(msg)
		}
		if ft := e.threads[former]; ft != nil && former != tid {
			delete(e.threads, former)
			e.s.known.remove(former)
			e.threads[tid] = ft
			t = ft
		}
		t.inOpen = false
		e.recordExec(tid, t.exec)
		t.exec = ""
	case unix.PTRACE_EVENT_SECCOMP:
		e.seccompStop(tid, t)
		return
	case unix.PTRACE_EVENT_EXIT:
		t.inOpen = false
	}
	e.resume(tid, t, 0)
}

// seccompStop handles a call the filter sent to us, at its entry.
func (e *ptraceEngine) seccompStop(tid int, t *tracee) {
	si, ok := e.syscall(tid, unix.PTRACE_SYSCALL_INFO_SECCOMP)
	if !ok {
		e.resume(tid, t, 0)
		return
	}
	switch si.retData {
	case traceOpen:
		t.inOpen = e.openNeedsExit(tid, si)
	case traceOpenat2:
		// struct open_how starts with the u64 flags.
		var how [8]byte
		if e.mem.read(tid, si.args[2], how[:]) != nil {
			t.inOpen = true // can't tell: let the exit decide
		} else if flags := binary.LittleEndian.Uint64(how[:]); flags&(unix.O_PATH|unix.O_DIRECTORY) == 0 {
			t.inOpen = true
		}
	case traceExec:
		t.exec = e.execTarget(tid, si)
	case traceRoot:
		e.rootMoved.Store(true)
	}
	e.resume(tid, t, 0)
}

// openNeedsExit decides, at the entry of open, openat or creat, whether
// the call's result is needed. The stop at its exit costs as much as the
// entry stop, and most opens are answered here with one fstatat through
// the tracee's root, cwd or dirfd: a name that does not exist (it can only
// come to exist by the workload's own doing, so it is no image content),
// a directory, device or fifo, or a file already recorded under its only
// name. Anything else (a new regular file, a creating open, a lookup we
// cannot repeat exactly) is followed to its exit.
func (e *ptraceEngine) openNeedsExit(tid int, si *syscallInfo) bool {
	dirfd, addr, flags, ok := openCall(int(si.nr), si.args)
	if !ok || int(si.nr) == nativeSysTable.creat {
		return true // creat always creates or truncates
	}
	name, err := e.mem.readString(tid, addr)
	if err != nil || name == "" || magicPath(name) {
		return true
	}
	var st unix.Stat_t
	statFlags := 0
	if flags&unix.O_NOFOLLOW != 0 {
		statFlags = unix.AT_SYMLINK_NOFOLLOW
	}
	full := procRelPath(tid, dirfd, name)
	err = e.asWorkload(func() error { return unix.Fstatat(unix.AT_FDCWD, full, &st, statFlags) })
	switch {
	case err == unix.ENOENT || err == unix.ENOTDIR:
		return flags&unix.O_CREAT != 0
	case err != nil:
		return true
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return false
	case st.Nlink == 1:
		_, known := e.inodes[fileID{uint64(st.Dev), st.Ino}]
		return !known
	}
	return true
}

// openCall decodes the arguments of open, openat and creat: the directory
// a relative name starts from, the name's address and the flags. ok is
// false for any other call.
func openCall(nr int, args [6]uint64) (dirfd int, addr, flags uint64, ok bool) {
	t := nativeSysTable
	switch nr {
	case t.open:
		return unix.AT_FDCWD, args[0], args[1], true
	case t.creat:
		return unix.AT_FDCWD, args[0], unix.O_CREAT | unix.O_WRONLY | unix.O_TRUNC, true
	case t.openat:
		return int(int32(args[0])), args[1], args[2], true
	}
	return 0, 0, 0, false
}

// magicPath reports names whose meaning depends on who resolves them
// (/proc/self, /dev/fd, /dev/stdin ...): only the tracee's own open tells.
func magicPath(name string) bool {
	return strings.HasPrefix(name, "/proc") || strings.HasPrefix(name, "/dev")
}

// procRelPath names, through /proc, what name means to the tracee: an
// absolute name below its root, a relative one below its cwd or dirfd.
func procRelPath(tid, dirfd int, name string) string {
	base := "/proc/" + strconv.Itoa(tid)
	name = ownMagic(tid, name)
	switch {
	case name == "":
		return base + "/fd/" + strconv.Itoa(dirfd)
	case name[0] == '/':
		return base + "/root" + name
	case dirfd == unix.AT_FDCWD:
		return base + "/cwd/" + name
	}
	return base + "/fd/" + strconv.Itoa(dirfd) + "/" + name
}

// ownMagic rewrites names that mean "the calling process" (/proc/self,
// /dev/fd/N, /dev/stdin ...) to the tracee's /proc entries: resolved by
// the tracer as they are, they would name the tracer's own files.
func ownMagic(tid int, name string) string {
	if !strings.HasPrefix(name, "/proc/") && !strings.HasPrefix(name, "/dev/") {
		return name
	}
	id := strconv.Itoa(tid)
	for _, m := range []struct{ prefix, to string }{
		{"/proc/self", "/proc/" + id},
		{"/proc/thread-self", "/proc/" + id + "/task/" + id},
		{"/dev/fd", "/proc/" + id + "/fd"},
		{"/dev/stdin", "/proc/" + id + "/fd/0"},
		{"/dev/stdout", "/proc/" + id + "/fd/1"},
		{"/dev/stderr", "/proc/" + id + "/fd/2"},
	} {
		if rest, ok := strings.CutPrefix(name, m.prefix); ok && (rest == "" || rest[0] == '/') {
			return m.to + rest
		}
	}
	return name
}

// syscallStop handles the exit of an open let through at its seccomp stop.
func (e *ptraceEngine) syscallStop(tid int, t *tracee) {
	if !t.inOpen {
		e.resume(tid, t, 0)
		return
	}
	si, ok := e.syscall(tid, unix.PTRACE_SYSCALL_INFO_EXIT)
	if !ok {
		// Before Linux 4.8 the seccomp stop came before the
		// syscall-entry stop: this is that entry; the exit is next.
		e.resume(tid, t, 0)
		return
	}
	t.inOpen = false
	if fd := int64(si.nr); fd >= 0 {
		e.recordFD(tid, int(fd))
	}
	e.resume(tid, t, 0)
}

// recordFD records the file behind a tracee's fd: /proc resolves it the
// way the kernel did (dirfd, cwd, symlinks, chroot) and fstat through the
// same link tells a regular file.
func (e *ptraceEngine) recordFD(tid, fd int) {
	b := e.linkBuf[:0]
	b = append(b, "/proc/"...)
	b = strconv.AppendInt(b, int64(tid), 10)
	b = append(b, "/fd/"...)
	b = strconv.AppendInt(b, int64(fd), 10)
	link := string(b)
	target, err := e.readlink(link)
	if err != nil {
		e.lostFDs++
		return
	}
	if e.has(target) || !recordable(target) {
		return
	}
	var st unix.Stat_t
	if err := e.asWorkload(func() error { return unix.Stat(link, &st) }); err != nil {
		e.lostFDs++
		return
	}
	e.addStat(target, &st)
}

// addStat records a file with its stat result if it is regular.
func (e *ptraceEngine) addStat(p string, st *unix.Stat_t) {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	e.recorded[p] = struct{}{}
	e.sink.push(access{at: time.Since(e.s.start), path: p, size: st.Size})
	if st.Nlink == 1 {
		e.inodes[fileID{uint64(st.Dev), st.Ino}] = struct{}{}
	}
}

// has reports whether this thread recorded p already.
func (e *ptraceEngine) has(p string) bool {
	_, ok := e.recorded[p]
	return ok
}

func (e *ptraceEngine) readlink(p string) (string, error) {
	var n int
	err := e.asWorkload(func() (err error) {
		n, err = unix.Readlink(p, e.linkBuf)
		return err
	})
	if err != nil {
		return "", err
	}
	return string(e.linkBuf[:n]), nil
}

// asWorkload runs a /proc access, retrying it with our fsuid and fsgid set
// to the workload's when the kernel refused it: /proc/PID/fd checks the
// caller's fs credentials against the process, and a tracer without
// CAP_SYS_PTRACE passes only as the same user.
func (e *ptraceEngine) asWorkload(f func() error) error {
	err := f()
	if e.fsAs == nil || (err != unix.EACCES && err != unix.EPERM) {
		return err
	}
	// setfsuid and setfsgid act on this (locked) thread only.
	oldGID, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, uintptr(e.fsAs.GID), 0, 0)
	oldUID, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, uintptr(e.fsAs.UID), 0, 0)
	err = f()
	unix.RawSyscall(unix.SYS_SETFSUID, oldUID, 0, 0)
	unix.RawSyscall(unix.SYS_SETFSGID, oldGID, 0, 0)
	return err
}

// execTarget resolves, at the entry of an execve or execveat, the file it
// names, relative to the tracee's cwd or dirfd like the kernel will.
func (e *ptraceEngine) execTarget(tid int, si *syscallInfo) string {
	dirfd, addr, flags := unix.AT_FDCWD, si.args[0], uint64(0)
	if si.nr == unix.SYS_EXECVEAT {
		dirfd, addr, flags = int(int32(si.args[0])), si.args[1], si.args[4]
	}
	name, err := e.mem.readString(tid, addr)
	if err != nil {
		return ""
	}
	if name == "" && flags&unix.AT_EMPTY_PATH == 0 {
		return ""
	}
	return e.resolveIn(tid, dirfd, name)
}

// resolveIn returns the real path, in our root, of name as the tracee tid
// would resolve it: absolute names from its root, others from its cwd or
// from dirfd; "" when it does not exist.
func (e *ptraceEngine) resolveIn(tid, dirfd int, name string) string {
	p, _, _ := e.resolve(tid, dirfd, name, false)
	return p
}

// resolveRegular is resolveIn for a regular file, with its size; ok is
// false for anything else. Safe on any locked thread.
func (e *ptraceEngine) resolveRegular(tid, dirfd int, name string, nofollow bool) (p string, size int64, ok bool) {
	p, st, err := e.resolve(tid, dirfd, name, nofollow)
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return "", 0, false
	}
	return p, st.Size, true
}

func (e *ptraceEngine) resolve(tid, dirfd int, name string, nofollow bool) (p string, st *unix.Stat_t, err error) {
	full := procRelPath(tid, dirfd, name)
	err = e.asWorkload(func() (err error) {
		p, st, err = realStat(full, nofollow, make([]byte, unix.PathMax+64))
		return err
	})
	return p, st, err
}

// realStat returns the real path of the file name reaches (the link itself
// with nofollow), every symlink resolved the way the kernel does, and its
// stat. buf holds the path while it is read.
func realStat(name string, nofollow bool, buf []byte) (string, *unix.Stat_t, error) {
	flags := unix.O_PATH | unix.O_CLOEXEC
	if nofollow {
		flags |= unix.O_NOFOLLOW
	}
	fd, err := unix.Open(name, flags, 0)
	if err != nil {
		return "", nil, err
	}
	defer unix.Close(fd)
	st := new(unix.Stat_t)
	if err := unix.Fstat(fd, st); err != nil {
		return "", nil, err
	}
	n, err := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), buf)
	if err != nil {
		return "", nil, err
	}
	return string(buf[:n]), st, nil
}

// recordExec records what a successful exec made the kernel open: the
// file named, the interpreters of "#!" scripts in turn, and the dynamic
// loader (PT_INTERP) of the final ELF binary, which the process never
// opens itself.
func (e *ptraceEngine) recordExec(pid int, named string) {
	exe, _ := unix.Readlink("/proc/"+strconv.Itoa(pid)+"/exe", e.linkBuf)
	exePath := ""
	if exe > 0 {
		exePath = string(e.linkBuf[:exe])
	}
	cur := named
	if cur == "" {
		cur = exePath
	}
	for depth := 0; cur != "" && depth < maxInterpDepth; depth++ {
		e.addPath(cur)
		if cur == exePath {
			break
		}
		interp, ok := readShebang(cur)
		if !ok {
			break // binfmt_misc, or a file that changed since
		}
		cur = e.resolveIn(pid, unix.AT_FDCWD, interp)
	}
	if exePath == "" {
		return
	}
	e.addPath(exePath)
	loader, ok := e.interps[exePath]
	if !ok {
		loader = readELFInterp(exePath)
		e.interps[exePath] = loader
	}
	if loader != "" {
		if p := e.resolveIn(pid, unix.AT_FDCWD, loader); p != "" {
			e.addPath(p)
		}
	}
}

// addPath records a resolved path of our root if it is a regular file.
func (e *ptraceEngine) addPath(p string) {
	if e.has(p) || !recordable(p) {
		return
	}
	var st unix.Stat_t
	if unix.Stat(p, &st) == nil {
		e.addStat(p, &st)
	}
}

// memReader reads the memory of workload threads for one locked thread.
type memReader struct {
	buf []byte
	// stopped: the threads read are in a ptrace stop, so PEEKDATA
	// works; otherwise /proc/PID/mem is the fallback.
	stopped bool
	as      func(func() error) error
}

// readString reads a NUL-terminated string of at most PATH_MAX bytes from
// the tracee. Reads stop at page boundaries, so an unmapped page after the
// string does not fail them, and the first read is short since most paths
// are.
func (m *memReader) readString(tid int, addr uint64) (string, error) {
	const page = 4096
	buf := m.buf
	n := 0
	for want := 256; n < len(buf); want = page {
		chunk := min(want, page-int((addr+uint64(n))%page), len(buf)-n)
		if err := m.read(tid, addr+uint64(n), buf[n:n+chunk]); err != nil {
			return "", err
		}
		if i := indexNUL(buf[n : n+chunk]); i >= 0 {
			return string(buf[:n+i]), nil
		}
		n += chunk
	}
	return "", unix.ENAMETOOLONG
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// read reads tracee memory with process_vm_readv, falling back where that
// is refused (it checks real credentials, which differ from the
// workload's when it runs as another user) to PTRACE_PEEKDATA or
// /proc/PID/mem, which check others.
func (m *memReader) read(tid int, addr uint64, b []byte) error {
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(len(b))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}
	n, err := unix.ProcessVMReadv(tid, local, remote, 0)
	if err == nil && n == len(b) {
		return nil
	}
	if m.stopped {
		n, err = unix.PtracePeekData(tid, uintptr(addr), b)
	} else {
		err = m.as(func() error {
			fd, err := unix.Open("/proc/"+strconv.Itoa(tid)+"/mem", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			n, err = unix.Pread(fd, b, int64(addr))
			return err
		})
	}
	if err != nil {
		return err
	}
	if n != len(b) {
		return unix.EFAULT
	}
	return nil
}

// syscallInfo mirrors struct ptrace_syscall_info. For an exit, nr holds
// the return value (rval) and args[0] the is_error byte.
type syscallInfo struct {
	op      uint8
	_       [3]uint8
	arch    uint32
	ip      uint64
	sp      uint64
	nr      uint64
	args    [6]uint64
	retData uint32
	_       uint32
}

// syscall returns the current call of a tracee stopped in it. want is the
// kind of stop expected; ok is false when the stop is of another kind.
func (e *ptraceEngine) syscall(tid int, want uint8) (*syscallInfo, bool) {
	si := &e.info
	if !e.noInfo {
		*si = syscallInfo{}
		_, _, errno := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_GET_SYSCALL_INFO, uintptr(tid),
			unsafe.Sizeof(*si), uintptr(unsafe.Pointer(si)), 0, 0)
		switch errno {
		case 0:
			return si, si.op == want
		case unix.EIO, unix.EINVAL:
			e.noInfo = true
		default:
			return si, false
		}
	}
	if err := getRegs(tid, si, want == unix.PTRACE_SYSCALL_INFO_EXIT); err != nil {
		return si, false
	}
	if want == unix.PTRACE_SYSCALL_INFO_SECCOMP {
		msg, err := unix.PtraceGetEventMsg(tid)
		if err != nil {
			return si, false
		}
		si.retData = uint32(msg)
	}
	si.op = want // registers cannot tell; assume Linux ≥ 4.8 ordering
	return si, true
}
