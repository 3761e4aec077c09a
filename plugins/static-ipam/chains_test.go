package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// TestUnderOtherMainPlugins: static-ipam as the IPAM of the main plugins
// users pair it with. The pod gets exactly the configured addresses and
// routes, reaches what that main plugin lets it reach, and DEL leaves the
// node as it was.
func TestUnderOtherMainPlugins(t *testing.T) {
	ipam := func(addr, gw string) string {
		return fmt.Sprintf(`"ipam":{"type":"static-ipam","addresses":[{"address":%q,"gateway":%q}],
			"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["192.168.0.1"],"search":["example.com"]}}`, addr, gw)
	}
	tests := []struct {
		name   string
		kind   []string // a link kind the kernel must support ("" none)
		routes string   // the result's routes, when not just the configured default route
		// theirs marks the node's lines that belong to the main plugin or
		// the test, not static-ipam: they may change (bridge's bridge, the
		// host device's peer, whose carrier comes and goes with the pod).
		theirs  []string
		setup   func(t *testing.T, sb *sandbox.Sandbox)
		plugin  string // the main plugin's JSON, without its braces
		addr    string
		dns     bool // the main plugin reports the IPAM's dns
		reaches func(sb *sandbox.Sandbox, pod ns.NetNS) error
	}{
		{
			name:   "ptp",
			plugin: `"type":"ptp",` + ipam("10.99.0.2/24", "10.99.0.1"),
			addr:   "10.99.0.2/24",
			reaches: func(sb *sandbox.Sandbox, pod ns.NetNS) error {
				if err := sandbox.Ping(sb.Node, netip.MustParseAddr("10.99.0.2")); err != nil {
					return err
				}
				return sandbox.Ping(pod, sandbox.NodeIPv4.Addr())
			},
		},
		{
			name: "host-device (a veth of the node moved into the pod)",
			setup: func(t *testing.T, sb *sandbox.Sandbox) {
				sandbox.MustRun(t, sb.Node, "ip", "link", "add", "hd0", "type", "veth", "peer", "name", "hd0-peer")
				sandbox.MustRun(t, sb.Node, "ip", "addr", "add", "10.98.0.1/24", "dev", "hd0-peer")
				sandbox.MustRun(t, sb.Node, "ip", "link", "set", "hd0-peer", "addrgenmode", "none")
				sandbox.MustRun(t, sb.Node, "ip", "link", "set", "hd0-peer", "up")
			},
			plugin: `"type":"host-device","device":"hd0",` + ipam("10.98.0.2/24", "10.98.0.1"),
			theirs: []string{"hd0"},
			addr:   "10.98.0.2/24",
			reaches: func(sb *sandbox.Sandbox, _ ns.NetNS) error {
				return sandbox.Ping(sb.Node, netip.MustParseAddr("10.98.0.2"))
			},
		},
		{
			name: "bridge with isDefaultGateway",
			// bridge adds the default route itself: one in the IPAM's routes
			// too would fail ADD with "file exists" (so the README says).
			plugin: `"type":"bridge","bridge":"sbr0","isDefaultGateway":true,"ipMasq":true,` +
				strings.Replace(ipam("10.97.0.2/24", "10.97.0.1"), `"routes":[{"dst":"0.0.0.0/0"}],`, "", 1),
			addr:   "10.97.0.2/24",
			routes: "0.0.0.0/0 via 10.97.0.1",

			dns: true,
			reaches: func(sb *sandbox.Sandbox, pod ns.NetNS) error {
				if err := sandbox.Ping(sb.Node, netip.MustParseAddr("10.97.0.2")); err != nil {
					return err
				}
				return sandbox.Ping(pod, sandbox.LANIPv4.Addr()) // through the bridge, forwarded and masqueraded
			},
		},
		{
			name:   "ipvlan l2",
			kind:   []string{"ipvlan", "mode", "l2"},
			plugin: `"type":"ipvlan","master":"eno1","mode":"l2",` + ipam("192.168.1.95/16", "192.168.0.1"),
			addr:   "192.168.1.95/16",
			reaches: func(sb *sandbox.Sandbox, pod ns.NetNS) error {
				return sandbox.Ping(pod, sandbox.LANIPv4.Addr())
			},
		},
		{
			name:   "ipvlan l3",
			kind:   []string{"ipvlan", "mode", "l3"},
			plugin: `"type":"ipvlan","master":"eno1","mode":"l3",` + ipam("192.168.1.96/16", "192.168.0.1"),
			addr:   "192.168.1.96/16",
			// l3 answers no ARP: the lan needs a route to the pod, which is
			// the operator's; the address and routes are what is checked.
		},
		{
			name: "vlan on the uplink",
			kind: []string{"vlan", "id", "100"},
			setup: func(t *testing.T, sb *sandbox.Sandbox) {
				sandbox.MustRun(t, sb.LAN, "ip", "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id", "100")
				sandbox.MustRun(t, sb.LAN, "ip", "addr", "add", "192.168.100.1/24", "dev", "eth0.100")
				sandbox.MustRun(t, sb.LAN, "ip", "link", "set", "eth0.100", "up")
			},
			plugin: `"type":"vlan","master":"eno1","vlanId":100,` + ipam("192.168.100.20/24", "192.168.100.1"),
			addr:   "192.168.100.20/24",
			reaches: func(sb *sandbox.Sandbox, pod ns.NetNS) error {
				return sandbox.Ping(pod, netip.MustParseAddr("192.168.100.1"))
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.kind != nil {
				sandbox.RequireLinkKind(t, tt.kind[0], tt.kind[1:]...)
			}
			sb := sandbox.New(t)
			if tt.setup != nil {
				tt.setup(t, sb)
			}
			rtm := sb.Runtime(t)
			name := strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(tt.name)
			list := sandbox.ListFromJSON(t, fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{%s}]}`, name, tt.plugin))
			// Warm up: what the main plugin leaves by design (bridge's bridge,
			// its nat table) appears with the first pod.
			warm := sandbox.Attachment(sb.NewPod(t), "warm-"+name, "eth0")
			if _, err := rtm.Add(list, warm); err != nil {
				t.Fatalf("ADD (warm-up): %v", err)
			}
			if err := rtm.Del(list, warm); err != nil {
				t.Fatalf("DEL (warm-up): %v", err)
			}
			before := sb.Snapshot(t)
			pod := sb.NewPod(t)
			att := sandbox.Attachment(pod, "c-"+name, "eth0")
			res, err := rtm.Add(list, att)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			t.Cleanup(func() { _ = rtm.Del(list, att) })
			r, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			var addrs []string
			for _, ip := range r.IPs {
				addrs = append(addrs, ip.Address.String())
			}
			if !slices.Equal(addrs, []string{tt.addr}) {
				t.Errorf("result addresses = %v, want exactly %s", addrs, tt.addr)
			}
			if tt.routes != "" {
				var got []string
				for _, rt := range r.Routes {
					got = append(got, fmt.Sprintf("%s via %s", rt.Dst.String(), rt.GW))
				}
				if strings.Join(got, ", ") != tt.routes {
					t.Errorf("result routes = %s, want %s", got, tt.routes)
				}
			} else if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" {
				t.Errorf("result routes = %v, want the configured default route", r.Routes)
			}
			if tt.dns && (len(r.DNS.Nameservers) != 1 || r.DNS.Nameservers[0] != "192.168.0.1") {
				t.Errorf("result dns = %+v, want the configured one", r.DNS)
			}
			if out := sandbox.MustRun(t, pod, "ip", "-4", "addr", "show", "dev", "eth0"); !strings.Contains(out, tt.addr) {
				t.Errorf("the pod's eth0 lacks %s:\n%s", tt.addr, out)
			}
			if tt.reaches != nil {
				if err := tt.reaches(sb, pod); err != nil {
					t.Fatalf("traffic: %v", err)
				}
			}
			if err := rtm.Del(list, att); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if after := sb.Snapshot(t); without(after, tt.theirs) != without(before, tt.theirs) {
				t.Fatalf("the node after DEL:\n%s\nbefore ADD:\n%s", after, before)
			}
		})
	}
}

// without drops the lines of a snapshot that mention any of words.
func without(snapshot string, words []string) string {
	var kept []string
	for _, line := range strings.Split(snapshot, "\n") {
		if !slices.ContainsFunc(words, func(w string) bool { return strings.Contains(line, w) }) {
			kept = append(kept, line)
		}
	}
	return strings.Join(kept, "\n")
}
