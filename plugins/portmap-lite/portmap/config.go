// Package portmap is the logic of the portmap-lite plugin: parse the
// configuration and the runtime's portMappings, decide per pod address
// what to masquerade, plan the attachment's rules with pkg/nat (pure
// functions), and apply, check, restore and remove them through its
// backends, from a record of each attachment.
package portmap

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/cnilog"
	"github.com/cnichain/plugins/pkg/nat"
)

// The backends.
const (
	BackendIPTables = nat.BackendIPTables
	BackendNFTables = nat.BackendNFTables
)

// DefaultStateDir holds one record per attachment of what its ADD installed.
const DefaultStateDir = "/var/lib/cni/portmap-lite"

// Config is a validated portmap-lite configuration for one request.
type Config struct {
	types.PluginConf
	// SNAT masquerades hairpin and localhost traffic to mapped ports (default true).
	SNAT *bool `json:"snat"`
	// MasqAll masquerades all traffic to mapped ports, not only hairpin and
	// localhost; unset, ADD decides per pod address (see MasqueradeAll).
	MasqAll *bool `json:"masqAll"`
	// ConditionsV4/V6 are extra iptables matches on the jump into the
	// attachment's DNAT chain, as in the reference portmap.
	ConditionsV4 *[]string `json:"conditionsV4"`
	ConditionsV6 *[]string `json:"conditionsV6"`
	// MarkMasqBit and ExternalSetMarkChain are the reference's mark-based
	// masquerading, which we do not use: set, they are an error.
	MarkMasqBit          *int    `json:"markMasqBit"`
	ExternalSetMarkChain *string `json:"externalSetMarkChain"`
	// Backend is "iptables" (the default) or "nftables" (netlink, no process).
	Backend string `json:"backend"`
	// IptablesFlavour picks the binaries: "" (the system's), "legacy", "nft".
	IptablesFlavour string `json:"iptablesFlavour"`
	// StateDir is where records are kept.
	StateDir string `json:"stateDir"`
	cnilog.Config
	RuntimeConfig struct {
		PortMappings []PortMapping `json:"portMappings"`
	} `json:"runtimeConfig"`

	// Mappings are RuntimeConfig.PortMappings, validated.
	Mappings []nat.Mapping `json:"-"`
	// RandomFully puts --random-fully on MASQUERADE rules: set by the verbs
	// from what the node's iptables supports, not by the configuration.
	RandomFully bool `json:"-"`
}

// PortMapping is one entry of the portMappings capability as runtimes send it.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Parse reads the plugin's stdin into a Config. Every error is a CNI error
// naming the field and the value.
func Parse(stdin []byte) (*Config, error) {
	var cfg Config
	if err := json.Unmarshal(stdin, &cfg); err != nil {
		return nil, cnierr.Decode("network configuration", err)
	}
	if cfg.SNAT == nil {
		yes := true
		cfg.SNAT = &yes
	}
	if cfg.MarkMasqBit != nil {
		return nil, cnierr.InvalidConfig("markMasqBit", *cfg.MarkMasqBit, "portmap-lite masquerades by exact match and sets no mark; remove it")
	}
	if cfg.ExternalSetMarkChain != nil {
		return nil, cnierr.InvalidConfig("externalSetMarkChain", *cfg.ExternalSetMarkChain, "portmap-lite sets no mark; remove it")
	}
	switch cfg.Backend {
	case "":
		cfg.Backend = BackendIPTables
	case BackendIPTables:
	case BackendNFTables:
		if cfg.ConditionsV4 != nil || cfg.ConditionsV6 != nil {
			return nil, cnierr.InvalidConfig("backend", cfg.Backend, "conditionsV4/conditionsV6 are iptables matches; use the iptables backend with them")
		}
	default:
		return nil, cnierr.InvalidConfig("backend", cfg.Backend, `must be "iptables" or "nftables"`)
	}
	switch cfg.IptablesFlavour {
	case "", "legacy", "nft":
	default:
		return nil, cnierr.InvalidConfig("iptablesFlavour", cfg.IptablesFlavour, `must be "", "legacy" or "nft"`)
	}
	for _, c := range []struct {
		field string
		list  *[]string
	}{{"conditionsV4", cfg.ConditionsV4}, {"conditionsV6", cfg.ConditionsV6}} {
		if c.list == nil {
			continue
		}
		for i, arg := range *c.list {
			if arg == "" || strings.ContainsAny(arg, "\n\r\x00") {
				return nil, cnierr.InvalidConfig(fmt.Sprintf("%s[%d]", c.field, i), arg, "empty or spans lines")
			}
		}
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if err := cfg.Config.Validate(); err != nil {
		return nil, err
	}
	var err error
	if cfg.Mappings, err = parseMappings(cfg.RuntimeConfig.PortMappings); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func parseMappings(in []PortMapping) ([]nat.Mapping, error) {
	out := make([]nat.Mapping, 0, len(in))
	type slot struct {
		ip    netip.Addr
		port  uint16
		proto string
	}
	seen := map[slot]int{}
	for i, pm := range in {
		field := fmt.Sprintf("runtimeConfig.portMappings[%d]", i)
		m := nat.Mapping{Protocol: strings.ToLower(pm.Protocol)}
		if m.Protocol == "" {
			m.Protocol = "tcp"
		}
		if m.Protocol != "tcp" && m.Protocol != "udp" && m.Protocol != "sctp" {
			return nil, cnierr.InvalidConfig(field+".protocol", pm.Protocol, "must be tcp, udp or sctp")
		}
		if pm.HostPort < 1 || pm.HostPort > 65535 {
			return nil, cnierr.InvalidConfig(field+".hostPort", pm.HostPort, "outside 1-65535")
		}
		if pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
			return nil, cnierr.InvalidConfig(field+".containerPort", pm.ContainerPort, "outside 1-65535")
		}
		m.HostPort, m.ContainerPort = uint16(pm.HostPort), uint16(pm.ContainerPort)
		if pm.HostIP != "" {
			ip, err := netip.ParseAddr(pm.HostIP)
			if err != nil || ip.Zone() != "" {
				return nil, cnierr.InvalidConfig(field+".hostIP", pm.HostIP, "not an IP address")
			}
			ip = ip.Unmap()
			if ip == netip.IPv6Loopback() {
				return nil, cnierr.InvalidConfig(field+".hostIP", pm.HostIP,
					"IPv6 has no route_localnet: the kernel cannot forward traffic for ::1 to a pod")
			}
			m.HostIP = ip
		}
		k := slot{m.HostIP, m.HostPort, m.Protocol}
		if j, dup := seen[k]; dup {
			return nil, cnierr.InvalidConfig(field, fmt.Sprintf("%s:%d/%s", pm.HostIP, pm.HostPort, m.Protocol),
				fmt.Sprintf("maps the same host address, port and protocol as runtimeConfig.portMappings[%d]", j))
		}
		seen[k] = i
		out = append(out, m)
	}
	return out, nil
}
