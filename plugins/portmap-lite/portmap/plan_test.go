package portmap

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/iptbatch"
	"github.com/cnichain/plugins/pkg/nat"
)

var key = attachstate.Key{Network: "mynet", ContainerID: "cnitool-77383ca0a0715733ca6f", IfName: "eth0"}

func mustParse(t *testing.T, extra, mappings string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(fmt.Sprintf(`{"cniVersion":"0.3.0","name":"mynet","type":"portmap-lite"%s,"runtimeConfig":{"portMappings":%s}}`, extra, mappings)))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// addrs are pods behind a bridge with isGateway: replies come back through the node.
func addrs(s ...string) []Target {
	var out []Target
	for _, a := range s {
		out = append(out, Target{IP: netip.MustParseAddr(a), RepliesViaNode: true})
	}
	return out
}

// macvlanPod is a pod whose gateway is not the node: replies bypass it.
func macvlanPod(s ...string) []Target {
	out := addrs(s...)
	for i := range out {
		out[i].RepliesViaNode = false
	}
	return out
}

// TestSourceDocumentRules is the seed's scenario: hostPort 9090 on
// 127.0.0.1 to containerPort 80 of 10.244.10.7; the rules must read as the
// document's iptables-save lines (ours carry a comment).
func TestSourceDocumentRules(t *testing.T) {
	cfg := mustParse(t, "", `[{"hostPort":9090,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]`)
	plan, err := Build(cfg, key, addrs("10.244.10.7"))
	if err != nil {
		t.Fatal(err)
	}
	dn, sn := nat.DNATChainName(key), nat.SNATChainName(key)
	hp, ms := nat.DispatchBucket(cfg.Mappings[0]), nat.SNATBucket(key)
	c := `"name: \"mynet\" id: \"cnitool-77383ca0a0715733ca6f\""`
	want := strings.Join([]string{
		"*nat",
		"-C PREROUTING -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-C OUTPUT -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-C CNI-LITE-HOSTPORTS -j " + hp,
		"-C POSTROUTING -j CNI-LITE-SNAT",
		"-C CNI-LITE-SNAT -j " + ms,
		":" + dn + " - [0:0]",
		":" + sn + " - [0:0]",
		"-A " + dn + " -d 127.0.0.1/32 -p tcp -m tcp --dport 9090 -m comment --comment " + c + " -j DNAT --to-destination 10.244.10.7:80",
		"-A " + sn + " -s 127.0.0.1/32 -d 10.244.10.7/32 -p tcp -m tcp --dport 80 -m comment --comment " + c + " -j MASQUERADE",
		"-A " + sn + " -s 10.244.10.7/32 -d 10.244.10.7/32 -p tcp -m tcp --dport 80 -m comment --comment " + c + " -j MASQUERADE",
		"-A " + hp + " -d 127.0.0.1/32 -p tcp -m multiport --dports 9090 -m comment --comment " + c + " -j " + dn,
		"-A " + ms + " -d 10.244.10.7/32 -m comment --comment " + c + " -j " + sn,
		"COMMIT", ""}, "\n")
	if len(plan.Families) != 1 {
		t.Fatalf("families = %d, want IPv4 only", len(plan.Families))
	}
	fp := plan.Families[0]
	if got := fp.AddBatch().Text(); got != want {
		t.Fatalf("AddBatch =\n%s\nwant\n%s", got, want)
	}
	if !fp.Localnet {
		t.Error("a 127.0.0.1 mapping needs route_localnet")
	}
	wantDel := strings.Join([]string{
		"*nat",
		"-D " + hp + " -d 127.0.0.1/32 -p tcp -m multiport --dports 9090 -m comment --comment " + c + " -j " + dn,
		"-D " + ms + " -d 10.244.10.7/32 -m comment --comment " + c + " -j " + sn,
		"-F " + dn, "-X " + dn, "-F " + sn, "-X " + sn,
		"COMMIT", ""}, "\n")
	if got := fp.DelBatch().Text(); got != wantDel {
		t.Fatalf("DelBatch =\n%s\nwant\n%s", got, wantDel)
	}
}

