package testutil

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/buildkit/client"
	"golang.org/x/sys/unix"
)

// Daemon is a stargazerd process started for one test on a fresh state
// directory and socket.
type Daemon struct {
	// Addr is the daemon's socket address (unix://…).
	Addr string
	// Root is the daemon's state directory.
	Root string
	// ConfigPath is the stargazerd.toml the daemon runs with.
	ConfigPath string

	opts   daemonOptions
	cmd    *exec.Cmd
	done   chan struct{}
	logs   string
	waitMu sync.Mutex
	err    error
}

// DaemonOption configures StartDaemon.
type DaemonOption func(*daemonOptions)

type daemonOptions struct {
	snapshotter    string
	backgroundOff  bool
	noPrefetch     bool
	root           string
	registries     []string
	extraArgs      []string
	extraConfig    string
	binary         string
	foreign        bool
	startupTimeout time.Duration
}

// WithSnapshotter picks the worker's snapshotter. Default "stargz".
func WithSnapshotter(name string) DaemonOption {
	return func(o *daemonOptions) { o.snapshotter = name }
}

// WithBackgroundFetch turns the stargz snapshotter's background fetch of
// whole layers on or off. Default off, so that the bytes a registry serves
// are those a build reads.
func WithBackgroundFetch(on bool) DaemonOption {
	return func(o *daemonOptions) { o.backgroundOff = !on }
}

// WithPrefetch turns the stargz snapshotter's landmark prefetch on or off.
// Default on.
func WithPrefetch(on bool) DaemonOption {
	return func(o *daemonOptions) { o.noPrefetch = !on }
}

// WithRoot runs the daemon on an existing state directory, for restarts.
// Default a new directory under t.TempDir().
func WithRoot(dir string) DaemonOption {
	return func(o *daemonOptions) { o.root = dir }
}

// WithPlainHTTPRegistry lets the daemon reach host ("127.0.0.1:port") over
// plain HTTP.
func WithPlainHTTPRegistry(hosts ...string) DaemonOption {
	return func(o *daemonOptions) { o.registries = append(o.registries, hosts...) }
}

// WithDaemonArgs passes extra command-line arguments to stargazerd.
func WithDaemonArgs(args ...string) DaemonOption {
	return func(o *daemonOptions) { o.extraArgs = append(o.extraArgs, args...) }
}

// WithDaemonConfig appends TOML to the daemon's configuration file.
func WithDaemonConfig(toml string) DaemonOption {
	return func(o *daemonOptions) { o.extraConfig += "\n" + toml + "\n" }
}

// WithDaemonBinary runs another buildkitd-compatible binary (e.g. stock
// buildkitd) instead of stargazerd. Its exit status on SIGTERM is not
// checked: buildkitd exits non-zero when signalled.
func WithDaemonBinary(path string) DaemonOption {
	return func(o *daemonOptions) { o.binary = path; o.foreign = true }
}

// StartDaemon starts stargazerd for t and stops it when t ends, failing t if
// the stop leaves a mount behind under the state directory.
func StartDaemon(t testing.TB, opts ...DaemonOption) *Daemon {
	t.Helper()
	RequireIntegration(t)
	o := daemonOptions{snapshotter: "stargz", backgroundOff: true, startupTimeout: 90 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.binary == "" {
		o.binary = Binary(t, "stargazerd")
	}
	if o.root == "" {
		o.root = filepath.Join(t.TempDir(), "root")
	}
	d := &Daemon{Root: o.root, opts: o}
	d.ConfigPath = filepath.Join(t.TempDir(), "stargazerd.toml")
	if err := os.WriteFile(d.ConfigPath, []byte(daemonConfig(o)), 0o600); err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "sgd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	d.Addr = "unix://" + filepath.Join(sockDir, "buildkitd.sock")
	d.logs = filepath.Join(t.TempDir(), "daemon.log")
	d.start(t)
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop daemon: %v", err)
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.Logs())
		}
	})
	return d
}

func daemonConfig(o daemonOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[worker.oci]\n  snapshotter = %q\n  gc = false\n", o.snapshotter)
	fmt.Fprintf(&b, "[worker.oci.stargzSnapshotter]\n  no_background_fetch = %v\n  noprefetch = %v\n", o.backgroundOff, o.noPrefetch)
	for _, h := range o.registries {
		fmt.Fprintf(&b, "[registry.%q]\n  http = true\n  insecure = true\n", h)
	}
	b.WriteString(o.extraConfig)
	return b.String()
}

