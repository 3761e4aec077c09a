package hostroute

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/hostnet"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		conf     string
		want     func(*Config) string // "" when right
		wantCode uint
		wantMsg  string
	}{
		{
			name: "the source document's config",
			conf: `{"cniVersion":"0.4.0","name":"default","type":"macvlan-host-route","master":"eno1","bridge":"eno1.host"}`,
			want: func(c *Config) string {
				if c.Master != "eno1" || c.Bridge != "eno1.host" || c.StateDir != DefaultStateDir || c.MTU != 0 {
					return "want master eno1, bridge eno1.host, default stateDir, no MTU"
				}
				return ""
			},
		},
		{
			name: "bridge defaults to <master>.host",
			conf: `{"name":"n","master":"ens1f0"}`,
			want: func(c *Config) string {
				if c.Bridge != "ens1f0.host" {
					return "want ens1f0.host"
				}
				return ""
			},
		},
		{
			name: "host addresses, mtu and stateDir",
			conf: `{"name":"n","master":"eno1","mtu":9000,"hostAddresses":["192.168.0.5","fd00:c0a8::5"],"stateDir":"/tmp/x"}`,
			want: func(c *Config) string {
				if c.MTU != 9000 || c.StateDir != "/tmp/x" || len(c.HostAddresses) != 2 || c.HostAddresses[1] != netip.MustParseAddr("fd00:c0a8::5") {
					return "want mtu 9000, two host addresses, stateDir /tmp/x"
				}
				return ""
			},
		},
		{name: "not JSON", conf: `{`, wantCode: types.ErrDecodingFailure, wantMsg: "network configuration: cannot decode"},
		{
			name: "master left out: settled later from the default route, as macvlan does",
			conf: `{"name":"n"}`,
			want: func(c *Config) string {
				if c.Master != "" || c.Bridge != "" {
					return "want master and bridge left for later"
				}
				if err := c.WithMaster("ens3"); err != nil || c.Bridge != "ens3.host" {
					return fmt.Sprintf("WithMaster(ens3): bridge %q, %v", c.Bridge, err)
				}
				return ""
			},
		},
		{name: "master with a slash", conf: `{"name":"n","master":"a/b"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `master "a/b"`},
		{name: "bridge too long", conf: `{"name":"n","master":"eno1","bridge":"a-very-long-name-0"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `bridge "a-very-long-name-0"`},
		{name: "bridge is the master", conf: `{"name":"n","master":"eno1","bridge":"eno1"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `bridge "eno1": must differ from master`},
		{name: "mtu too small", conf: `{"name":"n","master":"eno1","mtu":10}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `mtu "10": outside 68-65535`},
		{name: "host address not an IP", conf: `{"name":"n","master":"eno1","hostAddresses":["host"]}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `hostAddresses[0] "host"`},
		{name: "host address unspecified", conf: `{"name":"n","master":"eno1","hostAddresses":["0.0.0.0"]}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `hostAddresses[0] "0.0.0.0"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.conf))
			if tt.wantMsg != "" {
				var cniErr *types.Error
				if !errors.As(err, &cniErr) || cniErr.Code != tt.wantCode || !strings.Contains(cniErr.Msg, tt.wantMsg) {
					t.Fatalf("Parse error = %v, want code %d containing %q", err, tt.wantCode, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if msg := tt.want(cfg); msg != "" {
				t.Fatalf("%+v: %s", cfg, msg)
			}
		})
	}
}

func TestDefaultBridge(t *testing.T) {
	for master, want := range map[string]string{
		"eno1":            "eno1.host",
		"enp0s31f6":       "enp0s31f6.host",
		"enp129s0f0np0":   "enp129s0f0.host",
		"abcdefghijklmno": "abcdefghij.host",
	} {
		if got := DefaultBridge(master); got != want || len(got) > 15 {
			t.Errorf("DefaultBridge(%q) = %q, want %q", master, got, want)
		}
	}
}

func TestRouteTargets(t *testing.T) {
	in := []netip.Prefix{netip.MustParsePrefix("192.168.1.2/16"), netip.MustParsePrefix("fd00::2/64"), netip.MustParsePrefix("192.168.1.2/24")}
	got := RouteTargets(in)
	if len(got) != 2 || got[0].String() != "192.168.1.2" || got[1].String() != "fd00::2" {
		t.Fatalf("RouteTargets = %v", got)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"default","master":"eno1","bridge":"eno1.host"}`))
	f.Add([]byte(`{"name":"n","master":"eno1","mtu":9000,"hostAddresses":["192.168.0.5","fd00::5"]}`))
	f.Add([]byte(`{"name":"n","master":"eno1","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}`))
	f.Add([]byte(`{"name":"n","master":"eno1","viaNode":["10.96.0.0/12","fd00:10:96::/112","169.254.20.10/32"],"replyViaNode":false,"backend":"nftables"}`))
	f.Fuzz(func(t *testing.T, conf []byte) {
		cfg, err := Parse(conf)
		if err != nil {
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Msg == "" {
				t.Fatalf("Parse returned %v, not a CNI error with a message", err)
			}
			return
		}
		if cfg.Master == "" && cfg.WithMaster("eth0") != nil {
			return // a bridge named eth0: refused once the master is known
		}
		if cfg.Bridge == "" || len(cfg.Bridge) > 15 || cfg.Bridge == cfg.Master || cfg.StateDir == "" {
			t.Fatalf("accepted config with bridge %q master %q stateDir %q", cfg.Bridge, cfg.Master, cfg.StateDir)
		}
		for _, a := range cfg.HostAddresses {
			if !a.IsValid() || a.IsUnspecified() {
				t.Fatalf("accepted host address %v", a)
			}
		}
	})
}

