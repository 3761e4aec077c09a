package servicecidr

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// podNetwork is what a conflist tells of its pods' addresses: the
// families they have and the subnets they are in, as the ipam of its
// plugins gives them. Nothing read (a dhcp, whereabouts or unknown ipam;
// addresses given per pod alone) leaves it empty.
type podNetwork struct {
	v4, v6 bool
	// subnets are the pods' own, masked: each pod reaches its own on its
	// link, and macvlan-host-route refuses a viaNode entry overlapping it.
	subnets []netip.Prefix
	// from names where the families were read, for messages.
	from string
}

// known tells whether any family was read.
func (n podNetwork) known() bool { return n.v4 || n.v6 }

// has tells whether the pods have an address of p's family.
func (n podNetwork) has(p netip.Prefix) bool {
	if p.Addr().Is4() {
		return n.v4
	}
	return n.v6
}

// ipamConf is what podNetworkOf reads of an ipam: host-local's ranges
// (and its legacy single subnet), static-ipam's and static's addresses.
// encoding/json matches keys as the plugins' own decoders do, whatever
// their case.
type ipamConf struct {
	Type   string `json:"type"`
	Subnet string `json:"subnet"`
	Ranges [][]struct {
		Subnet string `json:"subnet"`
	} `json:"ranges"`
	Addresses []struct {
		Address string `json:"address"`
	} `json:"addresses"`
}

// podNetworkOf reads the pods' families and subnets from the ipam of
// every plugin of a conflist (the macvlan's, in practice): host-local's
// ranges[][].subnet and subnet, static-ipam's and static's
// addresses[].address. An ipam of another type, one that does not decode,
// or a value that is no CIDR, tells nothing. So does a plugin with two
// keys folding to "ipam": which one the plugin reads depends on their
// order, which a rewrite may change.
func podNetworkOf(plugins []json.RawMessage) podNetwork {
	var n podNetwork
	var from []string
	for i, raw := range plugins {
		var keys map[string]json.RawMessage
		if json.Unmarshal(raw, &keys) != nil {
			continue
		}
		names := keysFolding(keys, "ipam")
		if len(names) != 1 {
			continue
		}
		var ipam ipamConf
		if json.Unmarshal(keys[names[0]], &ipam) != nil {
			continue
		}
		var cidrs []string
		switch ipam.Type {
		case "host-local":
			cidrs = append(cidrs, ipam.Subnet)
			for _, set := range ipam.Ranges {
				for _, r := range set {
					cidrs = append(cidrs, r.Subnet)
				}
			}
		case "static-ipam", "static":
			for _, a := range ipam.Addresses {
				cidrs = append(cidrs, a.Address)
			}
		default:
			continue
		}
		read := false
		for _, s := range cidrs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				continue
			}
			read = true
			if p.Addr().Is4() {
				n.v4 = true
			} else {
				n.v6 = true
			}
			if p = p.Masked(); !slices.Contains(n.subnets, p) {
				n.subnets = append(n.subnets, p)
			}
		}
		if read {
			from = append(from, fmt.Sprintf("plugins[%d] ipam (%s)", i, ipam.Type))
		}
	}
	n.from = strings.Join(from, ", ")
	return n
}

// keysFolding is the keys of an object that encoding/json would decode
// as name (it ignores case), sorted.
func keysFolding(keys map[string]json.RawMessage, name string) []string {
	var out []string
	for k := range keys {
		if strings.EqualFold(k, name) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
