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
		for _, via := range nextHops(routes) {
			n := &netlink.Neigh{LinkIndex: index, Family: family(via), State: netlink.NUD_PERMANENT, IP: via.AsSlice(), HardwareAddr: mac}
			if err := netlink.NeighSet(n); err != nil {
				return fmt.Errorf("neighbour %s lladdr %s on %s: %w", via, mac, ifname, err)
			}
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
		for _, via := range nextHops(routes) {
			n := &netlink.Neigh{LinkIndex: index, Family: family(via), IP: via.AsSlice()}
			if err := netlink.NeighDel(n); err != nil && !isGone(err) {
				return fmt.Errorf("neighbour %s on %s: %w", via, ifname, err)
			}
		}
		return nil
	})
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
		for _, via := range nextHops(routes) {
			neighs, err := netlink.NeighList(index, family(via))
			if err != nil {
				return err
			}
			if !hasPermanent(neighs, via, mac) {
				missing = fmt.Sprintf("the pod's permanent neighbour entry %s lladdr %s on %s", via, mac, ifname)
				return nil
			}
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
