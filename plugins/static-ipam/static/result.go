package static

import (
	"net"
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// Result is the IPAM result for cfg: its addresses with their gateways, its
// routes and DNS. Interfaces are the calling plugin's to fill in.
func Result(cfg *Config) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Routes:     cfg.Routes,
		DNS:        cfg.DNS,
	}
	for _, a := range cfg.Addresses {
		ipc := &current.IPConfig{Address: net.IPNet{
			IP:   a.Prefix.Addr().AsSlice(),
			Mask: net.CIDRMask(a.Prefix.Bits(), a.Prefix.Addr().BitLen()),
		}}
		if a.Gateway.IsValid() {
			ipc.Gateway = a.Gateway.AsSlice()
		}
		res.IPs = append(res.IPs, ipc)
	}
	return res
}

func toIPNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
