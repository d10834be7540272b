package frontend

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/stargazer-build/stargazer/tracer/buildtrace"
)

// Mode says whether and how strictly a build traces its image.
type Mode string

// Trace modes, set by STARGAZER_TRACE or the stargazer-trace directive.
const (
	// ModeOn traces when the image has a workload; a build whose trace
	// cannot run or whose workload fails warns and exports what it has.
	ModeOn Mode = "on"
	// ModeOff never traces.
	ModeOff Mode = "off"
	// ModeRequired fails the build when the trace cannot run or the
	// workload fails.
	ModeRequired Mode = "required"
)

// Build arguments that configure tracing. Each has a Dockerfile directive
// of the same meaning: the name in lower case with dashes, e.g.
// "# stargazer-trace-args=[\"/app/server\"]".
const (
	ArgTrace           = "STARGAZER_TRACE"
	ArgTraceArgs       = "STARGAZER_TRACE_ARGS"
	ArgTracePeriod     = "STARGAZER_TRACE_PERIOD"
	ArgTraceWaitOnLine = "STARGAZER_TRACE_WAIT_ON_LINE"
	ArgTraceEnv        = "STARGAZER_TRACE_ENV"
)

// ErrBadConfig is wrapped by every error about a malformed build argument
// or directive.
var ErrBadConfig = errors.New("invalid stargazer trace configuration")

// Config is the trace configuration of one build.
type Config struct {
	Mode Mode
	// Workloads are run one after the other and their records merged.
	// One workload with no Args means the image's entrypoint and cmd.
	Workloads []buildtrace.Workload
}

// settings are the values of one source (directives or build args) before
// they are combined.
type settings struct {
	mode       *Mode
	args       [][]string
	period     *time.Duration
	waitOnLine *string
	env        []string
}

// ParseConfig reads the trace configuration from the build's frontend
// options (build-arg:STARGAZER_*) and the Dockerfile's leading directives
// (# stargazer-trace…=…). Build arguments win over directives. Every
// directive stargazer-trace-args adds a workload, so several workloads
// are traced and their records merged; period, wait-on-line and env apply
// to all of them.
func ParseConfig(opts map[string]string, dockerfile []byte) (Config, error) {
	var dir, arg settings
	if err := parseDirectives(dockerfile, &dir); err != nil {
		return Config{}, err
	}
	for _, name := range []string{ArgTrace, ArgTraceArgs, ArgTracePeriod, ArgTraceWaitOnLine, ArgTraceEnv} {
		v, ok := opts["build-arg:"+name]
		if !ok {
			continue
		}
		if err := arg.set(name, v, "build arg "+name); err != nil {
			return Config{}, err
		}
	}
	cfg := Config{Mode: ModeOn}
	for _, s := range []settings{dir, arg} {
		if s.mode != nil {
			cfg.Mode = *s.mode
		}
	}
	argv := dir.args
	if len(arg.args) > 0 {
		argv = arg.args
	}
	var w buildtrace.Workload
	for _, s := range []settings{dir, arg} {
		if s.period != nil {
			w.Period = *s.period
		}
		if s.waitOnLine != nil {
			w.WaitOnLine = *s.waitOnLine
		}
		w.Env = append(w.Env, s.env...)
	}
	if len(argv) == 0 {
		cfg.Workloads = []buildtrace.Workload{w}
		return cfg, nil
	}
	for _, a := range argv {
		wl := w
		wl.Env = append([]string(nil), w.Env...)
		wl.Args = a
		// The given command replaces the entrypoint, so it runs as written.
		wl.Entrypoint = []string{}
		cfg.Workloads = append(cfg.Workloads, wl)
	}
	return cfg, nil
}

// parseDirectives reads "# stargazer-trace…=value" lines from the leading
// comment block of a Dockerfile, where BuildKit's own directives live.
func parseDirectives(dockerfile []byte, s *settings) error {
	sc := bufio.NewScanner(bytes.NewReader(dockerfile))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		if !strings.HasPrefix(text, "#") {
			break
		}
		body := strings.TrimSpace(strings.TrimPrefix(text, "#"))
		key, value, ok := strings.Cut(body, "=")
		if !ok {
			continue
		}
		key = strings.ToLower(strings.TrimSpace(key))
		if !strings.HasPrefix(key, "stargazer-") {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
		if err := s.set(name, strings.TrimSpace(value), fmt.Sprintf("directive %q on line %d", key, line)); err != nil {
			return err
		}
	}
	return sc.Err()
}

func (s *settings) set(name, v, what string) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadConfig, what, fmt.Sprintf(format, args...))
	}
	switch name {
	case ArgTrace:
		m := Mode(strings.ToLower(v))
		switch m {
		case ModeOn, ModeOff, ModeRequired:
		case "":
			m = ModeOn
		default:
			return bad("%q: want on, off or required", v)
		}
		s.mode = &m
	case ArgTraceArgs:
		var a []string
		if err := json.Unmarshal([]byte(v), &a); err != nil || len(a) == 0 || a[0] == "" {
			return bad("%q: want a non-empty JSON array of strings, e.g. [\"/app/server\",\"--port\",\"80\"]", v)
		}
		s.args = append(s.args, a)
	case ArgTracePeriod:
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return bad("%q: want a positive duration such as 10s", v)
		}
		s.period = &d
	case ArgTraceWaitOnLine:
		if v == "" {
			return bad("empty text")
		}
		s.waitOnLine = &v
	case ArgTraceEnv:
		var env []string
		if strings.HasPrefix(v, "[") {
			if err := json.Unmarshal([]byte(v), &env); err != nil {
				return bad("%q: want KEY=VALUE or a JSON array of them", v)
			}
		} else {
			env = []string{v}
		}
		for _, e := range env {
			if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
				return bad("%q: want KEY=VALUE", e)
			}
		}
		s.env = append(s.env, env...)
	default:
		return bad("unknown setting; want one of stargazer-trace, stargazer-trace-args, stargazer-trace-period, stargazer-trace-wait-on-line, stargazer-trace-env")
	}
	return nil
}
