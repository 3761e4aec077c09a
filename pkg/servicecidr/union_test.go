package servicecidr

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func serviceCIDR(name string, cidrs ...string) ServiceCIDR {
	var obj ServiceCIDR
	obj.Metadata.Name = name
	obj.Spec.CIDRs = cidrs
	return obj
}

func TestPrefixes(t *testing.T) {
	tests := []struct {
		name     string
		obj      ServiceCIDR
		want     []netip.Prefix
		wantErrs []string
	}{
		{name: "dual-stack, as the apiserver makes it", obj: serviceCIDR("kubernetes", "10.96.0.0/12", "fd00:10:96::/112"),
			want: prefixes("10.96.0.0/12", "fd00:10:96::/112")},
		{name: "host bits masked", obj: serviceCIDR("a", "10.96.0.1/12"), want: prefixes("10.96.0.0/12")},
		{name: "none", obj: serviceCIDR("empty")},
		{name: "a bad CIDR is left out, named with its object; the other family stays",
			obj: serviceCIDR("extra", "10.100.0.0/33", "fd00::/108"), want: prefixes("fd00::/108"),
			wantErrs: []string{`ServiceCIDR "extra" spec.cidrs[0] "10.100.0.0/33": not a CIDR`}},
		{name: "an address without a length, a zone", obj: serviceCIDR("b", "10.96.0.1", "fe80::%eth0/64"),
			wantErrs: []string{`spec.cidrs[0] "10.96.0.1"`, `spec.cidrs[1] "fe80::%eth0/64"`}},
		{name: "IPv4-mapped: made IPv4, or left out when shorter than /96", obj: serviceCIDR("m", "::ffff:10.96.0.1/108", "::ffff:10.0.0.0/80"),
			want:     prefixes("10.96.0.0/12"),
			wantErrs: []string{`ServiceCIDR "m" spec.cidrs[1] "::ffff:10.0.0.0/80": left out: an IPv4-mapped IPv6 prefix shorter than /96`}},
		{name: "what macvlan-host-route refuses is left out", obj: serviceCIDR("wide", "0.0.0.0/0", "::/0"),
			want:     prefixes("::/0"),
			wantErrs: []string{`ServiceCIDR "wide" spec.cidrs[0] "0.0.0.0/0": left out: macvlan-host-route refuses it in viaNode: holds the cloud metadata address`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, errs := Prefixes(tt.obj)
			if !slices.Equal(got, tt.want) {
				t.Errorf("Prefixes = %v, want %v", got, tt.want)
			}
			if len(errs) != len(tt.wantErrs) {
				t.Fatalf("errors %v, want %d", errs, len(tt.wantErrs))
			}
			for i, want := range tt.wantErrs {
				if !strings.Contains(errs[i].Error(), want) {
					t.Errorf("error %q, want it to contain %q", errs[i], want)
				}
			}
			if err := errors.Join(errs...); err != nil {
				t.Log(err)
			}
		})
	}
}

func TestUnion(t *testing.T) {
	tests := []struct {
		name   string
		byName map[string][]netip.Prefix
		want   []netip.Prefix
	}{
		{name: "none", byName: nil, want: nil},
		{name: "objects without CIDRs", byName: map[string][]netip.Prefix{"a": nil, "b": {}}, want: nil},
		{name: "sorted: IPv4 first, then by address, then by length", byName: map[string][]netip.Prefix{
			"kubernetes": prefixes("fd00:10:96::/112", "10.96.0.0/12"),
			"extra":      prefixes("10.96.0.0/16", "10.0.0.0/24"),
		}, want: prefixes("10.0.0.0/24", "10.96.0.0/12", "10.96.0.0/16", "fd00:10:96::/112")},
		{name: "one CIDR in two objects is listed once", byName: map[string][]netip.Prefix{
			"a": prefixes("10.96.0.0/12"), "b": prefixes("10.96.0.0/12", "fd00::/108"),
		}, want: prefixes("10.96.0.0/12", "fd00::/108")},
		{name: "unmasked input is masked before comparing", byName: map[string][]netip.Prefix{
			"a": {netip.PrefixFrom(netip.MustParseAddr("10.96.0.1"), 12)}, "b": prefixes("10.96.0.0/12"),
		}, want: prefixes("10.96.0.0/12")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Union(tt.byName); !slices.Equal(got, tt.want) {
				t.Errorf("Union = %v, want %v", got, tt.want)
			}
		})
	}
}
