package servicecidr

import (
	"slices"
	"testing"
)

// TestPodNetworkOf: the pods' families and subnets as a conflist's ipam
// gives them, or nothing where it does not tell.
func TestPodNetworkOf(t *testing.T) {
	for _, tt := range []struct {
		name, conflist string
		want           podNetwork
	}{
		{name: "host-local dual-stack",
			conflist: `{"plugins":[{"type":"macvlan","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16"},{"subnet":"10.2.0.0/16"}],[{"subnet":"fd00:1::/64"}]]}},{"type":"macvlan-host-route"}]}`,
			want:     podNetwork{v4: true, v6: true, subnets: prefixes("10.1.0.0/16", "10.2.0.0/16", "fd00:1::/64"), from: "plugins[0] ipam (host-local)"}},
		{name: "host-local IPv4 alone",
			conflist: `{"plugins":[{"type":"macvlan","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16","rangeStart":"10.1.0.10"}]]}}]}`,
			want:     podNetwork{v4: true, subnets: prefixes("10.1.0.0/16"), from: "plugins[0] ipam (host-local)"}},
		{name: "host-local's legacy subnet, beside ranges",
			conflist: `{"plugins":[{"type":"macvlan","ipam":{"type":"host-local","subnet":"10.1.0.0/16","ranges":[[{"subnet":"fd00:1::/64"}]]}}]}`,
			want:     podNetwork{v4: true, v6: true, subnets: prefixes("10.1.0.0/16", "fd00:1::/64"), from: "plugins[0] ipam (host-local)"}},
		{name: "static-ipam IPv6 alone, host bits masked; keys of any case",
			conflist: `{"plugins":[{"type":"macvlan","IPAM":{"type":"static-ipam","Addresses":[{"address":"fd00:1::5/64","gateway":"fd00:1::1"}]}}]}`,
			want:     podNetwork{v6: true, subnets: prefixes("fd00:1::/64"), from: "plugins[0] ipam (static-ipam)"}},
		{name: "static, two plugins' ipam",
			conflist: `{"plugins":[{"type":"macvlan","ipam":{"type":"static","addresses":[{"address":"10.1.0.5/24"}]}},{"type":"tuning"},{"type":"x","ipam":{"type":"host-local","subnet":"fd00:2::/64"}}]}`,
			want:     podNetwork{v4: true, v6: true, subnets: prefixes("10.1.0.0/24", "fd00:2::/64"), from: "plugins[0] ipam (static), plugins[2] ipam (host-local)"}},
		{name: "static-ipam with per-pod addresses alone (capabilities.ips): nothing",
			conflist: headline},
		{name: "dhcp: nothing", conflist: `{"plugins":[{"type":"macvlan","ipam":{"type":"dhcp"}}]}`},
		{name: "whereabouts: nothing", conflist: `{"plugins":[{"type":"macvlan","ipam":{"type":"whereabouts","range":"10.1.0.0/16"}}]}`},
		{name: "no ipam: nothing", conflist: `{"plugins":[{"type":"macvlan"},{"type":"macvlan-host-route"}]}`},
		{name: "not CIDRs, values of other types: nothing",
			conflist: `{"plugins":[{"type":"macvlan","ipam":{"type":"host-local","subnet":"10.1.0.0"}},{"ipam":{"type":"host-local","ranges":"10.1.0.0/16"}},{"ipam":{"type":"static","addresses":[{"address":"x"}]}},{"ipam":null},null,1]}`},
		{name: "two keys folding to ipam: nothing",
			conflist: `{"plugins":[{"type":"macvlan","ipam":{"type":"host-local","subnet":"10.1.0.0/16"},"IPAM":{"type":"host-local","subnet":"fd00::/64"}}]}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, plugins, err := decodeConflist([]byte(tt.conflist))
			if err != nil {
				t.Fatal(err)
			}
			got := podNetworkOf(plugins)
			if got.v4 != tt.want.v4 || got.v6 != tt.want.v6 || !slices.Equal(got.subnets, tt.want.subnets) || got.from != tt.want.from {
				t.Errorf("podNetworkOf = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestRewriteFamilies: the families the ipam gives the pods decide which of
// the cluster's CIDRs each plugin takes; where it tells nothing, the
// plugin's own viaNode does, then every family.
func TestRewriteFamilies(t *testing.T) {
	const route = `{"type":"macvlan-host-route","viaNode":["169.254.20.10/32"]}`
	cluster := prefixes("10.96.0.0/12", "fd00:10:96::/112")
	for _, tt := range []struct {
		name, plugins string
		want          []string
	}{
		{"host-local dual-stack", `{"type":"macvlan","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"fd00:1::/64"}]]}},` + route,
			[]string{"10.96.0.0/12", "169.254.20.10/32", "fd00:10:96::/112"}},
		{"host-local IPv4 alone", `{"type":"macvlan","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16"}]]}},{"type":"macvlan-host-route"}`,
			[]string{"10.96.0.0/12"}},
		{"static-ipam IPv6 alone", `{"type":"macvlan","ipam":{"type":"static-ipam","addresses":[{"address":"fd00:1::5/64"}]}},` + route,
			[]string{"169.254.20.10/32", "fd00:10:96::/112"}},
		{"dhcp: the own viaNode's families", `{"type":"macvlan","ipam":{"type":"dhcp"}},` + route,
			[]string{"10.96.0.0/12", "169.254.20.10/32"}},
		{"whereabouts, no own viaNode: every family", `{"type":"macvlan","ipam":{"type":"whereabouts","range":"10.1.0.0/16"}},{"type":"macvlan-host-route"}`,
			[]string{"10.96.0.0/12", "fd00:10:96::/112"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := rewrite([]byte(`{"plugins":[`+tt.plugins+`]}`), cluster)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range r.viaNode[1] {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("viaNode %q, want %q", got, tt.want)
			}
			conf, ok := asPluginReads(pluginAt(t, r.out, 1))
			if !ok || !slices.Equal(conf.ViaNode, tt.want) {
				t.Errorf("the plugin reads %+v, want viaNode %q", conf, tt.want)
			}
		})
	}
}

func pluginAt(t *testing.T, conflist []byte, i int) []byte {
	t.Helper()
	_, plugins, err := decodeConflist(conflist)
	if err != nil || i >= len(plugins) {
		t.Fatalf("conflist %s: %v, no plugins[%d]", conflist, err, i)
	}
	return plugins[i]
}
