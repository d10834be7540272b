package tracer

import "golang.org/x/sys/unix"

// getRegs fills si from the registers, for kernels without
// PTRACE_GET_SYSCALL_INFO: the call's number and arguments, or at its exit
// its return value.
func getRegs(tid int, si *syscallInfo, exit bool) error {
	var r unix.PtraceRegs
	if err := unix.PtraceGetRegs(tid, &r); err != nil {
		return err
	}
	if exit {
		si.nr = r.Rax
		return nil
	}
	si.nr = r.Orig_rax
	si.args = [6]uint64{r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9}
	return nil
}
