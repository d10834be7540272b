//go:build linux && (amd64 || arm64)

package tracer

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// shimMarker is argv[1] of the tracer's own binary re-executed as the shim
// that installs the seccomp filter and then executes the workload:
// [argv0, shimMarker, mode, executable, workload argv...], mode being
// shimNotify or shimStops.
const shimMarker = "__stargazer-tracer-shim__"

// Shim modes: shimNotify sends opens to a seccomp user-notification
// listener when the kernel grants one and stops at them otherwise;
// shimStops always stops at them.
const (
	shimNotify = "notify"
	shimStops  = "stops"
)

// shimStatusFd is the shim's close-on-exec status socket (SOCK_SEQPACKET):
// a message carrying a descriptor hands over the notification listener,
// other messages are the reason the workload was not executed, and EOF
// with no such reason means it was.
const shimStatusFd = 3

// SECCOMP_RET_TRACE data values, read back at the seccomp stop, telling
// the tracer what kind of call stopped without decoding the number.
const (
	traceOpen    = 1 // open, openat, creat: flags already checked
	traceOpenat2 = 2 // openat2: flags live in tracee memory
	traceExec    = 3 // execve, execveat
	traceRoot    = 4 // chroot, pivot_root, unshare, setns: names may change meaning
)

// MaybeRunShim must be the first call in the main function of a program
// that uses Run or Main. When the program was started as the ptrace
// mechanism's shim it never returns: it installs the seccomp filter and
// executes the workload (or exits 127 when it cannot). Otherwise it
// returns at once.
func MaybeRunShim() {
	if len(os.Args) < 5 || os.Args[1] != shimMarker {
		return
	}
	// The filter and no_new_privs are per thread; the exec must happen
	// on the thread that has them.
	runtime.LockOSThread()
	syscall.CloseOnExec(shimStatusFd)
	err := runShim(os.Args[2] == shimNotify, os.Args[3], os.Args[4:])
	unix.Write(shimStatusFd, []byte(err.Error()))
	os.Exit(127)
}

func runShim(notify bool, exe string, argv []string) error {
	// A filter normally requires no_new_privs, which also disables setuid
	// and file capabilities for the workload. A privileged tracer may
	// install it without, keeping the workload's behaviour intact; only
	// fall back to no_new_privs when the kernel insists.
	install := func(prog []unix.SockFilter, flags uintptr) (int, error) {
		listener, err := setSeccompFilter(prog, flags)
		if err == unix.EACCES {
			if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
				return -1, fmt.Errorf("set no_new_privs: %w", err)
			}
			listener, err = setSeccompFilter(prog, flags)
		}
		return listener, err
	}
	listener := -1
	if notify {
		// A listener may be refused (a kernel before 5.0, or a
		// container runtime's filter with a listener of its own): the
		// opens then stop for ptrace like everything else.
		prog := seccompProgram(true)
		var err error
		listener, err = install(prog, unix.SECCOMP_FILTER_FLAG_NEW_LISTENER|unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
		if err == unix.EINVAL {
			// WAIT_KILLABLE_RECV is Linux 5.19.
			listener, err = install(prog, unix.SECCOMP_FILTER_FLAG_NEW_LISTENER)
		}
		if err != nil {
			listener = -1
		}
	}
	if listener < 0 {
		if _, err := install(seccompProgram(false), 0); err != nil {
			return fmt.Errorf("install seccomp filter: %w", err)
		}
	} else {
		// The listener is close-on-exec; the tracer gets its own copy.
		err := unix.Sendmsg(shimStatusFd, []byte{0}, unix.UnixRights(listener), nil, 0)
		unix.Close(listener)
		if err != nil {
			return fmt.Errorf("hand the seccomp listener to the tracer: %w", err)
		}
	}
	if err := unix.Exec(exe, argv, os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", exe, err)
	}
	return nil
}

// setSeccompFilter installs prog on the calling thread and returns the
// listener descriptor when flags ask for one.
func setSeccompFilter(prog []unix.SockFilter, flags uintptr) (int, error) {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog)))
	if e == unix.ENOSYS && flags == 0 {
		// Kernels before 3.17 only have the prctl interface.
		_, _, e = unix.Syscall(unix.SYS_PRCTL, unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)))
	}
	if e != 0 {
		return -1, e
	}
	if flags&unix.SECCOMP_FILTER_FLAG_NEW_LISTENER == 0 {
		return -1, nil
	}
	return int(r), nil
}

// sysTable holds one architecture's numbers for the calls that open files.
// Both tables are always in the filter, so each is checked against the
// audit architecture of the call whatever the tracer was built for.
type sysTable struct {
	arch             uint32
	x32              bool // numbers with the x32 bit belong to another ABI
	open, creat      int  // -1: the architecture lacks the call
	openat, openat2  int
	execve, execveat int
	// calls after which a name may mean another file to the workload
	// than to the tracer
	chroot, pivotRoot, unshare, setns int
	oPath, oDirectory, x32bit         uint32
}

// Syscall numbers from arch/x86/entry/syscalls/syscall_64.tbl and the
// generic table arm64 uses; tables_test.go checks the native one against
// golang.org/x/sys/unix.
var sysTables = []sysTable{
	{
		arch: unix.AUDIT_ARCH_X86_64, x32: true, x32bit: 0x40000000,
		open: 2, creat: 85, openat: 257, openat2: 437, execve: 59, execveat: 322,
		chroot: 161, pivotRoot: 155, unshare: 272, setns: 308,
		oPath: 0o10000000, oDirectory: 0o200000,
	},
	{
		arch: unix.AUDIT_ARCH_AARCH64,
		open: -1, creat: -1, openat: 56, openat2: 437, execve: 221, execveat: 281,
		chroot: 51, pivotRoot: 41, unshare: 97, setns: 268,
		oPath: 0o10000000, oDirectory: 0o40000,
	},
}

