package tracer

import (
	"os"
	"testing"
)

// TestMain lets the test binary serve as the ptrace mechanism's shim, as
// any program using Run must.
func TestMain(m *testing.M) {
	MaybeRunShim()
	os.Exit(m.Run())
}
