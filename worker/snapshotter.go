package worker

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	ctdsnapshot "github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/containerd/v2/plugins/snapshots/native"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	sgzfs "github.com/containerd/stargz-snapshotter/fs"
	sgzconf "github.com/containerd/stargz-snapshotter/fs/config"
	sgzlayer "github.com/containerd/stargz-snapshotter/fs/layer"
	sgzsource "github.com/containerd/stargz-snapshotter/fs/source"
	remotesn "github.com/containerd/stargz-snapshotter/snapshot"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/util/bklog"
	"github.com/moby/buildkit/util/resolver"
	"github.com/moby/buildkit/worker/runc"
	"github.com/pelletier/go-toml/v2"
	"github.com/sirupsen/logrus"
)

// Snapshotter names accepted by --oci-worker-snapshotter.
const (
	SnapshotterStargz    = "stargz" // BuildKit matches this exact name to enable lazy pulls.
	SnapshotterOverlayFS = "overlayfs"
	SnapshotterNative    = "native"
	SnapshotterAuto      = "auto"
)

// Labels the stargz snapshotter and BuildKit agree on. BuildKit appends a
// per-call suffix (".<id>") to each so several sources can be offered for
// one snapshot.
const (
	labelStargzRef     = "containerd.io/snapshot/remote/stargz.reference"
	labelStargzDigest  = "containerd.io/snapshot/remote/stargz.digest"
	labelStargzLayers  = "containerd.io/snapshot/remote/stargz.layers"
	labelStargzSession = "containerd.io/snapshot/remote/stargz.session"
)

// snapshotters remembers the snapshotters a worker opened, because BuildKit's
// worker never closes its snapshotter and the stargz one must be closed to
// unmount its FUSE filesystems.
type snapshotters struct {
	mu     sync.Mutex
	opened []ctdsnapshot.Snapshotter
}

func (s *snapshotters) add(sn ctdsnapshot.Snapshotter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opened = append(s.opened, sn)
}

// Close closes every snapshotter, newest first.
func (s *snapshotters) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first error
	for i := len(s.opened) - 1; i >= 0; i-- {
		if err := s.opened[i].Close(); err != nil && first == nil {
			first = err
		}
	}
	s.opened = nil
	return first
}

// newSnapshotterFactory returns the factory runc.NewWorkerOpt opens the
// worker's snapshotter with.
func newSnapshotterFactory(name, root string, stargzCfg map[string]any, hosts docker.RegistryHosts, hints *prefetchHints, sm *session.Manager, opened *snapshotters) (runc.SnapshotterFactory, error) {
	if name == "" {
		name = SnapshotterStargz
	}
	if name == SnapshotterAuto {
		name = SnapshotterNative
		if err := overlayutils.Supported(root); err == nil {
			name = SnapshotterOverlayFS
		}
	}
	f := runc.SnapshotterFactory{Name: name}
	switch name {
	case SnapshotterNative:
		f.New = func(root string) (ctdsnapshot.Snapshotter, error) {
			sn, err := native.NewSnapshotter(root)
			if err == nil {
				opened.add(sn)
			}
			return sn, err
		}
	case SnapshotterOverlayFS:
		f.New = func(root string) (ctdsnapshot.Snapshotter, error) {
			sn, err := overlay.NewSnapshotter(root, overlay.AsynchronousRemove)
			if err == nil {
				opened.add(sn)
			}
			return sn, err
		}
	case SnapshotterStargz:
		cfg, err := stargzConfig(stargzCfg)
		if err != nil {
			return f, err
		}
		f.New = func(root string) (ctdsnapshot.Snapshotter, error) {
			sn, err := newStargzSnapshotter(root, cfg, hosts, hints, sm)
			if err == nil {
				opened.add(sn)
			}
			return sn, err
		}
	default:
		return f, fmt.Errorf("unknown snapshotter %q: want %s, %s, %s or %s", name, SnapshotterStargz, SnapshotterOverlayFS, SnapshotterNative, SnapshotterAuto)
	}
	return f, nil
}

// defaultPrefetchAsyncSize is stargazerd's prefetch_async_size where the
// configuration sets none: a container whose layers prefetch more than this
// starts while the prefetch is still downloading, instead of after the
// download and its decompression. Its first reads fetch what the prefetch
// has not brought yet (a few more requests and bytes), and the download,
// the decompression and the workload overlap. On the start-up benchmark's
// python3 image (9.8 MB prefetched, 100 Mbit/s, 20 ms) that is 1.68 s
// ready instead of 2.07 s. The stargz snapshotter's own default, 0, always
// waits; set it to 0 to get that back.
const defaultPrefetchAsyncSize = 1 << 20

// stargzConfig turns the [worker.oci.stargzSnapshotter] table, which
// BuildKit's config keeps untyped, into the snapshotter's own config.
func stargzConfig(table map[string]any) (sgzconf.Config, error) {
	cfg := sgzconf.Config{PrefetchAsyncSize: defaultPrefetchAsyncSize}
	if len(table) == 0 {
		return cfg, nil
	}
	b, err := toml.Marshal(table)
	if err != nil {
		return cfg, fmt.Errorf("parse [worker.oci.stargzSnapshotter]: %w", err)
	}
	dec := toml.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("parse [worker.oci.stargzSnapshotter]: %w", err)
	}
	return cfg, nil
}

