//go:build linux && (amd64 || arm64)

package tracer

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fixture is a directory of test files and the workload binary, readable
// by every user so the unprivileged tests can use it too.
type fixture struct {
	dir string // symlinks resolved, as the tracer reports paths
	wl  string // the static workload binary, inside dir
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// workloadBinary builds testdata/workload once per test run.
func workloadBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "tracer-workload-")
		if buildErr != nil {
			return
		}
		removeAfterTests = append(removeAfterTests, buildDir)
		os.Chmod(buildDir, 0o755)
		cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, "workload"), "./testdata/workload")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build workload: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "workload")
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	d, err := os.MkdirTemp("", "tracer-fixture-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if d, err = filepath.EvalSymlinks(d); err != nil {
		t.Fatal(err)
	}
	f := &fixture{dir: d, wl: filepath.Join(d, "wl")}
	b, err := os.ReadFile(workloadBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.wl, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a.txt", "b.txt", "c.txt", "d.txt", "untouched.txt", "statonly.txt", "opath.txt",
		"sub/rel.txt", "sub/rel2.txt", "target.txt"} {
		f.write(t, n, "data of "+n+"\n", 0o644)
	}
	if err := os.Symlink("target.txt", f.path("link.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub", f.path("linkdir")); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) path(rel string) string { return filepath.Join(f.dir, rel) }

func (f *fixture) write(t testing.TB, rel, content string, mode os.FileMode) string {
	t.Helper()
	p := f.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// inFixture returns the recorded files inside the fixture, relative to it,
// in record order.
func (f *fixture) inFixture(res *Result) []string {
	var out []string
	for _, file := range res.Files {
		if rel, ok := strings.CutPrefix(file.Path, f.dir+"/"); ok {
			out = append(out, rel)
		}
	}
	return out
}

// ptraceStops stands, in tests, for the ptrace mechanism stopping at every
// open, as it does where the kernel grants no seccomp listener.
const ptraceStops Mechanism = "ptrace-stops"

// ptraceFloor stands, in benchmarks, for the ptrace mechanism whose
// listener lets every call go on without looking at it.
const ptraceFloor Mechanism = "ptrace-floor"

// mechanisms returns the mechanisms this process may use; fanotify needs
// CAP_SYS_ADMIN.
func mechanisms(t *testing.T) []Mechanism {
	m := []Mechanism{Ptrace, ptraceStops}
	if w, err := openFanotify([]string{"/"}); err == nil {
		w.close()
		m = append(m, Fanotify)
	} else {
		t.Logf("fanotify tests skipped: %v", err)
	}
	return m
}

// flagMechanisms is mechanisms without ptraceStops, which has no flag.
func flagMechanisms(t *testing.T) []Mechanism {
	var out []Mechanism
	for _, m := range mechanisms(t) {
		if m != ptraceStops {
			out = append(out, m)
		}
	}
	return out
}

// eachMechanism runs test once per available mechanism.
func eachMechanism(t *testing.T, test func(t *testing.T, f *fixture, m Mechanism)) {
	for _, m := range mechanisms(t) {
		t.Run(string(m), func(t *testing.T) {
			test(t, newFixture(t), m)
		})
	}
}

func trace(t *testing.T, f *fixture, m Mechanism, cfg Config) *Result {
	t.Helper()
	cfg.Mechanism = m
	if m == ptraceStops {
		cfg.Mechanism, cfg.ptraceStops = Ptrace, true
	}
	cfg.FanotifyPaths = []string{f.dir, "/"}
	if cfg.Stderr == nil {
		cfg.Stderr = &testWriter{t: t}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run(%q): %v", cfg.Argv, err)
	}
	if res.Mechanism != cfg.Mechanism {
		t.Errorf("Mechanism = %s, want %s", res.Mechanism, cfg.Mechanism)
	}
	return res
}

// testWriter sends the workload's stderr to the test log.
type testWriter struct {
	t  *testing.T
	mu sync.Mutex
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Logf("workload: %s", bytes.TrimRight(b, "\n"))
	return len(b), nil
}

// wantExactly checks the fixture files recorded against the ground truth,
// as a set (precision and recall) and, when ordered, in order.
func wantExactly(t *testing.T, f *fixture, res *Result, ordered bool, want ...string) {
	t.Helper()
	got := f.inFixture(res)
	gs, ws := slices.Clone(got), slices.Clone(want)
	slices.Sort(gs)
	slices.Sort(ws)
	if !slices.Equal(gs, ws) {
		t.Fatalf("recorded fixture files %q, want exactly %q", got, want)
	}
	if ordered && !slices.Equal(got, want) {
		t.Errorf("recorded order %q, want %q", got, want)
	}
}

func wantExited(t *testing.T, res *Result, code int) {
	t.Helper()
	if res.Stop != StopExited || !res.Exit.Exited || res.Exit.Code != code {
		t.Errorf("stop %s, exit %v; want exited with code %d", res.Stop, res.Exit, code)
	}
}

func TestTraceSequentialReads(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		res := trace(t, f, m, Config{Argv: []string{f.wl, "read", f.path("c.txt"), f.path("a.txt"), f.path("b.txt"), f.path("a.txt")}})
		wantExactly(t, f, res, true, "wl", "c.txt", "a.txt", "b.txt")
		wantExited(t, res, 0)
		if len(res.Warnings) != 0 {
			t.Errorf("warnings: %q", res.Warnings)
		}
		for i, file := range res.Files {
			if i > 0 && file.FirstAccess < res.Files[i-1].FirstAccess {
				t.Errorf("access times out of order at %s", file.Path)
			}
			if strings.HasSuffix(file.Path, "/c.txt") && file.Size != int64(len("data of c.txt\n")) {
				t.Errorf("size of c.txt = %d", file.Size)
			}
		}
	})
}

