// Package hostnet changes the node's own network namespace on behalf of a
// chained plugin: it ensures a bridge-mode macvlan sub-device of an uplink
// and adds and removes host routes through it, all idempotently.
//
// Dumps go through plugins/pkg/netlinksafe, which retries dumps the kernel
// interrupted because the table changed meanwhile (busy nodes do that).
package hostnet

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks the host routes we add ("proto 197" in `ip route`), so
// that they can be told from anyone else's and swept by GC even if their
// state record is lost. Values from 5 to 255 are free for routing daemons; no
// well-known one uses this.
const RouteProtocol netlink.RouteProtocol = 197

// ErrNoMaster means the uplink named as master does not exist.
var ErrNoMaster = errors.New("no such link")

// ConflictError means a link has the sub-device's name but is something
// else; we never take over a link we did not make.
type ConflictError struct {
	Name, Reason string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("link %q exists but %s", e.Name, e.Reason)
}

// Master returns the uplink called name, or an error wrapping ErrNoMaster.
func Master(name string) (netlink.Link, error) {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil, fmt.Errorf("%w %q", ErrNoMaster, name)
		}
		return nil, err
	}
	return link, nil
}

// EnsureMacvlanBridge returns the bridge-mode macvlan sub-device name of
// master, up, creating it when missing, with the address macIfMade gives
// (asked only then; nil, or a nil answer, lets the kernel pick): a sub-device
// made anew keeps the address its pods are pinned to. Concurrent callers
// may race to create it: the loser's EEXIST is success when the link that
// won is right.
func EnsureMacvlanBridge(name, master string, mtu int, macIfMade func() net.HardwareAddr) (netlink.Link, error) {
	parent, err := Master(master)
	if err != nil {
		return nil, err
	}
	link, err := macvlanBridge(name, parent)
	if err == nil {
		return link, readyForPods(link)
	}
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		return nil, err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.ParentIndex, attrs.MTU = name, parent.Attrs().Index, mtu
	if macIfMade != nil {
		attrs.HardwareAddr = macIfMade()
	}
	if err := netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil && !errors.Is(err, syscall.EEXIST) {
		return nil, fmt.Errorf("create macvlan %q on %q: %w", name, master, err)
	}
	if link, err = macvlanBridge(name, parent); err != nil {
		return nil, err
	}
	return link, readyForPods(link)
}

// readyForPods brings the sub-device up and makes it answer ARP only for
// askers routed through it, the pods: it hears the wire too, and an answer
// to the LAN's ARP for the node's address (the kernel answers for any
// local address on any interface) would move the LAN's entry for the node
// to the sub-device's MAC. The node's traffic from the LAN would then come
// in on the sub-device, which strict rp_filter drops and rules matching
// the master do not see, and stop when the sub-device goes.
func readyForPods(link netlink.Link) error {
	if err := setIPv4Conf(link, "arp_filter", ipv4DevconfARPFilter, 1); err != nil {
		return err
	}
	return upIfDown(link)
}

// The indexes of IPv4 link settings in the kernel's IPV4_DEVCONF_* enum
// (include/uapi/linux/ip.h), which golang.org/x/sys/unix does not define.
const (
	ipv4DevconfARPFilter     = 13 // IPV4_DEVCONF_ARPFILTER: arp_filter
	ipv4DevconfRouteLocalnet = 26 // IPV4_DEVCONF_ROUTE_LOCALNET: route_localnet
)

// setIPv4Conf sets the IPv4 setting key of link, whose IPV4_DEVCONF_* index
// is id, to value, only when it differs: it changes that link only. It sets
// through rtnetlink, which needs only CAP_NET_ADMIN, because a container
// runtime mounts /proc/sys read-only; reading there still works, and a
// failed read just sets.
func setIPv4Conf(link netlink.Link, key string, id int, value uint32) error {
	name := link.Attrs().Name
	cur, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + name + "/" + key)
	if err == nil && strings.TrimSpace(string(cur)) == strconv.FormatUint(uint64(value), 10) {
		return nil
	}
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(link.Attrs().Index)
	req.AddData(msg)
	// IFLA_AF_SPEC > AF_INET > IFLA_INET_CONF > id: the kernel's
	// inet_set_link_af applies it.
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil).AddRtAttr(id, nl.Uint32Attr(value))
	req.AddData(spec)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set %s of %s: %w", key, name, err)
	}
	return nil
}

