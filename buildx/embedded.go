package buildx

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"

	"github.com/stargazer-build/stargazer/worker"
	"github.com/stargazer-build/stargazer/worker/daemoncmd"
)

// DaemonOptions select and configure the daemon a command talks to.
type DaemonOptions struct {
	// Addr is the address of a running stargazerd or buildkitd. Empty
	// means a daemon embedded in this process.
	Addr string
	// Root is the embedded daemon's state directory.
	Root string
	// Config is a buildkitd.toml-format file for the embedded daemon.
	Config string
	// Snapshotter overrides the embedded daemon's snapshotter.
	Snapshotter string
	// Frontend selects the embedded daemon's dockerfile.v0: "buildkit" or
	// "stargazer" (see daemoncmd.FrontendOptions).
	Frontend string
	// Debug makes the embedded daemon log at debug level.
	Debug bool
}

// Embedded reports whether the options ask for an embedded daemon.
func (o DaemonOptions) Embedded() bool { return o.Addr == "" }

func (o DaemonOptions) validate() error {
	if o.Embedded() {
		return nil
	}
	switch {
	case o.Root != "":
		return errors.New("--root configures the embedded daemon and cannot be used with --addr")
	case o.Config != "":
		return errors.New("--config configures the embedded daemon and cannot be used with --addr")
	case o.Snapshotter != "":
		return errors.New("--oci-worker-snapshotter configures the embedded daemon and cannot be used with --addr")
	case o.Frontend != "":
		return errors.New("--dockerfile-frontend configures the embedded daemon and cannot be used with --addr")
	}
	return nil
}

// connect returns the address to reach the daemon at and a function that
// stops the daemon when it was started here.
func connect(ctx context.Context, o DaemonOptions, opts ...worker.Option) (string, func() error, error) {
	if err := o.validate(); err != nil {
		return "", nil, err
	}
	if !o.Embedded() {
		return o.Addr, func() error { return nil }, nil
	}
	if os.Geteuid() != 0 {
		return "", nil, errors.New("the embedded daemon needs root (runc, overlay and FUSE mounts); run as root or pass --addr of a running stargazerd")
	}
	if o.Debug {
		logrus.SetLevel(logrus.DebugLevel)
	} else {
		logrus.SetLevel(logrus.ErrorLevel)
	}
	cfg, err := worker.LoadConfig(o.Config)
	if err != nil {
		return "", nil, err
	}
	if o.Root != "" {
		cfg.Root = o.Root
	}
	if o.Snapshotter != "" {
		cfg.Workers.OCI.Snapshotter = o.Snapshotter
	}
	feOpts, stopFrontend, err := daemoncmd.FrontendOptions(o.Frontend)
	if err != nil {
		return "", nil, err
	}
	d, err := worker.New(ctx, cfg, append(feOpts, opts...)...)
	if err != nil {
		stopFrontend()
		if errors.Is(err, worker.ErrRootInUse) {
			return "", nil, fmt.Errorf("%w; pass --addr to build on the running daemon, or --root for another state directory", err)
		}
		return "", nil, fmt.Errorf("start embedded daemon: %w", err)
	}
	// A short private socket path: unix socket paths are limited to 108
	// bytes and a state directory may be deep.
	sockDir, err := os.MkdirTemp("", "stargazer-")
	if err != nil {
		d.Close()
		stopFrontend()
		return "", nil, err
	}
	addr := "unix://" + filepath.Join(sockDir, "buildkitd.sock")
	l, err := worker.Listen(addr, 0)
	if err != nil {
		d.Close()
		stopFrontend()
		os.RemoveAll(sockDir)
		return "", nil, err
	}
	serveCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- d.Serve(serveCtx, l) }()
	stop := func() error {
		cancel()
		serveErr := <-served
		l.Close()
		os.RemoveAll(sockDir)
		return errors.Join(serveErr, d.Close(), stopFrontend())
	}
	return addr, stop, nil
}
