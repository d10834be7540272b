package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moby/buildkit/client"

	"github.com/stargazer-build/stargazer/buildx"
	"github.com/stargazer-build/stargazer/testutil"
)

// sample is one cold build of `FROM image` + `RUN workload`.
type sample struct {
	// Build is the wall time of the whole build, as the client sees it.
	Build time.Duration
	// Ready is the time from the start of the build until the workload's
	// readiness line, by the daemon's timestamp of that log line.
	Ready time.Duration
	// ReadyBytes and ReadyRequests are what the registry had served when
	// the client saw the readiness line.
	ReadyBytes    int64
	ReadyRequests int
	// Bytes and Requests are what the registry served by the end of the
	// build (background fetch included).
	Bytes    int64
	Requests int
	// Resolve, Pull and Run split Ready by the progress BuildKit reported
	// (report.Row); all zero when it did not tell the steps apart.
	Resolve, Pull, Run time.Duration
}

// coldBuild starts a daemon on a fresh root, builds FROM ref + RUN argv on
// it and stops it.
func coldBuild(log io.Writer, reg *testutil.Registry, ref string, argv []string, snapshotter string, backgroundFetch bool, daemonConfig string) (sample, error) {
	var s sample
	err := run("cold build "+ref, log, func(t *scope) {
		cmd, err := json.Marshal(argv)
		if err != nil {
			t.Fatal(err)
		}
		ctxDir := testutil.BuildContext(t, map[string]string{"Dockerfile": "FROM " + ref + "\nRUN " + string(cmd) + "\n"})
		d := testutil.StartDaemon(t, testutil.WithSnapshotter(snapshotter), testutil.WithPlainHTTPRegistry(reg.Host()),
			testutil.WithBackgroundFetch(backgroundFetch), testutil.WithPrefetch(true), testutil.WithDaemonConfig(daemonConfig))
		w := &readyWatcher{reg: reg}
		dropPageCache(log)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		reg.Reset()
		start := time.Now()
		_, err = buildx.Build(ctx, buildx.BuildOptions{
			ContextDir: ctxDir,
			Progress:   "rawjson",
			Daemon:     buildx.DaemonOptions{Addr: d.Addr},
			Stderr:     w,
		})
		s.Build = time.Since(start)
		if err != nil {
			t.Fatalf("build: %v\n%s", err, tailOf([]byte(d.Logs()), 3000))
		}
		st := reg.Totals()
		s.Bytes, s.Requests = st.Bytes, st.Requests
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.at.IsZero() {
			t.Fatalf("the workload never printed %q", readyLine)
		}
		s.Ready = w.at.Sub(start)
		s.ReadyBytes, s.ReadyRequests = w.stats.Bytes, w.stats.Requests
		s.Resolve, s.Pull, s.Run = w.split(start)
		if log != io.Discard {
			writeTimeline(log, reg.Requests(), start, s.Ready)
		}
	})
	return s, err
}

// pageCache says whether runs start with an empty page cache: "" while
// they do, else why not.
var pageCache struct {
	sync.Mutex
	notDropped string
}

// dropPageCache writes dirty pages back and empties the page cache before
// a run, so that no run reads what an earlier one left in memory or pays
// for writing back what an earlier one wrote (a cold machine, not only a
// cold daemon). Without the right to (not root), runs go on with the page
// cache as it is, and the results say so.
func dropPageCache(log io.Writer) {
	unix.Sync()
	err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	pageCache.Lock()
	defer pageCache.Unlock()
	if err != nil && pageCache.notDropped == "" {
		pageCache.notDropped = err.Error()
		fmt.Fprintf(log, "warning: runs start with the page cache as earlier ones left it: %v\n", err)
	}
}

// writeTimeline logs a run's registry requests with when each arrived and
// was answered, relative to the build's start, and the readiness.
func writeTimeline(w io.Writer, reqs []testutil.Request, start time.Time, ready time.Duration) {
	ms := func(t time.Time) int64 {
		if t.IsZero() {
			return -1
		}
		return t.Sub(start).Milliseconds()
	}
	for _, r := range reqs {
		what := r.Path
		if r.Digest != "" {
			what = "blob " + r.Digest.Encoded()[:12]
		}
		fmt.Fprintf(w, "  %5d-%5d ms  %-4s %s %s  %d, %d bytes\n", ms(r.Arrived), ms(r.Done), r.Method, what, r.Range, r.Status, r.Bytes)
	}
	fmt.Fprintf(w, "  %5d ms ready\n", ready.Milliseconds())
}

// readyWatcher reads BuildKit's rawjson progress and notes the daemon's
// timestamp of the first log line holding readyLine, and the registry's
// totals when it arrives; and when the image's metadata was resolved and
// the FROM step ended.
type readyWatcher struct {
	reg *testutil.Registry // nil: no totals

	mu       sync.Mutex
	buf      bytes.Buffer
	at       time.Time
	stats    testutil.Stats
	resolved time.Time // the "load metadata" step completed
	pulled   time.Time // the FROM step completed
}

func (w *readyWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadBytes('\n')
		if err != nil {
			// An incomplete line: keep it for the next write.
			rest := append([]byte(nil), line...)
			w.buf.Reset()
			w.buf.Write(rest)
			return len(p), nil
		}
		w.scan(line)
	}
}

func (w *readyWatcher) scan(line []byte) {
	if !w.at.IsZero() {
		return
	}
	var ss client.SolveStatus
	if json.Unmarshal(line, &ss) != nil {
		return
	}
	for _, v := range ss.Vertexes {
		if v.Completed == nil {
			continue
		}
		switch step := stepOf(v.Name); {
		case strings.HasPrefix(v.Name, "[internal] load metadata for "):
			w.resolved = latest(w.resolved, *v.Completed)
		case strings.HasPrefix(step, "FROM "):
			w.pulled = latest(w.pulled, *v.Completed)
		}
	}
	for _, l := range ss.Logs {
		sc := bufio.NewScanner(bytes.NewReader(l.Data))
		for sc.Scan() {
			if sc.Text() == readyLine {
				w.at = l.Timestamp
				if w.reg != nil {
					w.stats = w.reg.Totals()
				}
				return
			}
		}
	}
}

// split returns how the time from start to ready divides: until the
// metadata was resolved, the FROM step, and the rest; all zero unless the
// progress told each.
func (w *readyWatcher) split(start time.Time) (resolve, pull, run time.Duration) {
	if w.resolved.IsZero() || w.pulled.Before(w.resolved) || w.at.Before(w.pulled) {
		return 0, 0, 0
	}
	return w.resolved.Sub(start), w.pulled.Sub(w.resolved), w.at.Sub(w.pulled)
}

// stepOf returns a Dockerfile step's instruction from its vertex name
// ("[1/2] FROM …" gives "FROM …").
func stepOf(name string) string {
	if !strings.HasPrefix(name, "[") {
		return ""
	}
	_, step, _ := strings.Cut(name, "] ")
	return step
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// describe names a run for the log.
func describe(image, form string, i, n int) string {
	return fmt.Sprintf("%s/%s run %d/%d", image, form, i+1, n)
}