// MacvlanBridge returns the existing sub-device name of master, checking
// that it is a bridge-mode macvlan of that master.
func MacvlanBridge(name, master string) (netlink.Link, error) {
	parent, err := Master(master)
	if err != nil {
		return nil, err
	}
	return macvlanBridge(name, parent)
}

func macvlanBridge(name string, parent netlink.Link) (netlink.Link, error) {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, err
	}
	mv, ok := link.(*netlink.Macvlan)
	switch {
	case !ok:
		return nil, &ConflictError{name, "is a " + link.Type() + ", not a macvlan"}
	case mv.ParentIndex != parent.Attrs().Index:
		return nil, &ConflictError{name, fmt.Sprintf("is a macvlan of another link (index %d), not of %q", mv.ParentIndex, parent.Attrs().Name)}
	case mv.Mode != netlink.MACVLAN_MODE_BRIDGE:
		return nil, &ConflictError{name, "is a macvlan not in bridge mode"}
	}
	return link, nil
}

func upIfDown(link netlink.Link) error {
	if link.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	return netlink.LinkSetUp(link)
}

// EnsureAddress puts addr on link with no prefix route and no DAD, so that
// the node answers ARP and NDP for it on link without changing its routes.
// A host prefix (/32, /128) is the usual; a wider one lets ARP answer with
// arp_ignore 2, which wants the asker inside the address's subnet.
func EnsureAddress(link netlink.Link, addr netip.Prefix) error {
	a := &netlink.Addr{IPNet: prefixNet(addr), Flags: unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE}
	if err := netlink.AddrAdd(link, a); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add address %s to %q: %w", addr, link.Attrs().Name, err)
	}
	return nil
}

// DelAddress removes addr from link; one already gone is success.
func DelAddress(link netlink.Link, addr netip.Prefix) error {
	err := netlink.AddrDel(link, &netlink.Addr{IPNet: prefixNet(addr)})
	if err == nil || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.ENODEV) {
		return nil
	}
	return fmt.Errorf("delete address %s from %q: %w", addr, link.Attrs().Name, err)
}

// GlobalAddresses lists link's addresses of global scope (IPv4 and IPv6,
// private ranges and ULAs included), except those that failed DAD.
func GlobalAddresses(link netlink.Link) ([]netip.Prefix, error) {
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if a.Scope != int(netlink.SCOPE_UNIVERSE) || a.Flags&unix.IFA_F_DADFAILED != 0 || a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

// ARPIgnore is the arp_ignore in force on the link called name: the
// greater of its own and "all", as the kernel applies them.
func ARPIgnore(name string) (int, error) {
	most := 0
	for _, conf := range []string{"all", name} {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + conf + "/arp_ignore")
		if err != nil {
			return 0, err
		}
		v, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return 0, fmt.Errorf("arp_ignore of %s: %w", conf, err)
		}
		most = max(most, v)
	}
	return most, nil
}

// HostRoute is the scope-link route to the single address ip through link.
func HostRoute(linkIndex int, ip netip.Addr) *netlink.Route {
	return &netlink.Route{LinkIndex: linkIndex, Dst: hostNet(ip), Scope: netlink.SCOPE_LINK, Protocol: RouteProtocol}
}

// AddHostRoute adds the route to ip through link, with src as the node's
// preferred source address when valid, and pins ip to mac, the pod's, when
// given (PinNeighbour). A route that is already there through link is
// success; one through another link is an error, not something to
// overwrite.
func AddHostRoute(link netlink.Link, ip, src netip.Addr, mac net.HardwareAddr) error {
	if err := addHostRoute(link, ip, src); err != nil {
		return err
	}
	return PinNeighbour(link.Attrs().Index, ip, mac)
}

