package servicecidr

import (
	"fmt"
	"net/netip"
	"slices"
)

// Prefixes are a ServiceCIDR's spec.cidrs, masked. A value that is no CIDR
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
		out = append(out, p.Masked())
	}
	return out, errs
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
