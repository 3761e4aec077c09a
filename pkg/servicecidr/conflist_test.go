package servicecidr

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// headline is net.d/30-macvlan-hostport.conflist's shape, with a viaNode
// of the user's own and keys in no sorted order.
const headline = `{
  "cniVersion": "1.1.0",
  "name": "macvlan-hostport",
  "plugins": [
    { "type": "macvlan", "master": "eno1", "mode": "bridge", "capabilities": { "ips": true },
      "ipam": { "type": "static-ipam", "routes": [ { "dst": "0.0.0.0/0" } ] } },
    { "type": "macvlan-host-route", "master": "eno1", "viaNode": [ "169.254.20.10/32" ], "x-future": 1.50 },
    { "type": "portmap-lite", "capabilities": { "portMappings": true } }
  ]
}`

func prefixes(strs ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range strs {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestRewrite(t *testing.T) {
	tests := []struct {
		name    string
		source  string
		cluster []netip.Prefix
		want    string // the output, exactly
		wantErr string
	}{
		{name: "the cluster's CIDRs of the user's families (IPv4 here) join the user's, sorted; the rest kept, other plugins' keys in their order",
			source: headline, cluster: prefixes("fd00:10:96::/112", "10.96.0.0/12"),
			want: `{
  "cniVersion": "1.1.0",
  "name": "macvlan-hostport",
  "plugins": [
    {
      "type": "macvlan",
      "master": "eno1",
      "mode": "bridge",
      "capabilities": {
        "ips": true
      },
      "ipam": {
        "type": "static-ipam",
        "routes": [
          {
            "dst": "0.0.0.0/0"
          }
        ]
      }
    },
    {
      "master": "eno1",
      "type": "macvlan-host-route",
      "viaNode": [
        "10.96.0.0/12",
        "169.254.20.10/32"
      ],
      "x-future": 1.50
    },
    {
      "type": "portmap-lite",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
`},
		{name: "a CIDR listed by both and the cluster's host bits are written once, masked; both families of the user's are kept, sorted IPv4 first",
			source:  `{"plugins":[{"type":"macvlan-host-route","viaNode":["fd00:10:96::/112","10.96.0.0/12"]}]}`,
			cluster: prefixes("10.96.0.0/12", "10.96.0.1/12", "fd00:10:97::/112"),
			want:    "{\n  \"plugins\": [\n    {\n      \"type\": \"macvlan-host-route\",\n      \"viaNode\": [\n        \"10.96.0.0/12\",\n        \"fd00:10:96::/112\",\n        \"fd00:10:97::/112\"\n      ]\n    }\n  ]\n}\n"},
		{name: "an IPv6-only viaNode of the user's takes the cluster's IPv6 CIDRs alone",
			source:  `{"plugins":[{"type":"macvlan-host-route","viaNode":["fd00:10:96::/112"]}]}`,
			cluster: prefixes("10.96.0.0/12", "fd00:10:97::/112"),
			want:    "{\n  \"plugins\": [\n    {\n      \"type\": \"macvlan-host-route\",\n      \"viaNode\": [\n        \"fd00:10:96::/112\",\n        \"fd00:10:97::/112\"\n      ]\n    }\n  ]\n}\n"},
		{name: "IPv4-mapped CIDRs are made IPv4 (a short one is left out); one holding the metadata address is left out",
			source:  `{"plugins":[{"type":"macvlan-host-route"}]}`,
			cluster: prefixes("::ffff:10.96.0.1/108", "::ffff:10.0.0.0/64", "169.254.0.0/16", "::ffff:0.0.0.0/96", "fd00::/108"),
			want:    "{\n  \"plugins\": [\n    {\n      \"type\": \"macvlan-host-route\",\n      \"viaNode\": [\n        \"10.96.0.0/12\",\n        \"fd00::/108\"\n      ]\n    }\n  ]\n}\n"},
		{name: "every macvlan-host-route plugin gets them; a viaNode is added where none was",
			source:  `{"plugins":[{"type":"macvlan-host-route"},{"type":"macvlan-host-route","viaNode":null}]}`,
			cluster: prefixes("10.96.0.0/12", "fd00:10:96::/112"),
			want:    "{\n  \"plugins\": [\n    {\n      \"type\": \"macvlan-host-route\",\n      \"viaNode\": [\n        \"10.96.0.0/12\",\n        \"fd00:10:96::/112\"\n      ]\n    },\n    {\n      \"type\": \"macvlan-host-route\",\n      \"viaNode\": [\n        \"10.96.0.0/12\",\n        \"fd00:10:96::/112\"\n      ]\n    }\n  ]\n}\n"},
		{name: "no CIDRs and no viaNode: none added",
			source: `{"plugins":[{"type":"macvlan-host-route"}]}`,
			want:   "{\n  \"plugins\": [\n    {\n      \"type\": \"macvlan-host-route\"\n    }\n  ]\n}\n"},
		{name: "values keep their bytes: escapes, <>&, big numbers",
			source:  `{"name":"a<b>&c","plugins":[{"type":"macvlan-host-route","n":12345678901234567890,"s":"\u00e9\n"}]}`,
			cluster: prefixes("10.96.0.0/12"),
			want:    "{\n  \"name\": \"a<b>&c\",\n  \"plugins\": [\n    {\n      \"n\": 12345678901234567890,\n      \"s\": \"\\u00e9\\n\",\n      \"type\": \"macvlan-host-route\",\n      \"viaNode\": [\n        \"10.96.0.0/12\"\n      ]\n    }\n  ]\n}\n"},
		{name: "viaNode spelt otherwise (encoding/json ignores case): that key rewritten, under its spelling, no second added",
			source:  `{"plugins":[{"type":"macvlan-host-route","vianode":["169.254.20.10/32"]}]}`,
			cluster: prefixes("10.96.0.0/12"),
			want:    "{\n  \"plugins\": [\n    {\n      \"type\": \"macvlan-host-route\",\n      \"vianode\": [\n        \"10.96.0.0/12\",\n        \"169.254.20.10/32\"\n      ]\n    }\n  ]\n}\n"},
		{name: "type spelt otherwise: still the plugin's",
			source:  `{"plugins":[{"Type":"macvlan-host-route","VIANODE":null}]}`,
			cluster: prefixes("10.96.0.0/12"),
			want:    "{\n  \"plugins\": [\n    {\n      \"Type\": \"macvlan-host-route\",\n      \"VIANODE\": [\n        \"10.96.0.0/12\"\n      ]\n    }\n  ]\n}\n"},
		{name: "type spelt otherwise, not ours: left as it was", source: `{"plugins":[{"Type":"bridge","Vianode":[1]},{"type":"macvlan-host-route"}]}`,
			want: "{\n  \"plugins\": [\n    {\n      \"Type\": \"bridge\",\n      \"Vianode\": [\n        1\n      ]\n    },\n    {\n      \"type\": \"macvlan-host-route\"\n    }\n  ]\n}\n"},
		{name: "two keys folding to viaNode", source: `{"plugins":[{"type":"bridge"},{"type":"macvlan-host-route","vianode":["169.254.20.10/32"],"viaNode":[]}]}`,
			wantErr: `conflist plugins[1] (macvlan-host-route): keys "viaNode" and "vianode": the plugin reads its viaNode from one of them alone`},
		{name: "two keys folding to viaNode, one null", source: `{"plugins":[{"type":"macvlan-host-route","viaNode":null,"VIANODE":null,"viaNodes":1}]}`,
			wantErr: `conflist plugins[0] (macvlan-host-route): keys "VIANODE" and "viaNode"`},
		{name: "two keys folding to type, one ours", source: `{"plugins":[{"type":"bridge","Type":"macvlan-host-route"}]}`,
			wantErr: `conflist plugins[0] (macvlan-host-route): keys "Type" and "type": the plugin's type is one of them, depending on their order`},
		{name: "two keys folding to type, neither ours", source: `{"plugins":[{"type":"bridge","Type":"bridge"}]}`,
			wantErr: `conflist has no "macvlan-host-route" plugin`},
		{name: "dual-stack pods (host-local): both families, though the user's own viaNode is IPv4; the pods' subnet left out",
			source:  `{"plugins":[{"type":"macvlan","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"fd00:1::/64"}]]}},{"type":"macvlan-host-route","viaNode":["169.254.20.10/32"]}]}`,
			cluster: prefixes("10.96.0.0/12", "fd00:10:96::/112", "10.1.0.0/24"),
			want:    "{\n  \"plugins\": [\n    {\n      \"type\": \"macvlan\",\n      \"ipam\": {\n        \"type\": \"host-local\",\n        \"ranges\": [\n          [\n            {\n              \"subnet\": \"10.1.0.0/16\"\n            }\n          ],\n          [\n            {\n              \"subnet\": \"fd00:1::/64\"\n            }\n          ]\n        ]\n      }\n    },\n    {\n      \"type\": \"macvlan-host-route\",\n      \"viaNode\": [\n        \"10.96.0.0/12\",\n        \"169.254.20.10/32\",\n        \"fd00:10:96::/112\"\n      ]\n    }\n  ]\n}\n"},
		{name: "IPv4-only pods (host-local), no own viaNode: IPv4 alone",
			source:  `{"plugins":[{"type":"macvlan","ipam":{"type":"host-local","subnet":"10.1.0.0/16"}},{"type":"macvlan-host-route"}]}`,
			cluster: prefixes("10.96.0.0/12", "fd00:10:96::/112"),
			want:    "{\n  \"plugins\": [\n    {\n      \"type\": \"macvlan\",\n      \"ipam\": {\n        \"type\": \"host-local\",\n        \"subnet\": \"10.1.0.0/16\"\n      }\n    },\n    {\n      \"type\": \"macvlan-host-route\",\n      \"viaNode\": [\n        \"10.96.0.0/12\"\n      ]\n    }\n  ]\n}\n"},
		{name: "no macvlan-host-route plugin", source: `{"plugins":[{"type":"bridge"}]}`, cluster: prefixes("10.96.0.0/12"),
			wantErr: `conflist has no "macvlan-host-route" plugin`},
		{name: "a single-plugin conf", source: `{"type":"macvlan-host-route"}`, wantErr: `no "macvlan-host-route" plugin`},
		{name: "not JSON", source: `{"plugins":`, wantErr: "conflist: unexpected end of JSON input"},
		{name: "not an object", source: `[1]`, wantErr: "conflist: json: cannot unmarshal array"},
		{name: "plugins not a list", source: `{"plugins":{"type":"macvlan-host-route"}}`, wantErr: "conflist plugins: not a list of plugins"},
		{name: "a bad CIDR of the user's is named", source: `{"plugins":[{"type":"bridge"},{"type":"macvlan-host-route","viaNode":["10.96.0.0/12","10.96.0.0/33"]}]}`,
			wantErr: `conflist plugins[1] (macvlan-host-route): viaNode[1] "10.96.0.0/33": not a CIDR`},
		{name: "host bits in the user's viaNode, which the plugin refuses", source: `{"plugins":[{"type":"macvlan-host-route","viaNode":["10.96.0.1/12"]}]}`,
			wantErr: `conflist plugins[0] (macvlan-host-route): viaNode[0] "10.96.0.1/12": has host bits set: write 10.96.0.0/12 (macvlan-host-route would refuse it)`},
		{name: "the metadata address in a range of the user's", source: `{"plugins":[{"type":"macvlan-host-route","viaNode":["169.254.0.0/16"]}]}`,
			wantErr: `viaNode[0] "169.254.0.0/16": holds the cloud metadata address 169.254.169.254`},
		{name: "a CIDR the user listed twice", source: `{"plugins":[{"type":"macvlan-host-route","viaNode":["10.96.0.0/12","fd00::/108","10.96.0.0/12"]}]}`,
			wantErr: `viaNode[2] "10.96.0.0/12": listed twice (macvlan-host-route would refuse it)`},
		{name: "a bad CIDR under viaNode spelt otherwise is named under its spelling", source: `{"plugins":[{"type":"macvlan-host-route","ViaNode":["10.96.0.1/12"]}]}`,
			wantErr: `conflist plugins[0] (macvlan-host-route): ViaNode[0] "10.96.0.1/12": has host bits set`},
		{name: "viaNode not a list of strings", source: `{"plugins":[{"type":"macvlan-host-route","viaNode":"10.96.0.0/12"}]}`,
			wantErr: `conflist plugins[0] (macvlan-host-route): viaNode "10.96.0.0/12": not a list of CIDRs`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Rewrite([]byte(tt.source), tt.cluster)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Rewrite error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("Rewrite =\n%s\nwant\n%s", got, tt.want)
			}
			if !IsRewriteOf(got, []byte(tt.source)) {
				t.Error("IsRewriteOf(Rewrite(source), source) = false")
			}
		})
	}
}