func TestTraceDynamicProgram(t *testing.T) {
	cat, err := exec.LookPath("cat")
	if err != nil {
		t.Skip("no cat on this host")
	}
	interp := readELFInterp(cat)
	if interp == "" {
		t.Skipf("%s is not dynamically linked", cat)
	}
	loader, err := filepath.EvalSymlinks(interp)
	if err != nil {
		t.Fatal(err)
	}
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		b, err := os.ReadFile(cat)
		if err != nil {
			t.Fatal(err)
		}
		f.write(t, "dyncat", string(b), 0o755)
		res := trace(t, f, m, Config{Argv: []string{f.path("dyncat"), f.path("a.txt")}, Stdout: io.Discard})
		wantExactly(t, f, res, true, "dyncat", "a.txt")
		wantExited(t, res, 0)
		var paths []string
		for _, file := range res.Files {
			paths = append(paths, file.Path)
		}
		if !slices.Contains(paths, loader) {
			t.Errorf("loader %s (PT_INTERP %s) not recorded: %q", loader, interp, paths)
		}
		if !slices.ContainsFunc(paths, func(p string) bool {
			b := filepath.Base(p)
			return strings.HasPrefix(b, "libc.so") || strings.HasPrefix(b, "libc-")
		}) {
			t.Errorf("libc not recorded: %q", paths)
		}
		// The kernel opens the program before the loader, which opens
		// libc: first-access order must show that.
		if i, j := slices.Index(paths, f.path("dyncat")), slices.Index(paths, loader); i > j {
			t.Errorf("loader recorded before the program: %q", paths)
		}
	})
}

func TestTraceShellScript(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Skip("no /bin/sh")
	}
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		script := f.write(t, "script.sh", "#!/bin/sh\nread line < "+f.path("a.txt")+"\n", 0o755)
		res := trace(t, f, m, Config{Argv: []string{script}})
		wantExactly(t, f, res, false, "script.sh", "a.txt")
		wantExited(t, res, 0)
		if !slices.ContainsFunc(res.Files, func(file File) bool { return file.Path == sh }) {
			t.Errorf("interpreter %s not recorded", sh)
		}
	})
}

