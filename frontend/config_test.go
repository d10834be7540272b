package frontend

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	df := []byte(`# syntax=docker/dockerfile:1
# stargazer-trace=required
# stargazer-trace-args=["/app/server","--port","80"]
# stargazer-trace-args=["/app/warmup"]
# stargazer-trace-period=3s
# stargazer-trace-env=MODE=trace
#   stargazer-trace-wait-on-line = listening
FROM scratch
# stargazer-trace=off
`)
	cfg, err := ParseConfig(map[string]string{"build-arg:STARGAZER_TRACE_ENV": `["A=1","B=2"]`}, df)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != ModeRequired {
		t.Errorf("mode %q, want required (a directive after FROM is a comment)", cfg.Mode)
	}
	if len(cfg.Workloads) != 2 {
		t.Fatalf("%d workloads, want 2", len(cfg.Workloads))
	}
	w := cfg.Workloads[0]
	if !slices.Equal(w.Args, []string{"/app/server", "--port", "80"}) || !slices.Equal(cfg.Workloads[1].Args, []string{"/app/warmup"}) {
		t.Errorf("args %v, %v", w.Args, cfg.Workloads[1].Args)
	}
	if w.Period != 3*time.Second || w.WaitOnLine != "listening" {
		t.Errorf("period %v, wait %q", w.Period, w.WaitOnLine)
	}
	if want := []string{"MODE=trace", "A=1", "B=2"}; !slices.Equal(w.Env, want) {
		t.Errorf("env %v, want %v", w.Env, want)
	}

	// Build args win over directives; no args means the image's command.
	cfg, err = ParseConfig(map[string]string{"build-arg:STARGAZER_TRACE": "off"}, df)
	if err != nil || cfg.Mode != ModeOff {
		t.Fatalf("mode %q, err %v", cfg.Mode, err)
	}
	cfg, err = ParseConfig(nil, []byte("FROM scratch\n"))
	if err != nil || cfg.Mode != ModeOn || len(cfg.Workloads) != 1 || cfg.Workloads[0].Args != nil {
		t.Fatalf("defaults: %+v, %v", cfg, err)
	}
	cfg, err = ParseConfig(map[string]string{"build-arg:STARGAZER_TRACE_ARGS": `["/bin/x"]`}, df)
	if err != nil || len(cfg.Workloads) != 1 || cfg.Workloads[0].Args[0] != "/bin/x" {
		t.Fatalf("build arg args: %+v, %v", cfg, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		opts map[string]string
		df   string
		want string
	}{
		{map[string]string{"build-arg:STARGAZER_TRACE": "maybe"}, "", "STARGAZER_TRACE"},
		{map[string]string{"build-arg:STARGAZER_TRACE_ARGS": "/bin/sh"}, "", "STARGAZER_TRACE_ARGS"},
		{map[string]string{"build-arg:STARGAZER_TRACE_ARGS": "[]"}, "", "STARGAZER_TRACE_ARGS"},
		{map[string]string{"build-arg:STARGAZER_TRACE_PERIOD": "soon"}, "", "STARGAZER_TRACE_PERIOD"},
		{map[string]string{"build-arg:STARGAZER_TRACE_PERIOD": "-1s"}, "", "STARGAZER_TRACE_PERIOD"},
		{map[string]string{"build-arg:STARGAZER_TRACE_ENV": "NOEQUALS"}, "", "STARGAZER_TRACE_ENV"},
		{map[string]string{"build-arg:STARGAZER_TRACE_WAIT_ON_LINE": ""}, "", "STARGAZER_TRACE_WAIT_ON_LINE"},
		{nil, "# stargazer-trace-args=[oops\nFROM scratch\n", `"stargazer-trace-args" on line 1`},
		{nil, "# syntax=x\n\n# stargazer-trace-period=abc\nFROM scratch\n", "line 3"},
		{nil, "# stargazer-trace-speed=fast\nFROM scratch\n", `"stargazer-trace-speed"`},
	}
	for _, tt := range tests {
		_, err := ParseConfig(tt.opts, []byte(tt.df))
		if err == nil {
			t.Errorf("%v %q: want error", tt.opts, tt.df)
			continue
		}
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v %q: error %q does not name %q", tt.opts, tt.df, err, tt.want)
		}
	}
}
