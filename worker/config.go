package worker

import (
	"fmt"
	"os"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/cmd/buildkitd/config"
	"github.com/moby/buildkit/util/disk"
)

// Config is the daemon configuration in buildkitd.toml form, so that a
// buildkitd.toml (including [registry."host"], [worker.oci] and
// [worker.oci.stargzSnapshotter]) configures stargazerd unchanged.
type Config = config.Config

// Defaults used when the configuration leaves a field empty.
const (
	// DefaultRoot is where the daemon keeps its state.
	DefaultRoot = "/var/lib/stargazer"
	// DefaultAddress is the socket the daemon listens on.
	DefaultAddress = "unix:///run/stargazer/stargazerd.sock"
	// DefaultConfigPath is read when --config is not given.
	DefaultConfigPath = "/etc/stargazer/stargazerd.toml"
)

// LoadConfig reads a buildkitd.toml-format file and fills in defaults. A
// missing file at the default path is not an error; a missing file given
// explicitly is.
func LoadConfig(path string) (Config, error) {
	if path == "" {
		path = DefaultConfigPath
		if _, err := os.Stat(path); os.IsNotExist(err) {
			cfg := Config{}
			SetDefaults(&cfg)
			return cfg, nil
		}
	}
	if _, err := os.Stat(path); err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	cfg, err := config.LoadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("load config %s: %w", path, err)
	}
	SetDefaults(&cfg)
	return cfg, nil
}

// SetDefaults fills the fields stargazer needs and the file left empty.
func SetDefaults(cfg *Config) {
	if cfg.Root == "" {
		cfg.Root = DefaultRoot
	}
	if len(cfg.GRPC.Address) == 0 {
		cfg.GRPC.Address = []string{DefaultAddress}
	}
	oci := &cfg.Workers.OCI
	if oci.Snapshotter == "" {
		oci.Snapshotter = SnapshotterStargz
	}
	if oci.Mode == "" {
		oci.Mode = "auto"
	}
	if oci.CNIConfigPath == "" {
		oci.CNIConfigPath = "/etc/buildkit/cni.json"
	}
	if oci.CNIBinaryPath == "" {
		oci.CNIBinaryPath = "/opt/cni/bin"
	}
	if oci.BridgeName == "" {
		oci.BridgeName = "buildkit0"
	}
	if oci.BridgeSubnet == "" {
		oci.BridgeSubnet = "10.10.0.0/16"
	}
}

// ValidateEntitlements checks the names accepted by
// --allow-insecure-entitlement.
func ValidateEntitlements(ents []string) error {
	for _, e := range ents {
		switch e {
		case "security.insecure", "network.host", "device":
		default:
			return fmt.Errorf("invalid entitlement %q: want security.insecure, network.host or device", e)
		}
	}
	return nil
}

// gcPolicy turns the worker's GC settings into BuildKit's prune rules.
func gcPolicy(cfg config.GCConfig, root string) []client.PruneInfo {
	if cfg.GC != nil && !*cfg.GC {
		return nil
	}
	dstat, _ := disk.GetDiskStat(root)
	rules := cfg.GCPolicy
	if len(rules) == 0 {
		rules = config.DefaultGCPolicy(cfg, dstat)
	}
	out := make([]client.PruneInfo, 0, len(rules))
	for _, r := range rules {
		reserved := r.ReservedSpace
		//nolint:staticcheck // keepBytes is the older name buildkitd.toml files still use.
		if reserved == (config.DiskSpace{}) && r.KeepBytes != (config.DiskSpace{}) {
			reserved = r.KeepBytes //nolint:staticcheck
		}
		out = append(out, client.PruneInfo{
			Filter:        r.Filters,
			All:           r.All,
			KeepDuration:  r.KeepDuration.Duration,
			ReservedSpace: reserved.AsBytes(dstat),
			MaxUsedSpace:  r.MaxUsedSpace.AsBytes(dstat),
			MinFreeSpace:  r.MinFreeSpace.AsBytes(dstat),
		})
	}
	return out
}