// TestTraceInterpreterChain runs a script whose interpreter is a script
// whose interpreter is the workload binary, which never opens either
// script: only the kernel does.
func TestTraceInterpreterChain(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		inner := f.write(t, "inner.sh", "#!"+f.wl+" interp\n", 0o755)
		outer := f.write(t, "outer.sh", "#! "+inner+"\n", 0o755)
		env := append(os.Environ(), "WORKLOAD_DATA="+f.path("b.txt"))
		res := trace(t, f, m, Config{Argv: []string{outer}, Env: env})
		wantExactly(t, f, res, true, "outer.sh", "inner.sh", "wl", "b.txt")
		wantExited(t, res, 0)
	})
}

func TestTraceChildrenAndThreads(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		res := trace(t, f, m, Config{Argv: []string{f.wl, "children", f.path("a.txt"), f.path("b.txt")}})
		wantExactly(t, f, res, true, "wl", "a.txt", "b.txt")
		wantExited(t, res, 0)

		res = trace(t, f, m, Config{Argv: []string{f.wl, "threads", f.path("a.txt"), f.path("b.txt"), f.path("c.txt"), f.path("d.txt")}})
		wantExactly(t, f, res, false, "wl", "a.txt", "b.txt", "c.txt", "d.txt")
		wantExited(t, res, 0)

		// A shell pipeline: short-lived children, reaped before a
		// fanotify reader may get to their events.
		sh := f.write(t, "pipeline.sh", fmt.Sprintf("#!/bin/sh\ncat %s | cat - %s >/dev/null\n%s read %s\n",
			f.path("a.txt"), f.path("b.txt"), f.wl, f.path("c.txt")), 0o755)
		res = trace(t, f, m, Config{Argv: []string{sh}})
		wantExactly(t, f, res, false, "pipeline.sh", "a.txt", "b.txt", "wl", "c.txt")
		wantExited(t, res, 0)
	})
}

func TestTraceExecFromThread(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		res := trace(t, f, m, Config{Argv: []string{f.wl, "execthread", f.path("d.txt")}})
		wantExactly(t, f, res, true, "wl", "d.txt")
		wantExited(t, res, 0)
	})
}

// TestTraceExecProcSelf execs /proc/self/exe: the tracer must resolve
// that as the tracee, not as itself.
func TestTraceExecProcSelf(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		res := trace(t, f, m, Config{Argv: []string{f.wl, "selfexec", f.path("a.txt")}})
		wantExactly(t, f, res, true, "wl", "a.txt")
		wantExited(t, res, 0)
		for _, file := range res.Files {
			if file.Path == self {
				t.Errorf("recorded the tracer's own executable %s", self)
			}
		}
	})
}

func TestTraceDirfdAndSymlinks(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		res := trace(t, f, m, Config{Argv: []string{f.wl, "dirfd", f.path("sub"), "rel.txt"}})
		wantExactly(t, f, res, true, "wl", "sub/rel.txt")

		// Relative to the working directory, through a symlink to a
		// file and one to a directory: targets are recorded.
		res = trace(t, f, m, Config{Argv: []string{"./wl", "read", "link.txt", "linkdir/rel2.txt"}, Dir: f.dir})
		wantExactly(t, f, res, true, "wl", "target.txt", "sub/rel2.txt")

		// ".." after a symlink to a directory climbs from its target,
		// not lexically: deep/../x.txt is sub/x.txt.
		f.write(t, "sub/inner/.keep", "", 0o644)
		f.write(t, "sub/x.txt", "in sub", 0o644)
		f.write(t, "x.txt", "beside deep", 0o644)
		if err := os.Symlink("sub/inner", f.path("deep")); err != nil {
			t.Fatal(err)
		}
		res = trace(t, f, m, Config{Argv: []string{f.wl, "read", f.path("deep") + "/../x.txt"}})
		wantExactly(t, f, res, true, "wl", "sub/x.txt")

		// Two names of one file are two record entries; a file
		// replaced under the same name is opened again.
		if err := os.Link(f.path("a.txt"), f.path("hardlink.txt")); err != nil {
			t.Fatal(err)
		}
		res = trace(t, f, m, Config{Argv: []string{f.wl, "read", f.path("a.txt"), f.path("hardlink.txt"), f.path("a.txt")}})
		wantExactly(t, f, res, true, "wl", "a.txt", "hardlink.txt")

		// Reopening stdin through /dev/stdin (/proc/self/fd/0) opens
		// the file the caller redirected from.
		in, err := os.Open(f.path("c.txt"))
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		res = trace(t, f, m, Config{Argv: []string{f.wl, "read", "/dev/stdin"}, Stdin: in})
		wantExactly(t, f, res, true, "wl", "c.txt")
	})
}

