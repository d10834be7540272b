// Command workload is the tracer tests' workload: each mode touches files
// in one known way, so the test knows exactly which files must be recorded.
package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: workload MODE ARGS..."))
	}
	mode, args := os.Args[1], os.Args[2:]
	switch mode {
	case "read": // read each file in turn
		for _, f := range args {
			read(f)
		}
	case "interp": // run as a "#!" interpreter: never opens its script
		read(os.Getenv("WORKLOAD_DATA"))
	case "threads": // read each file on its own OS thread
		var wg sync.WaitGroup
		for _, f := range args {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread() // end the thread with the goroutine
				read(f)
			}()
		}
		wg.Wait()
	case "children": // read each file in a child process
		for _, f := range args {
			run(exec.Command(os.Args[0], "read", f))
		}
	case "chroot": // chroot DIR FILE: read FILE below the new root DIR
		if err := syscall.Chroot(args[0]); err != nil {
			fail(err)
		}
		read(args[1])
	case "dirfd": // openat(dirfd, name)
		dfd, err := syscall.Open(args[0], syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			fail(err)
		}
		fd, err := syscall.Openat(dfd, args[1], syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			fail(err)
		}
		f := os.NewFile(uintptr(fd), args[1])
		io.Copy(io.Discard, f)
		f.Close()
	case "mix": // mix STATONLY OPATH DIR MISSING READ CREATE
		if _, err := os.Stat(args[0]); err != nil {
			fail(err)
		}
		unix.Access(args[0], unix.R_OK)
		fd, err := syscall.Open(args[1], unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			fail(err)
		}
		syscall.Close(fd)
		if d, err := os.Open(args[2]); err == nil {
			d.Readdirnames(-1)
			d.Close()
		}
		if _, err := os.Open(args[3]); err == nil {
			fail(fmt.Errorf("%s exists", args[3]))
		}
		read(args[4])
		if err := os.WriteFile(args[5], []byte("made by the workload"), 0o644); err != nil {
			fail(err)
		}
	case "exit": // exit CODE FILE
		read(args[1])
		code, _ := strconv.Atoi(args[0])
		os.Exit(code)
	case "crash": // read FILE, then die by a signal
		read(args[0])
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	case "forever": // read FILE, then never exit
		read(args[0])
		sleepForever()
	case "daemon": // daemon FILE PIDFILE [stay]: double fork + setsid
		cmd := exec.Command(os.Args[0], "daemon-parent", args[0], args[1])
		run(cmd)
		for { // wait for the daemon to be up
			if b, err := os.ReadFile(args[1]); err == nil && strings.HasSuffix(string(b), "\n") {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if len(args) > 2 {
			fmt.Println("daemon up")
			sleepForever()
		}
	case "daemon-parent": // start the daemon in a new session and leave
		cmd := exec.Command(os.Args[0], "daemon-child", args[0], args[1])
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			fail(err)
		}
		os.Exit(0)
	case "daemon-child":
		read(args[0])
		if err := os.WriteFile(args[1], []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			fail(err)
		}
		sleepForever()
	case "line": // line TEXT BEFORE AFTER: print TEXT between two reads
		read(args[1])
		fmt.Printf("starting... %s now\n", args[0])
		time.Sleep(20 * time.Second)
		read(args[2])
		sleepForever()
	case "execthread": // exec from a thread that is not the leader
		done := make(chan error)
		go func() {
			runtime.LockOSThread()
			done <- syscall.Exec(os.Args[0], []string{os.Args[0], "read", args[0]}, os.Environ())
		}()
		fail(<-done)
	case "selfexec": // exec /proc/self/exe read FILE, as busybox runs applets
		fail(syscall.Exec("/proc/self/exe", []string{"wl", "read", args[0]}, os.Environ()))
	case "caps": // print the effective capabilities
		b, err := os.ReadFile("/proc/self/status")
		if err != nil {
			fail(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "CapEff:") {
				fmt.Println(strings.TrimSpace(strings.TrimPrefix(l, "CapEff:")))
			}
		}
	case "many": // many DIR N [DISTINCT]: open N files DIR/fNNNNN, cycling
		// through the first DISTINCT of them (default N)
		n, _ := strconv.Atoi(args[1])
		distinct := n
		if len(args) > 2 {
			distinct, _ = strconv.Atoi(args[2])
		}
		buf := make([]byte, 4096)
		for i := range n {
			f, err := os.Open(filepath.Join(args[0], fmt.Sprintf("f%05d", i%distinct)))
			if err != nil {
				fail(err)
			}
			f.Read(buf)
			f.Close()
		}
	case "tree": // tree DIR N: read the first N regular files below DIR whole
		n, _ := strconv.Atoi(args[1])
		err := filepath.WalkDir(args[0], func(p string, d os.DirEntry, err error) error {
			if err != nil || n == 0 {
				return err
			}
			if d.Type().IsRegular() {
				read(p)
				n--
			}
			return nil
		})
		if err != nil {
			fail(err)
		}
		if n > 0 {
			fail(fmt.Errorf("%d files short", n))
		}
	case "missing": // missing DIR N: try to open N names that do not exist
		n, _ := strconv.Atoi(args[1])
		for i := range n {
			if f, err := os.Open(filepath.Join(args[0], fmt.Sprintf("missing%05d", i))); err == nil {
				f.Close()
				fail(fmt.Errorf("%s exists", f.Name()))
			}
		}
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
}

func read(name string) {
	f, err := os.Open(name)
	if err != nil {
		fail(err)
	}
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil {
		fail(err)
	}
}

func run(cmd *exec.Cmd) {
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "workload:", err)
	os.Exit(99)
}

// sleepForever blocks without tripping the runtime's deadlock detector.
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}
