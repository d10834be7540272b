package buildx

import (
	"errors"
	"testing"

	"github.com/moby/buildkit/client"
)

func TestParseOutput(t *testing.T) {
	tests := []struct {
		in      string
		typ     string
		attrs   map[string]string
		dir     string
		file    bool
		wantErr error
		errText string
	}{
		{in: "type=image,name=r/x:1,push=true", typ: client.ExporterImage, attrs: map[string]string{"name": "r/x:1", "push": "true"}},
		{in: "type=registry,name=r/x", typ: client.ExporterImage, attrs: map[string]string{"name": "r/x", "push": "true"}},
		{in: "type=oci,dest=out.tar", typ: client.ExporterOCI, attrs: map[string]string{}, file: true},
		{in: "type=docker,dest=out.tar,name=x", typ: client.ExporterDocker, attrs: map[string]string{"name": "x"}, file: true},
		{in: "type=local,dest=out", typ: client.ExporterLocal, attrs: map[string]string{}, dir: "out"},
		{in: "out", typ: client.ExporterLocal, attrs: map[string]string{}, dir: "out"},
		{in: "-", typ: client.ExporterTar, attrs: map[string]string{}, file: true},
		{in: `type=image,"name=a,b",compression=estargz`, typ: client.ExporterImage, attrs: map[string]string{"name": "a,b", "compression": "estargz"}},
		{in: "type=bogus,dest=x", wantErr: ErrUnknownOutput},
		{in: "type=oci", errText: "needs dest"},
		{in: "type=local", errText: "needs dest"},
		{in: "name=x", errText: "type is required"},
		{in: "type=image,dest=x", errText: "takes no dest"},
		{in: "type=image,novalue", errText: "not key=value"},
		{in: "", errText: "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			e, err := ParseOutput(tt.in)
			if tt.wantErr != nil || tt.errText != "" {
				if err == nil {
					t.Fatalf("ParseOutput(%q) = %+v, want error", tt.in, e)
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
				if tt.errText != "" && !contains(err.Error(), tt.errText) {
					t.Fatalf("error %q does not mention %q", err, tt.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.Type != tt.typ {
				t.Errorf("type %q, want %q", e.Type, tt.typ)
			}
			if len(e.Attrs) != len(tt.attrs) {
				t.Errorf("attrs %v, want %v", e.Attrs, tt.attrs)
			}
			for k, v := range tt.attrs {
				if e.Attrs[k] != v {
					t.Errorf("attr %s = %q, want %q", k, e.Attrs[k], v)
				}
			}
			if e.OutputDir != tt.dir {
				t.Errorf("output dir %q, want %q", e.OutputDir, tt.dir)
			}
			if (e.Output != nil) != tt.file {
				t.Errorf("file output set = %v, want %v", e.Output != nil, tt.file)
			}
		})
	}
}

func TestApplyTags(t *testing.T) {
	o := BuildOptions{ContextDir: t.TempDir(), Tags: []string{"r/a:1", "r/a:2"}, Push: true}
	so := mustSolveOpt(t, o)
	if len(so.Exports) != 1 || so.Exports[0].Type != client.ExporterImage ||
		so.Exports[0].Attrs["name"] != "r/a:1,r/a:2" || so.Exports[0].Attrs["push"] != "true" {
		t.Fatalf("exports %+v", so.Exports)
	}
	o = BuildOptions{ContextDir: t.TempDir(), Push: true}
	if _, err := solveOptWithDockerfile(t, o); err == nil {
		t.Fatal("--push without a name: want error")
	}
	o = BuildOptions{ContextDir: t.TempDir(), Push: true, Outputs: []string{"type=local,dest=x"}}
	if _, err := solveOptWithDockerfile(t, o); err == nil {
		t.Fatal("--push with a local output: want error")
	}
}

func TestBuildArgs(t *testing.T) {
	t.Setenv("FROM_ENV", "env-value")
	o := BuildOptions{ContextDir: t.TempDir(), BuildArgs: []string{"A=1", "B=", "FROM_ENV", "UNSET_ARG_X"}, Target: "t", Platforms: []string{"linux/amd64", "linux/arm64"}}
	so := mustSolveOpt(t, o)
	want := map[string]string{"build-arg:A": "1", "build-arg:B": "", "build-arg:FROM_ENV": "env-value", "target": "t", "platform": "linux/amd64,linux/arm64", "filename": "Dockerfile"}
	for k, v := range want {
		if got, ok := so.FrontendAttrs[k]; !ok || got != v {
			t.Errorf("%s = %q (set %v), want %q", k, got, ok, v)
		}
	}
	if _, ok := so.FrontendAttrs["build-arg:UNSET_ARG_X"]; ok {
		t.Error("a bare build arg missing from the environment must not be set")
	}
}

func TestDaemonOptionsConflict(t *testing.T) {
	for _, o := range []DaemonOptions{
		{Addr: "unix:///x", Root: "/r"},
		{Addr: "unix:///x", Config: "/c"},
		{Addr: "unix:///x", Snapshotter: "overlayfs"},
	} {
		if err := o.validate(); err == nil {
			t.Errorf("%+v: want error", o)
		}
	}
}

func TestProgressMode(t *testing.T) {
	for _, m := range []string{"auto", "plain", "tty", "rawjson", "quiet", ""} {
		if _, err := progressMode(m); err != nil {
			t.Errorf("%q: %v", m, err)
		}
	}
	if _, err := progressMode("fancy"); err == nil {
		t.Error("unknown progress mode: want error")
	}
}

func mustSolveOpt(t *testing.T, o BuildOptions) client.SolveOpt {
	t.Helper()
	so, err := solveOptWithDockerfile(t, o)
	if err != nil {
		t.Fatal(err)
	}
	return so
}

func solveOptWithDockerfile(t *testing.T, o BuildOptions) (client.SolveOpt, error) {
	t.Helper()
	writeFile(t, o.ContextDir+"/Dockerfile", "FROM scratch\n")
	return o.solveOpt()
}
