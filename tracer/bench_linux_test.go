//go:build linux && (amd64 || arm64)

package tracer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// BenchmarkOpen10000 measures the wall time of a workload that opens and
// reads 10,000 small files, untraced and under each mechanism, so
//
//	go test -bench Open -run '^$' ./tracer/
//
// prints the tracing overhead side by side.
func BenchmarkOpen10000(b *testing.B) {
	const n = 10000
	wl := workloadBinary(b)
	dir := b.TempDir()
	for i := range n {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), []byte("small file\n"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	argv := []string{wl, "many", dir, strconv.Itoa(n)}

	b.Run("untraced", func(b *testing.B) {
		for b.Loop() {
			if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
		}
	})
	for _, m := range []Mechanism{Ptrace, Fanotify} {
		b.Run(string(m), func(b *testing.B) {
			if m == Fanotify {
				w, err := openFanotify([]string{dir})
				if err != nil {
					b.Skipf("fanotify not available: %v", err)
				}
				w.close()
			}
			for b.Loop() {
				res, err := Run(context.Background(), Config{Argv: argv, Mechanism: m, FanotifyPaths: []string{dir}})
				if err != nil {
					b.Fatal(err)
				}
				// The binary and every file, at least.
				if len(res.Files) < n+1 || res.Stop != StopExited || res.Exit.Code != 0 {
					b.Fatalf("recorded %d files, stop %s, %v", len(res.Files), res.Stop, res.Exit)
				}
			}
		})
	}
}
