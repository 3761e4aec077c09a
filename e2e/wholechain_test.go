package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// The project's headline chain, net.d/30-macvlan-hostport.conflist: macvlan
// with static-ipam, then macvlan-host-route, then portmap-lite, written with
// only the keys a user would write.
const wholeChain = "30-macvlan-hostport.conflist"

var (
	podV4 = netip.MustParseAddr("192.168.50.20")
	podV6 = netip.MustParseAddr("fd00:c0a8::50:20")
	// The second pod of the chain takes its addresses from the ips capability.
	peerV4 = netip.MustParseAddr("192.168.50.21")
	peerV6 = netip.MustParseAddr("fd00:c0a8::50:21")

	wholeChainPorts = map[string]any{"portMappings": []map[string]any{
		{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
		{"hostPort": 8053, "containerPort": 53, "protocol": "udp"},
	}}
)

// path is a connection a test expects answered with want.
type path struct {
	name  string
	from  ns.NetNS
	to    netip.AddrPort
	proto string // "tcp" or "udp"
	want  string
}

func (p path) check() error {
	dial := sandbox.DialTCP
	if p.proto == "udp" {
		dial = sandbox.DialUDP
	}
	got, err := dial(p.from, p.to)
	if err == nil && got != p.want {
		err = fmt.Errorf("answered %q, want %q", got, p.want)
	}
	if err != nil {
		return fmt.Errorf("%s %s -> %s: %w", p.name, p.proto, p.to, err)
	}
	return nil
}

// wholeChainList is the example file in the sandbox, with portmap-lite's
// backend set when backend is not the default.
func wholeChainList(t *testing.T, sb *sandbox.Sandbox, backend string) *libcni.NetworkConfigList {
	t.Helper()
	list := sb.Localize(t, sandbox.LoadList(t, wholeChain))
	if backend == "" {
		return list
	}
	text := strings.Replace(string(list.Bytes), `"type":"portmap-lite"`, fmt.Sprintf(`"backend":%q,"type":"portmap-lite"`, backend), 1)
	if text == string(list.Bytes) {
		t.Fatal("no portmap-lite in the chain")
	}
	return sandbox.ListFromJSON(t, text)
}

// TestWholeChain runs the headline chain through libcni with both backends
// of portmap-lite: every way a pod is reached (lan, another pod of the
// chain, the pod itself, the node), IPv4 and IPv6, TCP and UDP; CHECK finds
// what is removed by hand; DEL without portMappings and GC leave the node as
// it was.
func TestWholeChain(t *testing.T) {
	for _, backend := range []string{"", "nftables"} {
		name := "iptables"
		if backend != "" {
			name = backend
		}
		t.Run(name, func(t *testing.T) {
			sb := sandbox.New(t)
			sb.EnableForwarding(t)
			rtm := sb.Runtime(t)
			list := wholeChainList(t, sb, backend)

			// Warm up: the sub-device and the shared chains stay by design.
			warm := sandbox.Attachment(sb.NewPod(t), "warm", "eth0")
			warm.CapabilityArgs = wholeChainPorts
			mustAdd(t, rtm, list, warm)
			mustDel(t, rtm, list, warm)
			before := sb.Snapshot(t)

			web := sb.NewPod(t)
			att := sandbox.Attachment(web, "web", "eth0")
			att.CapabilityArgs = wholeChainPorts
			mustAdd(t, rtm, list, att)
			t.Cleanup(func() { _ = rtm.Del(list, att) })
			peer := sb.NewPod(t)
			peerAtt := sandbox.Attachment(peer, "peer", "eth0")
			peerAtt.CapabilityArgs = map[string]any{"ips": []string{peerV4.String() + "/16", peerV6.String() + "/64"}}
			mustAdd(t, rtm, list, peerAtt)
			t.Cleanup(func() { _ = rtm.Del(list, peerAtt) })
			for _, netns := range []ns.NetNS{web, peer, sb.Node} {
				sandbox.WaitDAD(t, netns)
			}
			sandbox.ServeTCP(t, web, 80, "hello from the pod")
			sandbox.ServeUDP(t, web, 53, "udp from the pod")
			sandbox.ServeTCP(t, sb.Node, 7070, "hello from the node")

			node4, node6 := sandbox.NodeIPv4.Addr(), sandbox.NodeIPv6.Addr()
			const pod, node = "hello from the pod", "hello from the node"
			for _, p := range []path{
				{"tcp hostPort from a lan client, IPv4", sb.LAN, netip.AddrPortFrom(node4, 8080), "tcp", pod},
				{"tcp hostPort from a lan client, IPv6", sb.LAN, netip.AddrPortFrom(node6, 8080), "tcp", pod},
				{"tcp hostPort from another pod of the chain, IPv4", peer, netip.AddrPortFrom(node4, 8080), "tcp", pod},
				{"tcp hostPort from another pod of the chain, IPv6", peer, netip.AddrPortFrom(node6, 8080), "tcp", pod},
				{"tcp hostPort from the pod itself (hairpin), IPv4", web, netip.AddrPortFrom(node4, 8080), "tcp", pod},
				{"tcp hostPort from the pod itself (hairpin), IPv6", web, netip.AddrPortFrom(node6, 8080), "tcp", pod},
				{"tcp hostPort from the node on its own address, IPv4", sb.Node, netip.AddrPortFrom(node4, 8080), "tcp", pod},
				{"tcp hostPort from the node on its own address, IPv6", sb.Node, netip.AddrPortFrom(node6, 8080), "tcp", pod},
				{"tcp hostPort from the node on 127.0.0.1", sb.Node, netip.MustParseAddrPort("127.0.0.1:8080"), "tcp", pod},
				{"udp hostPort from a lan client, IPv4", sb.LAN, netip.AddrPortFrom(node4, 8053), "udp", "udp from the pod"},
				{"udp hostPort from a lan client, IPv6", sb.LAN, netip.AddrPortFrom(node6, 8053), "udp", "udp from the pod"},
				{"udp hostPort from another pod of the chain, IPv4", peer, netip.AddrPortFrom(node4, 8053), "udp", "udp from the pod"},
				{"udp hostPort from the node on its own address, IPv6", sb.Node, netip.AddrPortFrom(node6, 8053), "udp", "udp from the pod"},
				{"node to pod, IPv4", sb.Node, netip.AddrPortFrom(podV4, 80), "tcp", pod},
				{"node to pod, IPv6", sb.Node, netip.AddrPortFrom(podV6, 80), "tcp", pod},
				{"pod to node, IPv4", web, netip.AddrPortFrom(node4, 7070), "tcp", node},
				{"pod to node, IPv6", web, netip.AddrPortFrom(node6, 7070), "tcp", node},
			} {
				t.Run(p.name, func(t *testing.T) {
					if err := p.check(); err != nil {
						t.Fatal(err)
					}
				})
			}

			t.Run("CHECK passes, and names what is removed by hand", func(t *testing.T) {
				if err := rtm.Check(list, att); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
				_, sub, _ := strings.Cut(sandbox.MustRun(t, sb.Node, "ip", "-o", "link", "show", "eno1.host"), "link/ether ")
				sub, _, _ = strings.Cut(sub, " ")
				for _, tt := range []struct {
					name           string
					netns          ns.NetNS
					breakIt, fixIt []string
					want           string
				}{
					{"a host route", sb.Node, []string{"ip", "route", "del", podV4.String(), "dev", "eno1.host"},
						[]string{"ip", "route", "add", podV4.String(), "dev", "eno1.host", "proto", "197", "scope", "link"},
						"host route to 192.168.50.20"},
					{"the pod's pin to the node's IPv6 address", web, []string{"ip", "neigh", "del", node6.String(), "dev", "eth0"},
						[]string{"ip", "neigh", "replace", node6.String(), "lladdr", sub, "nud", "permanent", "dev", "eth0"},
						"permanent neighbour entry " + node6.String()},
				} {
					sandbox.MustRun(t, tt.netns, tt.breakIt[0], tt.breakIt[1:]...)
					err := rtm.Check(list, att)
					sandbox.MustRun(t, tt.netns, tt.fixIt[0], tt.fixIt[1:]...)
					if err == nil || !strings.Contains(err.Error(), tt.want) {
						t.Errorf("CHECK without %s: %v, want an error naming %q", tt.name, err, tt.want)
					}
				}
				if err := rtm.Check(list, att); err != nil {
					t.Fatalf("CHECK after repair: %v", err)
				}
			})

			t.Run("GC removes the pod missing from the valid attachments, and only it", func(t *testing.T) {
				if err := rtm.GC(list, []types.GCAttachment{{ContainerID: "web", IfName: "eth0"}}); err != nil {
					t.Fatalf("GC: %v", err)
				}
				if routes := sandbox.MustRun(t, sb.Node, "ip", "route", "show", "proto", "197"); strings.Contains(routes, peerV4.String()) {
					t.Fatalf("the peer's host route survived GC:\n%s", routes)
				}
				if err := rtm.Check(list, att); err != nil {
					t.Fatalf("GC broke the valid pod: %v", err)
				}
				mustDel(t, rtm, list, peerAtt)
			})

			t.Run("DEL without portMappings leaves the node as it was, twice", func(t *testing.T) {
				att.CapabilityArgs = nil
				mustDel(t, rtm, list, att)
				mustDel(t, rtm, list, att)
				if after := sb.Snapshot(t); after != before {
					t.Fatalf("node after DEL:\n%s\nbefore:\n%s", after, before)
				}
			})
		})
	}
}

// TestWholeChainCnitool is the chain as a user runs it by hand: cnitool add
// with CAP_ARGS, a lan client through the hostPort, cnitool del without.
func TestWholeChainCnitool(t *testing.T) {
	sb := sandbox.New(t)
	sb.EnableForwarding(t)
	dir := t.TempDir()
	list := sb.Localize(t, sandbox.LoadList(t, wholeChain))
	if err := os.WriteFile(filepath.Join(dir, wholeChain), list.Bytes, 0o644); err != nil {
		t.Fatal(err)
	}
	pod := sb.NewPod(t)
	caps := `CAP_ARGS={"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}`

	warm := sb.NewPod(t)
	for _, cmd := range []string{"add", "del"} {
		if out, err := sb.Cnitool(t, dir, cmd, "macvlan-hostport", warm, caps); err != nil {
			t.Fatalf("cnitool %s (warm-up): %v\n%s", cmd, err, out)
		}
	}
	before := sb.Snapshot(t)

	out, err := sb.Cnitool(t, dir, "add", "macvlan-hostport", pod, caps)
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = sb.Cnitool(t, dir, "del", "macvlan-hostport", pod) })
	if !strings.Contains(out, podV4.String()) || !strings.Contains(out, podV6.String()) {
		t.Fatalf("result lacks the pod's addresses:\n%s", out)
	}
	sandbox.WaitDAD(t, pod)
	sandbox.ServeTCP(t, pod, 80, "hello from the pod")
	for _, to := range []netip.AddrPort{
		netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), 8080), netip.AddrPortFrom(sandbox.NodeIPv6.Addr(), 8080),
	} {
		if got, err := sandbox.DialTCP(sb.LAN, to); err != nil || got != "hello from the pod" {
			t.Fatalf("lan -> %s: %q, %v", to, got, err)
		}
	}
	if out, err := sb.Cnitool(t, dir, "del", "macvlan-hostport", pod); err != nil {
		t.Fatalf("cnitool del without CAP_ARGS: %v\n%s", err, out)
	}
	if after := sb.Snapshot(t); after != before {
		t.Fatalf("node after cnitool del:\n%s\nbefore:\n%s", after, before)
	}
}

