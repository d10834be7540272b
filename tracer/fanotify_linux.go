//go:build linux && (amd64 || arm64)

package tracer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fanotifyWatch is a fanotify group watching whole filesystems for opens.
type fanotifyWatch struct {
	fd int
}

// openFanotify sets up the group and marks the filesystems holding paths
// ("/" when none). FAN_MARK_FILESYSTEM because a mount mark on a
// container's rootfs sees nothing (runtimes bind-mount the rootfs onto
// itself); the filesystem mark covers the container's overlay superblock.
func openFanotify(paths []string) (*fanotifyWatch, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|unix.FAN_UNLIMITED_QUEUE,
		unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			err = fmt.Errorf("%w (needs CAP_SYS_ADMIN): %w", ErrNotPermitted, err)
		}
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	if len(paths) == 0 {
		paths = []string{"/"}
	}
	for _, p := range paths {
		// FAN_OPEN_EXEC adds nothing to FAN_OPEN (an exec open reports
		// both) but documents that executions are wanted.
		if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM,
			unix.FAN_OPEN|unix.FAN_OPEN_EXEC, unix.AT_FDCWD, p); err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EPERM) {
				err = fmt.Errorf("%w: %w", ErrNotPermitted, err)
			}
			return nil, fmt.Errorf("fanotify_mark filesystem of %s: %w", p, err)
		}
	}
	return &fanotifyWatch{fd: fd}, nil
}

func (w *fanotifyWatch) close() {
	if w.fd >= 0 {
		unix.Close(w.fd)
		w.fd = -1
	}
}

// runFanotify starts the workload directly and records the opens fanotify
// reports for its processes, reaping children on this goroutine.
func (s *session) runFanotify(ctx context.Context, fan *fanotifyWatch) (*Result, error) {
	m := &fanMembers{self: s.self, verdict: make(map[procID]bool)}
	s.start = time.Now()
	s.rec = newRecorder(s.start)
	pid, err := syscall.ForkExec(s.exe, s.cfg.Argv, &syscall.ProcAttr{
		Dir:   s.dir,
		Env:   s.env,
		Files: []uintptr{s.files[0].Fd(), s.files[1].Fd(), s.files[2].Fd()},
		Sys:   s.sysProcAttr(),
	})
	s.closeIO()
	if err != nil {
		return nil, fmt.Errorf("run workload: exec %s: %w", s.exe, err)
	}
	s.known.add(pid)
	// The workload's main process is still there (only this goroutine
	// reaps it): its start time divides processes older than the workload
	// from those that may belong to it.
	if _, start, err := readStat(pid); err == nil {
		m.since = start
		m.verdict[procID{pid, start}] = true
	}

	drain := make(chan struct{})
	readDone := make(chan error, 1)
	go func() { readDone <- s.readFanotify(fan, m, drain) }()
	go s.watch(ctx)

	res := &Result{}
	for {
		var ws unix.WaitStatus
		p, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			break // ECHILD: the whole tree is gone
		}
		s.known.remove(p)
		if p == pid {
			res.Exit = exitStatus(ws)
			s.stop(StopExited)
		}
	}
	res.Duration = time.Since(s.start)
	// Every process is gone, so every event it caused is queued: drain.
	close(drain)
	if err := <-readDone; err != nil {
		return nil, err
	}
	res.Files = s.rec.files
	res.Warnings = s.warns
	return res, nil
}

// readFanotify records events until drain is closed and the queue is empty.
func (s *session) readFanotify(fan *fanotifyWatch, m *fanMembers, drain <-chan struct{}) error {
	buf := make([]byte, 64*1024)
	link := make([]byte, unix.PathMax+64)
	overflow := false
	draining := false
	for {
		if !draining {
			select {
			case <-drain:
				draining = true
			default:
			}
		}
		n, err := unix.Read(fan.fd, buf)
		if err == unix.EAGAIN || n == 0 {
			if draining {
				return nil
			}
			fds := []unix.PollFd{{Fd: int32(fan.fd), Events: unix.POLLIN}}
			unix.Poll(fds, 20)
			continue
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("trace workload: read fanotify events: %w", err)
		}
		for off := 0; off+unix.FAN_EVENT_METADATA_LEN <= n; {
			ev := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[off]))
			if ev.Vers != unix.FANOTIFY_METADATA_VERSION {
				return fmt.Errorf("trace workload: fanotify metadata version %d, want %d", ev.Vers, unix.FANOTIFY_METADATA_VERSION)
			}
			if ev.Event_len < unix.FAN_EVENT_METADATA_LEN || off+int(ev.Event_len) > n {
				break
			}
			off += int(ev.Event_len)
			if ev.Mask&unix.FAN_Q_OVERFLOW != 0 && !overflow {
				overflow = true
				s.warn("fanotify queue overflowed: some opens were not recorded")
			}
			if ev.Fd < 0 {
				continue
			}
			if m.member(int(ev.Pid)) {
				s.recordEventFd(int(ev.Fd), link)
			}
			unix.Close(int(ev.Fd))
		}
	}
}

// recordEventFd records the file of an event's fd (opened for us by the
// kernel, without generating events) if it is a regular file.
func (s *session) recordEventFd(fd int, link []byte) {
	n, err := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), link)
	if err != nil {
		return
	}
	p := string(link[:n])
	if s.rec.has(p) || !recordable(p) {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		s.rec.add(p, st.Size)
	}
}

// fanMembers decides whether an event's pid belongs to the workload: the
// filesystem mark sees every process using the filesystem. (The killer
// does not need it: every workload process descends from the tracer, a
// subreaper.) Processes are told apart by pid and start time, since a busy
// host reuses pids within one trace.
type fanMembers struct {
	self    int
	since   uint64          // start time of the workload's main process
	verdict map[procID]bool // member or not, for processes seen alive
}

type procID struct {
	pid   int
	start uint64
}

// member walks pid's ancestry up to the workload, the tracer (orphaned
// daemons are reparented to it) or a process older than the workload. A
// process that is already gone cannot be placed; it counts as the
// workload's, since a short-lived child (sh -c 'cat f') is often reaped
// before its event is read; on a host, that may add the files of an
// unrelated short-lived process, never in a container of its own.
func (m *fanMembers) member(pid int) bool {
	if pid == m.self {
		return false
	}
	var chain []procID
	decide := func(v bool) bool {
		for _, p := range chain {
			m.verdict[p] = v
		}
		return v
	}
	for p := pid; len(chain) < 4096; {
		if p == m.self {
			return decide(true)
		}
		ppid, start, err := readStat(p)
		if err != nil {
			return true // gone: not cached, its pid may come back
		}
		id := procID{p, start}
		if v, ok := m.verdict[id]; ok {
			return decide(v)
		}
		if start < m.since || p <= 1 {
			return decide(false)
		}
		chain = append(chain, id)
		p = ppid
	}
	return false
}
