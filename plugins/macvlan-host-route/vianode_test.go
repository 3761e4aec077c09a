package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// viaNodeChain is macvlan + static-ipam (addresses per pod, from the ips
// capability) -> macvlan-host-route with viaNode: the cluster's Service
// CIDRs of both families and a node-local DNS address.
const viaNodeChain = `{"cniVersion":"1.1.0","name":"svc","plugins":[
	{"type":"macvlan","master":"eno1","mode":"bridge","capabilities":{"ips":true},
	 "ipam":{"type":"static-ipam","routes":[{"dst":"0.0.0.0/0","gw":"192.168.0.1"},{"dst":"::/0","gw":"fd00:c0a8::1"}]}},
	{"type":"macvlan-host-route","master":"eno1","viaNode":["10.96.0.0/12","fd00:10:96::/112","169.254.20.10/32"]EXTRA}]}`

var (
	nodeLocalDNS = netip.MustParseAddr("169.254.20.10")
	remote4      = netip.MustParseAddr("192.168.0.9") // a backend on another host of the lan
	remote6      = netip.MustParseAddr("fd00:c0a8::9")
)

// service is a ClusterIP and where kube-proxy-like rules send it.
type service struct {
	name string
	ip   netip.Addr
	to   netip.AddrPort // the backend
	// answeredByNode: the node itself is the backend; the connection never
	// leaves it and keeps the pod's source.
	answeredByNode bool
}

// kubeProxyRules writes, in the node's nat tables, what kube-proxy's
// iptables mode writes for services (DNAT in PREROUTING and OUTPUT) and,
// with masqOffCluster, its masquerading of sources outside the cluster CIDR
// (a local-traffic detector: --cluster-cidr 10.244.0.0/16).
func kubeProxyRules(t *testing.T, sb *sandbox.Sandbox, svcs []service, masqOffCluster bool) {
	t.Helper()
	for _, s := range svcs {
		cmd, cluster := "iptables", "10.244.0.0/16"
		if s.ip.Is6() {
			cmd, cluster = "ip6tables", "fd00:244::/56"
		}
		for _, proto := range []string{"tcp", "udp"} {
			for _, chain := range []string{"PREROUTING", "OUTPUT"} {
				sandbox.MustRun(t, sb.Node, cmd, "-t", "nat", "-A", chain, "-d", s.ip.String(), "-p", proto, "--dport", "80",
					"-j", "DNAT", "--to-destination", s.to.String())
			}
		}
		if masqOffCluster && !strings.Contains(sandbox.MustRun(t, sb.Node, cmd+"-save", "-t", "nat"), "KUBE-LIKE-MASQ") {
			sandbox.MustRun(t, sb.Node, cmd, "-t", "nat", "-I", "POSTROUTING", "-m", "conntrack", "--ctstate", "DNAT",
				"!", "-s", cluster, "-m", "comment", "--comment", "KUBE-LIKE-MASQ", "-j", "MASQUERADE")
		}
	}
}

// serveEcho answers every TCP connection and UDP datagram to port in netns
// with the client's address as the server saw it, until the test ends.
func serveEcho(t *testing.T, netns ns.NetNS, addr string, port int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := netns.Do(func(ns.NetNS) error {
		var err error
		hostPort := net.JoinHostPort(addr, strconv.Itoa(port))
		if ln, err = net.Listen("tcp", hostPort); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", hostPort)
		return err
	})
	if err != nil {
		t.Fatalf("serve %s:%d in %s: %v", addr, port, netns.Path(), err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			_, _ = c.Write([]byte(host))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(from.String())
			_, _ = pc.WriteTo([]byte(host), from)
		}
	}()
}

// askTCP and askUDP connect from netns to to and return the address the
// server saw. The UDP socket is connected, as a resolver's is: an answer
// from any other address than to is not received.
func askTCP(netns ns.NetNS, to netip.AddrPort) (string, error) { return sandbox.DialTCP(netns, to) }
func askUDP(netns ns.NetNS, to netip.AddrPort) (string, error) { return sandbox.DialUDP(netns, to) }

