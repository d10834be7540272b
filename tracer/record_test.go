package tracer

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

func intp(i int) *int { return &i }

// TestReadRecordGolden reads every good record and compares it, rewritten
// by Writer, with its golden file.
func TestReadRecordGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/record/good/*.jsonl")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range files {
		t.Run(filepath.Base(in), func(t *testing.T) {
			f, err := os.Open(in)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			entries, err := ReadRecord(f)
			if err != nil {
				t.Fatalf("ReadRecord: %v", err)
			}
			var buf bytes.Buffer
			if err := NewWriter(&buf).WriteAll(entries); err != nil {
				t.Fatalf("Write: %v", err)
			}
			golden := strings.TrimSuffix(in, ".jsonl") + ".golden"
			if *update {
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("got:\n%s\nwant:\n%s", buf.Bytes(), want)
			}
		})
	}
}

// TestReadRecordBad checks that every bad record fails with the sentinel
// its name gives and the error text in its golden .err file (which names
// the line).
func TestReadRecordBad(t *testing.T) {
	files, err := filepath.Glob("testdata/record/bad/*.jsonl")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad inputs: %v", err)
	}
	for _, in := range files {
		name := filepath.Base(in)
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			_, err = ReadRecord(bytes.NewReader(b))
			if err == nil {
				t.Fatal("ReadRecord accepted a bad record")
			}
			want := ErrMalformedRecord
			if strings.HasPrefix(name, "escape-") {
				want = ErrPathEscapes
			}
			if !errors.Is(err, want) {
				t.Errorf("error %q is not %v", err, want)
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line < 1 {
				t.Errorf("error %q carries no line number", err)
			}
			golden := strings.TrimSuffix(in, ".jsonl") + ".err"
			if *update {
				if err := os.WriteFile(golden, []byte(err.Error()+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			wantMsg, rerr := os.ReadFile(golden)
			if rerr != nil {
				t.Fatalf("%v (run with -update to create)", rerr)
			}
			if got := err.Error() + "\n"; got != string(wantMsg) {
				t.Errorf("error:\n%s\nwant:\n%s", got, wantMsg)
			}
		})
	}
}

func TestCleanPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      error
	}{
		{"usr/bin/env", "usr/bin/env", nil},
		{"/usr/bin/env", "usr/bin/env", nil},
		{"//usr//bin/./env/", "usr/bin/env", nil},
		{"/../etc/passwd", "etc/passwd", nil},
		{"a/b/../c", "a/c", nil},
		{"./a", "a", nil},
		{"../etc/passwd", "", ErrPathEscapes},
		{"a/../../x", "", ErrPathEscapes},
		{"..", "", ErrPathEscapes},
		{"", "", ErrMalformedRecord},
		{"/", "", ErrMalformedRecord},
		{".", "", ErrMalformedRecord},
		{"a/..", "", ErrMalformedRecord},
		{"a\x00b", "", ErrMalformedRecord},
	} {
		got, err := CleanPath(tc.in)
		if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("CleanPath(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestReaderDedupKeepsFirst(t *testing.T) {
	in := `{"path":"a","size":1}
{"path":"/b"}
{"path":"./a","size":2}
{"path":"b","layerIndex":3}
`
	got, err := ReadRecord(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{{Path: "a", Size: 1}, {Path: "b"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestReaderErrorLineCountsBlankLines(t *testing.T) {
	in := "{\"path\":\"a\"}\n\n\r\n{\"path\":\"../x\"}\n"
	_, err := ReadRecord(strings.NewReader(in))
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != 4 || !errors.Is(err, ErrPathEscapes) {
		t.Fatalf("got %v, want a path-escape error on line 4", err)
	}
}

func TestReaderLongLine(t *testing.T) {
	long := `{"path":"` + strings.Repeat("a", maxRecordLine) + `"}`
	_, err := ReadRecord(strings.NewReader("{\"path\":\"ok\"}\n" + long + "\n"))
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != 2 || !errors.Is(err, ErrMalformedRecord) {
		t.Fatalf("got %v, want a malformed-record error on line 2", err)
	}
	// A long but legal line (a path near PATH_MAX) must pass.
	p := strings.Repeat("d/", 2000) + "f"
	got, err := ReadRecord(strings.NewReader(`{"path":"` + p + `"}`))
	if err != nil || len(got) != 1 || got[0].Path != p {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestWriter(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, e := range []Entry{
		{Path: "/usr/bin/env", FirstAccessMs: 3, Size: 10},
		{Path: "usr/bin/env", FirstAccessMs: 9},
		{Path: "etc/passwd", ManifestDigest: "sha256:ab", LayerIndex: intp(0)},
	} {
		if err := w.Write(e); err != nil {
			t.Fatal(err)
		}
	}
	want := `{"path":"usr/bin/env","firstAccessMs":3,"size":10}
{"path":"etc/passwd","manifestDigest":"sha256:ab","layerIndex":0}
`
	if buf.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", buf.String(), want)
	}
	if err := w.Write(Entry{Path: "../x"}); !errors.Is(err, ErrPathEscapes) {
		t.Errorf("Write(../x) = %v, want ErrPathEscapes", err)
	}
}

func TestMerge(t *testing.T) {
	e := func(p string) Entry { return Entry{Path: p} }
	a := []Entry{e("bin/sh"), e("lib/libc"), e("app/a"), e("app/common")}
	b := []Entry{e("bin/python"), e("lib/libc"), e("app/common"), e("app/b"), e("app/b2")}
	c := []Entry{e("bin/sh")}
	got := Merge(a, b, c)
	var paths []string
	for _, x := range got {
		paths = append(paths, x.Path)
	}
	want := []string{
		"bin/sh", "bin/python", // rank 0 (c's bin/sh is a duplicate)
		"lib/libc",            // rank 1 (b's is a duplicate)
		"app/a", "app/common", // rank 2
		"app/b",  // rank 3 (a's app/common already placed)
		"app/b2", // rank 4
	}
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("Merge = %q, want %q", paths, want)
	}
	if len(Merge()) != 0 || len(Merge(nil, nil)) != 0 {
		t.Error("Merge of nothing is not empty")
	}
	// The inputs must not be aliased by the result.
	l := 1
	in := []Entry{{Path: "x", LayerIndex: &l}}
	out := Merge(in)
	*out[0].LayerIndex = 7
	if l != 1 {
		t.Error("Merge aliases the input's LayerIndex")
	}
}

// FuzzReadRecord checks the reader never panics, and that what it accepts
// is clean (relative, inside the root, unique) and survives a round trip
// through Writer unchanged.
func FuzzReadRecord(f *testing.F) {
	for _, dir := range []string{"testdata/record/good", "testdata/record/bad"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte(`{"path":"a"}` + "\n" + `{"path":"a/../b","layerIndex":0}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := ReadRecord(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrMalformedRecord) && !errors.Is(err, ErrPathEscapes) {
				t.Fatalf("error %v is neither sentinel", err)
			}
			return
		}
		seen := make(map[string]bool)
		for _, e := range entries {
			c, err := CleanPath(e.Path)
			if err != nil || c != e.Path || strings.HasPrefix(e.Path, "/") {
				t.Fatalf("accepted unclean path %q (%v)", e.Path, err)
			}
			if seen[e.Path] {
				t.Fatalf("duplicate path %q", e.Path)
			}
			seen[e.Path] = true
		}
		var buf bytes.Buffer
		if err := NewWriter(&buf).WriteAll(entries); err != nil {
			t.Fatalf("rewrite: %v", err)
		}
		again, err := ReadRecord(&buf)
		if err != nil {
			t.Fatalf("reread: %v", err)
		}
		if len(again) != len(entries) || (len(entries) > 0 && !reflect.DeepEqual(again, entries)) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", entries, again)
		}
	})
}
