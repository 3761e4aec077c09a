package portmap

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/iptbatch"
	"github.com/cnichain/plugins/pkg/nat"
)

// Plan is an attachment's rules in every family it has mappings in.
type Plan struct {
	Families []nat.FamilyPlan `json:"families"`
	// UDPPorts are host ports whose conntrack entries go when mappings change.
	UDPPorts []uint16 `json:"udpPorts,omitempty"`
}

// Target is a container address to forward mapped ports to, and what ADD
// found out about the way back: whether the pod's replies to a client off
// its own link pass through the node on their own, because its gateway is
// an address of the node (bridge with isGateway, ptp). Behind macvlan or
// ipvlan they do not: the gateway is a router of the lan, or there is none.
type Target struct {
	IP             netip.Addr
	RepliesViaNode bool
}

// MasqueradeAll decides whether every connection forwarded to a target is
// masqueraded, not only hairpin and localhost ones. An explicit masqAll
// wins. Otherwise only where the pod's replies would bypass the node: there
// the client would get an answer from the pod's own address, not from the
// node's it connected to, and drop it. The cost, said in the README: such
// pods see the node's address as the client's.
func MasqueradeAll(explicit *bool, t Target) bool {
	if explicit != nil {
		return *explicit
	}
	return !t.RepliesViaNode
}

// Build plans the rules of cfg's mappings for the attachment k, whose
// container addresses are targets (the first of each family is used, as by
// the reference portmap). It fails on a mapping whose hostIP's family the
// container has no address in.
func Build(cfg *Config, k attachstate.Key, targets []Target) (*Plan, error) {
	plan := &Plan{}
	comment := nat.Comment(cfg.Name, k.ContainerID)
	for _, fam := range []iptbatch.Family{iptbatch.IPv4, iptbatch.IPv6} {
		target, ok := first(targets, fam)
		pod := target.IP
		var maps []nat.Mapping
		for _, m := range cfg.Mappings {
			if m.HostIP.IsValid() && nat.FamilyOf(m.HostIP) != fam {
				continue
			}
			if !ok {
				if m.HostIP.IsValid() {
					return nil, fmt.Errorf("hostIP %s is %s but the container has no %s address", m.HostIP, fam, fam)
				}
				continue
			}
			maps = append(maps, m)
		}
		if len(maps) == 0 {
			continue
		}
		conditions := cfg.ConditionsV4
		if fam == iptbatch.IPv6 {
			conditions = cfg.ConditionsV6
		}
		fp := nat.NewFamilyPlan(nat.Spec{
			Family: fam, Key: k, PodIP: pod, Maps: maps, Comment: comment,
			MasqAll: MasqueradeAll(cfg.MasqAll, target), SNAT: *cfg.SNAT, RandomFully: cfg.RandomFully, Conditions: conditions,
		})
		plan.Families = append(plan.Families, fp)
	}
	for _, m := range cfg.Mappings {
		if m.Protocol == "udp" && !slices.Contains(plan.UDPPorts, m.HostPort) {
			plan.UDPPorts = append(plan.UDPPorts, m.HostPort)
		}
	}
	return plan, nil
}

func first(targets []Target, fam iptbatch.Family) (Target, bool) {
	for _, t := range targets {
		if nat.FamilyOf(t.IP) == fam {
			return t, true
		}
	}
	return Target{}, false
}
