//go:build linux

package tracer

import "testing"

func checkLegacyOpen(t *testing.T, tb sysTable) {
	// arm64 has no open or creat: only openat and openat2.
	if tb.open != -1 || tb.creat != -1 {
		t.Errorf("open/creat: table %d/%d, want none", tb.open, tb.creat)
	}
}