// TestTraceAfterChroot: once the workload changes its root, names mean
// other files to it than to the tracer; the file it read is recorded by
// its path in the tracer's root.
func TestTraceAfterChroot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		f.write(t, "jail/etc/conf.txt", "in the jail", 0o644)
		f.write(t, "etc/conf.txt", "outside", 0o644)
		res := trace(t, f, m, Config{Argv: []string{f.wl, "chroot", f.path("jail"), "/etc/conf.txt"}})
		wantExactly(t, f, res, true, "wl", "jail/etc/conf.txt")
		wantExited(t, res, 0)
	})
}

func TestTraceIgnoresStatPathDirsAndMisses(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		res := trace(t, f, m, Config{Argv: []string{f.wl, "mix",
			f.path("statonly.txt"), f.path("opath.txt"), f.path("sub"), f.path("missing.txt"),
			f.path("a.txt"), f.path("created.txt")}})
		// created.txt was opened (to write): recorded; attribution
		// drops it later as not part of the image.
		wantExactly(t, f, res, true, "wl", "a.txt", "created.txt")
		wantExited(t, res, 0)
	})
}

func TestTraceNonZeroExitAndCrash(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		res := trace(t, f, m, Config{Argv: []string{f.wl, "exit", "3", f.path("a.txt")}})
		wantExactly(t, f, res, true, "wl", "a.txt")
		wantExited(t, res, 3)
		if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, "code 3") }) {
			t.Errorf("no warning about the exit code: %q", res.Warnings)
		}

		res = trace(t, f, m, Config{Argv: []string{f.wl, "crash", f.path("b.txt")}})
		wantExactly(t, f, res, true, "wl", "b.txt")
		if res.Stop != StopExited || res.Exit.Exited || res.Exit.Signal != int(unix.SIGKILL) {
			t.Errorf("stop %s, exit %v; want killed by SIGKILL", res.Stop, res.Exit)
		}
		if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, "SIGKILL") }) {
			t.Errorf("no warning about the signal: %q", res.Warnings)
		}
	})
}

func TestTracePeriod(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		start := time.Now()
		res := trace(t, f, m, Config{Argv: []string{f.wl, "forever", f.path("a.txt")}, Period: 2 * time.Second})
		if d := time.Since(start); d < 2*time.Second || d > 20*time.Second {
			t.Errorf("Run took %v with a 2s period", d)
		}
		wantExactly(t, f, res, true, "wl", "a.txt")
		if res.Stop != StopPeriod || res.Exit.Exited || res.Exit.Signal != int(unix.SIGKILL) {
			t.Errorf("stop %s, exit %v; want period, SIGKILL", res.Stop, res.Exit)
		}
		if len(res.Warnings) != 0 {
			t.Errorf("warnings for a workload stopped on purpose: %q", res.Warnings)
		}
	})
}

