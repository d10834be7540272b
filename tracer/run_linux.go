//go:build linux && (amd64 || arm64)

package tracer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// defaultPath is the PATH container runtimes use when the image sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Run starts the workload cfg describes, records the regular files it opens
// (and executes) until it exits, the period elapses, the line is seen or ctx
// is canceled, then kills the workload's whole process tree, daemons
// included, and reaps it.
//
// A workload that exits non-zero or crashes still yields its Result, with a
// warning; an error means no trace was taken, except on cancellation, where
// Run returns the partial Result together with an error wrapping ctx.Err().
//
// While Run runs, the calling process is a child subreaper and reaps every
// child that ends, so it must not run alongside other child processes of
// the caller. It finds the workload's processes through /proc, which must
// show the caller's PID namespace; Run fails at once when it does not. With the ptrace mechanism the program must call MaybeRunShim
// at the top of main.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if len(cfg.Argv) == 0 || cfg.Argv[0] == "" {
		return nil, errors.New("run workload: empty command line")
	}
	mech, err := ParseMechanism(string(cfg.Mechanism))
	if err != nil {
		return nil, err
	}
	if err := checkProc(); err != nil {
		return nil, fmt.Errorf("run workload: %w", err)
	}
	env := cfg.Env
	if env == nil {
		env = os.Environ()
	}
	dir := cfg.Dir
	if dir == "" {
		if dir, err = os.Getwd(); err != nil {
			return nil, fmt.Errorf("run workload: %w", err)
		}
	}
	exe, err := lookPath(cfg.Argv[0], env, dir)
	if err != nil {
		return nil, fmt.Errorf("run workload: %w", err)
	}

	var fan *fanotifyWatch
	switch mech {
	case Auto:
		if fan, err = openFanotify(cfg.FanotifyPaths); err == nil {
			mech = Fanotify
		} else {
			mech = Ptrace
		}
	case Fanotify:
		if fan, err = openFanotify(cfg.FanotifyPaths); err != nil {
			return nil, err
		}
	}
	if fan != nil {
		defer fan.close()
	}

	// Orphans of the workload (daemons that double-forked) are reparented
	// to the nearest subreaper: make that us, so they stay in reach. Once
	// Run returns no descendant is left, so the old setting comes back.
	var wasReaper int32
	unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&wasReaper)), 0, 0, 0)
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("run workload: become child subreaper: %w", err)
	}
	if wasReaper == 0 {
		defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	}

	s := &session{
		cfg:     cfg,
		exe:     exe,
		env:     env,
		dir:     dir,
		self:    os.Getpid(),
		known:   newPidSet(),
		stopCh:  make(chan struct{}),
		doneCh:  make(chan struct{}),
		foreign: childrenOf(os.Getpid()),
	}
	if err := s.setupIO(); err != nil {
		return nil, err
	}
	defer s.closeIO()

	var res *Result
	switch mech {
	case Ptrace:
		res, err = s.runPtrace(ctx)
	default:
		res, err = s.runFanotify(ctx, fan)
	}
	// Every workload process is reaped. Stopping again is a no-op unless
	// the engine failed early, and ends the watcher in any case.
	s.stop(StopExited)
	close(s.doneCh)
	s.waitIO()
	if err != nil {
		return nil, err
	}
	res.Mechanism = mech
	res.Stop = s.stopReason()
	if !res.Exit.Exited && res.Exit.Signal == 0 {
		res.Exit.Signal = int(unix.SIGKILL) // never observed: killed with the tree
	}
	switch {
	case res.Stop != StopExited:
	case !res.Exit.Exited:
		res.Warnings = append(res.Warnings, "workload was killed by signal "+signalName(res.Exit.Signal))
	case res.Exit.Code != 0:
		res.Warnings = append(res.Warnings, fmt.Sprintf("workload exited with code %d", res.Exit.Code))
	}
	if res.Stop == StopCanceled {
		return res, fmt.Errorf("run workload: %w", context.Cause(ctx))
	}
	return res, nil
}

