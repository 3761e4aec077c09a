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
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, left := admit(tt.own, tt.given)
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

// TestRewriteLeftOut: each CIDR left out is named with its plugin.
func TestRewriteLeftOut(t *testing.T) {
	source := `{"plugins":[{"type":"macvlan-host-route","viaNode":["10.0.0.0/8"]},{"type":"bridge"},{"type":"macvlan-host-route"}]}`
	_, left, err := rewrite([]byte(source), prefixes("fd00:10:96::/112", "0.0.0.0/0"))
	if err != nil {
		t.Fatal(err)
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
// every CIDR admitted, and that is its own rewrite (the installer's writes
// settle).
func FuzzRewrite(f *testing.F) {
	for _, seed := range []string{headline, `{"plugins":[{"type":"macvlan-host-route","viaNode":["::/0","1.0.0.0/8"]}]}`,
		`{"plugins":[{"type":"macvlan-host-route","viaNode":["::ffff:10.0.0.0/104","10.1.0.0/16"]},{"type":"macvlan-host-route"}]}`,
		`{"plugins":[{"type":"macvlan-host-route","viaNode":["::ffff:10.0.0.0/104","10.1.0.0/16"]}]}`,
		`{"plugins":[{"type":"macvlan-host-route","type":"bridge"}]}`, `{"plugins":[null,1,"x",{"type":"macvlan-host-route"}]}`, `null`} {
		f.Add([]byte(seed), "10.96.0.0/12,fd00:10:96::/112,::ffff:10.97.0.0/112,169.254.0.0/16")
	}
	f.Fuzz(func(t *testing.T, source []byte, cidrs string) {
		var cluster []netip.Prefix
		for s := range strings.SplitSeq(cidrs, ",") {
			if p, err := netip.ParsePrefix(s); err == nil {
				cluster = append(cluster, p)
			}
		}
		out, err := Rewrite(source, cluster)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("Rewrite(%q) = %q: not JSON", source, out)
		}
		again, err := Rewrite(out, cluster)
		if err != nil || string(again) != string(out) {
			t.Fatalf("Rewrite of its own output %q = %q, %v: want it unchanged", out, again, err)
		}
		_, plugins, err := decodeConflist(out)
		if err != nil {
			t.Fatal(err)
		}
		ours := 0
		for _, raw := range plugins {
			plugin, ok := asHostRoute(raw)
			if !ok {
				continue
			}
			ours++
			got, err := viaNode(plugin["viaNode"])
			if err != nil {
				t.Fatalf("output %q: %v", out, err)
			}
			if !slices.IsSortedFunc(got, netip.Prefix.Compare) || len(slices.Compact(slices.Clone(got))) != len(got) {
				t.Fatalf("output %q: viaNode %v not sorted and unique", out, got)
			}
			// The output's viaNode has the families of the source's own
			// (or of all the CIDRs taken): it takes what the source's did.
			kept, _ := admit(got, cluster)
			for _, p := range kept {
				if !slices.Contains(got, p) {
					t.Fatalf("output %q: viaNode %v lacks %s", out, got, p)
				}
			}
		}
		if ours == 1 && !IsRewriteOf(out, source) {
			t.Fatalf("IsRewriteOf(%q, %q) = false", out, source)
		}
	})
}