func (d *Daemon) start(t testing.TB) {
	t.Helper()
	args := []string{"--root", d.Root, "--addr", d.Addr, "--config", d.ConfigPath, "--debug"}
	args = append(args, d.opts.extraArgs...)
	logf, err := os.OpenFile(d.logs, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(d.opts.binary, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", d.opts.binary, err)
	}
	d.cmd = cmd
	d.done = make(chan struct{})
	go func() {
		err := cmd.Wait()
		logf.Close()
		d.waitMu.Lock()
		d.err = err
		d.waitMu.Unlock()
		close(d.done)
	}()
	if err := d.waitReady(d.opts.startupTimeout); err != nil {
		d.kill()
		t.Fatalf("daemon did not start: %v\n%s", err, d.Logs())
	}
}

func (d *Daemon) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		select {
		case <-d.done:
			return fmt.Errorf("daemon exited: %v", d.exitErr())
		default:
		}
		c, err := client.New(ctx, d.Addr)
		if err == nil {
			_, err = c.ListWorkers(ctx)
			c.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *Daemon) exitErr() error {
	d.waitMu.Lock()
	defer d.waitMu.Unlock()
	return d.err
}

// Client returns a client of the daemon, closed when t ends.
func (d *Daemon) Client(t testing.TB) *client.Client {
	t.Helper()
	c, err := client.New(context.Background(), d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Logs returns what the daemon wrote so far.
func (d *Daemon) Logs() string {
	b, _ := os.ReadFile(d.logs)
	return string(b)
}

// Stop sends SIGTERM and waits for the daemon to exit, then checks that it
// left no mount behind under its state directory. Calling it again is a
// no-op.
func (d *Daemon) Stop() error {
	if d.cmd == nil {
		return nil
	}
	select {
	case <-d.done:
	default:
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(60 * time.Second):
			d.kill()
			return fmt.Errorf("daemon did not exit within 60s of SIGTERM")
		}
	}
	d.cmd = nil
	if err := d.exitErr(); err != nil && !d.opts.foreign {
		return fmt.Errorf("daemon exited with %v", err)
	}
	if left := MountsUnder(d.Root); len(left) > 0 {
		for _, m := range left {
			unix.Unmount(m, unix.MNT_DETACH)
		}
		return fmt.Errorf("daemon left %d mounts under %s: %s", len(left), d.Root, strings.Join(left, ", "))
	}
	return nil
}

// Restart stops the daemon and starts it again on the same state directory.
func (d *Daemon) Restart(t testing.TB) {
	t.Helper()
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	d.start(t)
}

func (d *Daemon) kill() {
	if d.cmd != nil && d.cmd.Process != nil {
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
	for _, m := range MountsUnder(d.Root) {
		unix.Unmount(m, unix.MNT_DETACH)
	}
}

// FUSEMountsUnder lists the FUSE mount points below dir.
func FUSEMountsUnder(dir string) []string {
	return mountsUnder(dir, func(fstype string) bool { return strings.HasPrefix(fstype, "fuse") })
}

// MountsUnder lists every mount point below dir, deepest first.
func MountsUnder(dir string) []string {
	return mountsUnder(dir, func(string) bool { return true })
}

func mountsUnder(dir string, keep func(fstype string) bool) []string {
	dir, _ = filepath.Abs(dir)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// mountinfo: id parent major:minor root mountpoint opts ... - fstype source superopts
		fields := strings.Fields(s.Text())
		if len(fields) < 10 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		sep := 6
		for sep < len(fields) && fields[sep] != "-" {
			sep++
		}
		if sep+1 >= len(fields) {
			continue
		}
		if (mp == dir || strings.HasPrefix(mp, dir+"/")) && keep(fields[sep+1]) {
			out = append(out, mp)
		}
	}
	// Deepest first, so unmounting in order works.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b bytes.Buffer
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

var (
	binMu    sync.Mutex
	binCache = map[string]string{}
)

// Binary builds ./cmd/<name> of this module once per test process and
// returns its path. Binaries are static (CGO_ENABLED=0), as shipped.
func Binary(t testing.TB, name string) string {
	t.Helper()
	return buildBinary(t, name, "./cmd/"+name)
}

// StockBuildkitd builds BuildKit's own buildkitd, at the version this
// module requires (a tool of go.mod), for tests against a stock daemon.
func StockBuildkitd(t testing.TB) string {
	t.Helper()
	return buildBinary(t, "buildkitd", "github.com/moby/buildkit/cmd/buildkitd")
}

func buildBinary(t testing.TB, name, pkg string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binCache[name]; ok {
		return p
	}
	// One shared directory, each binary replaced atomically: test
	// processes of several packages build the same sources at once, and
	// none leaves a copy behind.
	dir := filepath.Join(os.TempDir(), "stargazer-test-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s-%d", name, os.Getpid()))
	cmd := exec.Command("go", "build", "-o", tmp, pkg)
	cmd.Dir = ModuleRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	out := filepath.Join(dir, name)
	if err := os.Rename(tmp, out); err != nil {
		t.Fatal(err)
	}
	binCache[name] = out
	return out
}

// ModuleRoot returns the directory of this module's go.mod.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the module root")
	}
	return filepath.Dir(filepath.Dir(file))
}