// daemonPid reads the pid the daemon wrote and checks it is gone.
func wantDead(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("daemon pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(pid, 0); err != unix.ESRCH {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		t.Errorf("daemon %d survived tracing: kill(0) = %v, stat %q", pid, err, st)
	}
}

func TestTraceDaemonIsKilled(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		pidFile := f.path("daemon.pid")
		// The main process exits once the daemon is up: tracing ends
		// and the daemon, now in its own session, must die with it.
		res := trace(t, f, m, Config{Argv: []string{f.wl, "daemon", f.path("a.txt"), pidFile}})
		wantExactly(t, f, res, false, "wl", "a.txt", "daemon.pid")
		wantExited(t, res, 0)
		wantDead(t, pidFile)

		// Same when tracing is stopped with the main process alive.
		os.Remove(pidFile)
		res = trace(t, f, m, Config{Argv: []string{f.wl, "daemon", f.path("b.txt"), pidFile, "stay"},
			WaitOnLine: "daemon up", Period: time.Minute})
		wantExactly(t, f, res, false, "wl", "b.txt", "daemon.pid")
		if res.Stop != StopLine {
			t.Errorf("stop %s, want line", res.Stop)
		}
		wantDead(t, pidFile)
	})
}

func TestTraceWaitOnLine(t *testing.T) {
	eachMechanism(t, func(t *testing.T, f *fixture, m Mechanism) {
		var out bytes.Buffer
		start := time.Now()
		res := trace(t, f, m, Config{
			Argv:       []string{f.wl, "line", "READY", f.path("a.txt"), f.path("b.txt")},
			WaitOnLine: "READY",
			Period:     time.Minute,
			Stdout:     &out,
		})
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("Run took %v; the line came at once", d)
		}
		if res.Stop != StopLine {
			t.Errorf("stop %s, want line", res.Stop)
		}
		wantExactly(t, f, res, true, "wl", "a.txt")
		if !strings.Contains(out.String(), "starting... READY now") {
			t.Errorf("workload output not passed through: %q", out.String())
		}
	})
}

func TestRunCancel(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Cancel once the workload says it has read a.txt.
	out := &callbackWriter{match: "READY", f: cancel}
	res, err := Run(ctx, Config{Argv: []string{f.wl, "line", "READY", f.path("a.txt"), f.path("b.txt")}, Mechanism: Ptrace, Stdout: out})
	if !errors.Is(err, context.Canceled) || res == nil || res.Stop != StopCanceled {
		t.Fatalf("Run = %v, %v; want a canceled result", res, err)
	}
	wantExactly(t, f, res, true, "wl", "a.txt")
}

// callbackWriter calls f once the output contains match.
type callbackWriter struct {
	match string
	f     func()
	buf   bytes.Buffer
	once  sync.Once
}

func (w *callbackWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	if strings.Contains(w.buf.String(), w.match) {
		w.once.Do(w.f)
	}
	return len(b), nil
}

func TestRunMissingExecutable(t *testing.T) {
	f := newFixture(t)
	for _, argv0 := range []string{f.path("no-such-program"), "no-such-program-anywhere", "./nothing-here"} {
		for _, m := range mechanisms(t) {
			cfg := Config{Argv: []string{argv0}, Dir: f.dir, Mechanism: m}
			if m == ptraceStops {
				cfg.Mechanism, cfg.ptraceStops = Ptrace, true
			}
			_, err := Run(context.Background(), cfg)
			if !errors.Is(err, ErrExecutableNotFound) || !strings.Contains(err.Error(), argv0) {
				t.Errorf("%s: Run(%q) = %v, want ErrExecutableNotFound naming it", m, argv0, err)
			}
		}
	}
	// Found but not executable by the kernel: the shim reports why.
	notELF := f.write(t, "not-elf", "\x7fELFgarbage", 0o755)
	if _, err := Run(context.Background(), Config{Argv: []string{notELF}, Mechanism: Ptrace}); err == nil ||
		!strings.Contains(err.Error(), "exec format error") {
		t.Errorf("Run(not-elf) = %v, want an exec format error", err)
	}
}