// TestAdmit: what of the cluster's CIDRs a plugin's viaNode takes, given
// its own, and why the rest is left out.
func TestAdmit(t *testing.T) {
	for _, tt := range []struct {
		name       string
		own, given []netip.Prefix
		pods       podNetwork // none known unless set
		want       []netip.Prefix
		wantLeft   []string // each refusal's value and reason, in order
	}{
		{name: "no own viaNode: every family", given: prefixes("10.96.0.0/12", "fd00:10:96::/112"),
			want: prefixes("10.96.0.0/12", "fd00:10:96::/112")},
		{name: "own IPv4 alone: IPv4 alone", own: prefixes("169.254.20.10/32"), given: prefixes("10.96.0.0/12", "fd00:10:96::/112"),
			want:     prefixes("10.96.0.0/12"),
			wantLeft: []string{"fd00:10:96::/112: IPv6, and the plugin's own viaNode lists IPv4 ranges alone: its pods are taken to have no IPv6 address"}},
		{name: "own IPv6 alone: IPv6 alone", own: prefixes("fd00:20::10/128"), given: prefixes("10.96.0.0/12", "fd00:10:96::/112"),
			want:     prefixes("fd00:10:96::/112"),
			wantLeft: []string{"10.96.0.0/12: IPv4, and the plugin's own viaNode lists IPv6 ranges alone"}},
		{name: "own of both families: both", own: prefixes("169.254.20.10/32", "fd00:20::10/128"), given: prefixes("fd00:10:96::/112", "10.96.0.0/12"),
			want: prefixes("fd00:10:96::/112", "10.96.0.0/12")},
		{name: "IPv4-mapped: made IPv4, then its family counts", own: prefixes("10.0.0.0/8"), given: prefixes("::ffff:10.96.0.0/108", "::ffff:10.97.0.1/120"),
			want: prefixes("10.96.0.0/12", "10.97.0.0/24")},
		{name: "IPv4-mapped shorter than /96", given: prefixes("::ffff:10.0.0.0/95"),
			wantLeft: []string{"::ffff:10.0.0.0/95: an IPv4-mapped IPv6 prefix shorter than /96"}},
		{name: "what the plugin refuses, of either family", own: prefixes("10.0.0.0/8"), given: prefixes("169.254.0.0/16", "::ffff:0.0.0.0/96"),
			wantLeft: []string{"169.254.0.0/16: macvlan-host-route refuses it in viaNode: holds the cloud metadata address",
				"::ffff:0.0.0.0/96: macvlan-host-route refuses it in viaNode: holds the cloud metadata address"}},
		{name: "host bits are masked", given: []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("10.96.0.1"), 12)},
			want: prefixes("10.96.0.0/12")},
		{name: "dual-stack pods, own IPv4 alone (node-local DNS): the ipam decides, both kept",
			own: prefixes("169.254.20.10/32"), pods: podNetwork{v4: true, v6: true, from: "plugins[0] ipam (host-local)"},
			given: prefixes("10.96.0.0/12", "fd00:10:96::/112"), want: prefixes("10.96.0.0/12", "fd00:10:96::/112")},
		{name: "IPv4-only pods, no own viaNode: the ipam decides, IPv6 left out",
			pods:  podNetwork{v4: true, subnets: prefixes("10.1.0.0/16"), from: "plugins[0] ipam (host-local)"},
			given: prefixes("10.96.0.0/12", "fd00:10:96::/112"), want: prefixes("10.96.0.0/12"),
			wantLeft: []string{"fd00:10:96::/112: IPv6, and the pods have IPv4 addresses alone, as plugins[0] ipam (host-local) gives them: the plugin refuses"}},
		{name: "IPv6-only pods, own IPv4 alone: the ipam decides over own",
			own: prefixes("169.254.20.10/32"), pods: podNetwork{v6: true, from: "plugins[0] ipam (static-ipam)"},
			given: prefixes("10.96.0.0/12", "fd00:10:96::/112"), want: prefixes("fd00:10:96::/112"),
			wantLeft: []string{"10.96.0.0/12: IPv4, and the pods have IPv6 addresses alone, as plugins[0] ipam (static-ipam) gives them"}},
		{name: "a CIDR overlapping the pods' subnet, holding it or held, is left out",
			pods:  podNetwork{v4: true, v6: true, subnets: prefixes("10.96.0.0/16", "fd00:1::/64"), from: "plugins[0] ipam (host-local)"},
			given: prefixes("10.96.0.0/12", "10.96.1.0/24", "10.112.0.0/12", "fd00:1::/112", "fd00:10:96::/112"),
			want:  prefixes("10.112.0.0/12", "fd00:10:96::/112"),
			wantLeft: []string{"10.96.0.0/12: overlaps the pods' own subnet 10.96.0.0/16, as plugins[0] ipam (host-local) gives it: the plugin refuses",
				"10.96.1.0/24: overlaps the pods' own subnet 10.96.0.0/16",
				"fd00:1::/112: overlaps the pods' own subnet fd00:1::/64"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, left := admit(tt.own, tt.pods, tt.given)
			if !slices.Equal(got, tt.want) {
				t.Errorf("admit kept %v, want %v", got, tt.want)
			}
			if len(left) != len(tt.wantLeft) {
				t.Fatalf("admit left out %v, want %d", left, len(tt.wantLeft))
			}
			for i, want := range tt.wantLeft {
				if got := left[i].p.String() + ": " + left[i].err.Error(); !strings.HasPrefix(got, want) {
					t.Errorf("left out %q, want %q...", got, want)
				}
			}
		})
	}
}

