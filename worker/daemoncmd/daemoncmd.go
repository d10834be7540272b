// Package daemoncmd is stargazerd's command line: buildkitd's flag names
// for what the daemon supports, and a clear error for those it does not.
package daemoncmd

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/buildkit/util/bklog"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stargazer-build/stargazer/exporter"
	"github.com/stargazer-build/stargazer/frontend"
	"github.com/stargazer-build/stargazer/worker"
)

// unsupported lists buildkitd flags stargazerd recognises but does not
// implement, with the reason given when one is set.
var unsupported = map[string]string{
	"rootless":                          "rootless mode is not supported",
	"containerd-worker":                 "stargazerd runs the OCI worker only",
	"containerd-worker-addr":            "stargazerd runs the OCI worker only",
	"containerd-worker-namespace":       "stargazerd runs the OCI worker only",
	"containerd-worker-snapshotter":     "stargazerd runs the OCI worker only",
	"containerd-worker-labels":          "stargazerd runs the OCI worker only",
	"containerd-worker-platform":        "stargazerd runs the OCI worker only",
	"containerd-worker-net":             "stargazerd runs the OCI worker only",
	"containerd-worker-gc":              "stargazerd runs the OCI worker only",
	"containerd-worker-gc-keepstorage":  "stargazerd runs the OCI worker only",
	"containerd-cni-config-path":        "stargazerd runs the OCI worker only",
	"containerd-cni-binary-dir":         "stargazerd runs the OCI worker only",
	"oci-worker-proxy-snapshotter-path": "the stargz snapshotter runs in-process",
	"oci-worker-no-process-sandbox":     "process sandboxing cannot be turned off",
	"oci-worker-rootless":               "rootless mode is not supported",
	"oci-worker-apparmor-profile":       "AppArmor profiles are not supported",
	"oci-worker-selinux":                "SELinux labelling is not supported",
	"tlscert":                           "TLS listeners are not supported; use a unix socket",
	"tlskey":                            "TLS listeners are not supported; use a unix socket",
	"tlscacert":                         "TLS listeners are not supported; use a unix socket",
	"debugaddr":                         "the debug listener is not supported",
	"otel-socket-path":                  "OpenTelemetry export is not supported",
	"cdi-disabled":                      "CDI devices are not supported",
	"cdi-spec-dir":                      "CDI devices are not supported",
	"save-cache-debug":                  "cache debug databases are not supported",
	"trace":                             "use --log-level=trace",
}

// unsupportedBools are the flags of unsupported that buildkitd takes as
// booleans, so that "--rootless" alone parses and is then rejected.
var unsupportedBools = map[string]bool{
	"rootless": true, "containerd-worker": true, "containerd-worker-gc": true,
	"oci-worker-no-process-sandbox": true, "oci-worker-rootless": true, "oci-worker-selinux": true,
	"cdi-disabled": true, "save-cache-debug": true, "trace": true,
}

type flags struct {
	config       string
	root         string
	addrs        []string
	group        string
	debug        bool
	logLevel     string
	logFormat    string
	entitlements []string
	proxyNetwork bool

	frontend       string
	ociWorker      string
	snapshotter    string
	net            string
	cniBinaryDir   string
	cniConfigPath  string
	cniPoolSize    int
	binary         string
	platforms      []string
	labels         []string
	gc             bool
	gcKeepStorage  string
	maxParallelism int
}