func BenchmarkParse(b *testing.B) {
	conf := []byte(`{"cniVersion":"1.0.0","name":"default","master":"eno1","bridge":"eno1.host","hostAddresses":["fd00::5"],
		"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"192.168.1.2/16"},{"address":"fd00::2/64"}]}}`)
	for b.Loop() {
		if _, err := Parse(conf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestAnswered(t *testing.T) {
	master := []netip.Prefix{netip.MustParsePrefix("192.168.50.2/24"), netip.MustParsePrefix("fd50::2/64"), netip.MustParsePrefix("2001:db8::2/64")}
	tests := []struct {
		name      string
		arpIgnore int
		want      string
	}{
		{"arp_ignore 0: ARP answers anyway, NDP needs every IPv6 address", 0, "[fd50::2/64 2001:db8::2/64]"},
		{"arp_ignore 1: the IPv4 address too", 1, "[192.168.50.2/24 fd50::2/64 2001:db8::2/64]"},
		{"arp_ignore 2: the IPv4 address with its subnet", 2, "[192.168.50.2/24 fd50::2/64 2001:db8::2/64]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmt.Sprint(Answered(master, tt.arpIgnore)); got != tt.want {
				t.Errorf("Answered = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestNodePins(t *testing.T) {
	master := []netip.Prefix{netip.MustParsePrefix("192.168.0.5/16"), netip.MustParsePrefix("fd00:c0a8::5/64"), netip.MustParsePrefix("2001:db8::5/64")}
	tests := []struct {
		name string
		pod  []string
		want string
	}{
		{"a dual-stack pod: every address of the master", []string{"192.168.50.20", "fd00:c0a8::50:20"}, "[192.168.0.5 fd00:c0a8::5 2001:db8::5]"},
		{"an IPv4 pod: no IPv6 entry on a link that may have IPv6 off", []string{"192.168.50.20"}, "[192.168.0.5]"},
		{"an IPv6 pod", []string{"fd00:c0a8::50:20"}, "[fd00:c0a8::5 2001:db8::5]"},
		{"no pod address", nil, "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pod []netip.Addr
			for _, a := range tt.pod {
				pod = append(pod, netip.MustParseAddr(a))
			}
			if got := fmt.Sprint(NodePins(master, pod)); got != tt.want {
				t.Errorf("NodePins = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestPinnedMAC(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	eth0 := &hostnet.PodLink{Name: "eth0", Kind: "macvlan", MAC: mac}
	result := func(ifaces ...*current.Interface) *current.Result { return &current.Result{Interfaces: ifaces} }
	tests := []struct {
		name string
		prev *current.Result
		pod  *hostnet.PodLink
		want string
	}{
		{"macvlan's result: the pod's interface", result(&current.Interface{Name: "eth0", Sandbox: "/var/run/netns/p"}), eth0, mac.String()},
		{"a result without interfaces", result(), eth0, mac.String()},
		{"a node-side interface beside it", result(&current.Interface{Name: "eno1"}, &current.Interface{Name: "eth0", Sandbox: "/p"}), eth0, mac.String()},
		{"another container interface: its addresses may be there, not asked", result(&current.Interface{Name: "eth0", Sandbox: "/p"}, &current.Interface{Name: "net1", Sandbox: "/p"}), eth0, ""},
		{"no interface to look at", result(), nil, ""},
		{"an interface without a MAC", result(), &hostnet.PodLink{Name: "eth0"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PinnedMAC(tt.prev, tt.pod).String(); got != tt.want {
				t.Errorf("PinnedMAC = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPodLinkProblem(t *testing.T) {
	macvlan := func(mode netlink.MacvlanMode, parent int) *hostnet.PodLink {
		return &hostnet.PodLink{Name: "eth0", Kind: "macvlan", Mode: mode, ParentIndex: parent}
	}
	tests := []struct {
		name    string
		pod     *hostnet.PodLink
		wantMsg string // "" for no problem
	}{
		{"a bridge-mode macvlan of the master", macvlan(netlink.MACVLAN_MODE_BRIDGE, 2), ""},
		{"no interface to look at", nil, ""},
		{"vepa", macvlan(netlink.MACVLAN_MODE_VEPA, 2), `mode "vepa": the pod's macvlan eth0 is not in bridge mode`},
		{"private", macvlan(netlink.MACVLAN_MODE_PRIVATE, 2), `mode "private"`},
		{"passthru", macvlan(netlink.MACVLAN_MODE_PASSTHRU, 2), `mode "passthru"`},
		{"another master", macvlan(netlink.MACVLAN_MODE_BRIDGE, 7), `master "eno1": the pod's macvlan eth0 sits on another link (index 7, "eno1" is 2)`},
		{"not a macvlan", &hostnet.PodLink{Name: "eth0", Kind: "veth"}, `master "eno1": the pod's eth0 is a veth, not a macvlan`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := PodLinkProblem(tt.pod, "eno1", 2)
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("PodLinkProblem = %v, want none", err)
				}
				return
			}
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, tt.wantMsg) {
				t.Fatalf("PodLinkProblem = %v, want code 7 containing %q", err, tt.wantMsg)
			}
		})
	}
}

func TestPreferredSource(t *testing.T) {
	master := []netip.Prefix{netip.MustParsePrefix("192.168.100.5/24"), netip.MustParsePrefix("10.0.0.5/8"), netip.MustParsePrefix("fd00::5/64")}
	for ip, want := range map[string]string{
		"192.168.100.20": "192.168.100.5",
		"10.9.9.9":       "10.0.0.5",
		"fd00::20":       "fd00::5",
		"172.16.0.9":     "invalid IP",
		"fd01::20":       "invalid IP",
	} {
		if got := PreferredSource(master, netip.MustParseAddr(ip)).String(); got != want {
			t.Errorf("PreferredSource(%s) = %s, want %s", ip, got, want)
		}
	}
}

// TestAliasWith: the sub-device's alias lists each stateDir once, keeps
// within the kernel's limit, and a foreign alias lists none.
func TestAliasWith(t *testing.T) {
	link := func(alias string) netlink.Link {
		attrs := netlink.NewLinkAttrs()
		attrs.Alias = alias
		return &netlink.Macvlan{LinkAttrs: attrs}
	}
	alias, changed := aliasWith(link(""), "/var/lib/cni/macvlan-host-route/")
	if !changed || alias != `cnichain-statedirs:["/var/lib/cni/macvlan-host-route"]` {
		t.Fatalf("first stateDir: %q, %v", alias, changed)
	}
	if _, changed := aliasWith(link(alias), "/var/lib/cni/macvlan-host-route"); changed {
		t.Error("a listed stateDir is listed again")
	}
	two, changed := aliasWith(link(alias), "/run/other")
	if dirs, ok := stateDirsOf(link(two)); !changed || !ok || len(dirs) != 2 {
		t.Errorf("second stateDir: %q, %v -> %v, %v", two, changed, dirs, ok)
	}
	full, changed := aliasWith(link(two), "/"+strings.Repeat("x", 250))
	if !changed || len(full) > aliasMax {
		t.Errorf("a stateDir past the kernel's limit: %q, %v", full, changed)
	}
	if dirs, ok := stateDirsOf(link(full)); ok || dirs != nil {
		t.Errorf("a sub-device with more stateDirs than fit lists %v, %v; want none, so that no GC trusts it", dirs, ok)
	}
	if _, changed := aliasWith(link(full), "/run/third"); changed {
		t.Error("a sub-device with more stateDirs than fit lists one more")
	}
	if dirs, ok := stateDirsOf(link("uplink to the rack")); ok || dirs != nil {
		t.Errorf("a foreign alias lists %v, %v", dirs, ok)
	}
}

// TestParseViaNode: what viaNode and its keys accept, and the field and
// value every refusal names.
func TestParseViaNode(t *testing.T) {
	for _, tt := range []struct {
		name, keys, field string // field "" when accepted
	}{
		{"Service CIDRs of both families and node-local DNS", `"viaNode":["10.96.0.0/12","fd00:10:96::/112","169.254.20.10/32"]`, ""},
		{"not a CIDR", `"viaNode":["10.96.0.0"]`, "viaNode[0]"},
		{"host bits set", `"viaNode":["10.96.0.1/12"]`, "viaNode[0]"},
		{"the link-local /16, which holds the metadata address", `"viaNode":["10.96.0.0/12","169.254.0.0/16"]`, "viaNode[1]"},
		{"the metadata address alone is the user's to route", `"viaNode":["169.254.169.254/32"]`, ""},
		{"listed twice", `"viaNode":["10.96.0.0/12","10.96.0.0/12"]`, "viaNode[1]"},
		{"an unknown backend", `"viaNode":["10.96.0.0/12"],"backend":"ebpf"`, "backend"},
		{"an unknown flavour", `"viaNode":["10.96.0.0/12"],"iptablesFlavour":"x"`, "iptablesFlavour"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(`{"name":"n","master":"eno1",` + tt.keys + `}`))
			if tt.field == "" {
				if err != nil || !*cfg.ReplyViaNode || cfg.Backend != "iptables" {
					t.Fatalf("Parse = %+v, %v", cfg, err)
				}
				return
			}
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, tt.field) {
				t.Fatalf("Parse error = %v, want code 7 naming %s", err, tt.field)
			}
		})
	}
}

// TestCheckViaNodeEntry: the rules of one viaNode entry, which Parse and
// the installer's -service-cidrs share, and Parse's error for an entry
// being the field, the value and this reason.
func TestCheckViaNodeEntry(t *testing.T) {
	for _, tt := range []struct {
		name   string
		p      netip.Prefix
		reason string // "" when accepted
	}{
		{"a Service CIDR", netip.MustParsePrefix("10.96.0.0/12"), ""},
		{"an IPv6 Service CIDR", netip.MustParsePrefix("fd00:10:96::/112"), ""},
		{"node-local DNS", netip.MustParsePrefix("169.254.20.10/32"), ""},
		{"the metadata address alone", netip.MustParsePrefix("169.254.169.254/32"), ""},
		{"IPv6 everything holds no IPv4 address", netip.MustParsePrefix("::/0"), ""},
		{"no prefix", netip.Prefix{}, "not a CIDR such as 10.96.0.0/12 or 169.254.20.10/32"},
		{"host bits set", netip.MustParsePrefix("10.96.0.1/12"), "has host bits set: write 10.96.0.0/12"},
		{"the link-local /16", netip.MustParsePrefix("169.254.0.0/16"), "holds the cloud metadata address 169.254.169.254"},
		{"IPv4 everything", netip.MustParsePrefix("0.0.0.0/0"), "holds the cloud metadata address 169.254.169.254"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckViaNodeEntry(tt.p)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("CheckViaNodeEntry(%s) = %v, want nil", tt.p, err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.reason) {
				t.Fatalf("CheckViaNodeEntry(%s) = %v, want %q...", tt.p, err, tt.reason)
			}
			if !tt.p.IsValid() {
				return
			}
			_, perr := Parse([]byte(`{"name":"n","viaNode":["10.0.0.0/8",` + strconv.Quote(tt.p.String()) + `]}`))
			var cniErr *types.Error
			if want := fmt.Sprintf("viaNode[1] %q: %s", tt.p, err); !errors.As(perr, &cniErr) || cniErr.Msg != want {
				t.Errorf("Parse error = %v, want %q", perr, want)
			}
		})
	}
}

// TestPlanViaNode: each destination through the node's address in the
// pod's subnet of its family, one reply path per pod address, and the
// refusals that depend on the pod.
func TestPlanViaNode(t *testing.T) {
	key := attachstate.Key{Network: "n", ContainerID: "c1", IfName: "eth0"}
	pod := []netip.Prefix{netip.MustParsePrefix("192.168.60.30/16"), netip.MustParsePrefix("fd00:c0a8::60:30/64")}
	node := []netip.Prefix{netip.MustParsePrefix("10.0.0.5/24"), netip.MustParsePrefix("192.168.0.5/16"), netip.MustParsePrefix("fd00:c0a8::5/64")}
	plan := func(keys string, pod []netip.Prefix) (*ViaNodePlan, error) {
		cfg, err := Parse([]byte(`{"name":"n","master":"eno1",` + keys + `}`))
		if err != nil {
			t.Fatal(err)
		}
		return PlanViaNode(cfg, key, pod, node)
	}
	p, err := plan(`"viaNode":["10.96.0.0/12","169.254.20.10/32","fd00:10:96::/112"]`, pod)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(p.Routes); got != "[{10.96.0.0/12 192.168.0.5} {169.254.20.10/32 192.168.0.5} {fd00:10:96::/112 fd00:c0a8::5}]" {
		t.Errorf("routes %s", got)
	}
	if len(p.Replies) != 2 || p.Replies[0].Pod != pod[0].Addr() || p.Replies[0].Node.String() != "192.168.0.5" || p.Replies[0].Comment != `name: "n" id: "c1"` {
		t.Errorf("replies %+v", p.Replies)
	}
	if p, _ := plan(`"viaNode":["10.96.0.0/12"],"replyViaNode":false`, pod); len(p.Replies) != 0 {
		t.Errorf("replyViaNode false: replies %+v", p.Replies)
	}
	for _, tt := range []struct {
		name, keys string
		pod        []netip.Prefix
		reason     string
	}{
		{"a family the pod has no address in", `"viaNode":["fd00:10:96::/112"]`, pod[:1], "no IPv6 address"},
		{"the pod's own subnet", `"viaNode":["192.168.128.0/17"]`, pod, "overlaps the pod's own subnet 192.168.0.0/16"},
		{"a pod subnet the node has no address in", `"viaNode":["10.96.0.0/12"]`, []netip.Prefix{netip.MustParsePrefix("172.16.0.9/24")}, "no IPv4 address in the pod's subnet 172.16.0.0/24"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := plan(tt.keys, tt.pod)
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, "viaNode[0]") || !strings.Contains(cniErr.Msg, tt.reason) {
				t.Fatalf("PlanViaNode error = %v, want viaNode[0] and %q", err, tt.reason)
			}
		})
	}
}
