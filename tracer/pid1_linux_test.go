//go:build linux && (amd64 || arm64)

package tracer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pid1Marker is the first argument that makes the test binary run Main as
// the init process of a new PID namespace, the way a container runtime
// such as BuildKit's runs the tracer. The second argument is mountProc or
// keepProc.
const pid1Marker = "-tracer-test-pid1"

const (
	mountProc = "mount-proc" // mount a /proc of the new namespace, as runtimes do
	keepProc  = "keep-proc"  // keep the /proc of the parent namespace
)

// leftoverExit is the exit code of the PID 1 helper when Main returned
// while a process other than itself was still in the namespace.
const leftoverExit = 97

// init rather than TestMain, which is shared with platforms without PID
// namespaces. The ptrace shim is started with its own marker, so it never
// lands here.
func init() {
	if len(os.Args) > 2 && os.Args[1] == pid1Marker {
		os.Exit(runAsPID1(os.Args[2], os.Args[3:]))
	}
}

// runAsPID1 runs Main and then checks, from inside the namespace, that no
// process is left: once PID 1 exits the kernel kills the rest, so this is
// the only place a leak shows.
func runAsPID1(proc string, args []string) int {
	if os.Getpid() != 1 {
		fmt.Fprintf(os.Stderr, "pid1 helper: pid %d, want 1\n", os.Getpid())
		return 1
	}
	if proc == keepProc {
		return Main(args, os.Stdout, os.Stderr)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		fmt.Fprintf(os.Stderr, "pid1 helper: mount /proc: %v\n", err)
		return 1
	}
	code := Main(args, os.Stdout, os.Stderr)
	var left []string
	for _, pid := range listPids() {
		if pid == 1 {
			continue
		}
		st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		left = append(left, strings.TrimSpace(string(st)))
	}
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "pid1 helper: processes left after Main returned %d:\n%s\n", code, strings.Join(left, "\n"))
		return leftoverExit
	}
	return code
}

// TestTraceAsPID1 runs the tracer as PID 1 of its own PID namespace, as it
// runs in a build container, with workloads that never end on their own
// or leave a daemon behind: it must stop at the period (or when the
// workload's main process exits) and leave no process in the namespace.
func TestTraceAsPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a new PID namespace")
	}
	sh, _ := exec.LookPath("sh")
	tests := []struct {
		name   string
		argv   func(f *fixture) []string
		period time.Duration
		stop   StopReason
		want   []string // fixture files recorded, in any order
	}{
		{"forever", func(f *fixture) []string { return []string{f.wl, "forever", f.path("a.txt")} },
			2 * time.Second, StopPeriod, []string{"wl", "a.txt"}},
		{"shell loop", func(f *fixture) []string {
			return []string{sh, "-c", "cat " + f.path("a.txt") + "; echo serving; while true; do sleep 1; done"}
		}, 2 * time.Second, StopPeriod, []string{"a.txt"}},
		{"daemon", func(f *fixture) []string { return []string{f.wl, "daemon", f.path("a.txt"), f.path("daemon.pid")} },
			time.Minute, StopExited, []string{"wl", "a.txt", "daemon.pid"}},
		{"daemon and main stay", func(f *fixture) []string {
			return []string{f.wl, "daemon", f.path("a.txt"), f.path("daemon.pid"), "stay"}
		}, 2 * time.Second, StopPeriod, []string{"wl", "a.txt", "daemon.pid"}},
	}
	for _, m := range flagMechanisms(t) {
		for _, tt := range tests {
			t.Run(string(m)+"/"+tt.name, func(t *testing.T) {
				if tt.name == "shell loop" && sh == "" {
					t.Skip("no sh in PATH")
				}
				// Each run is a separate process: they may overlap.
				t.Parallel()
				f := newFixture(t)
				args := append([]string{"--tracer", string(m), "--period", tt.period.String(), "--"}, tt.argv(f)...)
				start := time.Now()
				st, got := runPID1(t, f, args)
				d := time.Since(start)
				if st.StopReason != tt.stop {
					t.Errorf("stop %s, want %s", st.StopReason, tt.stop)
				}
				if tt.stop == StopPeriod && (d < tt.period || d > tt.period+15*time.Second) {
					t.Errorf("tracing took %v with a %v period", d, tt.period)
				}
				if got != nil {
					slices.Sort(got)
					if want := slices.Sorted(slices.Values(tt.want)); !slices.Equal(got, want) {
						t.Errorf("recorded fixture files %q, want %q", got, want)
					}
				}
			})
		}
	}
}

// TestTraceAsPID1WithParentProc runs the tracer as PID 1 under a /proc of
// the parent PID namespace, where no pid it knows means the process it
// names. Run must refuse at once: tracing there loses the files opened,
// and a daemon the workload leaves cannot be found, so Run would wait for
// it forever.
func TestTraceAsPID1WithParentProc(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a new PID namespace")
	}
	for _, m := range flagMechanisms(t) {
		t.Run(string(m), func(t *testing.T) {
			f := newFixture(t)
			args := []string{"--tracer", string(m), "--period", "2s", "--",
				f.wl, "daemon", f.path("a.txt"), f.path("daemon.pid"), "stay"}
			out, err := execPID1(t, f, keepProc, args)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "/proc belongs to another PID namespace") {
				t.Errorf("tracer as PID 1 under the parent's /proc: %v, output:\n%s\nwant exit code 1 and an error about /proc", err, out)
			}
			if _, err := os.Stat(f.path("daemon.pid")); err == nil {
				t.Errorf("the workload ran")
			}
		})
	}
}

// runPID1 runs Main with args as PID 1 of a new PID and mount namespace
// with its own /proc and returns its status and the fixture files it
// recorded (nil when the fixture is outside the root filesystem, which
// Main's fanotify watch does not cover). The test fails if Main fails or
// leaves a process behind.
func runPID1(t *testing.T, f *fixture, args []string) (Status, []string) {
	t.Helper()
	dir := t.TempDir()
	rec, status := filepath.Join(dir, "record.json"), filepath.Join(dir, "status.json")
	args = append([]string{"--record-out", rec, "--status-out", status}, args...)
	if out, err := execPID1(t, f, mountProc, args); err != nil {
		t.Fatalf("tracer as PID 1 (%q): %v; output:\n%s", args, err, out)
	}
	b, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("status %s: %v", b, err)
	}
	var rootSt, dirSt unix.Stat_t
	if unix.Stat("/", &rootSt) != nil || unix.Stat(f.dir, &dirSt) != nil || rootSt.Dev != dirSt.Dev {
		return st, nil
	}
	got := []string{}
	prefix := strings.TrimPrefix(f.dir, "/") + "/"
	for _, e := range readRecordFile(t, rec) {
		if rel, ok := strings.CutPrefix(e.Path, prefix); ok {
			got = append(got, rel)
		}
	}
	return st, got
}

// execPID1 runs the PID 1 helper with Main's args in the fixture and
// returns its combined output. The test fails if the helper does not
// return within a minute.
func execPID1(t *testing.T, f *fixture, proc string, args []string) (string, error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, append([]string{pid1Marker, proc}, args...)...)
	cmd.Dir = f.dir
	// Killing PID 1 kills its whole namespace, so a hung trace leaves
	// nothing running either.
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:   syscall.CLONE_NEWPID,
		Unshareflags: syscall.CLONE_NEWNS, // which also makes / private, so /proc can be replaced
		Pdeathsig:    syscall.SIGKILL,
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("tracer as PID 1 did not return within a minute (%q); output:\n%s", args, out.String())
	}
	return out.String(), err
}