// TestServicesFromMacvlanPods: a macvlan pod reaches Services whose
// backends are on another host of the lan, in a macvlan pod of the same
// node, or the node itself, and node-local DNS, over IPv4 and IPv6, TCP and
// UDP, with either NAT backend, whether or not kube-proxy masquerades
// off-cluster sources; the node keeps the pod's source for what it answers
// itself. CHECK names what is missing; restore puts a flushed reply path
// back; DEL leaves the node as before.
func TestServicesFromMacvlanPods(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		for _, masq := range []bool{false, true} {
			name := backend + "/kube-proxy without a local detector"
			if masq {
				name = backend + "/kube-proxy masquerading off-cluster sources"
			}
			t.Run(name, func(t *testing.T) { servicesFromMacvlanPods(t, backend, masq) })
		}
	}
}

func servicesFromMacvlanPods(t *testing.T, backend string, masq bool) {
	sb := sandbox.New(t)
	sb.EnableForwarding(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, strings.Replace(viaNodeChain, "EXTRA", fmt.Sprintf(`,"backend":%q`, backend), 1)))
	add := func(id string, v4, v6 string) (*libcni.RuntimeConf, ns.NetNS, *current.Result) {
		t.Helper()
		pod := sb.NewPod(t)
		att := sandbox.Attachment(pod, id, "eth0")
		att.CapabilityArgs = map[string]any{"ips": []string{v4 + "/16", v6 + "/64"}}
		res, err := rtm.Add(list, att)
		if err != nil {
			t.Fatalf("ADD %s: %v", id, err)
		}
		t.Cleanup(func() { _ = rtm.Del(list, att) })
		r, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		return att, pod, r
	}
	// The node as a cluster has it before its first pod: kube-proxy's
	// rules, node-local DNS's address.
	node4, node6 := sandbox.NodeIPv4.Addr(), sandbox.NodeIPv6.Addr()
	svcs := []service{
		{"a backend on another host of the lan", netip.MustParseAddr("10.96.0.10"), netip.AddrPortFrom(remote4, 8080), false},
		{"a backend on another host of the lan, IPv6", netip.MustParseAddr("fd00:10:96::10"), netip.AddrPortFrom(remote6, 8080), false},
		{"a backend in a macvlan pod of this node", netip.MustParseAddr("10.96.0.11"), netip.MustParseAddrPort("192.168.61.41:8081"), false},
		{"a backend in a macvlan pod of this node, IPv6", netip.MustParseAddr("fd00:10:96::11"), netip.MustParseAddrPort("[fd00:c0a8::61:41]:8081"), false},
		{"a hostNetwork backend on this node", netip.MustParseAddr("10.96.0.12"), netip.AddrPortFrom(node4, 9000), true},
		{"a hostNetwork backend on this node, IPv6", netip.MustParseAddr("fd00:10:96::12"), netip.AddrPortFrom(node6, 9000), true},
	}
	kubeProxyRules(t, sb, svcs, masq)
	sandbox.MustRun(t, sb.Node, "ip", "addr", "add", nodeLocalDNS.String()+"/32", "dev", "lo")
	// What stays by design (the sub-device, the shared chain or table)
	// comes with a first pod; the node must return to what it is then.
	warm, _, _ := add("warm", "192.168.61.90", "fd00:c0a8::61:90")
	if err := rtm.Del(list, warm); err != nil {
		t.Fatal(err)
	}
	before := sb.Snapshot(t)

	client, clientNS, res := add("client", "192.168.61.40", "fd00:c0a8::61:40")
	_, backendNS, _ := add("backend", "192.168.61.41", "fd00:c0a8::61:41")
	t.Run("the result carries the pod's routes through the node", func(t *testing.T) {
		var got []string
		for _, r := range res.Routes {
			got = append(got, r.Dst.String()+" via "+r.GW.String())
		}
		for _, want := range []string{"10.96.0.0/12 via 192.168.0.5", "169.254.20.10/32 via 192.168.0.5", "fd00:10:96::/112 via fd00:c0a8::5"} {
			if !strings.Contains(strings.Join(got, "; "), want) {
				t.Errorf("result routes %v lack %q", got, want)
			}
		}
	})

	for _, a := range []netip.Addr{remote4, remote6} {
		sandbox.MustRun(t, sb.LAN, "ip", "addr", "add", netip.PrefixFrom(a, a.BitLen()).String(), "dev", "eth0", "nodad")
	}
	// Bound to the backend's addresses, as a real server is: one on "::"
	// would answer UDP from the lan's primary address instead.
	serveEcho(t, sb.LAN, remote4.String(), 8080)
	serveEcho(t, sb.LAN, remote6.String(), 8080)
	serveEcho(t, backendNS, "::", 8081)
	serveEcho(t, sb.Node, "::", 9000)
	serveEcho(t, sb.Node, nodeLocalDNS.String(), 53)
	sandbox.WaitDAD(t, clientNS)
	sandbox.WaitDAD(t, backendNS)
	sandbox.WaitDAD(t, sb.Node)
	sandbox.WaitDAD(t, sb.LAN)
	podSource := map[bool]string{true: "192.168.61.40", false: "fd00:c0a8::61:40"}
	nodeSource := map[bool]string{true: node4.String(), false: node6.String()}

	works := func(t *testing.T) {
		t.Helper()
		for _, s := range svcs {
			for _, proto := range []string{"tcp", "udp"} {
				to := netip.AddrPortFrom(s.ip, 80)
				ask := askTCP
				if proto == "udp" {
					ask = askUDP
				}
				saw, err := ask(clientNS, to)
				if err != nil {
					t.Errorf("%s %s (%s): %v", proto, s.name, to, err)
					continue
				}
				// What the node answers keeps the pod's source; what it
				// forwards comes from the node (ours or kube-proxy's SNAT).
				want := nodeSource[s.ip.Is4()]
				if s.answeredByNode {
					want = podSource[s.ip.Is4()]
				}
				if saw != want {
					t.Errorf("%s %s (%s): the backend saw %s, want %s", proto, s.name, to, saw, want)
				}
			}
		}
		for _, proto := range []string{"tcp", "udp"} {
			to := netip.AddrPortFrom(nodeLocalDNS, 53)
			ask := askTCP
			if proto == "udp" {
				ask = askUDP
			}
			if saw, err := ask(clientNS, to); err != nil || saw != podSource[true] {
				t.Errorf("%s node-local DNS %s: saw %q, %v; want the pod's own address", proto, to, saw, err)
			}
		}
	}
	t.Run("Services and node-local DNS answer", works)

	t.Run("CHECK passes, and names a missing route, neighbour entry or reply path", func(t *testing.T) {
		if err := rtm.Check(list, client); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		// macvlan's CHECK, first in the chain, already checks the routes of
		// the result, which carries ours.
		sandbox.MustRun(t, clientNS, "ip", "route", "del", "10.96.0.0/12")
		if err := rtm.Check(list, client); err == nil || !strings.Contains(err.Error(), "10.96.0.0") {
			t.Errorf("CHECK without the pod's route = %v", err)
		}
		sandbox.MustRun(t, clientNS, "ip", "route", "add", "10.96.0.0/12", "via", "192.168.0.5", "dev", "eth0", "onlink")
		sandbox.MustRun(t, clientNS, "ip", "neigh", "del", "192.168.0.5", "dev", "eth0")
		if err := rtm.Check(list, client); err == nil || !strings.Contains(err.Error(), "neighbour entry 192.168.0.5") {
			t.Errorf("CHECK without the neighbour entry = %v", err)
		}
		sandbox.MustRun(t, clientNS, "ip", "neigh", "replace", "192.168.0.5", "lladdr", subDeviceMAC(t, sb), "dev", "eth0", "nud", "permanent")
		if err := rtm.Check(list, client); err != nil {
			t.Fatalf("CHECK with all put back: %v", err)
		}
	})
	for i, how := range replyPathTakers[backend] {
		t.Run("a firewall reload takes the reply path ("+how.name+"); restore puts it back", func(t *testing.T) {
			how.take(t, sb)
			if err := rtm.Check(list, client); err == nil || !strings.Contains(err.Error(), "reply path") {
				t.Errorf("CHECK with the reply paths taken = %v", err)
			}
			out, err := sandbox.Run(sb.Node, nil, sandbox.Plugins(t)+"/macvlan-host-route", "restore", "-state-dir", sb.Dir+"/state/macvlan-host-route")
			if err != nil {
				t.Fatalf("restore: %v\n%s", err, out)
			}
			if err := rtm.Check(list, client); err != nil {
				t.Errorf("CHECK after restore: %v", err)
			}
			works(t)
		})
		t.Run("a firewall reload takes the reply path ("+how.name+"); a new pod's ADD has a working one", func(t *testing.T) {
			how.take(t, sb)
			late, _, _ := add(fmt.Sprintf("late-%d", i), fmt.Sprintf("192.168.61.%d", 50+i), fmt.Sprintf("fd00:c0a8::61:%d", 50+i))
			if err := rtm.Check(list, late); err != nil {
				t.Errorf("CHECK of the pod added after the reload: %v", err)
			}
			if err := rtm.Del(list, late); err != nil {
				t.Fatal(err)
			}
			out, err := sandbox.Run(sb.Node, nil, sandbox.Plugins(t)+"/macvlan-host-route", "restore", "-state-dir", sb.Dir+"/state/macvlan-host-route")
			if err != nil {
				t.Fatalf("restore: %v\n%s", err, out)
			}
		})
	}
	t.Run("DEL leaves the node as before the pods", func(t *testing.T) {
		for _, id := range []string{"client", "backend"} {
			att := sandbox.Attachment(clientNS, id, "eth0")
			if id == "backend" {
				att = sandbox.Attachment(backendNS, id, "eth0")
			}
			if err := rtm.Del(list, att); err != nil {
				t.Fatalf("DEL %s: %v", id, err)
			}
		}
		if after := sb.Snapshot(t); after != before {
			t.Fatalf("the node after DEL:\n%s\nbefore:\n%s", after, before)
		}
	})
}

