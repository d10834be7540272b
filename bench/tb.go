package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

// scope is the testing.TB the testutil harness is driven with outside `go
// test`. A failure panics with an abort that run recovers, and cleanups run
// when the scope ends, so every registry, daemon and temporary directory a
// step made is gone once its run returns. The embedded TB is nil: the
// harness only calls the methods defined here, and any other would panic.
type scope struct {
	testing.TB
	name     string
	log      io.Writer
	cleanups []func()
	failed   bool
	ctx      context.Context
	cancel   context.CancelFunc
}

// abort carries a Fatal or Skip out of a step.
type abort struct {
	msg  string
	skip bool
}

// run calls f with a new scope named name, runs its cleanups, and returns
// the failure that stopped it, if any.
func run(name string, log io.Writer, f func(t *scope)) (err error) {
	t := &scope{name: name, log: log}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	defer func() {
		r := recover()
		t.cancel()
		t.runCleanups()
		switch a := r.(type) {
		case nil:
			if t.failed && err == nil {
				err = fmt.Errorf("%s failed", name)
			}
		case abort:
			if a.skip {
				err = fmt.Errorf("%s skipped: %s", name, a.msg)
			} else {
				err = fmt.Errorf("%s: %s", name, a.msg)
			}
		default:
			panic(r)
		}
	}()
	f(t)
	return nil
}

func (t *scope) runCleanups() {
	for len(t.cleanups) > 0 {
		f := t.cleanups[len(t.cleanups)-1]
		t.cleanups = t.cleanups[:len(t.cleanups)-1]
		func() {
			defer func() {
				if r := recover(); r != nil {
					fmt.Fprintf(t.log, "%s: cleanup: %v\n", t.name, r)
				}
			}()
			f()
		}()
	}
}

func (t *scope) Helper()                  {}
func (t *scope) Name() string             { return t.name }
func (t *scope) Context() context.Context { return t.ctx }
func (t *scope) Cleanup(f func())         { t.cleanups = append(t.cleanups, f) }
func (t *scope) Failed() bool             { return t.failed }
func (t *scope) Fail()                    { t.failed = true }
func (t *scope) FailNow()                 { t.failed = true; panic(abort{msg: "failed"}) }
func (t *scope) Skipped() bool            { return false }

func (t *scope) Log(args ...any) { t.print(fmt.Sprintln(args...)) }
func (t *scope) Logf(format string, args ...any) {
	t.print(fmt.Sprintf(format, args...))
}
func (t *scope) Error(args ...any) { t.failed = true; t.Log(args...) }
func (t *scope) Errorf(format string, args ...any) {
	t.failed = true
	t.Logf(format, args...)
}
func (t *scope) Fatal(args ...any) {
	t.failed = true
	panic(abort{msg: strings.TrimSpace(fmt.Sprintln(args...))})
}
func (t *scope) Fatalf(format string, args ...any) {
	t.failed = true
	panic(abort{msg: fmt.Sprintf(format, args...)})
}
func (t *scope) Skip(args ...any) {
	panic(abort{msg: strings.TrimSpace(fmt.Sprintln(args...)), skip: true})
}
func (t *scope) Skipf(format string, args ...any) {
	panic(abort{msg: fmt.Sprintf(format, args...), skip: true})
}
func (t *scope) SkipNow() { panic(abort{msg: "skipped", skip: true}) }

func (t *scope) TempDir() string {
	dir, err := os.MkdirTemp("", "stargazer-bench-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (t *scope) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	os.Setenv(key, value)
	t.Cleanup(func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	})
}

func (t *scope) print(s string) {
	if t.log != nil {
		fmt.Fprintf(t.log, "    %s: %s", t.name, strings.TrimRight(s, "\n")+"\n")
	}
}
