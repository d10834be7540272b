//go:build linux

package tracer

import (
	"testing"

	"golang.org/x/sys/unix"
)

func checkLegacyOpen(t *testing.T, tb sysTable) {
	if tb.open != unix.SYS_OPEN || tb.creat != unix.SYS_CREAT {
		t.Errorf("open/creat: table %d/%d, unix %d/%d", tb.open, tb.creat, unix.SYS_OPEN, unix.SYS_CREAT)
	}
}