// PinNeighbour makes the node reach ip at mac on the link with index
// linkIndex without asking (a permanent neighbour entry); nothing when mac
// is nil. An ARP request the node sends on the sub-device also goes out on
// the wire, and names the node's address as its sender: every LAN host
// that hears it moves its entry for the node to the sub-device's MAC.
func PinNeighbour(linkIndex int, ip netip.Addr, mac net.HardwareAddr) error {
	if mac == nil {
		return nil
	}
	return pin(linkIndex, []netip.Addr{ip}, mac)
}

// IsPinned reports whether ip is pinned to mac on the link with index
// linkIndex, as PinNeighbour leaves it.
func IsPinned(linkIndex int, ip netip.Addr, mac net.HardwareAddr) (bool, error) {
	missing, err := missingPin(linkIndex, []netip.Addr{ip}, mac)
	return err == nil && missing == "", err
}

func addHostRoute(link netlink.Link, ip, src netip.Addr) error {
	route := HostRoute(link.Attrs().Index, ip)
	if src.IsValid() {
		route.Src = src.AsSlice()
	}
	err := netlink.RouteAdd(route)
	if err == nil || !errors.Is(err, syscall.EEXIST) {
		return err
	}
	routes, lerr := routesTo(ip)
	if lerr != nil {
		return lerr
	}
	for _, r := range routes {
		if r.LinkIndex == link.Attrs().Index {
			return nil
		}
	}
	return fmt.Errorf("route to %s exists through another link: %w", ip, err)
}

// DelHostRoute removes our route to ip through the link with index
// linkIndex and the node's neighbour entry for ip there; what is already
// gone is success.
func DelHostRoute(linkIndex int, ip netip.Addr) error {
	err := netlink.RouteDel(HostRoute(linkIndex, ip))
	if err != nil && !errors.Is(err, syscall.ESRCH) && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("delete route to %s: %w", ip, err)
	}
	return unpin(linkIndex, []netip.Addr{ip})
}

// ForgetNeighbours deletes the neighbour entries on the link with index
// linkIndex for any of ips or with any of macs as their link-layer address.
func ForgetNeighbours(linkIndex int, ips []netip.Addr, macs []net.HardwareAddr) error {
	neighs, err := netlink.NeighList(linkIndex, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, n := range neighs {
		ip, _ := netip.AddrFromSlice(n.IP)
		forget := slices.Contains(ips, ip.Unmap()) ||
			slices.ContainsFunc(macs, func(m net.HardwareAddr) bool { return bytes.Equal(m, n.HardwareAddr) })
		if !forget {
			continue
		}
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("forget neighbour %s: %w", n.IP, err)
		}
	}
	return nil
}

// HasHostRoute reports whether our route to ip goes through linkIndex.
func HasHostRoute(linkIndex int, ip netip.Addr) (bool, error) {
	routes, err := routesTo(ip)
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.LinkIndex == linkIndex && r.Protocol == RouteProtocol {
			return true, nil
		}
	}
	return false, nil
}

// HostRoutes lists the destinations of our routes through link.
func HostRoutes(link netlink.Link) ([]netip.Addr, error) {
	filter := &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: RouteProtocol}
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if ones, bits := r.Dst.Mask.Size(); ones != bits {
			continue
		}
		if a, ok := netip.AddrFromSlice(r.Dst.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return out, nil
}

func routesTo(ip netip.Addr) ([]netlink.Route, error) {
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	return netlinksafe.RouteListFiltered(family, &netlink.Route{Dst: hostNet(ip)}, netlink.RT_FILTER_DST)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func hostNet(ip netip.Addr) *net.IPNet { return prefixNet(netip.PrefixFrom(ip, ip.BitLen())) }

// IsLocal reports whether ip is an address of the node (of any of its links).
func IsLocal(ip netip.Addr) (bool, error) {
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlinksafe.AddrList(nil, family)
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			return true, nil
		}
	}
	return false, nil
}

// DefaultRouteLink is the name of the link of the node's first default
// route (IPv4 or IPv6, as listed): the master the reference macvlan takes
// when its configuration names none.
func DefaultRouteLink() (string, error) {
	routes, err := netlinksafe.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", err
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 || !r.Dst.IP.IsUnspecified() {
				continue
			}
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			return "", err
		}
		return link.Attrs().Name, nil
	}
	return "", errors.New("no default route")
}

