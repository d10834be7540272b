package tracer

import (
	"os"
	"testing"
)

// removeAfterTests lists directories shared by several tests (the built
// workload, benchmark files), removed once all tests ran.
var removeAfterTests []string

// TestMain lets the test binary serve as the ptrace mechanism's shim, as
// any program using Run must.
func TestMain(m *testing.M) {
	MaybeRunShim()
	code := m.Run()
	for _, d := range removeAfterTests {
		os.RemoveAll(d)
	}
	os.Exit(code)
}