// session is the state Run's goroutines share.
type session struct {
	cfg  Config
	exe  string
	env  []string
	dir  string
	self int

	known   *pidSet          // workload processes (ptrace: threads)
	foreign map[int]struct{} // the caller's children from before Run
	start   time.Time        // when the workload was started
	rec     *recorder        // owned by the engine's goroutine
	warns   []string         // owned by the engine's goroutine
	files   [3]*os.File      // the workload's stdin, stdout, stderr
	closeAt []*os.File       // our copies of the workload's pipe ends
	readers []*os.File       // our ends of output pipes
	copies  sync.WaitGroup   // output copiers
	outMu   sync.Mutex       // serializes writes to Stdout and Stderr
	matched atomic.Bool      // WaitOnLine was seen
	lineCh  chan struct{}    // closed when WaitOnLine is seen
	once    sync.Once        // guards reason and stopCh
	reason  StopReason       // why tracing ended
	stopCh  chan struct{}    // closed when tracing should end
	doneCh  chan struct{}    // closed when every workload process is reaped
	stopped atomic.Bool      // mirrors stopCh for cheap polling
	killers sync.WaitGroup   // the tree killer
}

// stop ends tracing for reason (the first reason wins) and starts killing
// the workload's process tree until it is gone.
func (s *session) stop(reason StopReason) {
	s.once.Do(func() {
		s.reason = reason
		s.stopped.Store(true)
		close(s.stopCh)
		s.killers.Add(1)
		go func() {
			defer s.killers.Done()
			// Killing once is not enough: a process may be forking
			// while we scan. Repeat until the engine has reaped all.
			delay := time.Millisecond
			for {
				killTree(s.known, s.self, s.foreign)
				select {
				case <-s.doneCh:
					return
				case <-time.After(delay):
				}
				delay = min(2*delay, 50*time.Millisecond)
			}
		}()
	})
}

// stopReason returns why tracing ended, once it did.
func (s *session) stopReason() StopReason {
	<-s.stopCh // closed after reason is set
	return s.reason
}

// watch ends tracing at the period, the line or cancellation.
func (s *session) watch(ctx context.Context) {
	var period <-chan time.Time
	if s.cfg.Period > 0 {
		t := time.NewTimer(s.cfg.Period)
		defer t.Stop()
		period = t.C
	}
	select {
	case <-period:
		s.stop(StopPeriod)
	case <-s.lineCh:
		s.stop(StopLine)
	case <-ctx.Done():
		s.stop(StopCanceled)
	case <-s.stopCh:
	}
}

func (s *session) warn(format string, args ...any) {
	s.warns = append(s.warns, fmt.Sprintf(format, args...))
}

// setupIO prepares the workload's standard streams. Files are handed over
// as they are when nothing needs to see the data; otherwise a pipe feeds a
// copier that forwards the output and watches for WaitOnLine.
func (s *session) setupIO() (err error) {
	s.lineCh = make(chan struct{})
	defer func() {
		if err != nil {
			s.closeIO()
		}
	}()
	switch in := s.cfg.Stdin.(type) {
	case nil:
		f, err := os.Open(os.DevNull)
		if err != nil {
			return fmt.Errorf("run workload: stdin: %w", err)
		}
		s.files[0] = f
		s.closeAt = append(s.closeAt, f)
	case *os.File:
		s.files[0] = in
	default:
		r, w, err := os.Pipe()
		if err != nil {
			return fmt.Errorf("run workload: stdin: %w", err)
		}
		s.files[0] = r
		s.closeAt = append(s.closeAt, r)
		go func() {
			// Not waited for: the reader may block forever, and the
			// workload is gone when Run returns.
			io.Copy(w, in)
			w.Close()
		}()
	}
	for i, out := range []io.Writer{s.cfg.Stdout, s.cfg.Stderr} {
		fd := i + 1
		if f, ok := out.(*os.File); ok && s.cfg.WaitOnLine == "" {
			s.files[fd] = f
			continue
		}
		if out == nil && s.cfg.WaitOnLine == "" {
			f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err != nil {
				return fmt.Errorf("run workload: output: %w", err)
			}
			s.files[fd] = f
			s.closeAt = append(s.closeAt, f)
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			return fmt.Errorf("run workload: output pipe: %w", err)
		}
		s.files[fd] = w
		s.closeAt = append(s.closeAt, w)
		s.readers = append(s.readers, r)
		s.copies.Add(1)
		go s.copyOutput(r, out)
	}
	return nil
}

