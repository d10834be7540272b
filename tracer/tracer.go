// Package tracer runs a container image's workload under observation and
// records the files it reads, in first-access order, so an exporter can put
// them first in an optimized eStargz layer.
//
// It has three parts:
//
//   - the record format (Entry, Reader, Writer, Merge): JSON lines compatible
//     with containerd stargz-snapshotter's ctr-remote recorder;
//   - layer attribution (LayerIndex, Attribute): which layer of an image
//     provides each recorded file, with OCI whiteouts applied;
//   - the tracing engine (Run, Main): runs inside the container, so the
//     paths it records are paths of the image root. It uses ptrace with a
//     seccomp-bpf filter (works unprivileged, in a default Docker or
//     BuildKit container) or fanotify (needs CAP_SYS_ADMIN).
//
// Programs that call Run or Main must call MaybeRunShim first thing in main:
// the ptrace mechanism starts the workload through a re-execution of the
// program's own binary.
package tracer

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// Mechanism selects how Run observes file accesses.
type Mechanism string

// Mechanisms.
const (
	// Auto uses fanotify where fanotify can be set up (privileged), ptrace
	// otherwise. It is the default.
	Auto Mechanism = "auto"
	// Ptrace traces the workload's open and exec system calls, holding it
	// only at those (a seccomp-bpf filter decides), and follows every
	// process with ptrace. Opens go to a seccomp user-notification
	// listener where the kernel grants one (Linux 5.0; woken on the
	// workload's CPU from 6.6), and are ptrace stops otherwise. It needs
	// no privilege.
	Ptrace Mechanism = "ptrace"
	// Fanotify watches the root filesystem for opens. It needs
	// CAP_SYS_ADMIN and does not stop the workload.
	Fanotify Mechanism = "fanotify"
)

// ParseMechanism parses "auto", "ptrace" or "fanotify"; "" means Auto.
func ParseMechanism(s string) (Mechanism, error) {
	switch m := Mechanism(s); m {
	case "":
		return Auto, nil
	case Auto, Ptrace, Fanotify:
		return m, nil
	}
	return "", fmt.Errorf("unknown tracer mechanism %q (want auto, ptrace or fanotify)", s)
}

// Errors Run returns (wrapped); check them with errors.Is.
var (
	// ErrExecutableNotFound reports that the workload's argv[0] names no
	// executable file (in Dir, or along PATH for a bare name).
	ErrExecutableNotFound = errors.New("executable not found")
	// ErrNotPermitted reports that the chosen mechanism is not allowed
	// here (fanotify without CAP_SYS_ADMIN, ptrace forbidden by policy).
	ErrNotPermitted = errors.New("tracing not permitted")
	// ErrUnsupported reports a platform the tracing engine does not run on.
	ErrUnsupported = errors.New("tracing not supported on this platform")
)

// User is the identity the workload runs as.
type User struct {
	UID, GID uint32
	// Groups are the supplementary groups; nil means none.
	Groups []uint32
}

// Config describes the workload Run starts and when tracing ends.
type Config struct {
	// Argv is the workload's command line; Argv[0] is looked up along the
	// PATH in Env when it has no slash, like a container runtime does.
	Argv []string
	// Env is the workload's environment; nil means the caller's.
	Env []string
	// Dir is the workload's working directory; "" means the caller's.
	Dir string
	// User, when set, is the identity the workload runs as (the caller
	// needs CAP_SETUID and CAP_SETGID).
	User *User
	// Period ends tracing this long after the start; 0 waits for the
	// workload to exit.
	Period time.Duration
	// WaitOnLine, when not empty, ends tracing as soon as a line the
	// workload writes to stdout or stderr contains it.
	WaitOnLine string
	// Mechanism selects ptrace or fanotify; "" means Auto.
	Mechanism Mechanism
	// FanotifyPaths are paths whose filesystems the fanotify mechanism
	// watches; nil means "/". fanotify sees only the filesystems marked.
	FanotifyPaths []string
	// Stdin is the workload's standard input; nil means /dev/null.
	Stdin io.Reader
	// Stdout and Stderr receive the workload's output; nil discards it.
	Stdout, Stderr io.Writer

	// ptraceStops makes the ptrace mechanism stop the workload at every
	// open, as where the kernel grants no seccomp listener (tests).
	ptraceStops bool
	// notifyNothing makes the listener answer every call without
	// recording it: the cost of the round trip alone (benchmarks).
	notifyNothing bool
}

