package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// inNode runs fn in a fresh namespace holding an up uplink "eno1" (a veth:
// some kernels here lack the dummy driver).
func inNode(t *testing.T, fn func(t *testing.T)) {
	t.Helper()
	node := sandbox.NewNS(t)
	err := node.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "eno1"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "peer0"}); err != nil {
			return err
		}
		link, err := netlink.LinkByName("eno1")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		fn(t)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestEnsureMacvlanBridge(t *testing.T) {
	t.Run("creates it up, in bridge mode, with the MTU and MAC asked for", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			mac, _ := net.ParseMAC("02:42:ac:11:00:07")
			link, err := EnsureMacvlanBridge("eno1.host", "eno1", 1400, func() net.HardwareAddr { return mac })
			if err != nil {
				t.Fatal(err)
			}
			got, _ := netlink.LinkByName("eno1.host")
			mv, ok := got.(*netlink.Macvlan)
			if !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE || mv.MTU != 1400 || mv.OperState == netlink.OperDown || got.Attrs().Index != link.Attrs().Index {
				t.Fatalf("link = %+v, want an up bridge-mode macvlan with MTU 1400", got)
			}
			if got.Attrs().HardwareAddr.String() != mac.String() {
				t.Fatalf("MAC = %s, want %s", got.Attrs().HardwareAddr, mac)
			}
		})
	})
	t.Run("answers ARP only for askers routed through it, also one made by an earlier release", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			sandbox.MustRunHere(t, "ip", "link", "add", "eno1.host", "link", "eno1", "type", "macvlan", "mode", "bridge")
			if _, err := EnsureMacvlanBridge("eno1.host", "eno1", 0, nil); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile("/proc/sys/net/ipv4/conf/eno1.host/arp_filter"); err != nil || strings.TrimSpace(string(b)) != "1" {
				t.Fatalf("arp_filter of eno1.host = %q, %v; want 1: it would answer the LAN's ARP for the node", b, err)
			}
		})
	})
	t.Run("reuses an existing one, also when many race to create it", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			node, err := ns.GetCurrentNS()
			if err != nil {
				t.Fatal(err)
			}
			defer node.Close()
			var wg sync.WaitGroup
			errs := make([]error, 8)
			for i := range errs {
				wg.Add(1)
				// Each goroutine must enter the namespace itself.
				go func() {
					defer wg.Done()
					errs[i] = node.Do(func(ns.NetNS) error { _, err := EnsureMacvlanBridge("eno1.host", "eno1", 0, nil); return err })
				}()
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Fatalf("concurrent EnsureMacvlanBridge: %v", err)
				}
			}
			links, _ := netlink.LinkList()
			n := 0
			for _, l := range links {
				if l.Attrs().Name == "eno1.host" {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("%d links named eno1.host, want 1", n)
			}
		})
	})
	t.Run("refuses to take over a link of that name that is something else", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = "eno1.host"
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "peer1"}); err != nil {
				t.Fatal(err)
			}
			_, err := EnsureMacvlanBridge("eno1.host", "eno1", 0, nil)
			var conflict *ConflictError
			if !errors.As(err, &conflict) || !strings.Contains(err.Error(), "is a veth, not a macvlan") {
				t.Fatalf("err = %v, want a conflict naming the veth", err)
			}
		})
	})
	t.Run("refuses a macvlan in another mode", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			master, _ := netlink.LinkByName("eno1")
			attrs := netlink.NewLinkAttrs()
			attrs.Name, attrs.ParentIndex = "eno1.host", master.Attrs().Index
			if err := netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_VEPA}); err != nil {
				t.Fatal(err)
			}
			if _, err := EnsureMacvlanBridge("eno1.host", "eno1", 0, nil); err == nil || !strings.Contains(err.Error(), "not in bridge mode") {
				t.Fatalf("err = %v, want a conflict about the mode", err)
			}
		})
	})
	t.Run("a missing master is ErrNoMaster", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			if _, err := EnsureMacvlanBridge("eno9.host", "eno9", 0, nil); !errors.Is(err, ErrNoMaster) {
				t.Fatalf("err = %v, want ErrNoMaster", err)
			}
		})
	})
}