// New returns the stargazerd command.
func New() *cobra.Command {
	var f flags
	cmd := &cobra.Command{
		Use:           "stargazerd [flags]",
		Short:         "BuildKit daemon with lazy eStargz pulling",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for name, why := range unsupported {
				if cmd.Flags().Changed(name) {
					return fmt.Errorf("--%s is not supported by stargazerd: %s", name, why)
				}
			}
			return run(cmd, &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", worker.DefaultConfigPath, "path to config file (buildkitd.toml format)")
	fl.StringVar(&f.root, "root", worker.DefaultRoot, "path to state directory")
	fl.StringSliceVar(&f.addrs, "addr", []string{worker.DefaultAddress}, "listening address (socket or tcp)")
	fl.StringVar(&f.group, "group", "", "group (name or gid) which will own all Unix socket listening addresses")
	fl.BoolVar(&f.debug, "debug", false, "enable debug output in logs")
	fl.StringVar(&f.logLevel, "log-level", "info", "set the log level")
	fl.StringVar(&f.logFormat, "log-format", "text", "log formatter: json or text")
	fl.StringSliceVar(&f.entitlements, "allow-insecure-entitlement", nil, "allows insecure entitlements e.g. network.host, security.insecure, device")
	fl.BoolVar(&f.proxyNetwork, "proxy-network", false, "enable proxy network enforcement for all builds")
	fl.StringVar(&f.frontend, "dockerfile-frontend", FrontendBuildKit, "frontend serving dockerfile.v0: buildkit (BuildKit's own) or stargazer (adds the trace step)")
	fl.StringVar(&f.ociWorker, "oci-worker", "true", "enable oci workers (true/false/auto)")
	fl.StringVar(&f.snapshotter, "oci-worker-snapshotter", worker.SnapshotterStargz, "name of snapshotter (stargz, overlayfs, native or auto)")
	fl.StringVar(&f.net, "oci-worker-net", "auto", "worker network type (auto, cni or host)")
	fl.StringVar(&f.cniBinaryDir, "oci-cni-binary-dir", "/opt/cni/bin", "path of cni binary files")
	fl.StringVar(&f.cniConfigPath, "oci-cni-config-path", "/etc/buildkit/cni.json", "path of cni config file")
	fl.IntVar(&f.cniPoolSize, "oci-cni-pool-size", 16, "size of cni network namespace pool")
	fl.StringVar(&f.binary, "oci-worker-binary", "runc", "name of specified oci worker binary")
	fl.StringSliceVar(&f.platforms, "oci-worker-platform", nil, "override supported platforms for worker")
	fl.StringSliceVar(&f.labels, "oci-worker-labels", nil, "user-specific annotation labels (com.example.foo=bar)")
	fl.BoolVar(&f.gc, "oci-worker-gc", true, "enable automatic garbage collection on worker")
	fl.StringVar(&f.gcKeepStorage, "oci-worker-gc-keepstorage", "", "amount of storage GC keep locally, format \"Reserved[,Free[,Maximum]]\" (MB)")
	fl.IntVar(&f.maxParallelism, "oci-max-parallelism", 0, "maximum number of parallel build steps that can be run at the same time")
	for name := range unsupported {
		fl.String(name, "", "not supported")
		fl.Lookup(name).Hidden = true
		if unsupportedBools[name] {
			fl.Lookup(name).NoOptDefVal = "true"
		}
	}
	return cmd
}

func run(cmd *cobra.Command, f *flags) error {
	if err := setupLogging(f); err != nil {
		return err
	}
	explicit := cmd.Flags().Changed("config")
	path := f.config
	if !explicit {
		path = ""
	}
	cfg, err := worker.LoadConfig(path)
	if err != nil {
		return err
	}
	if err := applyFlags(cmd.Flags(), f, &cfg); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	gid, err := groupID(f.group)
	if err != nil {
		return err
	}
	var listeners []net.Listener
	for _, a := range cfg.GRPC.Address {
		l, err := worker.Listen(a, gid)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", a, err)
		}
		defer l.Close()
		listeners = append(listeners, l)
	}

	opts, stopFrontend, err := FrontendOptions(f.frontend)
	if err != nil {
		return err
	}
	defer stopFrontend()
	d, err := worker.New(ctx, cfg, opts...)
	if err != nil {
		return err
	}
	bklog.L.Infof("stargazerd running: root=%s snapshotter=%s addr=%s", cfg.Root, cfg.Workers.OCI.Snapshotter, strings.Join(cfg.GRPC.Address, ","))
	serveErr := d.Serve(ctx, listeners...)
	bklog.L.Info("stopping")
	if err := d.Close(); err != nil {
		bklog.L.WithError(err).Warn("shutdown")
	}
	return serveErr
}

// Values of --dockerfile-frontend.
const (
	FrontendBuildKit  = "buildkit"
	FrontendStargazer = "stargazer"
)

// FrontendOptions returns the daemon options for a --dockerfile-frontend
// value, with stargazer's optimizing exporter, and a function to call when
// the daemon has stopped.
func FrontendOptions(name string) ([]worker.Option, func() error, error) {
	switch name {
	case "", FrontendBuildKit:
		return []worker.Option{worker.WithExporterWrapper(exporter.Wrapper())}, func() error { return nil }, nil
	case FrontendStargazer:
		opt, stop, err := frontend.DaemonOption()
		if err != nil {
			return nil, nil, err
		}
		return []worker.Option{opt, worker.WithExporterWrapper(exporter.Wrapper())}, stop, nil
	}
	return nil, nil, fmt.Errorf("invalid --dockerfile-frontend %q: want %s or %s", name, FrontendBuildKit, FrontendStargazer)
}

// applyFlags lets flags that were set override the configuration file, as
// buildkitd does.
func applyFlags(fl *pflag.FlagSet, f *flags, cfg *worker.Config) error {
	if fl.Changed("root") || cfg.Root == worker.DefaultRoot {
		cfg.Root = f.root
	}
	if fl.Changed("addr") {
		cfg.GRPC.Address = f.addrs
	}
	if fl.Changed("debug") && f.debug {
		cfg.Log.Level = "debug"
	}
	if fl.Changed("allow-insecure-entitlement") {
		if err := worker.ValidateEntitlements(f.entitlements); err != nil {
			return err
		}
		cfg.Entitlements = f.entitlements
	}
	if fl.Changed("proxy-network") {
		cfg.ProxyNetwork = f.proxyNetwork
	}
	oci := &cfg.Workers.OCI
	if fl.Changed("oci-worker") {
		switch f.ociWorker {
		case "true", "auto":
		case "false":
			return fmt.Errorf("--oci-worker=false leaves no worker: stargazerd runs the OCI worker only")
		default:
			return fmt.Errorf("invalid --oci-worker %q: want true, false or auto", f.ociWorker)
		}
	}
	if fl.Changed("oci-worker-snapshotter") {
		oci.Snapshotter = f.snapshotter
	}
	if fl.Changed("oci-worker-net") {
		switch f.net {
		case "auto", "cni", "host":
		default:
			return fmt.Errorf("invalid --oci-worker-net %q: want auto, cni or host", f.net)
		}
		oci.Mode = f.net
	}
	if fl.Changed("oci-cni-binary-dir") {
		oci.CNIBinaryPath = f.cniBinaryDir
	}
	if fl.Changed("oci-cni-config-path") {
		oci.CNIConfigPath = f.cniConfigPath
	}
	if fl.Changed("oci-cni-pool-size") {
		oci.CNIPoolSize = f.cniPoolSize
	}
	if fl.Changed("oci-worker-binary") {
		oci.Binary = f.binary
	}
	if fl.Changed("oci-worker-platform") {
		oci.Platforms = f.platforms
	}
	if fl.Changed("oci-worker-labels") {
		if oci.Labels == nil {
			oci.Labels = map[string]string{}
		}
		for _, l := range f.labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				return fmt.Errorf("invalid --oci-worker-labels %q: want key=value", l)
			}
			oci.Labels[k] = v
		}
	}
	if fl.Changed("oci-max-parallelism") {
		oci.MaxParallelism = f.maxParallelism
	}
	if fl.Changed("oci-worker-gc") {
		gc := f.gc
		oci.GC = &gc
	}
	if fl.Changed("oci-worker-gc-keepstorage") {
		parts := strings.Split(f.gcKeepStorage, ",")
		if len(parts) > 3 {
			return fmt.Errorf("invalid --oci-worker-gc-keepstorage %q", f.gcKeepStorage)
		}
		targets := []*int64{&oci.GCReservedSpace.Bytes, &oci.GCMinFreeSpace.Bytes, &oci.GCMaxUsedSpace.Bytes}
		for i, p := range parts {
			mb, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
			if err != nil {
				return fmt.Errorf("invalid --oci-worker-gc-keepstorage %q: %w", f.gcKeepStorage, err)
			}
			*targets[i] = mb * 1e6
		}
	}
	return nil
}

func setupLogging(f *flags) error {
	logrus.SetOutput(os.Stderr)
	switch f.logFormat {
	case "json":
		logrus.SetFormatter(&logrus.JSONFormatter{})
	case "text", "":
		logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	default:
		return fmt.Errorf("unsupported --log-format %q: want json or text", f.logFormat)
	}
	level := f.logLevel
	if f.debug {
		level = "debug"
	}
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		return fmt.Errorf("invalid --log-level: %w", err)
	}
	logrus.SetLevel(lvl)
	return nil
}

func groupID(group string) (int, error) {
	if group == "" {
		return 0, nil
	}
	if id, err := strconv.Atoi(group); err == nil {
		return id, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("--group: %w", err)
	}
	return strconv.Atoi(g.Gid)
}
