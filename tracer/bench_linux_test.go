//go:build linux && (amd64 || arm64)

package tracer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// The Open benchmarks measure the wall time of a whole workload run,
// untraced and under each mechanism, so
//
//	go test -bench Open -run '^$' ./tracer/
//
// prints the tracing overhead side by side. The workload is a static Go
// program; each open is followed by a small read and a close.
//
// ptrace is the default engine (opens held for a seccomp listener);
// ptrace-stops is the same mechanism where no listener is granted (every
// open a ptrace stop); ptrace-floor answers the listener without looking
// at the call: the cost of the round trip alone, below which no tracer
// that reads names while the call is held can go.

// BenchmarkOpen10000 opens and reads 10,000 distinct small files.
func BenchmarkOpen10000(b *testing.B) {
	benchmarkWorkload(b, 10000, "many", "10000")
}

// BenchmarkOpenRepeat10000 opens 1,000 small files ten times each: only
// the first open of a file needs its result looked at.
func BenchmarkOpenRepeat10000(b *testing.B) {
	benchmarkWorkload(b, 1000, "many", "10000", "1000")
}

// BenchmarkOpenMissing10000 tries to open 10,000 names that do not exist,
// as library and module searches do.
func BenchmarkOpenMissing10000(b *testing.B) {
	benchmarkWorkload(b, 0, "missing", "10000")
}

var (
	benchDirOnce sync.Once
	benchDir     string
)

func benchmarkWorkload(b *testing.B, wantFiles int, mode string, args ...string) {
	wl := workloadBinary(b)
	benchDirOnce.Do(func() {
		d, err := os.MkdirTemp("", "tracer-bench-")
		if err != nil {
			b.Fatal(err)
		}
		for i := range 10000 {
			if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d", i)), []byte("small file\n"), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		removeAfterTests = append(removeAfterTests, d)
		benchDir = d
	})
	if benchDir == "" {
		b.Fatal("no benchmark files")
	}
	argv := append([]string{wl, mode, benchDir}, args...)
	benchmarkMechanisms(b, argv, benchDir, func(res *Result) error {
		// fanotify may also see unrelated short-lived processes of a
		// busy host: count ours only.
		n := 0
		for _, f := range res.Files {
			if strings.HasPrefix(f.Path, benchDir+"/") {
				n++
			}
		}
		if n != wantFiles {
			return fmt.Errorf("recorded %d files, want %d", n, wantFiles)
		}
		return nil
	})
}

// BenchmarkReadTree10000 reads 10,000 source files of the Go tree whole,
// at their real sizes (about 10 KiB on average), as a workload reading
// its own files does; the same walk untraced and traced.
func BenchmarkReadTree10000(b *testing.B) {
	src := filepath.Join(runtime.GOROOT(), "src")
	wl := workloadBinary(b)
	benchmarkMechanisms(b, []string{wl, "tree", src, "10000"}, src, func(res *Result) error {
		n := 0
		for _, f := range res.Files {
			if strings.HasPrefix(f.Path, src+"/") {
				n++
			}
		}
		if n != 10000 {
			return fmt.Errorf("recorded %d files, want 10000", n)
		}
		return nil
	})
}

// BenchmarkPythonImports is a real start-up: Debian's python3 importing
// the modules of the start-up benchmark's workload (about 200 files read,
// many more names looked up), bytecode not written so runs stay alike.
func BenchmarkPythonImports(b *testing.B) {
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		b.Skipf("no %s", python)
	}
	argv := []string{python, "-B", "-c", "import json, http.server, email.mime.text, sqlite3"}
	benchmarkMechanisms(b, argv, "/", func(res *Result) error {
		for _, f := range res.Files {
			if strings.Contains(f.Path, "/json/") {
				return nil
			}
		}
		return fmt.Errorf("nothing of json among %d recorded files", len(res.Files))
	})
}

// benchmarkMechanisms runs argv untraced and under each mechanism; check
// looks at each traced result. fanotify marks the filesystem of dir.
func benchmarkMechanisms(b *testing.B, argv []string, dir string, check func(*Result) error) {
	// One run first, so every variant finds the files in the page cache.
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	b.Run("untraced", func(b *testing.B) {
		for b.Loop() {
			if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
		}
	})
	for _, m := range []Mechanism{Ptrace, ptraceStops, ptraceFloor, Fanotify} {
		b.Run(string(m), func(b *testing.B) {
			if m == Fanotify {
				w, err := openFanotify([]string{dir})
				if err != nil {
					b.Skipf("fanotify not available: %v", err)
				}
				w.close()
			}
			for b.Loop() {
				cfg := Config{Argv: argv, Mechanism: m, FanotifyPaths: []string{dir}}
				switch m {
				case ptraceStops:
					cfg.Mechanism, cfg.ptraceStops = Ptrace, true
				case ptraceFloor:
					cfg.Mechanism, cfg.notifyNothing = Ptrace, true
				}
				res, err := Run(context.Background(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				if m == ptraceFloor {
					if !res.SeccompListener {
						b.Fatal("no seccomp listener granted")
					}
					continue
				}
				if res.Stop != StopExited || res.Exit.Code != 0 {
					b.Fatalf("stop %s, %v", res.Stop, res.Exit)
				}
				if err := check(res); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