func TestLookPathUsesWorkloadPath(t *testing.T) {
	f := newFixture(t)
	got, err := lookPath("wl", []string{"PATH=/nonexistent:" + f.dir}, "/")
	if err != nil || got != f.wl {
		t.Errorf("lookPath = %q, %v", got, err)
	}
	if got, err := lookPath("wl", []string{"PATH=."}, f.dir); err != nil || got != f.wl {
		t.Errorf("lookPath with relative PATH = %q, %v", got, err)
	}
	if _, err := lookPath("a.txt", []string{"PATH=" + f.dir}, "/"); err == nil {
		t.Error("lookPath found a file that is not executable")
	}
}

func TestSeccompTableMatchesNative(t *testing.T) {
	native := map[string]uint32{"amd64": unix.AUDIT_ARCH_X86_64, "arm64": unix.AUDIT_ARCH_AARCH64}[runtime.GOARCH]
	for _, tb := range sysTables {
		if tb.arch != native {
			continue
		}
		for name, pair := range map[string][2]int{
			"openat":     {tb.openat, unix.SYS_OPENAT},
			"openat2":    {tb.openat2, unix.SYS_OPENAT2},
			"execve":     {tb.execve, unix.SYS_EXECVE},
			"execveat":   {tb.execveat, unix.SYS_EXECVEAT},
			"chroot":     {tb.chroot, unix.SYS_CHROOT},
			"pivot_root": {tb.pivotRoot, unix.SYS_PIVOT_ROOT},
			"unshare":    {tb.unshare, unix.SYS_UNSHARE},
			"setns":      {tb.setns, unix.SYS_SETNS},
		} {
			if pair[0] != pair[1] {
				t.Errorf("%s: table %d, unix %d", name, pair[0], pair[1])
			}
		}
		if tb.oPath != unix.O_PATH || tb.oDirectory != unix.O_DIRECTORY {
			t.Errorf("flags: table %#x %#x, unix %#x %#x", tb.oPath, tb.oDirectory, unix.O_PATH, unix.O_DIRECTORY)
		}
		checkLegacyOpen(t, tb)
		return
	}
	t.Fatalf("no table for %s", runtime.GOARCH)
}

