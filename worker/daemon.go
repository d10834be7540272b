package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/platforms"
	"github.com/moby/buildkit/cache/remotecache"
	inlineremotecache "github.com/moby/buildkit/cache/remotecache/inline"
	localremotecache "github.com/moby/buildkit/cache/remotecache/local"
	registryremotecache "github.com/moby/buildkit/cache/remotecache/registry"
	"github.com/moby/buildkit/control"
	"github.com/moby/buildkit/executor/oci"
	"github.com/moby/buildkit/frontend"
	dockerfile "github.com/moby/buildkit/frontend/dockerfile/builder"
	"github.com/moby/buildkit/frontend/gateway"
	gwclient "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/frontend/gateway/forwarder"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/solver"
	"github.com/moby/buildkit/solver/bboltcachestorage"
	"github.com/moby/buildkit/util/appcontext"
	"github.com/moby/buildkit/util/archutil"
	"github.com/moby/buildkit/util/db/boltutil"
	"github.com/moby/buildkit/util/grpcerrors"
	"github.com/moby/buildkit/util/network/cniprovider"
	"github.com/moby/buildkit/util/network/netproviders"
	"github.com/moby/buildkit/util/resolver"
	"github.com/moby/buildkit/version"
	bkworker "github.com/moby/buildkit/worker"
	"github.com/moby/buildkit/worker/base"
	"github.com/moby/buildkit/worker/runc"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthv1 "google.golang.org/grpc/health/grpc_health_v1"
)

// ErrRootInUse is returned when another daemon holds the state directory.
var ErrRootInUse = errors.New("state directory is in use by another daemon")

// Option configures New.
type Option func(*options) error

type options struct {
	wrapper    ExporterWrapper
	dockerfile gwclient.BuildFunc
	frontends  map[string]frontend.Frontend
}

// WithExporterWrapper installs w as the worker's exporter hook. By default
// the worker hands out BuildKit's own exporters.
func WithExporterWrapper(w ExporterWrapper) Option {
	return func(o *options) error {
		o.wrapper = w
		return nil
	}
}

// WithDockerfileFrontend serves f as the built-in "dockerfile.v0" frontend.
// By default that is BuildKit's own Dockerfile frontend.
func WithDockerfileFrontend(f gwclient.BuildFunc) Option {
	return func(o *options) error {
		if f == nil {
			return errors.New("dockerfile frontend: nil build function")
		}
		o.dockerfile = f
		return nil
	}
}

// Daemon is an assembled BuildKit daemon: one OCI worker, its controller and
// everything they own. Close releases all of it, FUSE mounts included.
type Daemon struct {
	cfg        Config
	controller *control.Controller
	worker     *Worker
	sm         *session.Manager

	closeOnce sync.Once
	closers   []func() error
	closeErr  error
}