// subDeviceMAC is eno1.host's link-layer address in the node.
func subDeviceMAC(t *testing.T, sb *sandbox.Sandbox) string {
	t.Helper()
	f := strings.Fields(sandbox.MustRun(t, sb.Node, "ip", "-br", "link", "show", "eno1.host"))
	if len(f) < 3 {
		t.Fatalf("eno1.host: %v", f)
	}
	return f[2]
}

// replyPathTakers are the ways a firewall reload takes the reply paths, per
// backend.
var replyPathTakers = map[string][]struct {
	name string
	take func(t *testing.T, sb *sandbox.Sandbox)
}{
	"iptables": {
		{"the shared chain flushed", func(t *testing.T, sb *sandbox.Sandbox) {
			for _, cmd := range []string{"iptables", "ip6tables"} {
				sandbox.MustRun(t, sb.Node, cmd, "-t", "nat", "-F", "CNI-LITE-VIANODE")
			}
		}},
		// What iptables -t nat -F does to ours (it would take the test's
		// kube-proxy rules too): the chain stays, empty, and nothing jumps
		// to it.
		{"the shared chain and POSTROUTING flushed", func(t *testing.T, sb *sandbox.Sandbox) {
			for _, cmd := range []string{"iptables", "ip6tables"} {
				sandbox.MustRun(t, sb.Node, cmd, "-t", "nat", "-F", "CNI-LITE-VIANODE")
				sandbox.MustRun(t, sb.Node, cmd, "-t", "nat", "-D", "POSTROUTING", "-j", "CNI-LITE-VIANODE")
			}
		}},
	},
	"nftables": {
		{"our tables deleted", func(t *testing.T, sb *sandbox.Sandbox) {
			nftDo(t, sb, func(c *nftables.Conn, fam nftables.TableFamily) {
				c.DelTable(&nftables.Table{Name: "cnichain-vianode", Family: fam})
			})
		}},
		{"our chains flushed, the maps kept", func(t *testing.T, sb *sandbox.Sandbox) {
			nftDo(t, sb, func(c *nftables.Conn, fam nftables.TableFamily) {
				c.FlushChain(&nftables.Chain{Name: "postrouting", Table: &nftables.Table{Name: "cnichain-vianode", Family: fam}})
			})
		}},
	},
}