// StopReason says why tracing ended.
type StopReason string

// Stop reasons.
const (
	StopExited   StopReason = "exited"   // the workload's main process exited
	StopPeriod   StopReason = "period"   // Config.Period elapsed
	StopLine     StopReason = "line"     // Config.WaitOnLine was seen
	StopCanceled StopReason = "canceled" // the context was canceled
)

// File is a file the workload opened.
type File struct {
	// Path is absolute, in the tracer's root (the image root when the
	// tracer runs in the container), with symlinks resolved.
	Path string
	// FirstAccess is when the workload first opened it, since its start.
	FirstAccess time.Duration
	// Size is the file's size when it was first opened.
	Size int64
}

// ExitStatus is how the workload's main process ended.
type ExitStatus struct {
	// Exited is true when the process called exit; Code is then its code.
	Exited bool
	Code   int
	// Signal is the signal that killed it, when not Exited (a process
	// ended by Run at the period or the line reports SIGKILL).
	Signal int
}

func (s ExitStatus) String() string {
	if s.Exited {
		return fmt.Sprintf("exit code %d", s.Code)
	}
	return "killed by signal " + signalName(s.Signal)
}

// Result is what Run observed.
type Result struct {
	// Mechanism is the mechanism actually used (never Auto).
	Mechanism Mechanism
	// Files are the regular files the workload opened, in first-access
	// order, each once. Kernel interfaces (/proc, /sys, /dev) are left out.
	Files []File
	// Exit is how the workload's main process ended.
	Exit ExitStatus
	// Stop is why tracing ended.
	Stop StopReason
	// Duration is how long the workload ran.
	Duration time.Duration
	// SeccompListener is true when the ptrace mechanism got a seccomp
	// user-notification listener, so opens held the workload only for a
	// round trip to a waiting thread instead of stopping it for ptrace.
	SeccompListener bool
	// Warnings report conditions worth a look that did not stop tracing:
	// a workload that failed or crashed, events that may have been lost.
	Warnings []string
}

// Entries returns the result as record entries: relative paths in
// first-access order with their access times and sizes, unattributed.
func (r *Result) Entries() []Entry {
	out := make([]Entry, 0, len(r.Files))
	for _, f := range r.Files {
		p, err := CleanPath(f.Path)
		if err != nil {
			continue // only "/" itself, never a regular file
		}
		out = append(out, Entry{Path: p, FirstAccessMs: f.FirstAccess.Milliseconds(), Size: f.Size})
	}
	return out
}

// recorder collects files in first-access order.
type recorder struct {
	start time.Time
	seen  map[string]struct{}
	files []File
}

func newRecorder(start time.Time) *recorder {
	return &recorder{start: start, seen: make(map[string]struct{})}
}

// has reports whether p was recorded, so callers can skip a stat.
func (r *recorder) has(p string) bool {
	_, ok := r.seen[p]
	return ok
}

// add records p unless it was recorded before or is no image content.
func (r *recorder) add(p string, size int64) {
	r.addAt(p, size, time.Since(r.start))
}

// addAt is add for an access made at a known time since the start.
func (r *recorder) addAt(p string, size int64, at time.Duration) {
	if r.has(p) || !recordable(p) {
		return
	}
	r.seen[p] = struct{}{}
	r.files = append(r.files, File{Path: p, FirstAccess: at, Size: size})
}

// recordable reports whether a resolved path can be image content. The
// kernel's pseudo filesystems are mounted by the runtime over the image,
// and readlink gives "anon_inode:…", "/memfd:… (deleted)" or "… (deleted)"
// for files no path reaches any more.
func recordable(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.HasSuffix(p, " (deleted)") {
		return false
	}
	for _, pseudo := range []string{"/proc", "/sys", "/dev"} {
		if p == pseudo || strings.HasPrefix(p, pseudo+"/") {
			return false
		}
	}
	return path.Clean(p) == p
}
