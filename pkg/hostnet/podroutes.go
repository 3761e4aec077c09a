package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// PodRoute is a route inside a pod: to Dst through Via, a node address
// on the pod's link (onlink, so that Via need not be in a subnet the
// kernel knows as the pod's), reached at the MAC of a permanent
// neighbour entry: neither ARP nor NDP is asked, so arp_ignore on the node
// (IPVS strictARP sets it) cannot keep the pod from it.
type PodRoute struct {
	Dst netip.Prefix `json:"dst"`
	Via netip.Addr   `json:"via"`
}

// SetPodRoutes adds (or replaces) routes and a permanent neighbour entry
// for each of their next hops with mac, on ifname in the pod's netns.
func SetPodRoutes(netnsPath, ifname string, routes []PodRoute, mac net.HardwareAddr) error {
	return ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifname)
		if err != nil {
			return err
		}
		index := link.Attrs().Index
		if err := pin(index, nextHops(routes), mac); err != nil {
			return fmt.Errorf("%w on %s", err, ifname)
		}
		for _, r := range routes {
			if err := netlink.RouteReplace(podRoute(index, r)); err != nil {
				return fmt.Errorf("route %s via %s on %s: %w", r.Dst, r.Via, ifname, err)
			}
		}
		return nil
	})
}

// DelPodRoutes removes what SetPodRoutes added; what is gone already (the
// pod's netns, its link, a route) is not an error.
func DelPodRoutes(netnsPath, ifname string, routes []PodRoute) error {
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := linkIfThere(ifname)
		if err != nil || link == nil {
			return err
		}
		index := link.Attrs().Index
		for _, r := range routes {
			if err := netlink.RouteDel(podRoute(index, r)); err != nil && !isGone(err) {
				return fmt.Errorf("route %s via %s on %s: %w", r.Dst, r.Via, ifname, err)
			}
		}
		if err := unpin(index, nextHops(routes)); err != nil {
			return fmt.Errorf("%w on %s", err, ifname)
		}
		return nil
	})
	return ignoreGoneNetns(err)
}

// PinInPod gives ifname in the pod's netns a permanent neighbour entry
// with mac for each of addrs: the pod reaches them without asking.
func PinInPod(netnsPath, ifname string, addrs []netip.Addr, mac net.HardwareAddr) error {
	if len(addrs) == 0 {
		return nil
	}
	return ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifname)
		if err != nil {
			return err
		}
		if err := pin(link.Attrs().Index, addrs, mac); err != nil {
			return fmt.Errorf("%w on %s", err, ifname)
		}
		return nil
	})
}

// UnpinInPod removes what PinInPod added; what is gone already (the pod's
// netns, its link, an entry) is not an error.
func UnpinInPod(netnsPath, ifname string, addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := linkIfThere(ifname)
		if err != nil || link == nil {
			return err
		}
		if err := unpin(link.Attrs().Index, addrs); err != nil {
			return fmt.Errorf("%w on %s", err, ifname)
		}
		return nil
	})
	return ignoreGoneNetns(err)
}

// MissingPin describes the first of addrs that ifname in the pod does not
// reach at mac without asking; "" when none.
func MissingPin(netnsPath, ifname string, addrs []netip.Addr, mac net.HardwareAddr) (string, error) {
	if len(addrs) == 0 {
		return "", nil
	}
	var missing string
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifname)
		if err != nil {
			return err
		}
		missing, err = missingPin(link.Attrs().Index, addrs, mac)
		if missing != "" {
			missing += " on " + ifname
		}
		return err
	})
	return missing, err
}

// pin, unpin and missingPin work on the link with index in the current
// netns.
func pin(index int, addrs []netip.Addr, mac net.HardwareAddr) error {
	for _, a := range addrs {
		n := &netlink.Neigh{LinkIndex: index, Family: family(a), State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: mac}
		if err := netlink.NeighSet(n); err != nil {
			return fmt.Errorf("neighbour %s lladdr %s: %w", a, mac, err)
		}
	}
	return nil
}

func unpin(index int, addrs []netip.Addr) error {
	for _, a := range addrs {
		n := &netlink.Neigh{LinkIndex: index, Family: family(a), IP: a.AsSlice()}
		if err := netlink.NeighDel(n); err != nil && !isGone(err) {
			return fmt.Errorf("neighbour %s: %w", a, err)
		}
	}
	return nil
}

func missingPin(index int, addrs []netip.Addr, mac net.HardwareAddr) (string, error) {
	for _, a := range addrs {
		neighs, err := netlink.NeighList(index, family(a))
		if err != nil {
			return "", err
		}
		if !hasPermanent(neighs, a, mac) {
			return fmt.Sprintf("the pod's permanent neighbour entry %s lladdr %s", a, mac), nil
		}
	}
	return "", nil
}

func ignoreGoneNetns(err error) error {
	var nsErr ns.NSPathNotExistErr
	if errors.As(err, &nsErr) {
		return nil
	}
	return err
}

// MissingPodRoute describes the first of routes, or of their neighbour
// entries with mac, that the pod's ifname lacks; "" when all are there.
func MissingPodRoute(netnsPath, ifname string, routes []PodRoute, mac net.HardwareAddr) (string, error) {
	var missing string
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifname)
		if err != nil {
			return err
		}
		index := link.Attrs().Index
		if missing, err = missingPin(index, nextHops(routes), mac); err != nil || missing != "" {
			if missing != "" {
				missing += " on " + ifname
			}
			return err
		}
		for _, r := range routes {
			have, err := netlinksafe.RouteListFiltered(family(r.Via), &netlink.Route{LinkIndex: index, Dst: prefixNet(r.Dst)},
				netlink.RT_FILTER_OIF|netlink.RT_FILTER_DST)
			if err != nil {
				return err
			}
			if !hasGateway(have, r.Via) {
				missing = fmt.Sprintf("the pod's route %s via %s on %s", r.Dst, r.Via, ifname)
				return nil
			}
		}
		return nil
	})
	return missing, err
}

func podRoute(index int, r PodRoute) *netlink.Route {
	return &netlink.Route{LinkIndex: index, Dst: prefixNet(r.Dst), Gw: r.Via.AsSlice(), Flags: int(netlink.FLAG_ONLINK)}
}

func nextHops(routes []PodRoute) []netip.Addr {
	var out []netip.Addr
	for _, r := range routes {
		if !slices.Contains(out, r.Via) {
			out = append(out, r.Via)
		}
	}
	return out
}

func hasPermanent(neighs []netlink.Neigh, ip netip.Addr, mac net.HardwareAddr) bool {
	for _, n := range neighs {
		a, _ := netip.AddrFromSlice(n.IP)
		if a.Unmap() == ip && n.State&netlink.NUD_PERMANENT != 0 && n.HardwareAddr.String() == mac.String() {
			return true
		}
	}
	return false
}

func hasGateway(routes []netlink.Route, via netip.Addr) bool {
	for _, r := range routes {
		gw, _ := netip.AddrFromSlice(r.Gw)
		if gw.Unmap() == via {
			return true
		}
	}
	return false
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// isGone tells errors that mean "already not there".
func isGone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENODEV)
}
