// Package sandbox builds throw-away network topologies for tests: a "node"
// namespace with an uplink veth named like a NIC (eno1), a "lan" namespace
// at its other end acting as an outside host, and pod namespaces. Plugins
// run inside the node namespace, never in the machine's own; everything is
// removed by t.Cleanup, on success and on failure.
package sandbox

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The addresses of the topology. They mirror the source documents: the node
// is 192.168.0.5 on eno1, the LAN peer is the gateway 192.168.0.1.
var (
	NodeIPv4 = netip.MustParsePrefix("192.168.0.5/16")
	LANIPv4  = netip.MustParsePrefix("192.168.0.1/16")
	NodeIPv6 = netip.MustParsePrefix("fd00:c0a8::5/64")
	LANIPv6  = netip.MustParsePrefix("fd00:c0a8::1/64")
)

// Uplink is the name of the node's NIC, as in the source documents.
const Uplink = "eno1"

// Sandbox is one topology. Dir holds its runtime state (libcni cache,
// host-local data, a private /var/lib/cni for cnitool).
type Sandbox struct {
	Node ns.NetNS
	LAN  ns.NetNS
	Dir  string
}

// RequireRoot fails the test unless it runs as root, the only way kernel
// effects can be tested for real. CNICHAIN_SKIP_PRIVILEGED=1 skips instead,
// for a quick look at the pure tests on a laptop.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CNICHAIN_SKIP_PRIVILEGED") == "1" {
		t.Skip("needs root (CNICHAIN_SKIP_PRIVILEGED=1)")
	}
	t.Fatal("this test creates network namespaces and must run as root (or set CNICHAIN_SKIP_PRIVILEGED=1 to skip it)")
}

// New builds node and lan namespaces joined by a veth (eno1 in the node,
// eth0 in the lan), both with IPv4 and IPv6 addresses and up.
func New(t testing.TB) *Sandbox {
	t.Helper()
	RequireRoot(t)
	sb := &Sandbox{Node: NewNS(t), LAN: NewNS(t), Dir: t.TempDir()}
	err := sb.Node.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: Uplink},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(int(sb.LAN.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", Uplink, err)
		}
		return configure(Uplink, NodeIPv4, NodeIPv6)
	})
	if err != nil {
		t.Fatalf("sandbox node: %v", err)
	}
	if err := sb.LAN.Do(func(ns.NetNS) error { return configure("eth0", LANIPv4, LANIPv6) }); err != nil {
		t.Fatalf("sandbox lan: %v", err)
	}
	// The kernel adds each end's link-local address, and runs DAD on it,
	// some time after the carrier comes up: wait, so that a snapshot taken
	// now is the one taken later.
	for _, end := range []struct {
		netns ns.NetNS
		link  string
	}{{sb.Node, Uplink}, {sb.LAN, "eth0"}} {
		if err := end.netns.Do(func(ns.NetNS) error { return waitLinkLocal(end.link) }); err != nil {
			t.Fatalf("sandbox: %v", err)
		}
	}
	return sb
}

// waitLinkLocal waits (up to 10s) for name's IPv6 link-local address to be
// there and no longer tentative.
func waitLinkLocal(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				return nil
			}
		}
	}
	return fmt.Errorf("%s: no settled IPv6 link-local address after 10s", name)
}

// NewNS creates an empty network namespace with loopback up, removed when
// the test ends.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	RequireRoot(t)
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		netns.Close()
		if err := testutils.UnmountNS(netns); err != nil {
			t.Errorf("remove netns %s: %v", netns.Path(), err)
		}
	})
	if err := netns.Do(func(ns.NetNS) error { return linkUp("lo") }); err != nil {
		t.Fatalf("netns %s: %v", netns.Path(), err)
	}
	return netns
}

// NewPod creates a pod namespace (empty but for loopback).
func (sb *Sandbox) NewPod(t testing.TB) ns.NetNS {
	t.Helper()
	return NewNS(t)
}

func configure(name string, addrs ...netip.Prefix) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	// No DAD on the uplinks (the link-local address included): the tests
	// use them at once, and nothing else on this wire can collide.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/dad_transmits", []byte("0"), 0o644); err != nil {
		return err
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: ipNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add %s to %s: %w", a, name, err)
		}
	}
	return netlink.LinkSetUp(link)
}

func linkUp(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(link)
}

// EnableForwarding turns IPv4 and IPv6 forwarding on in the node, as a
// Kubernetes node has them: a hostPort reached from another host is a
// forwarded packet. (bridge with isGateway turns IPv4 on by itself; nothing
// in a macvlan chain does, as no plugin should flip it for a whole node.)
func (sb *Sandbox) EnableForwarding(t testing.TB) {
	t.Helper()
	err := sb.Node.Do(func(ns.NetNS) error {
		for _, path := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("node forwarding: %v", err)
	}
}

// AddVLAN puts VLAN id on the wire between node and lan: eno1.<id> in the
// node with nodeAddr, eth0.<id> in the lan with lanAddr, both up. It
// returns the node's link name.
func (sb *Sandbox) AddVLAN(t testing.TB, id int, nodeAddr, lanAddr netip.Prefix) string {
	t.Helper()
	for _, end := range []struct {
		netns  ns.NetNS
		parent string
		addr   netip.Prefix
	}{{sb.Node, Uplink, nodeAddr}, {sb.LAN, "eth0", lanAddr}} {
		name := fmt.Sprintf("%s.%d", end.parent, id)
		MustRun(t, end.netns, "ip", "link", "add", "link", end.parent, "name", name, "type", "vlan", "id", fmt.Sprint(id))
		MustRun(t, end.netns, "ip", "addr", "add", end.addr.String(), "dev", name, "nodad")
		MustRun(t, end.netns, "ip", "link", "set", name, "up")
	}
	return fmt.Sprintf("%s.%d", Uplink, id)
}

// AddUplink adds a second wire between node and lan: a veth with name in
// the node (nodeAddr) and lanName in the lan (lanAddr), both up.
func (sb *Sandbox) AddUplink(t testing.TB, name, lanName string, nodeAddr, lanAddr netip.Prefix) {
	t.Helper()
	MustRun(t, sb.Node, "ip", "link", "add", name, "type", "veth", "peer", "name", lanName, "netns", sb.LAN.Path())
	for _, end := range []struct {
		netns ns.NetNS
		link  string
		addr  netip.Prefix
	}{{sb.Node, name, nodeAddr}, {sb.LAN, lanName, lanAddr}} {
		MustRun(t, end.netns, "ip", "addr", "add", end.addr.String(), "dev", end.link, "nodad")
		MustRun(t, end.netns, "ip", "link", "set", end.link, "up")
	}
}

// RequireLinkKind skips the test when the kernel cannot make links of kind
// (vlan, ipvlan, dummy: some kernels are built without them), saying so.
func RequireLinkKind(t testing.TB, kind string, args ...string) {
	t.Helper()
	probe := NewNS(t)
	cmd := append([]string{"link", "add", "probe0", "type", kind}, args...)
	if kind == "vlan" || kind == "ipvlan" || kind == "macvlan" {
		MustRun(t, probe, "ip", "link", "add", "probe-parent", "type", "veth", "peer", "name", "probe-peer")
		cmd = append([]string{"link", "add", "link", "probe-parent", "probe0", "type", kind}, args...)
	}
	if out, err := Run(probe, nil, "ip", cmd...); err != nil {
		t.Skipf("this kernel cannot make a %s link (%v: %s); the test needs one", kind, err, strings.TrimSpace(out))
	}
}
