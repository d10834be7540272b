package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// BuildContext writes files (path relative to the context → content) into
// a new directory and returns it. A "Dockerfile" entry is the Dockerfile.
func BuildContext(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