// TestSecondAttachment is a Multus-style pod: the same pod on two networks
// of the whole chain (eth0 and net1), deleted in either order; each
// network's routes and rules are its own. Both interfaces sit on one wire,
// so the pod answers ARP for either address on both (ARP flux): the node's
// neighbour entry for the kept address may name the deleted interface's MAC,
// which macvlan-host-route's DEL forgets (without that this test failed
// about one run in two).
func TestSecondAttachment(t *testing.T) {
	for _, order := range []string{"eth0 first", "net1 first"} {
		t.Run(order, func(t *testing.T) {
			sb := sandbox.New(t)
			sb.EnableForwarding(t)
			rtm := sb.Runtime(t)
			first := wholeChainList(t, sb, "")
			second := sandbox.ListFromJSON(t, strings.NewReplacer(
				`"name":"macvlan-hostport"`, `"name":"macvlan-hostport-b"`,
				"192.168.50.20", "192.168.51.20", "fd00:c0a8::50:20", "fd00:c0a8::51:20").Replace(string(first.Bytes)))
			ports := func(p int) map[string]any {
				return map[string]any{"portMappings": []map[string]any{{"hostPort": p, "containerPort": 80, "protocol": "tcp"}}}
			}
			// Warm up both networks: what stays by design appears now.
			warm := sb.NewPod(t)
			for i, list := range []*libcni.NetworkConfigList{first, second} {
				att := sandbox.Attachment(warm, "warm", []string{"eth0", "net1"}[i])
				att.CapabilityArgs = ports(8080 + i)
				mustAdd(t, rtm, list, att)
				mustDel(t, rtm, list, att)
			}
			before := sb.Snapshot(t)

			pod := sb.NewPod(t)
			atts := []*libcni.RuntimeConf{sandbox.Attachment(pod, "multi", "eth0"), sandbox.Attachment(pod, "multi", "net1")}
			lists := []*libcni.NetworkConfigList{first, second}
			for i := range atts {
				atts[i].CapabilityArgs = ports(8080 + i)
				mustAdd(t, rtm, lists[i], atts[i])
				t.Cleanup(func() { _ = rtm.Del(lists[i], atts[i]) })
			}
			sandbox.WaitDAD(t, pod)
			sandbox.ServeTCP(t, pod, 80, "hello from the pod")
			reach := func(port uint16) error {
				got, err := sandbox.DialTCP(sb.LAN, netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), port))
				if err == nil && got != "hello from the pod" {
					err = fmt.Errorf("got %q", got)
				}
				return err
			}
			for i := range atts {
				if err := reach(uint16(8080 + i)); err != nil {
					t.Fatalf("hostPort %d: %v", 8080+i, err)
				}
			}
			gone, kept := 0, 1
			if order == "net1 first" {
				gone, kept = 1, 0
			}
			atts[gone].CapabilityArgs = nil
			mustDel(t, rtm, lists[gone], atts[gone])
			if err := reach(uint16(8080 + kept)); err != nil {
				t.Fatalf("the kept attachment's hostPort %d after the other's DEL: %v", 8080+kept, err)
			}
			if err := reach(uint16(8080 + gone)); err == nil {
				t.Fatalf("hostPort %d still answers after its attachment's DEL", 8080+gone)
			}
			if err := rtm.Check(lists[kept], atts[kept]); err != nil {
				t.Fatalf("CHECK of the kept attachment: %v", err)
			}
			atts[kept].CapabilityArgs = nil
			mustDel(t, rtm, lists[kept], atts[kept])
			if after := sb.Snapshot(t); after != before {
				t.Fatalf("node after both DELs:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
}
