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
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
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
	return sb
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
	for _, a := range addrs {
		// nodad: the tests use the IPv6 address at once.
		addr := &netlink.Addr{IPNet: ipNet(a)}
		if a.Addr().Is6() {
			addr.Flags = 0x02 // IFA_F_NODAD
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
