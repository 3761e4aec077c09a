package static

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// conf builds a network configuration around an ipam object and extra
// top-level fields (runtimeConfig, args).
func conf(version, ipam, extra string) []byte {
	if extra != "" {
		extra = "," + extra
	}
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"net1","type":"macvlan","ipam":%s%s}`, version, ipam, extra))
}

// dockinIPAM is the example of the Dockin static IPAM, with the IPv6 gateway
// moved into its subnet: the original (3ffe:ffff:0::1) is off-link, which the
// kernel refuses as a next hop, so static-ipam rejects it (see TestParseErrors).
const dockinIPAM = `{"type":"static-ipam",
	"addresses":[{"address":"192.168.0.1/24","gateway":"192.168.0.254"},{"address":"3ffe:ffff:0:01ff::1/64","gateway":"3ffe:ffff:0:01ff::fffe"}],
	"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"192.168.1.1"},{"dst":"3ffe:ffff:0:01ff::1/64"}],
	"dns":{"nameservers":["8.8.8.8"],"domain":"example.com","search":["example.com"]}}`

func TestParseSourcesAndPrecedence(t *testing.T) {
	tests := []struct {
		name       string
		stdin      []byte
		args       string
		wantSource string
		want       string // "addr gw, addr gw"
	}{
		{
			name: "config addresses from the Dockin example", stdin: conf("0.3.1", dockinIPAM, ""),
			wantSource: sourceConfig, want: "192.168.0.1/24 192.168.0.254, 3ffe:ffff:0:1ff::1/64 3ffe:ffff:0:1ff::fffe",
		},
		{
			name:  "CNI_ARGS IP replaces config addresses and GATEWAY attaches by subnet",
			stdin: conf("1.0.0", `{"type":"static-ipam"}`, ""), args: "IP=10.1.0.5/16,fd00::5/64;GATEWAY=fd00::1,10.1.0.1",
			wantSource: sourceEnv, want: "10.1.0.5/16 10.1.0.1, fd00::5/64 fd00::1",
		},
		{
			name:  "the GATEWAY applies only to the address whose subnet holds it",
			stdin: conf("1.0.0", `{"type":"static-ipam"}`, ""), args: "IP=10.1.0.5/16,fd00::5/64;GATEWAY=fd00::1",
			wantSource: sourceEnv, want: "10.1.0.5/16 invalid IP, fd00::5/64 fd00::1",
		},
		{
			name:  "args.cni.ips beats CNI_ARGS IP",
			stdin: conf("1.0.0", `{"type":"static-ipam"}`, `"args":{"cni":{"ips":["10.2.0.5/24"]}}`), args: "IP=10.1.0.5/16",
			wantSource: sourceArgs, want: "10.2.0.5/24 invalid IP",
		},
		{
			name: "capability ips beat args.cni.ips and CNI_ARGS IP",
			stdin: conf("1.0.0", `{"type":"static-ipam"}`,
				`"runtimeConfig":{"ips":["10.3.0.5/24"]},"args":{"cni":{"ips":["10.2.0.5/24"]}}`),
			args: "IP=10.1.0.5/16", wantSource: sourceCapability, want: "10.3.0.5/24 invalid IP",
		},
		{
			name:       "a per-pod address keeps the gateway of the configured subnet (plugins#406)",
			stdin:      conf("1.0.0", dockinIPAM, `"runtimeConfig":{"ips":["192.168.0.77/24"]}`),
			wantSource: sourceCapability, want: "192.168.0.77/24 192.168.0.254",
		},
		{
			name:       "a narrower per-pod subnet does not inherit a gateway it cannot reach (found by fuzzing)",
			stdin:      conf("1.0.0", `{"addresses":[{"address":"192.168.0.1/16","gateway":"192.168.200.1"}]}`, `"runtimeConfig":{"ips":["192.168.0.7/24"]}`),
			wantSource: sourceCapability, want: "192.168.0.7/24 invalid IP",
		},
		{
			name:  "GATEWAY from CNI_ARGS overrides the inherited gateway",
			stdin: conf("1.0.0", dockinIPAM, ""), args: "IP=192.168.0.9/24;GATEWAY=192.168.0.1",
			wantSource: sourceEnv, want: "192.168.0.9/24 192.168.0.1",
		},
		{
			name:  "IgnoreUnknown lets kubelet's keys through",
			stdin: conf("0.4.0", `{"type":"static-ipam"}`, ""), args: "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.5/16",
			wantSource: sourceEnv, want: "10.1.0.5/16 invalid IP",
		},
		{
			name:  "podman --ip: a bare CNI_ARGS IP takes the prefix and gateway of the configured subnet",
			stdin: conf("1.0.0", dockinIPAM, ""), args: "IP=192.168.0.50",
			wantSource: sourceEnv, want: "192.168.0.50/24 192.168.0.254",
		},
		{
			name:  "a bare IPv6 address in CNI_ARGS IP, beside a CIDR",
			stdin: conf("1.0.0", dockinIPAM, ""), args: "IP=10.9.0.2/16, 3ffe:ffff:0:1ff::50",
			wantSource: sourceEnv, want: "10.9.0.2/16 invalid IP, 3ffe:ffff:0:1ff::50/64 3ffe:ffff:0:1ff::fffe",
		},
		{
			name:       "a bare address in capability ips and in args.cni.ips",
			stdin:      conf("1.0.0", dockinIPAM, `"runtimeConfig":{"ips":["192.168.0.60","3ffe:ffff:0:1ff::60"]}`),
			wantSource: sourceCapability, want: "192.168.0.60/24 192.168.0.254, 3ffe:ffff:0:1ff::60/64 3ffe:ffff:0:1ff::fffe",
		},
		{
			name:       "a bare IPv4-mapped address is its IPv4 address",
			stdin:      conf("1.0.0", dockinIPAM, `"args":{"cni":{"ips":["::ffff:192.168.0.61"]}}`),
			wantSource: sourceArgs, want: "192.168.0.61/24 192.168.0.254",
		},
		{
			name:  "capability ips win whole: CNI_ARGS IP and GATEWAY are both ignored",
			stdin: conf("1.0.0", `{"type":"static-ipam"}`, `"runtimeConfig":{"ips":["10.7.0.7/24"]}`),
			args:  "IP=10.5.0.5/24;GATEWAY=10.5.0.1", wantSource: sourceCapability, want: "10.7.0.7/24 invalid IP",
		},
		{
			name:  "args.cni.ips win whole: a CNI_ARGS GATEWAY that would fit is ignored too",
			stdin: conf("1.0.0", `{"type":"static-ipam"}`, `"args":{"cni":{"ips":["10.7.0.7/24"]}}`),
			args:  "GATEWAY=10.7.0.1", wantSource: sourceArgs, want: "10.7.0.7/24 invalid IP",
		},
		{
			name:  "CNI_ARGS GATEWAY alone sets the gateway of configured addresses",
			stdin: conf("1.0.0", `{"addresses":[{"address":"10.0.0.2/24"}]}`, ""), args: "GATEWAY=10.0.0.1",
			wantSource: sourceConfig, want: "10.0.0.2/24 10.0.0.1",
		},
		{
			name:  "one address per family is fine for 0.2.0",
			stdin: conf("0.2.0", dockinIPAM, ""), wantSource: sourceConfig,
			want: "192.168.0.1/24 192.168.0.254, 3ffe:ffff:0:1ff::1/64 3ffe:ffff:0:1ff::fffe",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse(tt.stdin, tt.args)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if cfg.Source != tt.wantSource {
				t.Errorf("Source = %q, want %q", cfg.Source, tt.wantSource)
			}
			var got []string
			for _, a := range cfg.Addresses {
				got = append(got, a.Prefix.String()+" "+a.Gateway.String())
			}
			if strings.Join(got, ", ") != tt.want {
				t.Errorf("addresses = %q, want %q", strings.Join(got, ", "), tt.want)
			}
		})
	}
}

func TestParseNamesIgnoredSources(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		args  string
		want  string
	}{
		{"capability over args and CNI_ARGS", `"runtimeConfig":{"ips":["10.3.0.5/24"]},"args":{"cni":{"ips":["10.2.0.5/24"]}}`,
			"IP=10.1.0.5/16;GATEWAY=10.1.0.1", "args.cni.ips CNI_ARGS IP CNI_ARGS GATEWAY"},
		{"args over CNI_ARGS GATEWAY", `"args":{"cni":{"ips":["10.2.0.5/24"]}}`, "GATEWAY=10.1.0.1", "CNI_ARGS GATEWAY"},
		{"CNI_ARGS IP wins: nothing ignored", "", "IP=10.1.0.5/16;GATEWAY=10.1.0.1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse(conf("1.0.0", `{}`, tt.extra), tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(cfg.Ignored, " "); got != tt.want {
				t.Errorf("Ignored = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseRoutesAndDNS(t *testing.T) {
	cfg, err := Parse(conf("1.1.0", `{"type":"static-ipam","addresses":[{"address":"10.0.0.2/24"}],
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.7.9/16","gw":"10.0.0.1","mtu":1400,"priority":5,"table":100}],
		"dns":{"nameservers":["10.0.0.53"],"domain":"corp","search":["corp","svc"],"options":["ndots:2"]}}`, ""), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Routes) != 2 {
		t.Fatalf("got %d routes, want 2", len(cfg.Routes))
	}
	r := cfg.Routes[1]
	if r.Dst.String() != "192.168.0.0/16" || r.GW.String() != "10.0.0.1" || r.MTU != 1400 || r.Priority != 5 || r.Table == nil || *r.Table != 100 {
		t.Errorf("route = %s, want dst 192.168.0.0/16 (masked) via 10.0.0.1 mtu 1400 priority 5 table 100", r)
	}
	if strings.Join(cfg.DNS.Search, ",") != "corp,svc" || cfg.DNS.Domain != "corp" || cfg.DNS.Options[0] != "ndots:2" {
		t.Errorf("dns = %+v", cfg.DNS)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name     string
		stdin    []byte
		args     string
		wantCode uint
		wantMsg  string
	}{
		{"malformed JSON", []byte(`{"name":`), "", types.ErrDecodingFailure, "network configuration: cannot decode"},
		{"ipam missing", []byte(`{"cniVersion":"1.0.0","name":"n","type":"macvlan"}`), "", types.ErrInvalidNetworkConfig, "ipam: missing"},
		{"address not CIDR", conf("1.0.0", `{"addresses":[{"address":"10.0.0.2"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.addresses[0].address "10.0.0.2": not an address in CIDR notation`},
		{"address empty", conf("1.0.0", `{"addresses":[{"gateway":"10.0.0.1"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.addresses[0].address: missing`},
		{"gateway not an IP", conf("1.0.0", `{"addresses":[{"address":"10.0.0.2/24","gateway":"ten"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.addresses[0].gateway "ten": not an IP address`},
		{"gateway outside subnet", conf("1.0.0", `{"addresses":[{"address":"10.0.0.2/24","gateway":"10.0.1.1"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.addresses[0].gateway "10.0.1.1": outside the subnet 10.0.0.0/24`},
		{"the Dockin example's off-link IPv6 gateway", conf("1.0.0", `{"addresses":[{"address":"3ffe:ffff:0:01ff::1/64","gateway":"3ffe:ffff:0::1"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.addresses[0].gateway "3ffe:ffff::1": outside the subnet 3ffe:ffff:0:1ff::/64`},
		{"IPv4 gateway on an IPv6 address", conf("1.0.0", `{"addresses":[{"address":"fd00::2/64","gateway":"10.0.0.1"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.addresses[0].gateway "10.0.0.1": not of the family of address fd00::2/64`},
		{"route without dst", conf("1.0.0", `{"addresses":[{"address":"10.0.0.2/24"}],"routes":[{"gw":"10.0.0.1"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.routes[0].dst: missing`},
		{"route dst not CIDR", conf("1.0.0", `{"addresses":[{"address":"10.0.0.2/24"}],"routes":[{"dst":"default"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.routes[0].dst "default": not a CIDR`},
		{"route gw of the other family", conf("1.0.0", `{"addresses":[{"address":"10.0.0.2/24"}],"routes":[{"dst":"::/0","gw":"10.0.0.1"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.routes[0].gw "10.0.0.1": not of the family of dst ::/0`},
		{"duplicate config addresses", conf("1.0.0", `{"addresses":[{"address":"10.0.0.2/24"},{"address":"10.0.0.2/16"}]}`, ""), "",
			types.ErrInvalidNetworkConfig, `ipam.addresses "10.0.0.2": duplicate address`},
		{"duplicate capability addresses", conf("1.0.0", `{}`, `"runtimeConfig":{"ips":["10.0.0.2/24","10.0.0.2/24"]}`), "",
			types.ErrInvalidNetworkConfig, `runtimeConfig.ips "10.0.0.2": duplicate address`},
		{"capability address not CIDR", conf("1.0.0", `{}`, `"runtimeConfig":{"ips":["10.0.0.2"]}`), "",
			types.ErrInvalidNetworkConfig, `runtimeConfig.ips[0] "10.0.0.2"`},
		{"args address not CIDR", conf("1.0.0", `{}`, `"args":{"cni":{"ips":["x"]}}`), "",
			types.ErrInvalidNetworkConfig, `args.cni.ips[0] "x"`},
		{"CNI_ARGS IP not CIDR", conf("1.0.0", `{}`, ""), "IP=10.0.0.2",
			types.ErrInvalidEnvironmentVariables, `CNI_ARGS IP "10.0.0.2"`},
		{"bare CNI_ARGS IP outside every configured subnet", conf("1.0.0", dockinIPAM, ""), "IP=10.0.0.2",
			types.ErrInvalidEnvironmentVariables, `CNI_ARGS IP "10.0.0.2": an address without a prefix length must be inside a configured subnet (192.168.0.0/24, 3ffe:ffff:0:1ff::/64)`},
		{"bare capability address with no configured subnet", conf("1.0.0", `{}`, `"runtimeConfig":{"ips":["10.0.0.2"]}`), "",
			types.ErrInvalidNetworkConfig, `runtimeConfig.ips[0] "10.0.0.2": an address without a prefix length takes it from a subnet of ipam.addresses, and none is configured`},
		{"zoned bare address", conf("1.0.0", dockinIPAM, `"args":{"cni":{"ips":["fe80::1%eth0"]}}`), "",
			types.ErrInvalidNetworkConfig, `args.cni.ips[0] "fe80::1%eth0": not an address`},
		{"CNI_ARGS GATEWAY outside the winning CNI_ARGS IP stays an error", conf("1.0.0", `{}`, ""), "IP=10.7.0.7/24;GATEWAY=10.5.0.1",
			types.ErrInvalidEnvironmentVariables, `CNI_ARGS GATEWAY "10.5.0.1": inside the subnet of no address (10.7.0.7/24)`},
		{"CNI_ARGS GATEWAY not an IP", conf("1.0.0", `{}`, ""), "IP=10.0.0.2/24;GATEWAY=gw",
			types.ErrInvalidEnvironmentVariables, `CNI_ARGS GATEWAY "gw": not an IP address`},
		{"CNI_ARGS GATEWAY outside every subnet", conf("1.0.0", `{}`, ""), "IP=10.0.0.2/24;GATEWAY=10.9.0.1",
			types.ErrInvalidEnvironmentVariables, `CNI_ARGS GATEWAY "10.9.0.1": inside the subnet of no address (10.0.0.2/24)`},
		{"unknown CNI_ARGS key", conf("1.0.0", `{}`, ""), "IP=10.0.0.2/24;MAC=aa",
			types.ErrInvalidEnvironmentVariables, `CNI_ARGS "MAC": unknown keys`},
		{"no address from any source", conf("1.0.0", `{"type":"static-ipam"}`, ""), "",
			types.ErrInvalidNetworkConfig, "addresses: missing: no address from runtimeConfig.ips, args.cni.ips, CNI_ARGS IP or ipam.addresses"},
		{"two IPv4 addresses in 0.2.0", conf("0.2.0", `{"addresses":[{"address":"10.0.0.2/24"},{"address":"10.0.1.2/24"}]}`, ""), "",
			types.ErrIncompatibleCNIVersion, `cniVersion "0.2.0": holds at most one IPv4`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.stdin, tt.args)
			var cniErr *types.Error
			if !errors.As(err, &cniErr) {
				t.Fatalf("Parse error = %v, want a CNI error", err)
			}
			if cniErr.Code != tt.wantCode || !strings.Contains(cniErr.Msg, tt.wantMsg) {
				t.Fatalf("Parse error = code %d %q, want code %d containing %q", cniErr.Code, cniErr.Msg, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(conf("0.3.1", dockinIPAM, ""), "IP=10.1.0.5/16;GATEWAY=10.1.0.1")
	f.Add(conf("1.0.0", `{}`, `"runtimeConfig":{"ips":["10.3.0.5/24"]},"args":{"cni":{"ips":["::1/128"]}}`), "")
	f.Add([]byte(`{"ipam":{"addresses":[{"address":"::ffff:1.2.3.4/120","gateway":"1.2.3.1"}]}}`), "IgnoreUnknown=1;X=y")
	f.Add(conf("1.0.0", dockinIPAM, `"runtimeConfig":{"ips":["192.168.0.60"]}`), "IP=3ffe:ffff:0:1ff::50;GATEWAY=10.5.0.1")
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		cfg, err := Parse(stdin, args)
		if err != nil {
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Msg == "" {
				t.Fatalf("Parse returned %v, not a CNI error with a message", err)
			}
			return
		}
		if len(cfg.Addresses) == 0 {
			t.Fatal("Parse accepted a configuration without addresses")
		}
		seen := map[netip.Addr]bool{}
		for _, a := range cfg.Addresses {
			if !a.Prefix.IsValid() || seen[a.Prefix.Addr()] {
				t.Fatalf("invalid or duplicate address %v", a.Prefix)
			}
			seen[a.Prefix.Addr()] = true
			if a.Gateway.IsValid() && !a.Prefix.Masked().Contains(a.Gateway) {
				t.Fatalf("gateway %v outside %v", a.Gateway, a.Prefix)
			}
		}
		// The result must always be printable in the version that was accepted.
		if _, err := Result(cfg).GetAsVersion("1.0.0"); err != nil {
			t.Fatalf("result not convertible: %v", err)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	stdin := conf("1.0.0", dockinIPAM, `"runtimeConfig":{"ips":["192.168.0.77/24"]}`)
	for b.Loop() {
		if _, err := Parse(stdin, "IgnoreUnknown=1;K8S_POD_NAME=web;GATEWAY=192.168.0.1"); err != nil {
			b.Fatal(err)
		}
	}
}
