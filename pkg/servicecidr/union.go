package servicecidr

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cnichain/plugins/plugins/macvlan-host-route/hostroute"
)

// Prefixes are a ServiceCIDR's spec.cidrs as viaNode may hold them
// (viaNodeEntry). A value that is no CIDR, or that viaNode may not hold,
// is left out, with an error naming the object and the value: the other
// family's CIDR of the object still counts.
func Prefixes(obj ServiceCIDR) ([]netip.Prefix, []error) {
	var out []netip.Prefix
	var errs []error
	for i, s := range obj.Spec.CIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("ServiceCIDR %q spec.cidrs[%d] %q: not a CIDR such as 10.96.0.0/12, left out: %w", obj.Metadata.Name, i, s, err))
			continue
		}
		if p, err = viaNodeEntry(p); err != nil {
			errs = append(errs, fmt.Errorf("ServiceCIDR %q spec.cidrs[%d] %q: left out: %w", obj.Metadata.Name, i, s, err))
			continue
		}
		out = append(out, p)
	}
	return out, errs
}

// viaNodeEntry is p as viaNode may hold it, or why it may not: masked,
// an IPv4-mapped IPv6 prefix made the IPv4 prefix it maps (the plugin would
// route it as IPv6, to addresses no pod sends to), and checked as the
// plugin checks its entries, for an entry it refuses fails every pod's ADD.
// It looks at p's address before masking it: a mapped prefix shorter than
// /96 masks to a plain IPv6 one.
func viaNodeEntry(p netip.Prefix) (netip.Prefix, error) {
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, errors.New("an IPv4-mapped IPv6 prefix shorter than /96, which is no IPv4 range")
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	p = p.Masked()
	if err := hostroute.CheckViaNodeEntry(p); err != nil {
		return netip.Prefix{}, fmt.Errorf("%s refuses it in viaNode: %w", PluginType, err)
	}
	return p, nil
}

// Union is every ServiceCIDR's prefixes together, sorted (IPv4 first) and
// without duplicates: two objects may name one CIDR.
func Union(byName map[string][]netip.Prefix) []netip.Prefix {
	var all []netip.Prefix
	for _, prefixes := range byName {
		all = append(all, prefixes...)
	}
	return union(all)
}

// union masks, sorts and de-duplicates prefixes, in a new slice: what
// viaNode holds must be the same whatever order the cluster sent.
func union(prefixes ...[]netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, ps := range prefixes {
		for _, p := range ps {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return slices.Compact(out)
}
