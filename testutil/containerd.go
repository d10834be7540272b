package testutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Containerd is a containerd daemon started for one test on a private root,
// state directory and socket.
type Containerd struct {
	// Address is the daemon's socket path.
	Address string
	// Namespace is the namespace Ctr works in.
	Namespace string
	logs      string
}

// StartContainerd starts the host's containerd (Debian package) for t and
// stops it when t ends. It skips t when containerd or ctr is missing.
func StartContainerd(t testing.TB) *Containerd {
	t.Helper()
	RequireRoot(t)
	RequireContainerd(t)
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "ctd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	c := &Containerd{Address: filepath.Join(sockDir, "containerd.sock"), Namespace: "stargazer-test", logs: filepath.Join(dir, "containerd.log")}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(sockDir, "state"), c.Address, c.Address+".ttrpc")
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(c.logs)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("containerd", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		for _, m := range MountsUnder(dir) {
			syscall.Unmount(m, syscall.MNT_DETACH)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := c.Ctr(context.Background(), "version"); err == nil {
			return c
		}
		select {
		case <-done:
			t.Fatalf("containerd exited:\n%s", c.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not start within 30s:\n%s", c.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Ctr runs ctr against the daemon and returns its combined output.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...)
	out, err := exec.CommandContext(ctx, "ctr", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %v: %w\n%s", args, err, out)
	}
	return string(out), nil
}

// Logs returns what containerd wrote so far.
func (c *Containerd) Logs() string {
	b, _ := os.ReadFile(c.logs)
	return string(b)
}
