// Package chain holds what every chained plugin does with the result handed
// to it by the plugin before it: decode prevResult into the current result
// type, pick the container's addresses, and print a result in the version
// the configuration asked for.
package chain

import (
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cnichain/plugins/pkg/cnierr"
)

// PrevResult decodes conf.RawPrevResult (any cniVersion from 0.1.0 on) into
// a current result. It returns (nil, nil) when there is no prevResult, so
// that DEL, which must succeed without one, can decide what that means.
func PrevResult(conf *types.PluginConf) (*current.Result, error) {
	if conf.RawPrevResult == nil {
		return nil, nil
	}
	if err := CheckShape(conf.RawPrevResult, "prevResult"); err != nil {
		return nil, err
	}
	if err := version.ParsePrevResult(conf); err != nil {
		return nil, cnierr.Decode("prevResult", err)
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, cnierr.Decode("prevResult", err)
	}
	return res, nil
}

// RequirePrevResult is PrevResult for the verbs that cannot do without one
// (ADD and CHECK of a chained plugin): its absence is a configuration error
// whose message says where the plugin belongs in a chain (hint).
func RequirePrevResult(conf *types.PluginConf, hint string) (*current.Result, error) {
	prev, err := PrevResult(conf)
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, cnierr.MissingConfig("prevResult", hint)
	}
	return prev, nil
}

// ContainerIPs returns the addresses of prevResult that belong to an
// interface inside the container's netns (the one with a "sandbox"), or, when
// the previous plugin did not say which interface an address is on, all of
// them. The reference macvlan lists only its container interface, bridge lists
// host interfaces too: both end up right.
func ContainerIPs(res *current.Result) []netip.Prefix {
	var out []netip.Prefix
	for _, ipc := range res.IPs {
		if ipc.Interface != nil {
			i := *ipc.Interface
			if i >= 0 && i < len(res.Interfaces) && res.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		p, ok := Prefix(ipc.Address)
		if !ok {
			continue
		}
		out = append(out, p)
	}
	return out
}

// ContainerMACs are the link-layer addresses of prevResult's interfaces
// inside the container (those with a "sandbox") that name one.
func ContainerMACs(res *current.Result) []net.HardwareAddr {
	var out []net.HardwareAddr
	for _, i := range res.Interfaces {
		if i == nil || i.Sandbox == "" {
			continue
		}
		if mac, err := net.ParseMAC(i.Mac); err == nil {
			out = append(out, mac)
		}
	}
	return out
}

// ContainerAddrs is ContainerIPs without the prefix lengths.
func ContainerAddrs(res *current.Result) []netip.Addr {
	var out []netip.Addr
	for _, p := range ContainerIPs(res) {
		out = append(out, p.Addr())
	}
	return out
}

// Gateway returns the container's next hop off its own subnet in the family
// of ip: the gateway of a default route of that family in res, else the
// gateway listed with ip; the zero Addr when res names neither.
func Gateway(res *current.Result, ip netip.Addr) netip.Addr {
	for _, r := range res.Routes {
		if r == nil || r.GW == nil {
			continue
		}
		dst, ok := Prefix(r.Dst)
		gw, gwOK := netip.AddrFromSlice(r.GW)
		if ok && gwOK && dst.Bits() == 0 && dst.Addr().Is4() == ip.Is4() {
			return gw.Unmap()
		}
	}
	for _, ipc := range res.IPs {
		p, ok := Prefix(ipc.Address)
		if !ok || p.Addr() != ip || ipc.Gateway == nil {
			continue
		}
		if gw, ok := netip.AddrFromSlice(ipc.Gateway); ok {
			return gw.Unmap()
		}
	}
	return netip.Addr{}
}

// Prefix converts a result's address (IP with host bits, and mask) to a
// netip.Prefix, unmapping IPv4 addresses stored in 16 bytes.
func Prefix(ipn net.IPNet) (netip.Prefix, bool) {
	addr, ok := netip.AddrFromSlice(ipn.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := ipn.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	if addr.Is4() && bits == 128 {
		ones -= 96
	}
	if ones < 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, ones), true
}

// Print writes res to stdout converted to cniVersion, the only thing a
// plugin may print there.
func Print(res types.Result, cniVersion string) error {
	if err := types.PrintResult(res, cniVersion); err != nil {
		return cnierr.IncompatibleVersion(cniVersion, "cannot express the result: "+err.Error())
	}
	return nil
}
