package tracer

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// Status is the final report Main writes with --status-out: how the
// workload ended and how the trace went.
type Status struct {
	Mechanism Mechanism `json:"mechanism"`
	// SeccompListener: see Result.SeccompListener.
	SeccompListener bool       `json:"seccompListener,omitempty"`
	StopReason      StopReason `json:"stopReason"`
	// ExitCode is the workload's exit code, or -1 when a signal ended it.
	ExitCode int `json:"exitCode"`
	// Signal names the signal that ended the workload, if one did.
	Signal     string   `json:"signal,omitempty"`
	Files      int      `json:"files"`
	DurationMs int64    `json:"durationMs"`
	Warnings   []string `json:"warnings,omitempty"`
	// Output is the end of what the workload wrote to stdout and stderr,
	// for error messages about a workload that failed.
	Output string `json:"output,omitempty"`
}

// stopGrace is how long Main waits past the period for the workload's
// processes to be gone before it exits anyway.
const stopGrace = time.Minute

// outputTailSize is how much of the workload's output Status keeps.
const outputTailSize = 4 << 10

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

const mainUsage = `usage: %s [flags] -- ARGV...

Runs ARGV, records the regular files it opens in first-access order and
writes the record as JSON lines (paths relative to the root, no layer
information). Without --record-out the record goes to stdout and the
workload's stdout to stderr.

flags:
`

// Main is the stargazer-tracer command: it parses args (the arguments after
// the program name), runs the workload with Run and writes the record, and
// returns the exit code: 0 when a record was written (even if the workload
// failed: that is a warning), 1 when tracing failed, 2 on a usage error.
// A program embedding it must call MaybeRunShim at the top of main. SIGINT
// and SIGTERM end tracing like the period does, and the record is still
// written.
func Main(args []string, stdout, stderr io.Writer) int {
	const name = "stargazer-tracer"
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, mainUsage, name)
		fs.PrintDefaults()
	}
	var (
		mechanism  = fs.String("tracer", string(Auto), "tracing mechanism: auto, ptrace or fanotify")
		period     = fs.Duration("period", 0, "stop tracing after this long (0: when the workload exits)")
		waitOnLine = fs.String("wait-on-line", "", "stop tracing when a line of the workload's output contains `TEXT`")
		recordOut  = fs.String("record-out", "", "write the record to `FILE` (default stdout)")
		statusOut  = fs.String("status-out", "", "write a JSON status (exit code, stop reason, warnings) to `FILE`")
		dir        = fs.String("dir", "", "working directory of the workload (default the current one)")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	argv := fs.Args()
	if len(argv) == 0 {
		fmt.Fprintf(stderr, "%s: no command given\n", name)
		fs.Usage()
		return 2
	}
	mech, err := ParseMechanism(*mechanism)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}

	// Open the record first: an unwritable path should fail before the
	// workload runs, not after.
	var record io.Writer = stdout
	workloadOut := stderr // stdout carries the record
	if *recordOut != "" && *recordOut != "-" {
		f, err := os.Create(*recordOut)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return 1
		}
		defer f.Close()
		record, workloadOut = f, stdout
	}

	// SIGINT and SIGTERM cancel the run; the partial record is still
	// worth writing.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if *period > 0 {
		// A build step must never hang on a trace: should the workload's
		// processes outlive the kill, give up well after the period.
		watchdog := time.AfterFunc(*period+stopGrace, func() {
			fmt.Fprintf(stderr, "%s: the workload did not end %v after the period; giving up\n", name, stopGrace)
			os.Exit(1)
		})
		defer watchdog.Stop()
	}
	tail := &tailWriter{max: outputTailSize}
	res, err := Run(ctx, Config{
		Argv:       argv,
		Dir:        *dir,
		Period:     *period,
		WaitOnLine: *waitOnLine,
		Mechanism:  mech,
		Stdin:      os.Stdin,
		Stdout:     io.MultiWriter(workloadOut, tail),
		Stderr:     io.MultiWriter(stderr, tail),
	})
	if err != nil && (res == nil || !errors.Is(err, context.Canceled)) {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}

	bw := bufio.NewWriter(record)
	if err := NewWriter(bw).WriteAll(res.Entries()); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	if err := bw.Flush(); err != nil {
		fmt.Fprintf(stderr, "%s: write record: %v\n", name, err)
		return 1
	}
	if f, ok := record.(*os.File); ok && record != stdout {
		if err := f.Close(); err != nil {
			fmt.Fprintf(stderr, "%s: write record: %v\n", name, err)
			return 1
		}
	}

	st := res.Status()
	st.Output = tail.String()
	for _, w := range st.Warnings {
		fmt.Fprintf(stderr, "%s: warning: %s\n", name, w)
	}
	if *statusOut != "" {
		b, _ := json.Marshal(st)
		if err := os.WriteFile(*statusOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "%s: write status: %v\n", name, err)
			return 1
		}
	}
	return 0
}

// Status summarizes the result for --status-out.
func (r *Result) Status() Status {
	st := Status{
		Mechanism:       r.Mechanism,
		SeccompListener: r.SeccompListener,
		StopReason:      r.Stop,
		ExitCode:        r.Exit.Code,
		Files:           len(r.Files),
		DurationMs:      r.Duration.Round(time.Millisecond).Milliseconds(),
		Warnings:        r.Warnings,
	}
	if !r.Exit.Exited {
		st.ExitCode = -1
		st.Signal = signalName(r.Exit.Signal)
	}
	return st
}
