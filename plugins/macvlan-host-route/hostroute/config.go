// Package hostroute is the logic of the macvlan-host-route plugin.
package hostroute

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/cnilog"
)

// DefaultStateDir holds the records of which attachment owns which route.
const DefaultStateDir = "/var/lib/cni/macvlan-host-route"

// bridgeSuffix names the default sub-device after its master: eno1.host.
const bridgeSuffix = ".host"

// Config is a validated macvlan-host-route configuration.
type Config struct {
	types.PluginConf
	// Master is the uplink the pods' macvlans sit on.
	Master string `json:"master"`
	// Bridge is the node's bridge-mode macvlan sub-device of Master.
	Bridge string `json:"bridge"`
	// MTU of the sub-device when we create it; 0 takes the master's.
	MTU int `json:"mtu"`
	// HostAddresses, when set, are the node addresses put on the sub-device
	// (as /32, /128) so pods reach the node at them, instead of the copies
	// of the master's that Answered picks.
	HostAddresses []netip.Addr `json:"-"`
	RawHostAddrs  []string     `json:"hostAddresses"`
	// StateDir is where route ownership is recorded.
	StateDir string `json:"stateDir"`
	cnilog.Config
}

// Parse reads stdin into a Config with defaults applied. It checks only the
// text: whether the master exists is for ADD and STATUS to find out, so
// that DEL works on a node whose uplink is gone.
func Parse(stdin []byte) (*Config, error) {
	var cfg Config
	if err := json.Unmarshal(stdin, &cfg); err != nil {
		return nil, cnierr.Decode("network configuration", err)
	}
	if cfg.Master == "" {
		return nil, cnierr.MissingConfig("master", "name the uplink the macvlan pods use, e.g. \"eno1\"")
	}
	if err := utils.ValidateInterfaceName(cfg.Master); err != nil {
		return nil, cnierr.InvalidConfig("master", cfg.Master, err.Msg)
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge(cfg.Master)
	}
	if err := utils.ValidateInterfaceName(cfg.Bridge); err != nil {
		return nil, cnierr.InvalidConfig("bridge", cfg.Bridge, err.Msg)
	}
	if cfg.Bridge == cfg.Master {
		return nil, cnierr.InvalidConfig("bridge", cfg.Bridge, "must differ from master")
	}
	if cfg.MTU != 0 && (cfg.MTU < 68 || cfg.MTU > 65535) {
		return nil, cnierr.InvalidConfig("mtu", cfg.MTU, "outside 68-65535")
	}
	for i, s := range cfg.RawHostAddrs {
		a, err := netip.ParseAddr(s)
		if err != nil || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
			return nil, cnierr.InvalidConfig(fmt.Sprintf("hostAddresses[%d]", i), s, "not a unicast IP address")
		}
		cfg.HostAddresses = append(cfg.HostAddresses, a.Unmap())
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if err := cfg.Config.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// DefaultBridge is "<master>.host", with the master's name cut so the whole
// stays within the kernel's 15 bytes.
func DefaultBridge(master string) string {
	const max = 15
	if len(master)+len(bridgeSuffix) > max {
		master = master[:max-len(bridgeSuffix)]
	}
	return master + bridgeSuffix
}

// RouteTargets are the pod addresses to route to: each container address
// of prevResult once, in order.
func RouteTargets(addrs []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, p := range addrs {
		if a := p.Addr(); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// Answered picks which of the master's addresses the sub-device must answer
// ARP or NDP for, so that pods reach the node at them. A pod's macvlan hears
// only the sub-device, never the master, and the kernel answers a neighbour
// solicitation only for addresses of the interface it arrived on: so every
// global IPv6 address. ARP answers for any address of the node on any
// interface, unless arp_ignore (1 or more) restricts it to the receiving
// interface's: then the IPv4 addresses too. Each keeps its prefix length,
// which arp_ignore 2 wants for the asker's subnet.
func Answered(master []netip.Prefix, arpIgnore int) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range master {
		if p.Addr().Is6() || arpIgnore > 0 {
			out = append(out, p)
		}
	}
	return out
}
