package testutil

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestDirTarKeepsModificationTimes(t *testing.T) {
	dir := t.TempDir()
	src, pyc := filepath.Join(dir, "mod.py"), filepath.Join(dir, "mod.pyc")
	for _, p := range []string{src, pyc} {
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Date(2026, 5, 12, 7, 17, 27, 123456789, time.UTC)
	if err := os.Chtimes(src, old, old); err != nil {
		t.Fatal(err)
	}
	first, err := dirTar(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Reading the tree changes access times; the layer stays the same.
	if _, err := os.ReadFile(src); err != nil {
		t.Fatal(err)
	}
	second, err := dirTar(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, second) {
		t.Error("the same tree gave two different layers")
	}
	tr := tar.NewReader(bytes.NewReader(first))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Name == "mod.py" && !h.ModTime.Equal(old.Truncate(time.Second)) {
			t.Errorf("mod.py has time %v, want %v", h.ModTime, old.Truncate(time.Second))
		}
		if !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s carries access or change times", h.Name)
		}
	}
}