// copyOutput forwards the workload's output and looks for WaitOnLine in
// each line, partial lines included, so a prompt without a newline counts.
func (s *session) copyOutput(r io.Reader, w io.Writer) {
	defer s.copies.Done()
	want := []byte(s.cfg.WaitOnLine)
	var line []byte
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if w != nil {
				s.outMu.Lock()
				w.Write(chunk)
				s.outMu.Unlock()
			}
			if len(want) > 0 && !s.matched.Load() {
				for len(chunk) > 0 {
					nl := bytes.IndexByte(chunk, '\n')
					part := chunk
					if nl >= 0 {
						part = chunk[:nl]
					}
					line = append(line, part...)
					if bytes.Contains(line, want) {
						if s.matched.CompareAndSwap(false, true) {
							close(s.lineCh)
						}
						break
					}
					if nl < 0 {
						// Keep only the tail that may still
						// start a match.
						if len(line) > 64*1024 {
							line = append(line[:0], line[len(line)-len(want):]...)
						}
						break
					}
					line = line[:0]
					chunk = chunk[nl+1:]
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// closeIO closes our copies of the workload's stream ends, so the copiers
// see EOF once the workload's own copies are gone.
func (s *session) closeIO() {
	for _, f := range s.closeAt {
		f.Close()
	}
	s.closeAt = nil
}

// waitIO waits for the copiers to drain the output. A process outside the
// tree may still hold a pipe (passed over a socket); do not wait for it.
func (s *session) waitIO() {
	s.closeIO()
	done := make(chan struct{})
	go func() {
		s.copies.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		for _, r := range s.readers {
			r.Close()
		}
		<-done
	}
	for _, r := range s.readers {
		r.Close()
	}
	s.killers.Wait()
}

// exitStatus converts a wait status.
func exitStatus(ws unix.WaitStatus) ExitStatus {
	if ws.Exited() {
		return ExitStatus{Exited: true, Code: ws.ExitStatus()}
	}
	return ExitStatus{Signal: int(ws.Signal())}
}

func signalName(sig int) string {
	if n := unix.SignalName(syscall.Signal(sig)); n != "" {
		return n
	}
	return fmt.Sprintf("signal %d", sig)
}

// sysProcAttr returns the process attributes shared by both mechanisms.
func (s *session) sysProcAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{}
	if u := s.cfg.User; u != nil {
		a.Credential = &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups, NoSetGroups: false}
	}
	return a
}

// lookPath finds the workload's executable the way a container runtime
// does: a name with a slash is taken relative to the working directory,
// a bare name is searched along the workload's own PATH.
func lookPath(file string, env []string, dir string) (string, error) {
	if strings.Contains(file, "/") {
		p := file
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("%s: %w", file, err)
		}
		return p, nil
	}
	pathEnv, ok := "", false
	for _, kv := range env {
		if v, found := strings.CutPrefix(kv, "PATH="); found {
			pathEnv, ok = v, true // the last one wins, as in exec
		}
	}
	if !ok {
		pathEnv = defaultPath
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, file)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH %q: %w", file, pathEnv, ErrExecutableNotFound)
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return ErrExecutableNotFound
		}
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file: %w", ErrExecutableNotFound)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("not executable: %w", os.ErrPermission)
	}
	return nil
}
