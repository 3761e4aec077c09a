// Package multinic is the logic of the multinic plugin: ask the resource
// manager (RM) for a pod's networks, validate its answer into a plan, and
// delegate each network to its main plugin with static-ipam.
package multinic

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnichain/plugins/pkg/cnierr"
)

// Defaults.
const (
	DefaultStateDir = "/var/lib/cni/multinic"
	DefaultTimeout  = 5 * time.Second
	DefaultIPAM     = "static-ipam"
)

// Config is a validated multinic configuration.
type Config struct {
	types.PluginConf
	// ConfDir holds one delegate network configuration per network type,
	// named <type>.json, <type>.conf or <type>.conflist.
	ConfDir string `json:"confDir"`
	// BinDir is where the delegates live; default CNI_PATH.
	BinDir string `json:"binDir"`
	// Backend is the RM's URL; the pod is added as ?podName=&podNamespace=.
	Backend string `json:"backend"`
	// CAFile is a PEM bundle to trust for an https backend.
	CAFile string `json:"caFile"`
	// Timeout bounds a request to the RM ("5s" by default).
	Timeout    string        `json:"timeout"`
	TimeoutDur time.Duration `json:"-"`
	// IPAMType is the IPAM every delegate gets; default static-ipam.
	IPAMType string `json:"ipamType"`
	LogFile  string `json:"logFile"`
	LogLevel string `json:"logLevel"`
	StateDir string `json:"stateDir"`
}

// Parse reads stdin into a Config with defaults applied.
func Parse(stdin []byte) (*Config, error) {
	var cfg Config
	if err := json.Unmarshal(stdin, &cfg); err != nil {
		return nil, cnierr.Decode("network configuration", err)
	}
	if cfg.ConfDir == "" {
		return nil, cnierr.MissingConfig("confDir", "the directory of the delegate network configurations, one per network type")
	}
	if cfg.Backend == "" {
		return nil, cnierr.MissingConfig("backend", "the resource manager's URL, e.g. http://localhost:10002/rmController/getPodMultiNetwork")
	}
	u, err := url.Parse(cfg.Backend)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, cnierr.InvalidConfig("backend", cfg.Backend, "not an http or https URL")
	}
	cfg.TimeoutDur = DefaultTimeout
	if cfg.Timeout != "" {
		d, err := time.ParseDuration(cfg.Timeout)
		if err != nil || d <= 0 || d > 5*time.Minute {
			return nil, cnierr.InvalidConfig("timeout", cfg.Timeout, "not a duration between 0 and 5m, e.g. \"5s\"")
		}
		cfg.TimeoutDur = d
	}
	switch strings.ToLower(cfg.LogLevel) {
	case "", "debug", "info", "warn", "warning", "error":
	default:
		return nil, cnierr.InvalidConfig("logLevel", cfg.LogLevel, "must be debug, info, warn or error")
	}
	if cfg.IPAMType == "" {
		cfg.IPAMType = DefaultIPAM
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	return &cfg, nil
}

// Logger logs to LogFile only (stdout carries the result); without one,
// nowhere.
func (cfg *Config) Logger() (*slog.Logger, func()) {
	if cfg.LogFile == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil)), func() {}
	}
	f, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil)), func() {}
	}
	var level slog.Level
	switch strings.ToLower(cfg.LogLevel) {
	case "debug":
		level = slog.LevelDebug
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: level})).With("network", cfg.Name), func() { f.Close() }
}
