// Package hostroute is the logic of the macvlan-host-route plugin.
package hostroute

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/vishvananda/netlink"

	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/cnilog"
	"github.com/cnichain/plugins/pkg/hostnet"
	"github.com/cnichain/plugins/pkg/nat"
)

// DefaultStateDir holds the records of which attachment owns which route.
const DefaultStateDir = "/var/lib/cni/macvlan-host-route"

// bridgeSuffix names the default sub-device after its master: eno1.host.
const bridgeSuffix = ".host"

// Config is a validated macvlan-host-route configuration.
type Config struct {
	types.PluginConf
	// Master is the uplink the pods' macvlans sit on; left out, the link of
	// the node's default route (see WithMaster).
	Master string `json:"master"`
	// Bridge is the node's bridge-mode macvlan sub-device of Master.
	Bridge string `json:"bridge"`
	// MTU of the sub-device when we create it; 0 takes the master's.
	MTU int `json:"mtu"`
	// HostAddresses, when set, are the node addresses put on the sub-device
	// (as /32, /128) so pods reach the node at them, instead of the master's
	// pinned in each pod (NodePins).
	HostAddresses []netip.Addr `json:"-"`
	RawHostAddrs  []string     `json:"hostAddresses"`
	// StateDir is where route ownership is recorded.
	StateDir string `json:"stateDir"`
	cnilog.Config

	// ViaNode are destinations the pod reaches through its node, not its
	// gateway: the cluster's Service CIDRs, a node-local DNS address.
	ViaNode    []netip.Prefix `json:"-"`
	RawViaNode []string       `json:"viaNode"`
	// ReplyViaNode (default true) has the node translate the source of the
	// pod's connections it translates the destination of and forwards, so
	// that their replies come back through it (nat.ReplyPath).
	ReplyViaNode *bool `json:"replyViaNode"`
	// Backend ("iptables", the default, or "nftables") and IptablesFlavour
	// ("", "legacy", "nft") write the reply path's rules, as portmap-lite's
	// keys of those names write its.
	Backend         string `json:"backend"`
	IptablesFlavour string `json:"iptablesFlavour"`
}

// metadataAddr is the cloud instance-metadata address, which a pod must
// keep reaching through its gateway.
var metadataAddr = netip.MustParseAddr("169.254.169.254")