func TestHostRoutes(t *testing.T) {
	for _, ip := range []string{"192.168.1.20", "fd00:c0a8::20"} {
		t.Run(ip, func(t *testing.T) {
			inNode(t, func(t *testing.T) {
				addr := netip.MustParseAddr(ip)
				link, err := EnsureMacvlanBridge("eno1.host", "eno1", 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				mac, _ := net.ParseMAC("02:00:00:00:00:20")
				for i := 0; i < 2; i++ {
					if err := AddHostRoute(link, addr, netip.Addr{}, mac); err != nil {
						t.Fatalf("AddHostRoute #%d: %v", i+1, err)
					}
				}
				pinned := ip + " lladdr 02:00:00:00:00:20 PERMANENT"
				if out := sandbox.MustRunHere(t, "ip", "neigh", "show", "dev", "eno1.host"); !strings.Contains(out, pinned) {
					t.Fatalf("neighbours on eno1.host:\n%s\nwant %q: the node would ask for the pod in its own name on the wire", out, pinned)
				}
				other, _ := net.ParseMAC("02:00:00:00:00:21")
				if ok, err := IsPinned(link.Attrs().Index, addr, mac); !ok || err != nil {
					t.Fatalf("IsPinned = %v, %v", ok, err)
				}
				if ok, _ := IsPinned(link.Attrs().Index, addr, other); ok {
					t.Fatal("IsPinned to another MAC = true")
				}
				if ok, err := HasHostRoute(link.Attrs().Index, addr); !ok || err != nil {
					t.Fatalf("HasHostRoute = %v, %v", ok, err)
				}
				if got, _ := HostRoutes(link); len(got) != 1 || got[0] != addr {
					t.Fatalf("HostRoutes = %v, want [%s]", got, addr)
				}
				out := sandbox.MustRunHere(t, "ip", "route", "show", "table", "all", "proto", "197")
				if !strings.Contains(out, ip+" dev eno1.host") {
					t.Fatalf("kernel routes:\n%s\nwant %s dev eno1.host", out, ip)
				}
				for i := 0; i < 2; i++ {
					if err := DelHostRoute(link.Attrs().Index, addr); err != nil {
						t.Fatalf("DelHostRoute #%d: %v", i+1, err)
					}
				}
				if got, _ := HostRoutes(link); len(got) != 0 {
					t.Fatalf("HostRoutes after delete = %v", got)
				}
				if ok, err := IsPinned(link.Attrs().Index, addr, mac); ok || err != nil {
					t.Fatalf("after delete IsPinned = %v, %v", ok, err)
				}
			})
		})
	}
	t.Run("a route to the address through another link is not overwritten", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			link, _ := EnsureMacvlanBridge("eno1.host", "eno1", 0, nil)
			master, _ := netlink.LinkByName("eno1")
			addr := netip.MustParseAddr("192.168.1.30")
			if err := netlink.RouteAdd(HostRoute(master.Attrs().Index, addr)); err != nil {
				t.Fatal(err)
			}
			if err := AddHostRoute(link, addr, netip.Addr{}, nil); err == nil || !strings.Contains(err.Error(), "through another link") {
				t.Fatalf("err = %v, want a refusal", err)
			}
		})
	})
	t.Run("a host address goes on without a prefix route", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			link, _ := EnsureMacvlanBridge("eno1.host", "eno1", 0, nil)
			for i := 0; i < 2; i++ {
				if err := EnsureAddress(link, netip.MustParsePrefix("fd00:c0a8::5/128")); err != nil {
					t.Fatal(err)
				}
			}
			out := sandbox.MustRunHere(t, "ip", "-6", "addr", "show", "dev", "eno1.host")
			if !strings.Contains(out, "fd00:c0a8::5/128") || !strings.Contains(out, "noprefixroute") {
				t.Fatalf("addresses:\n%s", out)
			}
		})
	})
	t.Run("a copy of the master's address keeps its prefix length, adds no route and goes again", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			link, _ := EnsureMacvlanBridge("eno1.host", "eno1", 0, nil)
			master, _ := netlink.LinkByName("eno1")
			for _, a := range []string{"192.168.0.5/16", "fd00:c0a8::5/64"} {
				sandbox.MustRunHere(t, "ip", "addr", "add", a, "dev", "eno1", "nodad")
			}
			global, err := GlobalAddresses(master)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(global) != "[192.168.0.5/16 fd00:c0a8::5/64]" {
				t.Fatalf("GlobalAddresses(eno1) = %v, want the two configured, no link-local", global)
			}
			routesBefore := sandbox.MustRunHere(t, "ip", "-6", "route", "show", "table", "main")
			for _, p := range global {
				if err := EnsureAddress(link, p); err != nil {
					t.Fatal(err)
				}
			}
			if got, _ := GlobalAddresses(link); fmt.Sprint(got) != fmt.Sprint(global) {
				t.Fatalf("GlobalAddresses(eno1.host) = %v, want %v", got, global)
			}
			if after := sandbox.MustRunHere(t, "ip", "-6", "route", "show", "table", "main"); after != routesBefore {
				t.Fatalf("main table changed:\n%s\nwas:\n%s", after, routesBefore)
			}
			for i := 0; i < 2; i++ {
				for _, p := range global {
					if err := DelAddress(link, p); err != nil {
						t.Fatalf("DelAddress #%d: %v", i+1, err)
					}
				}
			}
			if got, _ := GlobalAddresses(link); len(got) != 0 {
				t.Fatalf("left on eno1.host: %v", got)
			}
			if got, _ := GlobalAddresses(master); fmt.Sprint(got) != fmt.Sprint(global) {
				t.Fatalf("the master lost addresses: %v", got)
			}
		})
	})
	t.Run("arp_ignore is the greater of all and the link's", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			EnsureMacvlanBridge("eno1.host", "eno1", 0, nil)
			for _, c := range []struct {
				all, dev string
				want     int
			}{{"0", "0", 0}, {"0", "1", 1}, {"2", "1", 2}} {
				os.WriteFile("/proc/sys/net/ipv4/conf/all/arp_ignore", []byte(c.all), 0o644)
				os.WriteFile("/proc/sys/net/ipv4/conf/eno1.host/arp_ignore", []byte(c.dev), 0o644)
				if got, err := ARPIgnore("eno1.host"); err != nil || got != c.want {
					t.Errorf("all=%s dev=%s: ARPIgnore = %d, %v; want %d", c.all, c.dev, got, err, c.want)
				}
			}
		})
	})
	t.Run("neighbours of a pod interface that goes are forgotten, by address or by MAC", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			link, _ := EnsureMacvlanBridge("eno1.host", "eno1", 0, nil)
			for _, n := range [][]string{
				{"192.168.1.20", "02:00:00:00:00:20"}, {"192.168.1.21", "02:00:00:00:00:99"}, {"192.168.1.22", "02:00:00:00:00:22"},
			} {
				sandbox.MustRunHere(t, "ip", "neigh", "add", n[0], "lladdr", n[1], "dev", "eno1.host", "nud", "reachable")
			}
			gone, _ := net.ParseMAC("02:00:00:00:00:99")
			if err := ForgetNeighbours(link.Attrs().Index, []netip.Addr{netip.MustParseAddr("192.168.1.20")}, []net.HardwareAddr{gone}); err != nil {
				t.Fatal(err)
			}
			out := sandbox.MustRunHere(t, "ip", "neigh", "show", "dev", "eno1.host")
			if strings.Contains(out, "192.168.1.20 ") || strings.Contains(out, "192.168.1.21 ") || !strings.Contains(out, "192.168.1.22 ") {
				t.Fatalf("want only 192.168.1.22 left:\n%s", out)
			}
		})
	})
}