// stargzChunkSize is the stargz snapshotter's blob chunk size where its
// configuration sets none.
const stargzChunkSize = 50000

func newStargzSnapshotter(root string, cfg sgzconf.Config, hosts docker.RegistryHosts, hints *prefetchHints, sm *session.Manager) (ctdsnapshot.Snapshotter, error) {
	userxattr, err := overlayutils.NeedsUserXAttr(root)
	if err != nil {
		bklog.L.WithError(err).Warnf("cannot tell whether overlayfs needs userxattr under %s; assuming %v", root, userxattr)
	}
	opaque := sgzlayer.OverlayOpaqueTrusted
	if userxattr {
		opaque = sgzlayer.OverlayOpaqueUser
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	chunkSize := cfg.BlobConfig.ChunkSize
	if chunkSize <= 0 {
		chunkSize = stargzChunkSize
	}
	var warm *warmer
	var heads *headStarts
	if cfg.NoPrefetch {
		hints = nil // nothing to start early, nothing to warm
	} else {
		warm = newWarmer()
		if hints != nil {
			heads = newHeadStarts(chunkSize)
			hints.heads.Store(heads)
		}
	}
	opts := []sgzfs.Option{
		sgzfs.WithGetSources(sessionSources(sharedRanges(hosts, hints, heads, chunkSize), sm)),
		sgzfs.WithMetricsLogLevel(logrus.DebugLevel),
		sgzfs.WithOverlayOpaqueType(opaque),
	}
	if warm != nil {
		opts = append(opts, sgzfs.WithMetadataStore(warm.store))
	} else {
		opts = append(opts, sgzfs.WithMetadataStore(openLayerIndex))
	}
	fs, err := sgzfs.NewFilesystem(filepath.Join(root, "stargz"), cfg, opts...)
	if err != nil {
		return nil, fmt.Errorf("start stargz filesystem: %w", err)
	}

	// Restoring remounts the lazy layers a previous run left committed, so
	// the same root serves again after a restart. A layer whose registry is
	// gone must not keep the daemon from starting.
	var target remotesn.FileSystem = fs
	if warm != nil {
		target = warm.filesystem(fs)
	}
	sn, err := remotesn.NewSnapshotter(context.Background(), filepath.Join(root, "snapshotter"), target,
		remotesn.AsynchronousRemove, remotesn.AllowInvalidMountsOnRestart)
	if err != nil {
		return nil, fmt.Errorf("start stargz snapshotter: %w", err)
	}
	return sn, nil
}

// sharedRanges gives every registry host hosts returns a transport that
// lets range requests share a range in flight and starts hinted prefetch
// downloads early (see rangeShare). The stargz filesystem resolves hosts
// once per layer, so the requests of one layer share with each other and
// with the layer's head start only.
func sharedRanges(hosts docker.RegistryHosts, hints *prefetchHints, heads *headStarts, chunkSize int64) docker.RegistryHosts {
	return wrapTransports(hosts, func(inner http.RoundTripper) http.RoundTripper {
		t := newRangeShare(inner)
		t.hints, t.heads, t.chunkSize = hints, heads, chunkSize
		return t
	})
}

// sessionSources tells the stargz filesystem where a layer lives and how to
// authenticate to it: through the registry configuration of the daemon and
// the credentials of the client sessions that asked for the layer, so that
// no credentials are stored by the daemon itself.
//
// BuildKit offers each source under labels with a per-call suffix, with the
// session IDs to authenticate through. A snapshot restored after a restart
// carries the plain, unsuffixed labels and no session: it is mounted with
// the daemon's registry configuration alone.
func sessionSources(hosts docker.RegistryHosts, sm *session.Manager) sgzsource.GetSources {
	return func(labels map[string]string) ([]sgzsource.Source, error) {
		var sources []sgzsource.Source
		if _, ok := labels[labelStargzRef]; ok {
			plain, err := sgzsource.FromDefaultLabels(func(spec reference.Spec) ([]docker.RegistryHost, error) {
				return hosts(spec.Hostname())
			})(labels)
			if err == nil {
				sources = append(sources, plain...)
			}
		}
		for key, ref := range labels {
			id, ok := strings.CutPrefix(key, labelStargzRef+".")
			if !ok {
				continue
			}
			named, err := reference.Parse(ref)
			if err != nil {
				continue
			}
			var sessionIDs []string
			for i := 0; ; i++ {
				sid, ok := labels[labelStargzSession+"."+strconv.Itoa(i)+"."+id]
				if !ok {
					break
				}
				sessionIDs = append(sessionIDs, sid)
			}
			hostsFor := func(spec reference.Spec) ([]docker.RegistryHost, error) {
				r := resolver.DefaultPool.GetResolver(hosts, named.String(), resolver.ScopeType{}, sm, session.NewGroup(sessionIDs...))
				return r.HostsFunc(spec.Hostname())
			}
			parsed, err := sgzsource.FromDefaultLabels(hostsFor)(map[string]string{
				labelStargzRef:    ref,
				labelStargzDigest: labels[labelStargzDigest+"."+id],
				labelStargzLayers: labels[labelStargzLayers+"."+id],
			})
			if err != nil {
				continue
			}
			sources = append(sources, parsed...)
		}
		return sources, nil
	}
}