// LinkIndex is the index of the link called name, 0 when there is none
// (or no name).
func LinkIndex(name string) int {
	if name == "" {
		return 0
	}
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		return 0
	}
	return link.Attrs().Index
}

// PodLink is a container's interface as the node sees it.
type PodLink struct {
	Name string
	Kind string // "macvlan", "veth", "ipvlan", ...
	// Mode and ParentIndex (the node's index of the link it sits on) are
	// a macvlan's.
	Mode        netlink.MacvlanMode
	ParentIndex int
	MAC         net.HardwareAddr
}

// linkIfThere is the link called name in the current netns; nil, nil
// when there is none.
func linkIfThere(name string) (netlink.Link, error) {
	link, err := netlinksafe.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, nil
	}
	return link, err
}

// InspectPodLink describes the interface ifname in the network namespace
// at netnsPath; nil, nil when there is no such interface.
func InspectPodLink(netnsPath, ifname string) (*PodLink, error) {
	var out *PodLink
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := linkIfThere(ifname)
		if err != nil || link == nil {
			return err
		}
		out = &PodLink{Name: ifname, Kind: link.Type(), ParentIndex: link.Attrs().ParentIndex, MAC: link.Attrs().HardwareAddr}
		if mv, ok := link.(*netlink.Macvlan); ok {
			out.Mode = mv.Mode
		}
		return nil
	})
	return out, err
}

// ErrNoRoute means the node has no route to an address.
var ErrNoRoute = errors.New("no route")

// EnableRouteLocalnet lets the interface that leads to ip route packets
// with a 127.0.0.0/8 source or destination, which forwarding a connection
// to 127.0.0.1:hostPort on to a pod needs. It changes only that interface.
func EnableRouteLocalnet(ip netip.Addr) error {
	h := &netlink.Handle{} // the package's way: a socket per request
	index, err := indexTowards(h, ip)
	if err != nil {
		return err
	}
	return setRouteLocalnet(h, index)
}

// indexTowards is the index of the interface the node's route to ip
// leads out of.
func indexTowards(h *netlink.Handle, ip netip.Addr) (int, error) {
	routes, err := h.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 {
		return 0, fmt.Errorf("%w to %s: %v", ErrNoRoute, ip, err)
	}
	return routes[0].LinkIndex, nil
}

func setRouteLocalnet(h *netlink.Handle, index int) error {
	link, err := h.LinkByIndex(index)
	if err != nil {
		return err
	}
	return setIPv4Conf(link, "route_localnet", ipv4DevconfRouteLocalnet, 1)
}

// EnableRouteLocalnetFor is EnableRouteLocalnet for many addresses, as a
// restore needs it: the routes asked over one netlink socket, each
// interface they lead to set once (thousands of pods sit behind a few).
// Addresses nothing on the node routes to are skipped, as ErrNoRoute is.
func EnableRouteLocalnetFor(ips []netip.Addr) error {
	if len(ips) == 0 {
		return nil
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	done := map[int]bool{}
	var errs []error
	for _, ip := range ips {
		index, err := indexTowards(h, ip)
		if err != nil || done[index] {
			continue // ErrNoRoute: nothing on the node reaches it
		}
		done[index] = true
		errs = append(errs, setRouteLocalnet(h, index))
	}
	return errors.Join(errs...)
}

// FlushUDPConntrack forgets the UDP flows to the given host ports in the
// family of ipv6, so that a new pod mapped to a reused port gets the traffic
// instead of a dead pod's stale flow (containernetworking/plugins#123).
func FlushUDPConntrack(ports []uint16, ipv6 bool) error {
	if len(ports) == 0 {
		return nil
	}
	family := netlink.InetFamily(unix.AF_INET)
	if ipv6 {
		family = unix.AF_INET6
	}
	var filters []netlink.CustomConntrackFilter
	for _, p := range ports {
		f := &netlink.ConntrackFilter{}
		if err := f.AddProtocol(unix.IPPROTO_UDP); err != nil {
			return err
		}
		if err := f.AddPort(netlink.ConntrackOrigDstPort, p); err != nil {
			return err
		}
		filters = append(filters, f)
	}
	_, err := netlinksafe.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...)
	return err
}
