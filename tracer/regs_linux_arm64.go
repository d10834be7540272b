package tracer

import "golang.org/x/sys/unix"

// getRegs fills si from the registers, for kernels without
// PTRACE_GET_SYSCALL_INFO: the call's number and arguments, or at its exit
// its return value.
func getRegs(tid int, si *syscallInfo, exit bool) error {
	var r unix.PtraceRegsArm64
	if err := unix.PtraceGetRegSetArm64(tid, unix.NT_PRSTATUS, &r); err != nil {
		return err
	}
	if exit {
		si.nr = r.Regs[0]
		return nil
	}
	si.nr = r.Regs[8]
	copy(si.args[:], r.Regs[:6])
	return nil
}