// nativeSysTable is the table of the architecture the tracer runs on, the
// only one whose calls the filter sends to it.
var nativeSysTable = func() sysTable {
	arch := map[string]uint32{"amd64": unix.AUDIT_ARCH_X86_64, "arm64": unix.AUDIT_ARCH_AARCH64}[runtime.GOARCH]
	for _, t := range sysTables {
		if t.arch == arch {
			return t
		}
	}
	panic("tracer: no syscall table for " + runtime.GOARCH)
}()

// Offsets into struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16 // args[i] at 16+8*i; both architectures are little-endian
)

// bpfAsm assembles a classic BPF program with forward jumps to labels.
type bpfAsm struct {
	prog   []unix.SockFilter
	labels map[string]int
	fixups []bpfFixup
}

type bpfFixup struct {
	at     int
	jt, jf string
}

func (a *bpfAsm) label(name string) { a.labels[name] = len(a.prog) }

func (a *bpfAsm) stmt(code uint16, k uint32) {
	a.prog = append(a.prog, unix.SockFilter{Code: code, K: k})
}

// jump emits a conditional jump; "" as a label means the next instruction.
func (a *bpfAsm) jump(code uint16, k uint32, jt, jf string) {
	a.fixups = append(a.fixups, bpfFixup{at: len(a.prog), jt: jt, jf: jf})
	a.prog = append(a.prog, unix.SockFilter{Code: code, K: k})
}

func (a *bpfAsm) assemble() []unix.SockFilter {
	off := func(at int, l string) uint8 {
		if l == "" {
			return 0
		}
		target, ok := a.labels[l]
		if !ok || target <= at || target-at-1 > 255 {
			panic("seccomp: bad jump to " + l)
		}
		return uint8(target - at - 1)
	}
	for _, f := range a.fixups {
		a.prog[f.at].Jt = off(f.at, f.jt)
		a.prog[f.at].Jf = off(f.at, f.jf)
	}
	return a.prog
}

// seccompProgram builds the filter: SECCOMP_RET_TRACE for the calls that
// can open a regular file, SECCOMP_RET_ALLOW for everything else, so no
// other call ever stops the workload. open and openat with O_PATH (not a
// read) or O_DIRECTORY (never a regular file) are allowed in the filter
// already; openat2's flags are in memory the filter cannot see.
//
// With notify, the opens go to the user-notification listener instead: a
// round trip to a waiting thread costs a fraction of a ptrace stop. Execs
// still stop, and so do the calls that can change what a name means to
// the workload (chroot and namespaces), which the listener must hear of.
func seccompProgram(notify bool) []unix.SockFilter {
	const (
		ldW  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge  = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		jset = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
	)
	a := &bpfAsm{labels: make(map[string]int)}
	for i, t := range sysTables {
		next := fmt.Sprintf("arch%d", i+1)
		p := fmt.Sprintf("t%d_", i)
		a.stmt(ldW, offArch)
		a.jump(jeq, t.arch, "", next)
		a.stmt(ldW, offNr)
		if t.x32 {
			a.jump(jge, t.x32bit, "allow", "")
		}
		if t.open >= 0 {
			a.jump(jeq, uint32(t.open), p+"flags1", "")
		}
		a.jump(jeq, uint32(t.openat), p+"flags2", "")
		if t.creat >= 0 {
			a.jump(jeq, uint32(t.creat), "open", "")
		}
		a.jump(jeq, uint32(t.openat2), "openat2", "")
		a.jump(jeq, uint32(t.execve), "exec", "")
		a.jump(jeq, uint32(t.execveat), "exec", "")
		if notify {
			for _, nr := range []int{t.chroot, t.pivotRoot, t.unshare, t.setns} {
				a.jump(jeq, uint32(nr), "root", "")
			}
		}
		a.stmt(ret, unix.SECCOMP_RET_ALLOW)
		if t.open >= 0 {
			a.label(p + "flags1")
			a.stmt(ldW, offArgs+8*1)
			a.jump(jset, t.oPath|t.oDirectory, "allow", "open")
		}
		a.label(p + "flags2")
		a.stmt(ldW, offArgs+8*2)
		a.jump(jset, t.oPath|t.oDirectory, "allow", "open")
		a.label(next)
	}
	// Another architecture (i386 or arm32 compat calls): not traced.
	a.label("allow")
	a.stmt(ret, unix.SECCOMP_RET_ALLOW)
	a.label("open")
	if notify {
		a.stmt(ret, unix.SECCOMP_RET_USER_NOTIF)
	} else {
		a.stmt(ret, unix.SECCOMP_RET_TRACE|traceOpen)
	}
	a.label("openat2")
	if notify {
		a.stmt(ret, unix.SECCOMP_RET_USER_NOTIF)
	} else {
		a.stmt(ret, unix.SECCOMP_RET_TRACE|traceOpenat2)
	}
	a.label("exec")
	a.stmt(ret, unix.SECCOMP_RET_TRACE|traceExec)
	if notify {
		a.label("root")
		a.stmt(ret, unix.SECCOMP_RET_TRACE|traceRoot)
	}
	return a.assemble()
}
