package tracer

import "os"

// Subcommand is the hidden first argument that makes a stargazer
// executable act as the in-container tracer (Main). stargazer's
// executables all accept it, so any of them can be mounted into a build as
// the tracer.
const Subcommand = "__trace"

// MaybeRunSubcommand must be the first call in the main function of a
// stargazer executable. When the process was started as the ptrace shim or
// with Subcommand it runs the tracer and exits; otherwise it returns.
func MaybeRunSubcommand() {
	MaybeRunShim()
	if len(os.Args) > 1 && os.Args[1] == Subcommand {
		os.Exit(Main(os.Args[2:], os.Stdout, os.Stderr))
	}
}