func TestBuildFamiliesAndOptions(t *testing.T) {
	tests := []struct {
		name     string
		extra    string
		mappings string
		pod      []Target
		random   bool // the node's iptables has --random-fully
		check    func(t *testing.T, p *Plan)
		wantErr  string
	}{
		{
			name: "no hostIP maps both families", mappings: `[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]`,
			pod: addrs("10.0.0.7", "fd00::7"),
			check: func(t *testing.T, p *Plan) {
				if len(p.Families) != 2 || p.Families[1].Family != iptbatch.IPv6 {
					t.Fatalf("families = %+v", p.Families)
				}
				v6 := p.Families[1].AddBatch().Text()
				if !strings.Contains(v6, "--to-destination [fd00::7]:80") || strings.Contains(v6, "127.0.0.1") || p.Families[1].Localnet {
					t.Fatalf("IPv6 batch:\n%s", v6)
				}
			},
		},
		{
			name: "an IPv6 hostIP maps only the IPv6 address", mappings: `[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"fd00::1"}]`,
			pod: addrs("10.0.0.7", "fd00::7"),
			check: func(t *testing.T, p *Plan) {
				if len(p.Families) != 1 || p.Families[0].Family != iptbatch.IPv6 || p.Families[0].DNAT[0][1] != "fd00::1/128" {
					t.Fatalf("families = %+v", p.Families)
				}
			},
		},
		{
			name: "0.0.0.0 is any IPv4 address and needs localnet", mappings: `[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"0.0.0.0"}]`,
			pod: addrs("10.0.0.7", "fd00::7"),
			check: func(t *testing.T, p *Plan) {
				if len(p.Families) != 1 || p.Families[0].DNAT[0][0] != "-p" || !p.Families[0].Localnet {
					t.Fatalf("families = %+v", p.Families)
				}
			},
		},
		{
			name: "a node address does not need localnet", mappings: `[{"hostPort":8080,"containerPort":80,"hostIP":"192.168.0.5"}]`,
			pod: addrs("10.0.0.7"),
			check: func(t *testing.T, p *Plan) {
				if p.Families[0].Localnet || len(p.Families[0].SNAT) != 1 {
					t.Fatalf("plan = %+v, want the hairpin rule only", p.Families[0])
				}
			},
		},
		{
			name: "snat false installs DNAT only", extra: `,"snat":false`, mappings: `[{"hostPort":8080,"containerPort":80}]`,
			pod: addrs("10.0.0.7"),
			check: func(t *testing.T, p *Plan) {
				fp := p.Families[0]
				if fp.SNATChain != "" || len(fp.SNAT) != 0 || len(fp.Jumps) != 1 || strings.Contains(fp.AddBatch().Text(), "MASQUERADE") {
					t.Fatalf("plan = %+v", fp)
				}
			},
		},
		{
			name: "masqAll masquerades every connection", extra: `,"masqAll":true`, mappings: `[{"hostPort":8080,"containerPort":80}]`,
			pod: addrs("10.0.0.7"),
			check: func(t *testing.T, p *Plan) {
				if snat := p.Families[0].SNAT; len(snat) != 1 || snat[0][0] != "-d" {
					t.Fatalf("SNAT = %v", snat)
				}
			},
		},
		{
			name:     "a pod whose replies bypass the node (macvlan): every connection is masqueraded, per family",
			mappings: `[{"hostPort":8080,"containerPort":80}]`,
			pod:      append(macvlanPod("192.168.50.20"), addrs("fd50::20")...),
			check: func(t *testing.T, p *Plan) {
				v4, v6 := p.Families[0], p.Families[1]
				if !v4.MasqAll || len(v4.SNAT) != 1 || v4.SNAT[0][0] != "-d" {
					t.Fatalf("IPv4: masqAll %v, SNAT %v", v4.MasqAll, v4.SNAT)
				}
				if v6.MasqAll || len(v6.SNAT) != 1 || v6.SNAT[0][0] != "-s" {
					t.Fatalf("IPv6: masqAll %v, SNAT %v; want hairpin only", v6.MasqAll, v6.SNAT)
				}
			},
		},
		{
			name: "masqAll false keeps client addresses even behind macvlan", extra: `,"masqAll":false`,
			mappings: `[{"hostPort":8080,"containerPort":80}]`, pod: macvlanPod("192.168.50.20"),
			check: func(t *testing.T, p *Plan) {
				if fp := p.Families[0]; fp.MasqAll || len(fp.SNAT) != 2 {
					t.Fatalf("masqAll %v, SNAT %v; want hairpin and localhost only", fp.MasqAll, fp.SNAT)
				}
			},
		},
		{
			name: "--random-fully on every MASQUERADE where the node's iptables has it", extra: `,"masqAll":true`,
			mappings: `[{"hostPort":8080,"containerPort":80},{"hostPort":8081,"containerPort":81,"hostIP":"127.0.0.1"}]`,
			pod:      addrs("10.0.0.7"),
			random:   true,
			check: func(t *testing.T, p *Plan) {
				for _, r := range p.Families[0].SNAT {
					if !strings.HasSuffix(r.String(), "-j MASQUERADE --random-fully") {
						t.Fatalf("SNAT rule %s lacks --random-fully", r)
					}
				}
			},
		},
		{
			name: "conditions go on the jump", extra: `,"conditionsV4":["-s","192.168.0.0/16"]`, mappings: `[{"hostPort":8080,"containerPort":80}]`,
			pod: addrs("10.0.0.7"),
			check: func(t *testing.T, p *Plan) {
				if j := p.Families[0].Jumps[0].Rule.String(); !strings.Contains(j, "--dports 8080 -s 192.168.0.0/16 -m comment") {
					t.Fatalf("jump = %s", j)
				}
			},
		},
		{
			name: "50 mappings: one multiport jump per bucket and protocol, one DNAT rule each",
			mappings: func() string {
				var m []string
				for i := 0; i < 50; i++ {
					proto := "tcp"
					if i%5 == 0 {
						proto = "udp"
					}
					m = append(m, fmt.Sprintf(`{"hostPort":%d,"containerPort":%d,"protocol":%q}`, 10000+i, 80+i, proto))
				}
				return "[" + strings.Join(m, ",") + "]"
			}(),
			pod: addrs("10.0.0.7"),
			check: func(t *testing.T, p *Plan) {
				fp := p.Families[0]
				// Ports 10000-10049 fall in 7 runs of 8 (7 buckets): 40 tcp
				// ports in 7 jumps, 10 udp ports in 6, and the SNAT jump.
				if len(fp.DNAT) != 50 || len(fp.Jumps) != 14 || len(p.UDPPorts) != 10 {
					t.Fatalf("DNAT %d, jumps %d, udp ports %d", len(fp.DNAT), len(fp.Jumps), len(p.UDPPorts))
				}
			},
		},
		{
			name: "an IPv6 hostIP for an IPv4-only pod", mappings: `[{"hostPort":8080,"containerPort":80,"hostIP":"fd00::1"}]`,
			pod: addrs("10.0.0.7"), wantErr: "hostIP fd00::1 is IPv6 but the container has no IPv6 address",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, tt.extra, tt.mappings)
			cfg.RandomFully = tt.random
			plan, err := Build(cfg, key, tt.pod)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Build error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, plan)
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, conf, wantMsg string
		wantCode            uint
	}{
		{"not JSON", `{`, "network configuration: cannot decode", types.ErrDecodingFailure},
		{"hostPort 0", `{"runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}`, `runtimeConfig.portMappings[0].hostPort "0": outside 1-65535`, types.ErrInvalidNetworkConfig},
		{"containerPort too big", `{"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":65536}]}}`, `runtimeConfig.portMappings[0].containerPort "65536"`, types.ErrInvalidNetworkConfig},
		{"unknown protocol", `{"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]}}`, `protocol "icmp": must be tcp, udp or sctp`, types.ErrInvalidNetworkConfig},
		{"hostIP not an IP", `{"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"localhost"}]}}`, `hostIP "localhost": not an IP address`, types.ErrInvalidNetworkConfig},
		{"hostIP ::1", `{"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"::1"}]}}`, `hostIP "::1": IPv6 has no route_localnet`, types.ErrInvalidNetworkConfig},
		{"duplicate mapping", `{"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"TCP"},{"hostPort":80,"containerPort":81}]}}`,
			`runtimeConfig.portMappings[1] ":80/tcp": maps the same host address, port and protocol as runtimeConfig.portMappings[0]`, types.ErrInvalidNetworkConfig},
		{"markMasqBit", `{"markMasqBit":13}`, `markMasqBit "13": portmap-lite masquerades by exact match`, types.ErrInvalidNetworkConfig},
		{"externalSetMarkChain", `{"externalSetMarkChain":"KUBE-MARK-MASQ"}`, `externalSetMarkChain "KUBE-MARK-MASQ"`, types.ErrInvalidNetworkConfig},
		{"nftables backend with iptables conditions", `{"backend":"nftables","conditionsV4":["-s","10.0.0.0/8"]}`, `backend "nftables": conditionsV4/conditionsV6 are iptables matches`, types.ErrInvalidNetworkConfig},
		{"unknown backend", `{"backend":"ebpf"}`, `backend "ebpf": must be "iptables" or "nftables"`, types.ErrInvalidNetworkConfig},
		{"condition spanning lines", `{"conditionsV4":["-s","1.2.3.4\n-A INPUT -j ACCEPT"]}`, `conditionsV4[1]`, types.ErrInvalidNetworkConfig},
		{"flavour", `{"iptablesFlavour":"ebtables"}`, `iptablesFlavour "ebtables"`, types.ErrInvalidNetworkConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.conf))
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != tt.wantCode || !strings.Contains(cniErr.Msg, tt.wantMsg) {
				t.Fatalf("Parse error = %v, want code %d containing %q", err, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"0.3.0","name":"mynet","runtimeConfig":{"portMappings":[{"hostPort":9090,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]}}`))
	f.Add([]byte(`{"name":"n","snat":false,"conditionsV6":["-m","set"],"runtimeConfig":{"portMappings":[{"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"::"}]}}`))
	f.Fuzz(func(t *testing.T, conf []byte) {
		cfg, err := Parse(conf)
		if err != nil {
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Msg == "" {
				t.Fatalf("Parse returned %v, not a CNI error with a message", err)
			}
			return
		}
		plan, err := Build(cfg, key, addrs("10.0.0.7", "fd00::7"))
		if err != nil {
			return
		}
		for _, fp := range plan.Families {
			// Whatever the input, a batch is rules of our chains only, one
			// per line, after checks of the fixed jumps into them.
			for _, line := range strings.Split(strings.TrimSpace(fp.AddBatch().Text()), "\n") {
				ok := line == "*nat" || line == "COMMIT" || strings.HasPrefix(line, ":CNI-LITE-") || strings.HasPrefix(line, "-A CNI-LITE-") ||
					entryCheck.MatchString(line)
				if !ok {
					t.Fatalf("batch line %q", line)
				}
			}
		}
	})
}

// entryCheck is a batch's check of a jump into our chains.
var entryCheck = regexp.MustCompile(`^-C ((PREROUTING|OUTPUT) -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS|POSTROUTING -j CNI-LITE-SNAT|CNI-LITE-(HOSTPORTS -j CNI-LITE-H[AP]|SNAT -j CNI-LITE-MS)-[0-9a-f]{2})$`)

func benchConfig(b *testing.B, n int) []byte {
	b.Helper()
	var m []string
	for i := 0; i < n; i++ {
		m = append(m, fmt.Sprintf(`{"hostPort":%d,"containerPort":%d,"protocol":"tcp"}`, 10000+i, 80+i))
	}
	return []byte(`{"cniVersion":"1.0.0","name":"mynet","type":"portmap-lite","runtimeConfig":{"portMappings":[` + strings.Join(m, ",") + `]},
		"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.244.10.7/24"},{"address":"fd00::7/64"}]}}`)
}

func BenchmarkParse(b *testing.B) {
	for _, n := range []int{1, 10, 50} {
		conf := benchConfig(b, n)
		b.Run(fmt.Sprintf("%d mappings", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := Parse(conf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkBuildAndRender(b *testing.B) {
	for _, n := range []int{1, 10, 50} {
		cfg, err := Parse(benchConfig(b, n))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("%d mappings", n), func(b *testing.B) {
			for b.Loop() {
				plan, err := Build(cfg, key, addrs("10.244.10.7", "fd00::7"))
				if err != nil {
					b.Fatal(err)
				}
				for i := range plan.Families {
					_ = plan.Families[i].AddBatch().Text()
				}
			}
		})
	}
}

func TestMasqueradeAll(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		name     string
		explicit *bool
		viaNode  bool
		want     bool
	}{
		{"bridge with isGateway: the node is the gateway", nil, true, false},
		{"macvlan: the gateway is a lan router", nil, false, true},
		{"masqAll true wins", &yes, true, true},
		{"masqAll false wins", &no, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MasqueradeAll(tt.explicit, Target{RepliesViaNode: tt.viaNode}); got != tt.want {
				t.Errorf("MasqueradeAll = %v, want %v", got, tt.want)
			}
		})
	}
}
