//go:build linux && (amd64 || arm64)

package tracer

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// checkProc makes sure /proc shows the PID namespace of this process. Both
// engines look the workload's processes up there by pid: through a /proc
// of another namespace (a PID namespace entered without mounting its own
// proc, as `unshare --pid --fork` without --mount-proc leaves it) they
// would read unrelated processes, lose the files the workload opens, and
// never find a daemon it leaves behind, so Run would wait for that daemon
// forever.
func checkProc() error {
	self, err := os.Readlink("/proc/self")
	if err != nil {
		return fmt.Errorf("no usable /proc (a proc filesystem must be mounted there): %w", err)
	}
	if pid := os.Getpid(); self != strconv.Itoa(pid) {
		return fmt.Errorf("/proc belongs to another PID namespace (it names this process %s, not %d): mount a proc filesystem of this namespace on /proc", self, pid)
	}
	return nil
}

// readPPid returns the parent of pid from /proc/PID/stat.
func readPPid(pid int) (int, error) {
	ppid, _, err := readStat(pid)
	return ppid, err
}

// readStat returns a process's parent pid and its start time (clock ticks
// since boot), which with the pid identifies the process: pids are reused.
func readStat(pid int) (ppid int, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses,
	// so parse from the last ')'. starttime is field 22, the 20th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, unix.EINVAL
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 {
		return 0, 0, unix.EINVAL
	}
	if ppid, err = strconv.Atoi(string(f[1])); err != nil {
		return 0, 0, err
	}
	if start, err = strconv.ParseUint(string(f[19]), 10, 64); err != nil {
		return 0, 0, err
	}
	return ppid, start, nil
}

// listPids returns the pids of all processes visible in /proc.
func listPids() []int {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidSet is a set of pids shared between the goroutine that learns about
// workload processes and the one that kills them.
type pidSet struct {
	mu sync.Mutex
	m  map[int]struct{}
}

func newPidSet() *pidSet { return &pidSet{m: make(map[int]struct{})} }

func (s *pidSet) add(pid int) {
	s.mu.Lock()
	s.m[pid] = struct{}{}
	s.mu.Unlock()
}

func (s *pidSet) remove(pid int) {
	s.mu.Lock()
	delete(s.m, pid)
	s.mu.Unlock()
}

func (s *pidSet) has(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[pid]
	return ok
}

func (s *pidSet) list() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, 0, len(s.m))
	for pid := range s.m {
		out = append(out, pid)
	}
	return out
}

// killTree sends SIGKILL to every known workload process and to every
// process whose ancestry reaches one, or reaches the tracer itself without
// passing one of the tracer's children that existed before the workload
// started (orphans of the workload are reparented to the tracer, which is a
// child subreaper). It returns how many processes it signalled.
func killTree(known *pidSet, self int, foreign map[int]struct{}) int {
	n := 0
	roots := known.list()
	for _, pid := range roots {
		if unix.Kill(pid, unix.SIGKILL) == nil {
			n++
		}
	}
	isRoot := make(map[int]bool, len(roots)+1)
	for _, pid := range roots {
		isRoot[pid] = true
	}
	isRoot[self] = true
	parent := make(map[int]int)
	for _, pid := range listPids() {
		if pp, err := readPPid(pid); err == nil {
			parent[pid] = pp
		}
	}
	for pid := range parent {
		if pid == self || isRoot[pid] {
			continue
		}
		if _, skip := foreign[pid]; skip {
			continue
		}
		// Walk up; a cycle cannot occur, but bound the walk anyway.
		for p, i := parent[pid], 0; p > 0 && i < 4096; p, i = parent[p], i+1 {
			if _, skip := foreign[p]; skip {
				break
			}
			if isRoot[p] {
				if unix.Kill(pid, unix.SIGKILL) == nil {
					n++
				}
				break
			}
		}
	}
	return n
}

// childrenOf returns the current children of pid, from /proc.
func childrenOf(pid int) map[int]struct{} {
	out := make(map[int]struct{})
	for _, p := range listPids() {
		if pp, err := readPPid(p); err == nil && pp == pid {
			out[p] = struct{}{}
		}
	}
	return out
}
