// Package multinic is the logic of the multinic plugin: ask the resource
// manager (RM) for a pod's networks, validate its answer into a plan, and
// delegate each network to its main plugin with static-ipam.
package multinic

import (
	"encoding/json"
	"net/url"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/cnilog"
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
	// RMURL is the resource manager's URL ("backend" in Dockin's
	// configurations); the pod is added as ?podName=&podNamespace=.
	RMURL string `json:"backend"`
	// CAFile is a PEM bundle to trust for an https backend.
	CAFile string `json:"caFile"`
	// Timeout bounds a request to the RM ("5s" by default).
	Timeout    string        `json:"timeout"`
	TimeoutDur time.Duration `json:"-"`
	// IPAMType is the IPAM every delegate gets; default static-ipam.
	IPAMType string `json:"ipamType"`
	StateDir string `json:"stateDir"`
	cnilog.Config
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
	if cfg.RMURL == "" {
		return nil, cnierr.MissingConfig("backend", "the resource manager's URL, e.g. http://localhost:10002/rmController/getPodMultiNetwork")
	}
	u, err := url.Parse(cfg.RMURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, cnierr.InvalidConfig("backend", cfg.RMURL, "not an http or https URL")
	}
	cfg.TimeoutDur = DefaultTimeout
	if cfg.Timeout != "" {
		d, err := time.ParseDuration(cfg.Timeout)
		if err != nil || d <= 0 || d > 5*time.Minute {
			return nil, cnierr.InvalidConfig("timeout", cfg.Timeout, "not a duration between 0 and 5m, e.g. \"5s\"")
		}
		cfg.TimeoutDur = d
	}
	if err := cfg.Config.Validate(); err != nil {
		return nil, err
	}
	if cfg.IPAMType == "" {
		cfg.IPAMType = DefaultIPAM
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	return &cfg, nil
}
