package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stargazer-build/stargazer/buildx"
	"github.com/stargazer-build/stargazer/testutil"
	"github.com/stargazer-build/stargazer/tracer"
)

// readyLine is what every workload prints once it is up.
const readyLine = "ready"

// imageDef is one benchmark image: its layers and the workload its config
// runs (Cmd), which prints readyLine.
type imageDef struct {
	name string
	argv []string
	// layers builds the image's layers; it may take long the first time
	// (debootstrap) and is cached under the cache directory.
	layers func(t *scope, cacheDir string) []testutil.Layer
}

// form is one way of publishing an image.
type form struct {
	name string
	// attrs are the image exporter attributes; empty for the gzip push of
	// the root filesystem image itself.
	attrs string
	// record says the export takes the workload's trace record.
	record bool
	// snapshotter is the worker snapshotter the form is started on.
	snapshotter string
}

var forms = []form{
	{name: "legacy", snapshotter: "overlayfs"},
	{name: "estargz", attrs: "compression=estargz,force-compression=true,oci-mediatypes=true", snapshotter: "stargz"},
	{name: "estargz-opt", attrs: "optimize=true,force-compression=true", record: true, snapshotter: "stargz"},
	{name: "zstdchunked-opt", attrs: "optimize=true,compression=zstd:chunked,force-compression=true", record: true, snapshotter: "stargz"},
}

func quickImages() []imageDef {
	return []imageDef{{
		name: "busybox-large",
		argv: []string{"/bin/sh", "-c", "cat /data/small.txt /data/medium.bin >/dev/null && echo " + readyLine},
		layers: func(t *scope, _ string) []testutil.Layer {
			return testutil.LargeSpec(t, testutil.Gzip, testutil.DefaultLargeSize).Layers
		},
	}}
}

func fullImages() []imageDef {
	return []imageDef{{
		name: "python3",
		argv: []string{"python3", "-c", `import json, http.server, email.mime.text, sqlite3; print("` + readyLine + `")`},
		layers: func(t *scope, cacheDir string) []testutil.Layer {
			return []testutil.Layer{testutil.DirLayer(debootstrap(t, cacheDir, "python3", "python3"))}
		},
	}, {
		name: "gcc",
		argv: []string{"/bin/sh", "-c", `printf '#include <stdio.h>\nint main(void){puts("` + readyLine + `");return 0;}\n' | gcc -x c -o /tmp/ready - && /tmp/ready`},
		layers: func(t *scope, cacheDir string) []testutil.Layer {
			return []testutil.Layer{testutil.DirLayer(debootstrap(t, cacheDir, "gcc", "gcc,libc6-dev"))}
		},
	}}
}