// nftDo runs do for both families in one nftables transaction in the node.
func nftDo(t *testing.T, sb *sandbox.Sandbox, do func(c *nftables.Conn, fam nftables.TableFamily)) {
	t.Helper()
	err := sb.Node.Do(func(ns.NetNS) error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
			do(c, fam)
		}
		return c.Flush()
	})
	if err != nil {
		t.Fatalf("nftables in the node: %v", err)
	}
}

// TestViaNodeRefusals: input that depends on the pod is refused with the
// key and value named, and nothing is installed.
func TestViaNodeRefusals(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	for _, tt := range []struct {
		name, extra, ips, want string
	}{
		{"a CIDR overlapping the pod's subnet", `,"viaNode":["192.168.128.0/17"]`, `"192.168.61.50/16"`, "viaNode[0]"},
		{"a family the pod has no address in", `,"viaNode":["fd00:10:96::/112"]`, `"192.168.61.51/16"`, "viaNode[0]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			text := strings.NewReplacer(`,"viaNode":["10.96.0.0/12","fd00:10:96::/112","169.254.20.10/32"]EXTRA`, tt.extra,
				`"svc"`, `"svc-bad"`, `,{"dst":"::/0","gw":"fd00:c0a8::1"}`, "").Replace(viaNodeChain)
			list := sb.Localize(t, sandbox.ListFromJSON(t, text))
			pod := sb.NewPod(t)
			att := sandbox.Attachment(pod, "bad", "eth0")
			att.CapabilityArgs = map[string]any{"ips": []string{strings.Trim(tt.ips, `"`)}}
			before := sb.Snapshot(t)
			_, err := rtm.Add(list, att)
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, tt.want) {
				t.Fatalf("ADD = %v, want code 7 naming %s", err, tt.want)
			}
			if err := rtm.Del(list, att); err != nil { // the runtime's DEL after a failed ADD: macvlan's link
				t.Fatal(err)
			}
			if after := sb.Snapshot(t); after != before {
				t.Fatalf("the refused ADD changed the node:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
}

// TestWithoutTheReplyPath shows what the reply path is for: with
// replyViaNode false and a kube-proxy that does not masquerade the pod's
// connections, a Service whose backend is on another host of the lan does
// not answer (the backend answers the pod straight, from its own address),
// while node-local DNS, answered by the node, does.
func TestWithoutTheReplyPath(t *testing.T) {
	sb := sandbox.New(t)
	sb.EnableForwarding(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, strings.Replace(viaNodeChain, "EXTRA", `,"replyViaNode":false`, 1)))
	kubeProxyRules(t, sb, []service{{"remote", netip.MustParseAddr("10.96.0.10"), netip.AddrPortFrom(remote4, 8080), false}}, false)
	sandbox.MustRun(t, sb.Node, "ip", "addr", "add", nodeLocalDNS.String()+"/32", "dev", "lo")
	sandbox.MustRun(t, sb.LAN, "ip", "addr", "add", remote4.String()+"/32", "dev", "eth0")
	serveEcho(t, sb.LAN, remote4.String(), 8080)
	serveEcho(t, sb.Node, nodeLocalDNS.String(), 53)
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "no-reply-path", "eth0")
	att.CapabilityArgs = map[string]any{"ips": []string{"192.168.61.60/16", "fd00:c0a8::61:60/64"}}
	if _, err := rtm.Add(list, att); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	if saw, err := askUDP(pod, netip.AddrPortFrom(nodeLocalDNS, 53)); err != nil || saw != "192.168.61.60" {
		t.Errorf("node-local DNS: %q, %v", saw, err)
	}
	if saw, err := askUDP(pod, netip.MustParseAddrPort("10.96.0.10:80")); err == nil {
		t.Errorf("the lan backend answered through the Service without a reply path (it saw %s): the test proves nothing", saw)
	}
	if saw, err := askTCP(pod, netip.MustParseAddrPort("10.96.0.10:80")); err == nil && saw != "" {
		t.Errorf("the lan backend answered TCP through the Service without a reply path (it saw %s)", saw)
	}
}