// Parse reads stdin into a Config with defaults applied. It checks only the
// text: whether the master exists is for ADD and STATUS to find out, so
// that DEL works on a node whose uplink is gone.
func Parse(stdin []byte) (*Config, error) {
	var cfg Config
	if err := json.Unmarshal(stdin, &cfg); err != nil {
		return nil, cnierr.Decode("network configuration", err)
	}
	if cfg.Master != "" {
		if err := utils.ValidateInterfaceName(cfg.Master); err != nil {
			return nil, cnierr.InvalidConfig("master", cfg.Master, err.Msg)
		}
	}
	if cfg.Bridge != "" {
		if err := utils.ValidateInterfaceName(cfg.Bridge); err != nil {
			return nil, cnierr.InvalidConfig("bridge", cfg.Bridge, err.Msg)
		}
	}
	if err := cfg.WithMaster(cfg.Master); err != nil {
		return nil, err
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
	if err := cfg.parseViaNode(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// parseViaNode checks viaNode, replyViaNode and the reply path's backend.
// What depends on the pod (its families and subnets) is PlanViaNode's.
func (cfg *Config) parseViaNode() error {
	for i, s := range cfg.RawViaNode {
		field := fmt.Sprintf("viaNode[%d]", i)
		p, _ := netip.ParsePrefix(s) // the zero Prefix, which CheckViaNodeEntry refuses, when s is no CIDR
		if err := CheckViaNodeEntry(p); err != nil {
			return cnierr.InvalidConfig(field, s, err.Error())
		}
		if slices.Contains(cfg.ViaNode, p) {
			return cnierr.InvalidConfig(field, s, "listed twice")
		}
		cfg.ViaNode = append(cfg.ViaNode, p)
	}
	if cfg.ReplyViaNode == nil {
		yes := true
		cfg.ReplyViaNode = &yes
	}
	switch cfg.Backend {
	case "":
		cfg.Backend = nat.BackendIPTables
	case nat.BackendIPTables, nat.BackendNFTables:
	default:
		return cnierr.InvalidConfig("backend", cfg.Backend, `must be "iptables" or "nftables"`)
	}
	switch cfg.IptablesFlavour {
	case "", "legacy", "nft":
	default:
		return cnierr.InvalidConfig("iptablesFlavour", cfg.IptablesFlavour, `must be "", "legacy" or "nft"`)
	}
	return nil
}

// CheckViaNodeEntry says why viaNode may not hold p, or nil: the rules of
// one entry, whatever the pod (duplicates are the list's to find). The
// error is the reason alone, as Parse's error for the entry gives it after
// the field and value: the installer's -service-cidrs checks the cluster's
// CIDRs with it, since an entry refused here fails every pod's ADD.
func CheckViaNodeEntry(p netip.Prefix) error {
	switch {
	case !p.IsValid() || p.Addr().Zone() != "":
		return errors.New("not a CIDR such as 10.96.0.0/12 or 169.254.20.10/32")
	case p != p.Masked():
		return fmt.Errorf("has host bits set: write %s", p.Masked())
	case p.Contains(metadataAddr) && p.Bits() < 32:
		return errors.New("holds the cloud metadata address 169.254.169.254, which must stay reachable through the pod's gateway: name the node-local address alone, such as 169.254.20.10/32")
	}
	return nil
}

// WithMaster settles the master (when Parse found none, the link of the
// node's default route, as macvlan picks it) and, unless configured, the
// sub-device named after it. An empty master leaves both for later.
func (cfg *Config) WithMaster(master string) error {
	cfg.Master = master
	if master == "" {
		return nil
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge(master)
	}
	if cfg.Bridge == cfg.Master {
		return cnierr.InvalidConfig("bridge", cfg.Bridge, "must differ from master")
	}
	return nil
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

// PreferredSource is the node's address to send from to the pod address ip:
// the master's address whose subnet holds ip, so that the pod answers it
// on its own link; the zero Addr when none does (the kernel then picks).
// Without it a node with several uplinks may send from another uplink's
// address, which the pod can only answer through its gateway.
func PreferredSource(master []netip.Prefix, ip netip.Addr) netip.Addr {
	for _, p := range master {
		if p.Masked().Contains(ip) {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// NodePins are the node's addresses a pod reaches at the sub-device's MAC
// without asking: the master's, in the families the pod has addresses in
// (a pod link without IPv6 takes no IPv6 entry). A pod's macvlan hears only
// the sub-device, never the master; and a sub-device that answered the
// pods' ARP or NDP for the node would answer the lan's too (it hears the
// wire), moving the lan's entries for the node to its MAC.
func NodePins(master []netip.Prefix, pod []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, p := range master {
		if slices.ContainsFunc(pod, func(a netip.Addr) bool { return a.Is4() == p.Addr().Is4() }) {
			out = append(out, p.Addr())
		}
	}
	return out
}

// Answered picks which of the master's addresses an earlier release's
// sub-device answers ARP or NDP for (copies put on it), which pods made
// before NodePins still need. The kernel answers a neighbour solicitation
// only for addresses of the interface it arrived on: so every global IPv6
// address. ARP answers for any address of the node on any interface,
// unless arp_ignore (1 or more) restricts it to the receiving interface's:
// then the IPv4 addresses too. Each keeps its prefix length, which
// arp_ignore 2 wants for the asker's subnet.
func Answered(master []netip.Prefix, arpIgnore int) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range master {
		if p.Addr().Is6() || arpIgnore > 0 {
			out = append(out, p)
		}
	}
	return out
}

// PinnedMAC is the MAC the node reaches the pod's addresses at without
// asking: its interface's, when prevResult puts all of them on it; nil
// (the kernel asks, as for any neighbour) when the interface could not be
// looked at or prevResult names another one in the container.
func PinnedMAC(prev *current.Result, pod *hostnet.PodLink) net.HardwareAddr {
	if pod == nil || len(pod.MAC) == 0 {
		return nil
	}
	for _, i := range prev.Interfaces {
		if i != nil && i.Sandbox != "" && i.Name != pod.Name {
			return nil
		}
	}
	return pod.MAC
}

// modeNames are macvlan's words for its modes, as its "mode" key takes them.
var modeNames = map[netlink.MacvlanMode]string{
	netlink.MACVLAN_MODE_PRIVATE: "private", netlink.MACVLAN_MODE_VEPA: "vepa",
	netlink.MACVLAN_MODE_BRIDGE: "bridge", netlink.MACVLAN_MODE_PASSTHRU: "passthru",
	netlink.MACVLAN_MODE_SOURCE: "source",
}

// PodLinkProblem says why the node's bridge-mode sub-device of master (at
// masterIndex) could not reach the pod's interface p, or nil when it can:
// a route through it would lead nowhere. Only a bridge-mode macvlan of the
// same master exchanges frames with the sub-device inside the kernel; vepa
// sends them to the wire, private drops them, passthru owns the master.
func PodLinkProblem(p *hostnet.PodLink, master string, masterIndex int) error {
	switch {
	case p == nil:
		return nil // not there to look at (a runtime that names no interface): trust the chain
	case p.Kind != "macvlan":
		return cnierr.InvalidConfig("master", master,
			fmt.Sprintf("the pod's %s is a %s, not a macvlan: chain macvlan-host-route after macvlan", p.Name, p.Kind))
	case p.Mode != netlink.MACVLAN_MODE_BRIDGE:
		mode := modeNames[p.Mode]
		if mode == "" {
			mode = fmt.Sprint(int(p.Mode))
		}
		return cnierr.InvalidConfig("mode", mode, fmt.Sprintf(
			"the pod's macvlan %s is not in bridge mode, so the node's bridge-mode sub-device cannot reach it; set \"mode\": \"bridge\" in macvlan", p.Name))
	case p.ParentIndex != masterIndex:
		return cnierr.InvalidConfig("master", master, fmt.Sprintf(
			"the pod's macvlan %s sits on another link (index %d, %q is %d): set the same master in both plugins", p.Name, p.ParentIndex, master, masterIndex))
	}
	return nil
}