// debootstrap returns a Debian bookworm minbase root filesystem with the
// packages include, made once under cacheDir/name.
func debootstrap(t *scope, cacheDir, name, include string) string {
	dir := filepath.Join(cacheDir, name)
	if _, err := os.Stat(filepath.Join(dir, "usr")); err == nil {
		return dir
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	fmt.Fprintf(os.Stderr, "debootstrap %s (--include=%s), once\n", dir, include)
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+include, "bookworm", tmp, "http://deb.debian.org/debian")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debootstrap: %v\n%s", err, tailOf(out, 2000))
	}
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "dev/*"} {
		matches, _ := filepath.Glob(filepath.Join(tmp, pattern))
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func tailOf(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// catalog is what a prepared registry holds: per image, the repository
// references (without host) of each form and the workload's record.
type catalog struct {
	Images map[string]*preparedImage `json:"images"`
}

type preparedImage struct {
	Forms map[string]string `json:"forms"`
	// Record is the trace record of the workload (JSON lines).
	Record string `json:"record"`
	// ReadBytes is the sum of the record's file sizes: the bytes the
	// workload reads.
	ReadBytes int64 `json:"readBytes"`
	// ReadFiles is the number of files in the record.
	ReadFiles int `json:"readFiles"`
	// Layers is the number of layers of the image.
	Layers int `json:"layers"`
	// FormBytes is the compressed size of each form's layers.
	FormBytes map[string]int64 `json:"formBytes"`
}

// prepare makes every form of every image in a registry whose storage is
// cacheDir/registry-<set>, reusing what an earlier run left there. It
// returns the storage directory and the catalog.
func prepare(cacheDir, set string, images []imageDef, rebuild bool, log io.Writer) (string, *catalog, error) {
	store := filepath.Join(cacheDir, "registry-"+set)
	catPath := store + ".json"
	cat := &catalog{Images: map[string]*preparedImage{}}
	if !rebuild {
		if b, err := os.ReadFile(catPath); err == nil {
			if err := json.Unmarshal(b, cat); err != nil {
				return "", nil, fmt.Errorf("read %s: %w", catPath, err)
			}
		}
	} else {
		os.RemoveAll(store)
	}
	var todo []imageDef
	for _, img := range images {
		if p := cat.Images[img.name]; p == nil || len(p.Forms) != len(forms) {
			todo = append(todo, img)
		}
	}
	if len(todo) == 0 {
		return store, cat, nil
	}
	if err := os.MkdirAll(store, 0o755); err != nil {
		return "", nil, err
	}
	err := run("prepare", log, func(t *scope) {
		reg := testutil.NewRegistry(t, testutil.WithStorageDir(store))
		d := testutil.StartDaemon(t, testutil.WithSnapshotter("overlayfs"), testutil.WithPlainHTTPRegistry(reg.Host()))
		for _, img := range todo {
			fmt.Fprintf(log, "preparing %s\n", img.name)
			p, err := prepareImage(t, reg, d, cacheDir, img)
			if err != nil {
				t.Fatalf("%s: %v", img.name, err)
			}
			cat.Images[img.name] = p
		}
	})
	if err != nil {
		return "", nil, err
	}
	b, err := json.MarshalIndent(cat, "", "  ")
	if err != nil {
		return "", nil, err
	}
	return store, cat, os.WriteFile(catPath, b, 0o644)
}

func prepareImage(t *scope, reg *testutil.Registry, d *testutil.Daemon, cacheDir string, img imageDef) (*preparedImage, error) {
	spec := testutil.FixtureSpec{
		Layers:      img.layers(t, cacheDir),
		Compression: testutil.Gzip,
		Config:      ocispec.ImageConfig{Cmd: img.argv},
	}
	legacy := img.name + ":legacy"
	pushed := testutil.PushImage(t, reg, legacy, spec)
	p := &preparedImage{Forms: map[string]string{"legacy": legacy}, Layers: len(pushed.Layers), FormBytes: map[string]int64{}}
	for _, l := range pushed.Layers {
		p.FormBytes["legacy"] += l.Size
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	p.Record = filepath.Join(cacheDir, "record-"+img.name+".json")
	// The tracer is the stargazer executable itself, so trace through it
	// rather than from this (not necessarily static) process.
	cmd := exec.CommandContext(ctx, testutil.Binary(t, "stargazer"), "trace", "--addr", d.Addr,
		"--wait-on-line", readyLine, "--period", "60s", "--progress", "plain", "--record-out", p.Record, pushed.Ref)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("stargazer trace: %w\n%s", err, tailOf(out, 3000))
	}
	f, err := os.Open(p.Record)
	if err != nil {
		return nil, err
	}
	entries, err := tracer.ReadRecord(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("read record: %w", err)
	}
	for _, e := range entries {
		p.ReadBytes += e.Size
	}
	p.ReadFiles = len(entries)
	if p.ReadFiles == 0 {
		return nil, errors.New("trace: empty record")
	}

	ctxDir := testutil.BuildContext(t, map[string]string{"Dockerfile": "FROM " + pushed.Ref + "\n"})
	for _, f := range forms {
		if f.attrs == "" {
			continue
		}
		name := img.name + ":" + f.name
		o := buildx.BuildOptions{
			ContextDir: ctxDir,
			Outputs:    []string{"type=image,name=" + reg.Ref(name) + ",push=true," + f.attrs},
			Progress:   "quiet",
			Daemon:     buildx.DaemonOptions{Addr: d.Addr},
			Stderr:     io.Discard,
		}
		if f.record {
			o.RecordIn = p.Record
		}
		if _, err := buildx.Build(ctx, o); err != nil {
			return nil, fmt.Errorf("export %s: %w", f.name, err)
		}
		got := testutil.FetchImage(t, reg.Ref(name))
		for _, l := range got.Layers {
			p.FormBytes[f.name] += l.Size
		}
		p.Forms[f.name] = name
	}
	return p, nil
}