func TestPinInPod(t *testing.T) {
	pod := sandbox.NewNS(t)
	mac, _ := net.ParseMAC("02:00:00:00:00:05")
	addrs := []netip.Addr{netip.MustParseAddr("192.168.0.5"), netip.MustParseAddr("fd00:c0a8::5")}
	if err := pod.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "eth0"
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "peer0"})
	}); err != nil {
		t.Fatal(err)
	}
	missing := func() string {
		t.Helper()
		what, err := MissingPin(pod.Path(), "eth0", addrs, mac)
		if err != nil {
			t.Fatal(err)
		}
		return what
	}
	if what := missing(); !strings.Contains(what, "192.168.0.5 lladdr 02:00:00:00:00:05 on eth0") {
		t.Fatalf("MissingPin before = %q", what)
	}
	for i := 0; i < 2; i++ {
		if err := PinInPod(pod.Path(), "eth0", addrs, mac); err != nil {
			t.Fatalf("PinInPod #%d: %v", i+1, err)
		}
	}
	if what := missing(); what != "" {
		t.Fatalf("MissingPin after PinInPod = %q", what)
	}
	for i := 0; i < 2; i++ {
		if err := UnpinInPod(pod.Path(), "eth0", addrs); err != nil {
			t.Fatalf("UnpinInPod #%d: %v", i+1, err)
		}
	}
	if out := sandbox.MustRun(t, pod, "ip", "neigh", "show", "nud", "permanent"); out != "" {
		t.Fatalf("left after UnpinInPod:\n%s", out)
	}
	if err := UnpinInPod(filepath.Join(t.TempDir(), "gone"), "eth0", addrs); err != nil {
		t.Fatalf("UnpinInPod of a pod that is gone: %v", err)
	}
}
