package static

import (
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnichain/plugins/pkg/chain"
	"github.com/cnichain/plugins/pkg/cnierr"
)

// Verify reports the first way in which prev, the result of ADD, lacks what
// cfg hands out: an address, its prefix length or gateway, or a route.
func Verify(cfg *Config, prev *current.Result) error {
	have := map[netip.Addr]*current.IPConfig{}
	for _, ipc := range prev.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			have[a.Unmap()] = ipc
		}
	}
	for _, want := range cfg.Addresses {
		got, ok := have[want.Prefix.Addr()]
		if !ok {
			return cnierr.CheckFailed("address %s (from %s) is missing from prevResult", want.Prefix, cfg.Source)
		}
		if p, _ := chain.Prefix(got.Address); p.Bits() != want.Prefix.Bits() {
			return cnierr.CheckFailed("address %s is %s in prevResult", want.Prefix, got.Address.String())
		}
		gw, _ := netip.AddrFromSlice(got.Gateway)
		if want.Gateway.IsValid() && gw.Unmap() != want.Gateway {
			return cnierr.CheckFailed("address %s has gateway %q in prevResult, want %s", want.Prefix, got.Gateway, want.Gateway)
		}
	}
	for _, want := range cfg.Routes {
		found := false
		for _, got := range prev.Routes {
			if got.Dst.String() == want.Dst.String() && got.GW.Equal(want.GW) {
				found = true
				break
			}
		}
		if !found {
			return cnierr.CheckFailed("route to %s via %q is missing from prevResult", want.Dst.String(), want.GW)
		}
	}
	return nil
}