// TestUnprivilegedPtrace runs the tracer binary as nobody, without any
// capability, the way it runs in a default build container.
func TestUnprivilegedPtrace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("already unprivileged: the other tests cover this")
	}
	f := newFixture(t)
	bin := filepath.Join(f.dir, "stargazer-tracer")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/stargazer-tracer")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build tracer: %v\n%s", err, out)
	}
	if interp := readELFInterp(bin); interp != "" {
		t.Errorf("the tracer binary is not static: PT_INTERP %s", interp)
	}
	out := filepath.Join(f.dir, "out")
	if err := os.Mkdir(out, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(out, 0o777)
	const nobody = 65534
	runAsNobody := func(args ...string) (stdout string) {
		t.Helper()
		c := exec.Command(bin, args...)
		c.Dir = out
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		var so, se bytes.Buffer
		c.Stdout, c.Stderr = &so, &se
		if err := c.Run(); err != nil {
			t.Fatalf("stargazer-tracer %q: %v\n%s", args, err, se.String())
		}
		return so.String()
	}
	for _, mech := range []string{"ptrace", "auto"} {
		rec := filepath.Join(out, mech+".jsonl")
		status := filepath.Join(out, mech+".status")
		stdout := runAsNobody("--tracer", mech, "--record-out", rec, "--status-out", status, "--",
			f.wl, "children", f.path("a.txt"), f.path("b.txt"))
		if stdout != "" {
			t.Errorf("unexpected output %q", stdout)
		}
		entries := readRecordFile(t, rec)
		var got []string
		prefix := strings.TrimPrefix(f.dir, "/") + "/"
		for _, e := range entries {
			if rel, ok := strings.CutPrefix(e.Path, prefix); ok {
				got = append(got, rel)
			}
		}
		if want := []string{"wl", "a.txt", "b.txt"}; !slices.Equal(got, want) {
			t.Errorf("%s as nobody recorded %q, want %q", mech, got, want)
		}
		st, _ := os.ReadFile(status)
		if !bytes.Contains(st, []byte(`"mechanism":"ptrace"`)) || !bytes.Contains(st, []byte(`"exitCode":0`)) {
			t.Errorf("%s status: %s", mech, st)
		}
	}
	// A script with a pipeline, dynamic programs included.
	script := f.write(t, "nobody.sh", fmt.Sprintf("#!/bin/sh\ncat %s | cat - %s >/dev/null\nexec %s threads %s\n",
		f.path("a.txt"), f.path("b.txt"), f.wl, f.path("c.txt")), 0o755)
	rec := filepath.Join(out, "script.jsonl")
	runAsNobody("--tracer", "ptrace", "--record-out", rec, "--", script)
	var got []string
	for _, e := range readRecordFile(t, rec) {
		if rel, ok := strings.CutPrefix(e.Path, strings.TrimPrefix(f.dir, "/")+"/"); ok {
			got = append(got, rel)
		}
	}
	// The two cats of the pipeline run concurrently: compare as sets.
	slices.Sort(got)
	if want := []string{"a.txt", "b.txt", "c.txt", "nobody.sh", "wl"}; !slices.Equal(got, want) {
		t.Errorf("script as nobody recorded %q, want %q", got, want)
	}

	// The workload inherits the tracer's capabilities: none.
	rec = filepath.Join(out, "caps.jsonl")
	if caps := strings.TrimSpace(runAsNobody("--tracer", "ptrace", "--record-out", rec, "--", f.wl, "caps")); caps != "0000000000000000" {
		t.Errorf("CapEff under the unprivileged tracer = %q, want none", caps)
	}
}

func readRecordFile(t *testing.T, p string) []Entry {
	t.Helper()
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	entries, err := ReadRecord(fh)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// TestMainWritesRecord runs Main in-process: the record on stdout, the
// workload's own output moved to stderr, a status file.
func TestMainWritesRecord(t *testing.T) {
	f := newFixture(t)
	var stdout, stderr bytes.Buffer
	status := filepath.Join(f.dir, "status.json")
	code := Main([]string{"--tracer", "ptrace", "--status-out", status, "--", f.wl, "caps"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("Main = %d, stderr:\n%s", code, stderr.String())
	}
	entries, err := ReadRecord(&stdout)
	if err != nil {
		t.Fatalf("record on stdout: %v\n%s", err, stdout.String())
	}
	wantPath := strings.TrimPrefix(f.wl, "/")
	if len(entries) == 0 || entries[0].Path != wantPath || entries[0].Size == 0 {
		t.Errorf("record %+v, want %s first", entries, wantPath)
	}
	if !strings.Contains(stderr.String(), "0000") {
		t.Errorf("workload stdout not on stderr: %q", stderr.String())
	}
	if b, _ := os.ReadFile(status); !bytes.Contains(b, []byte(`"stopReason":"exited"`)) {
		t.Errorf("status %s", b)
	}
	if code := Main([]string{"--tracer", "bogus", "--", "true"}, io.Discard, io.Discard); code != 2 {
		t.Errorf("Main with a bad flag = %d, want 2", code)
	}
	if code := Main([]string{"--", f.path("nope")}, io.Discard, io.Discard); code != 1 {
		t.Errorf("Main with a missing program = %d, want 1", code)
	}
}

func TestELFInterpOfStaticBinary(t *testing.T) {
	if got := readELFInterp(workloadBinary(t)); got != "" {
		t.Errorf("static workload has PT_INTERP %q", got)
	}
	if _, err := elf.Open(workloadBinary(t)); err != nil {
		t.Fatal(err)
	}
}