// New assembles a daemon from cfg. The caller must Close it.
func New(ctx context.Context, cfg Config, opts ...Option) (_ *Daemon, retErr error) {
	var o options
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	SetDefaults(&cfg)
	if err := ValidateEntitlements(cfg.Entitlements); err != nil {
		return nil, err
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, err
	}
	cfg.Root = root
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}

	d := &Daemon{cfg: cfg}
	defer func() {
		if retErr != nil {
			d.Close()
		}
	}()
	unlock, err := lockRoot(root)
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, unlock)

	d.sm, err = session.NewManager()
	if err != nil {
		return nil, err
	}
	w, err := d.newWorker(ctx, o.wrapper)
	if err != nil {
		return nil, err
	}
	d.worker = w

	wc := &bkworker.Controller{}
	if err := wc.Add(w); err != nil {
		return nil, err
	}

	build := dockerfile.Build
	if o.dockerfile != nil {
		build = o.dockerfile
	}
	frontends := map[string]frontend.Frontend{}
	if cfg.Frontends.Dockerfile.Enabled == nil || *cfg.Frontends.Dockerfile.Enabled {
		frontends["dockerfile.v0"] = forwarder.NewGatewayForwarder(wc.Infos(), build)
	}
	if cfg.Frontends.Gateway.Enabled == nil || *cfg.Frontends.Gateway.Enabled {
		gw, err := gateway.NewGatewayFrontend(wc.Infos(), cfg.Frontends.Gateway.AllowedRepositories)
		if err != nil {
			return nil, err
		}
		frontends["gateway.v0"] = gw
	}

	cacheStore, err := bboltcachestorage.NewStore(filepath.Join(root, "cache.db"))
	if err != nil {
		return nil, fmt.Errorf("open cache database: %w", err)
	}
	d.closers = append(d.closers, cacheStore.Close)
	historyDB, err := boltutil.SafeOpen(filepath.Join(root, "history.db"), 0o600, &bolt.Options{
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
	})
	if err != nil {
		return nil, fmt.Errorf("open history database: %w", err)
	}
	d.closers = append(d.closers, historyDB.Close)

	hosts := resolver.NewRegistryConfig(cfg.Registries)
	d.controller, err = control.NewController(control.Opt{
		SessionManager:   d.sm,
		WorkerController: wc,
		Frontends:        frontends,
		ResolveCacheExporterFuncs: map[string]remotecache.ResolveCacheExporterFunc{
			"registry": registryremotecache.ResolveCacheExporterFunc(d.sm, hosts),
			"local":    localremotecache.ResolveCacheExporterFunc(d.sm),
			"inline":   inlineremotecache.ResolveCacheExporterFunc(),
		},
		ResolveCacheImporterFuncs: map[string]remotecache.ResolveCacheImporterFunc{
			"registry": registryremotecache.ResolveCacheImporterFunc(d.sm, w.ContentStore(), hosts),
			"local":    localremotecache.ResolveCacheImporterFunc(d.sm),
		},
		CacheManager:   solver.NewCacheManager(ctx, "local", cacheStore, bkworker.NewCacheResultStorage(wc)),
		Entitlements:   cfg.Entitlements,
		HistoryDB:      historyDB,
		CacheStore:     cacheStore,
		LeaseManager:   w.LeaseManager(),
		ContentStore:   w.ContentStore(),
		HistoryConfig:  cfg.History,
		ProxyNetwork:   cfg.ProxyNetwork,
		GarbageCollect: w.GarbageCollect,
	})
	if err != nil {
		return nil, fmt.Errorf("start controller: %w", err)
	}
	// Closing the controller closes the worker too; it runs before the
	// databases and snapshotters they use are closed.
	d.closers = append(d.closers, d.controller.Close)
	return d, nil
}

func (d *Daemon) newWorker(ctx context.Context, wrapper ExporterWrapper) (*Worker, error) {
	cfg := d.cfg.Workers.OCI
	if cfg.Enabled != nil && !*cfg.Enabled {
		return nil, errors.New("the OCI worker is disabled in the configuration; stargazerd has no other worker")
	}
	if cfg.Rootless || cfg.NoProcessSandbox {
		return nil, errors.New("rootless mode is not supported by stargazerd")
	}
	if cfg.ProxySnapshotterPath != "" {
		return nil, errors.New("proxySnapshotterPath is not supported: stargazerd runs the stargz snapshotter in-process")
	}
	if cfg.UserRemapUnsupported != "" {
		return nil, errors.New("userRemapUnsupported is not supported by stargazerd")
	}
	binary := cfg.Binary
	if binary == "" {
		binary = "runc"
	}
	if _, err := exec.LookPath(binary); err != nil {
		return nil, fmt.Errorf("OCI worker needs %s: %w", binary, err)
	}

	// The worker pulls manifests through hosts; what they tell of layers'
	// prefetch sizes reaches the stargz snapshotter through hints.
	hints := newPrefetchHints()
	hosts := hints.watch(resolver.NewRegistryConfig(d.cfg.Registries))
	opened := &snapshotters{}
	d.closers = append(d.closers, opened.Close)
	factory, err := newSnapshotterFactory(cfg.Snapshotter, d.cfg.Root, cfg.StargzSnapshotterConfig, hosts, hints, d.sm, opened)
	if err != nil {
		return nil, err
	}
	netOpt := netproviders.Opt{
		Mode: cfg.Mode,
		CNI: cniprovider.Opt{
			Root:         d.cfg.Root,
			ConfigPath:   cfg.CNIConfigPath,
			BinaryDir:    cfg.CNIBinaryPath,
			PoolSize:     cfg.CNIPoolSize,
			BridgeName:   cfg.BridgeName,
			BridgeSubnet: cfg.BridgeSubnet,
		},
	}
	var dns *oci.DNSConfig
	if c := d.cfg.DNS; c != nil {
		dns = &oci.DNSConfig{Nameservers: c.Nameservers, Options: c.Options, SearchDomains: c.SearchDomains}
	}
	var parallelism *semaphore.Weighted
	if cfg.MaxParallelism > 0 {
		parallelism = semaphore.NewWeighted(int64(cfg.MaxParallelism))
	}
	opt, err := runc.NewWorkerOpt(d.cfg.Root, factory, false, oci.ProcessSandbox, cfg.Labels, nil, netOpt, dns,
		cfg.Binary, cfg.ApparmorProfile, cfg.SELinux, parallelism, "", cfg.DefaultCgroupParent, nil)
	if err != nil {
		return nil, fmt.Errorf("set up OCI worker: %w", err)
	}
	opt.GCPolicy = gcPolicy(cfg.GCConfig, d.cfg.Root)
	opt.BuildkitVersion.Package = version.Package
	opt.BuildkitVersion.Version = version.Version
	opt.BuildkitVersion.Revision = version.Revision
	opt.RegistryHosts = hosts
	if len(cfg.Platforms) > 0 {
		ps, err := parsePlatforms(cfg.Platforms)
		if err != nil {
			return nil, err
		}
		opt.Platforms = ps
	} else {
		opt.Platforms = archutil.SupportedPlatforms(false)
	}
	bw, err := base.NewWorker(ctx, opt)
	if err != nil {
		return nil, fmt.Errorf("start OCI worker: %w", err)
	}
	return &Worker{Worker: bw, wrapper: wrapper}, nil
}