// TestRewriteLeftOut: each CIDR left out is named with its plugin; those
// written are what any plugin took.
func TestRewriteLeftOut(t *testing.T) {
	source := `{"plugins":[{"type":"macvlan-host-route","viaNode":["10.0.0.0/8"]},{"type":"bridge"},{"type":"macvlan-host-route"}]}`
	r, err := rewrite([]byte(source), prefixes("fd00:10:96::/112", "0.0.0.0/0"))
	if err != nil {
		t.Fatal(err)
	}
	left := r.leftOut
	// What the keeper logs as written: plugins[2] took it, plugins[0] not.
	if want := prefixes("fd00:10:96::/112"); !slices.Equal(r.added, want) {
		t.Errorf("added %v, want %v", r.added, want)
	}
	want := []string{
		"ServiceCIDR value fd00:10:96::/112: left out of conflist plugins[0] (macvlan-host-route): IPv6, and the plugin's own viaNode lists IPv4 ranges alone",
		"ServiceCIDR value 0.0.0.0/0: left out of conflist plugins[0] (macvlan-host-route): macvlan-host-route refuses it in viaNode: holds the cloud metadata address",
		"ServiceCIDR value 0.0.0.0/0: left out of conflist plugins[2] (macvlan-host-route): macvlan-host-route refuses it in viaNode: holds the cloud metadata address",
	}
	if len(left) != len(want) {
		t.Fatalf("left out %v, want %d", left, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(left[i].Error(), w) {
			t.Errorf("left out %q, want %q...", left[i], w)
		}
	}
}

func TestIsRewriteOf(t *testing.T) {
	source := []byte(headline)
	rewritten, err := Rewrite(source, prefixes("10.96.0.0/12"))
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(rewritten), `"eno1"`, `"eno2"`, 1)
	otherSource := strings.Replace(headline, `"portmap-lite"`, `"portmap"`, 1)
	for _, tt := range []struct {
		name              string
		installed, source string
		want              bool
	}{
		{"a rewrite of the source", string(rewritten), headline, true},
		{"the source's canonical form: a rewrite with no CIDRs", string(mustRewrite(t, source, nil)), headline, true},
		{"the source as given, not canonical", headline, headline, false},
		{"a rewrite edited since", edited, headline, false},
		{"a rewrite of an earlier source", string(rewritten), otherSource, false},
		{"not JSON", "{", headline, false},
		{"a source without our plugin", string(rewritten), `{"plugins":[]}`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsRewriteOf([]byte(tt.installed), []byte(tt.source)); got != tt.want {
				t.Errorf("IsRewriteOf = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestIsRewriteOfPerPlugin: with several macvlan-host-route plugins whose
// own viaNode differ (so each takes other CIDRs of the cluster's, or has
// one as its own), a rewrite is recognised whatever the cluster's CIDRs.
func TestIsRewriteOfPerPlugin(t *testing.T) {
	source := `{"plugins":[{"type":"macvlan-host-route","viaNode":["10.96.0.0/12"]},{"type":"bridge"},{"type":"macvlan-host-route","vianode":["fd00:20::10/128"]},{"type":"macvlan-host-route"}]}`
	for _, cluster := range [][]netip.Prefix{
		nil,
		prefixes("10.96.0.0/12"),
		prefixes("10.96.0.0/12", "fd00:10:96::/112"),
		prefixes("10.96.0.0/12", "10.100.0.0/16", "fd00:10:96::/112", "fd00:20::10/128"),
		prefixes("fd00:10:96::/112"),
	} {
		installed := mustRewrite(t, []byte(source), cluster)
		if !IsRewriteOf(installed, []byte(source)) {
			t.Errorf("IsRewriteOf(Rewrite(source, %v), source) = false:\n%s", cluster, installed)
		}
	}
	// The first plugin given fd00:10:96::/112, which it leaves out: no
	// rewrite of the source.
	forged := mustRewrite(t, []byte(`{"plugins":[{"type":"macvlan-host-route","viaNode":["10.96.0.0/12","fd00:10:96::/112"]},{"type":"bridge"},{"type":"macvlan-host-route","vianode":["fd00:20::10/128"]},{"type":"macvlan-host-route"}]}`), prefixes("fd00:10:96::/112"))
	if IsRewriteOf(forged, []byte(source)) {
		t.Errorf("IsRewriteOf(%s) = true, want false: the first plugin holds what it would leave out", forged)
	}
}

func mustRewrite(t *testing.T, source []byte, cluster []netip.Prefix) []byte {
	t.Helper()
	out, err := Rewrite(source, cluster)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// FuzzRewrite: any source and CIDRs give an error or a conflist that is
// JSON, whose every macvlan-host-route's viaNode the plugin takes and holds
// every CIDR admitted, that is its own rewrite (the installer's writes
// settle) and a rewrite of the source IsRewriteOf recognises, and whose
// every plugin that a runtime runs as macvlan-host-route reads, with
// encoding/json (in the output's order of keys, and sorted, as libcni
// passes them on), exactly the viaNode written: the user's own, as the
// plugin read them from the source, and the cluster's.
func FuzzRewrite(f *testing.F) {
	for _, seed := range []string{headline, `{"plugins":[{"type":"macvlan-host-route","viaNode":["::/0","1.0.0.0/8"]}]}`,
		`{"plugins":[{"type":"macvlan-host-route","viaNode":["::ffff:10.0.0.0/104","10.1.0.0/16"]},{"type":"macvlan-host-route"}]}`,
		`{"plugins":[{"type":"macvlan-host-route","viaNode":["::ffff:10.0.0.0/104","10.1.0.0/16"]}]}`,
		`{"plugins":[{"type":"macvlan-host-route","type":"bridge"}]}`, `{"plugins":[null,1,"x",{"type":"macvlan-host-route"}]}`, `null`,
		`{"plugins":[{"type":"macvlan-host-route","vianode":["169.254.20.10/32"]}]}`,
		`{"plugins":[{"TYPE":"macvlan-host-route","VIANODE":["169.254.20.10/32"]},{"type":"macvlan-host-route","viaNode":["fd00::/64"]}]}`,
		`{"plugins":[{"type":"macvlan-host-route","vianode":["169.254.20.10/32"],"viaNode":[]}]}`,
		`{"plugins":[{"type":"bridge","Type":"macvlan-host-route"}]}`,
		`{"plugins":[{"type":"macvlan","ipam":{"type":"host-local","ranges":[[{"subnet":"10.96.0.0/16"}],[{"subnet":"fd00:10:96::/64"}]]}},{"type":"macvlan-host-route","viaNode":["169.254.20.10/32"]}]}`,
		`{"plugins":[{"type":"macvlan","IPAM":{"type":"static-ipam","addresses":[{"address":"fd00::5/64"}]}},{"type":"macvlan-host-route"}]}`,
	} {
		f.Add([]byte(seed), "10.96.0.0/12,fd00:10:96::/112,::ffff:10.97.0.0/112,169.254.0.0/16")
	}
	f.Fuzz(func(t *testing.T, source []byte, cidrs string) {
		var cluster []netip.Prefix
		for s := range strings.SplitSeq(cidrs, ",") {
			if p, err := netip.ParsePrefix(s); err == nil {
				cluster = append(cluster, p)
			}
		}
		r, err := rewrite(source, cluster)
		if err != nil {
			return
		}
		out := r.out
		if !json.Valid(out) {
			t.Fatalf("Rewrite(%q) = %q: not JSON", source, out)
		}
		again, err := Rewrite(out, cluster)
		if err != nil || string(again) != string(out) {
			t.Fatalf("Rewrite of its own output %q = %q, %v: want it unchanged", out, again, err)
		}
		if !IsRewriteOf(out, source) {
			t.Fatalf("IsRewriteOf(%q, %q) = false", out, source)
		}
		_, plugins, err := decodeConflist(out)
		if err != nil {
			t.Fatal(err)
		}
		_, sourcePlugins, err := decodeConflist(source)
		if err != nil || len(sourcePlugins) != len(plugins) {
			t.Fatalf("source %q: %d plugins, %v; output %q: %d", source, len(sourcePlugins), err, out, len(plugins))
		}
		ours, err := hostRoutes(plugins)
		if err != nil {
			t.Fatalf("output %q: %v", out, err)
		}
		pods := podNetworkOf(plugins)
		for _, plugin := range ours {
			got := plugin.own
			if !slices.IsSortedFunc(got, netip.Prefix.Compare) || len(slices.Compact(slices.Clone(got))) != len(got) {
				t.Fatalf("output %q: viaNode %v not sorted and unique", out, got)
			}
			// The output's viaNode has the families of the source's own
			// (or of all the CIDRs taken): it takes what the source's did.
			kept, _ := admit(got, pods, cluster)
			for _, p := range kept {
				if !slices.Contains(got, p) {
					t.Fatalf("output %q: viaNode %v lacks %s", out, got, p)
				}
			}
		}
		for i := range plugins {
			written, rewrote := r.viaNode[i]
			isOurs := slices.ContainsFunc(ours, func(h hostRoute) bool { return h.index == i })
			if rewrote && !isOurs {
				t.Fatalf("output %q: plugins[%d] rewritten, but no %s", out, i, PluginType)
			}
			for _, form := range [][]byte{plugins[i], resorted(plugins[i])} {
				conf, ok := asPluginReads(form)
				if !ok {
					continue
				}
				if !isOurs {
					t.Fatalf("output %q: plugins[%d] %s runs as %s, not rewritten", out, i, form, PluginType)
				}
				want := make([]string, len(written))
				for j, p := range written {
					want[j] = p.String()
				}
				if !slices.Equal(conf.ViaNode, want) {
					t.Fatalf("output %q: plugins[%d] %s: the plugin reads viaNode %q, want %q", out, i, form, conf.ViaNode, want)
				}
			}
			// What the plugin read of the source is kept.
			for _, form := range [][]byte{sourcePlugins[i], resorted(sourcePlugins[i])} {
				conf, ok := asPluginReads(form)
				if !ok {
					continue
				}
				for _, s := range conf.ViaNode {
					if p, err := netip.ParsePrefix(s); err != nil || !slices.Contains(written, p) {
						t.Fatalf("source %q: plugins[%d] %s: the plugin read viaNode %q, of which output %q lacks %q", source, i, form, conf.ViaNode, out, s)
					}
				}
			}
		}
	})
}

// pluginReads is what of its configuration macvlan-host-route and the
// runtime running it read here, with encoding/json as they do.
type pluginReads struct {
	Type    string   `json:"type"`
	ViaNode []string `json:"viaNode"`
}

// asPluginReads decodes a plugin as macvlan-host-route reads it, if a
// runtime runs it as that.
func asPluginReads(raw []byte) (pluginReads, bool) {
	var conf pluginReads
	return conf, json.Unmarshal(raw, &conf) == nil && conf.Type == PluginType
}

// resorted is a plugin as libcni passes it on (libcni.InjectConf): decoded
// into a map, keys sorted, the last of keys spelt alike kept.
func resorted(raw []byte) []byte {
	var keys map[string]json.RawMessage
	if json.Unmarshal(raw, &keys) != nil || keys == nil {
		return raw
	}
	out, err := json.Marshal(keys)
	if err != nil {
		return raw
	}
	return out
}
