package testutil

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// StrictEnv is the environment variable that turns the Require functions'
// skips into failures when set to a non-empty value, so a CI run that is
// meant to run the integration tests cannot pass by skipping them. -short
// still skips.
const StrictEnv = "STARGAZER_REQUIRE_STRICT"

// RequireRoot skips t unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if euid := os.Geteuid(); euid != 0 {
		missing(t, "needs root (running as euid %d)", euid)
	}
}

// RequireRunc skips t unless a working runc is on PATH.
func RequireRunc(t testing.TB) {
	t.Helper()
	p, err := exec.LookPath("runc")
	if err != nil {
		missing(t, "needs runc on PATH (Debian package runc)")
		return
	}
	if out, err := exec.Command(p, "--version").CombinedOutput(); err != nil {
		missing(t, "needs a working runc: %s --version: %v: %s", p, err, strings.TrimSpace(string(out)))
	}
}

// RequireFUSE skips t unless FUSE filesystems can be mounted: /dev/fuse
// opens read-write, the kernel knows the fuse filesystem, and the test runs
// as root or fusermount3 (or fusermount) is on PATH.
func RequireFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		missing(t, "needs /dev/fuse: %v", err)
		return
	}
	f.Close()
	if !kernelHasFilesystem("fuse") {
		missing(t, "needs the kernel's fuse filesystem (not in /proc/filesystems; modprobe fuse)")
		return
	}
	if os.Geteuid() == 0 {
		return
	}
	for _, helper := range []string{"fusermount3", "fusermount"} {
		if _, err := exec.LookPath(helper); err == nil {
			return
		}
	}
	missing(t, "needs root or fusermount3 on PATH (Debian package fuse3) to mount FUSE")
}

// RequireContainerd skips t unless the containerd and ctr binaries are on
// PATH (Debian package containerd).
func RequireContainerd(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing(t, "needs %s on PATH (Debian package containerd)", bin)
			return
		}
	}
}

// RequireIntegration skips t under -short, and unless it runs as root with
// runc and FUSE: what a stargazer daemon with the stargz snapshotter needs.
func RequireIntegration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	RequireRoot(t)
	RequireRunc(t)
	RequireFUSE(t)
}

// missing skips t with the reason, or fails it when StrictEnv is set.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if os.Getenv(StrictEnv) != "" {
		t.Fatalf("requirement missing (%s is set): %s", StrictEnv, reason)
	}
	t.Skip("requirement missing: " + reason)
}

func kernelHasFilesystem(name string) bool {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 0 && fields[len(fields)-1] == name {
			return true
		}
	}
	return false
}