// TestOneStateDirWithPortmapLite: macvlan-host-route with viaNode and
// portmap-lite may share a stateDir (their keys allow it): each keeps its
// own record of the attachment, CHECK reads its own, GC of a valid
// attachment keeps both, and DEL leaves the node as it was, reply path,
// pod routes and DNAT rules gone.
func TestOneStateDirWithPortmapLite(t *testing.T) {
	sb := sandbox.New(t)
	sb.EnableForwarding(t)
	rtm := sb.Runtime(t)
	text := strings.Replace(viaNodeChain, "EXTRA}]}", `},{"type":"portmap-lite","capabilities":{"portMappings":true}}]}`, 1)
	shared := filepath.Join(sb.Dir, "state", "shared")
	local := string(sb.Localize(t, sandbox.ListFromJSON(t, text)).Bytes)
	for _, own := range []string{"macvlan-host-route", "portmap-lite"} {
		local = strings.ReplaceAll(local, filepath.Join(sb.Dir, "state", own), shared)
	}
	list := sandbox.ListFromJSON(t, local)
	add := func(id, v4, v6 string) *libcni.RuntimeConf {
		t.Helper()
		att := sandbox.Attachment(sb.NewPod(t), id, "eth0")
		att.CapabilityArgs = map[string]any{"ips": []string{v4 + "/16", v6 + "/64"},
			"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}
		if _, err := rtm.Add(list, att); err != nil {
			t.Fatalf("ADD %s: %v", id, err)
		}
		t.Cleanup(func() { _ = rtm.Del(list, att) })
		return att
	}
	// What stays by design (the sub-device, the shared chains) comes with
	// a first pod.
	if err := rtm.Del(list, add("warm", "192.168.62.90", "fd00:c0a8::62:90")); err != nil {
		t.Fatal(err)
	}
	before := sb.Snapshot(t)
	att := add("both", "192.168.62.40", "fd00:c0a8::62:40")
	entries, err := os.ReadDir(shared)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	// Two host routes' records, viaNode's and portmap-lite's, and the
	// sub-device's answers.
	if len(names) != 5 {
		t.Errorf("records in the shared stateDir: %v; want one per host route, viaNode's, portmap-lite's and the answers", names)
	}
	if err := rtm.Check(list, att); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := rtm.GC(list, []types.GCAttachment{{ContainerID: att.ContainerID, IfName: att.IfName}}); err != nil {
		t.Fatalf("GC with the attachment valid: %v", err)
	}
	if err := rtm.Check(list, att); err != nil {
		t.Fatalf("CHECK after a GC that kept it: %v", err)
	}
	if err := rtm.Del(list, att); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if after := sb.Snapshot(t); after != before {
		t.Fatalf("the node after DEL:\n%s\nbefore:\n%s", after, before)
	}
}

// TestAReusedPodAddress: a container whose DEL has not come yet leaves its
// address to a new one (kubelet's DEL comes late, host-local or an IPAM
// hands the address on): the new one's ADD gets a reply path of its own
// and CHECK passes, also after a restore; the old one's late DEL leaves the
// new one's alone; its DEL then leaves the node as it was. Both backends.
func TestAReusedPodAddress(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) {
			sb := sandbox.New(t)
			sb.EnableForwarding(t)
			rtm := sb.Runtime(t)
			list := sb.Localize(t, sandbox.ListFromJSON(t, strings.Replace(viaNodeChain, "EXTRA", fmt.Sprintf(`,"backend":%q`, backend), 1)))
			add := func(id string) *libcni.RuntimeConf {
				t.Helper()
				att := sandbox.Attachment(sb.NewPod(t), id, "eth0")
				att.CapabilityArgs = map[string]any{"ips": []string{"192.168.63.40/16", "fd00:c0a8::63:40/64"}}
				if _, err := rtm.Add(list, att); err != nil {
					t.Fatalf("ADD %s: %v", id, err)
				}
				t.Cleanup(func() { _ = rtm.Del(list, att) })
				return att
			}
			if err := rtm.Del(list, add("warm")); err != nil {
				t.Fatal(err)
			}
			before := sb.Snapshot(t)
			old := add("old")
			reused := add("reused")
			if err := rtm.Check(list, reused); err != nil {
				t.Fatalf("CHECK of the container given the old one's address: %v", err)
			}
			// A restore meanwhile (the old one's record and netns are still
			// there) leaves the address's reply path to the new one.
			if out, err := sandbox.Run(sb.Node, nil, sandbox.Plugins(t)+"/macvlan-host-route", "restore", "-state-dir", sb.Dir+"/state/macvlan-host-route"); err != nil {
				t.Fatalf("restore: %v\n%s", err, out)
			}
			if err := rtm.Check(list, reused); err != nil {
				t.Fatalf("CHECK of the new container after a restore: %v", err)
			}
			if err := rtm.Del(list, old); err != nil {
				t.Fatalf("the old container's late DEL: %v", err)
			}
			if err := rtm.Check(list, reused); err != nil {
				t.Fatalf("CHECK of the new container after the old one's late DEL: %v", err)
			}
			if err := rtm.Del(list, reused); err != nil {
				t.Fatal(err)
			}
			if after := sb.Snapshot(t); after != before {
				t.Fatalf("the node after both DELs:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
}