// Worker returns the daemon's worker.
func (d *Daemon) Worker() *Worker { return d.worker }

// SessionManager returns the daemon's session manager.
func (d *Daemon) SessionManager() *session.Manager { return d.sm }

// Config returns the configuration the daemon runs with.
func (d *Daemon) Config() Config { return d.cfg }

// Serve answers BuildKit's gRPC API on the listeners until ctx ends, then
// stops the server gracefully. It does not close the daemon.
func (d *Daemon) Serve(ctx context.Context, listeners ...net.Listener) error {
	server := grpc.NewServer(
		grpc.ChainUnaryInterceptor(grpcerrors.UnaryServerInterceptor),
		grpc.StreamInterceptor(grpcerrors.StreamServerInterceptor),
		grpc.MaxRecvMsgSize(16<<20),
		grpc.MaxSendMsgSize(16<<20),
	)
	healthv1.RegisterHealthServer(server, health.NewServer())
	d.controller.Register(server)

	errCh := make(chan error, len(listeners))
	for _, l := range listeners {
		go func(l net.Listener) {
			if err := server.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errCh <- fmt.Errorf("serve %s: %w", l.Addr(), err)
			}
		}(l)
	}
	select {
	case err := <-errCh:
		server.Stop()
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		server.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-appcontext.Context().Done():
		server.Stop()
	}
	return nil
}

// Close stops the controller and the worker, unmounts every lazy layer the
// stargz snapshotter mounted and releases the state directory. It is safe to
// call more than once.
func (d *Daemon) Close() error {
	d.closeOnce.Do(func() {
		var errs []error
		for i := len(d.closers) - 1; i >= 0; i-- {
			if err := d.closers[i](); err != nil {
				errs = append(errs, err)
			}
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// Listen opens a listener for a buildkitd-style address: unix:///path or
// tcp://host:port. A unix socket's directory is created and a stale socket
// file replaced.
func Listen(addr string, gid int) (net.Listener, error) {
	proto, rest, ok := strings.Cut(addr, "://")
	if !ok {
		return nil, fmt.Errorf("address %q: want unix:///path or tcp://host:port", addr)
	}
	switch proto {
	case "unix":
		if err := os.MkdirAll(filepath.Dir(rest), 0o700); err != nil {
			return nil, err
		}
		if err := os.Remove(rest); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
		l, err := net.Listen("unix", rest)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(rest, 0o660); err != nil {
			l.Close()
			return nil, err
		}
		if gid > 0 {
			if err := os.Chown(rest, 0, gid); err != nil {
				l.Close()
				return nil, err
			}
		}
		return l, nil
	case "tcp":
		return net.Listen("tcp", rest)
	default:
		return nil, fmt.Errorf("address %q: unsupported scheme %q (want unix or tcp)", addr, proto)
	}
}

// lockRoot takes an exclusive lock on the state directory so two daemons
// never share one root.
func lockRoot(root string) (func() error, error) {
	path := filepath.Join(root, "stargazerd.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", root, ErrRootInUse)
		}
		return nil, fmt.Errorf("lock state directory: %w", err)
	}
	return func() error {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return f.Close()
	}, nil
}

func parsePlatforms(specs []string) ([]ocispecs.Platform, error) {
	out := make([]ocispecs.Platform, 0, len(specs))
	for _, s := range specs {
		p, err := platforms.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("invalid platform %q: %w", s, err)
		}
		out = append(out, platforms.Normalize(p))
	}
	return out, nil
}
