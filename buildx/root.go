// Package buildx is stargazer's command line: `stargazer build` and the
// other client commands, usable alone or as a docker CLI plugin.
package buildx

import (
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

// defaultEmbeddedRoot is the embedded daemon's state directory; it is
// stargazerd's, so a stargazerd started later finds the same cache.
const defaultEmbeddedRoot = "/var/lib/stargazer"

// NewRootCommand returns the stargazer command with all its subcommands.
func NewRootCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:           "stargazer",
		Short:         "Build container images that start fast",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Libraries (containerd's content store, BuildKit's client) log
		// through logrus; the command reports through its own output.
		PersistentPreRun: func(*cobra.Command, []string) { logrus.SetLevel(logrus.ErrorLevel) },
	}
	cmd.AddCommand(newBuildCommand(), newTraceCommand(), newOptimizeCommand(), newVerifyCommand(), newFrontendCommand())
	return cmd
}
