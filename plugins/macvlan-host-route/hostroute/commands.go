package hostroute

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/vishvananda/netlink"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/chain"
	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/hostnet"
	"github.com/cnichain/plugins/pkg/netnslock"
)

// owner is the record of which attachment a host route belongs to, one per
// pod address, written before the route is added: a route of ours without
// a record is a leak GC may remove.
type owner struct {
	attachstate.Key
	Bridge string `json:"bridge"`
	// Master, MTU and Netns let a restore rebuild the sub-device and tell
	// a pod that is gone.
	Master string `json:"master,omitempty"`
	MTU    int    `json:"mtu,omitempty"`
	Netns  string `json:"netns,omitempty"`
	// MAC is the pod's, which the node reaches the address at without
	// asking (hostnet.PinNeighbour); none when it could not be told.
	MAC string `json:"mac,omitempty"`
	// NodePins are the node's addresses the pod reaches at the sub-device
	// without asking (hostroute.NodePins).
	NodePins []netip.Addr `json:"nodePins,omitempty"`
}

// PodNetns and Describe are what a restore needs of a record.
func (o *owner) PodNetns() string { return o.Netns }
func (o *owner) Describe(name string) string {
	ip, _ := recordAddr(name)
	return fmt.Sprintf("%s (network %q, container %s)", ip, o.Network, o.ContainerID)
}

const recordPrefix = "route-"

const prevHint = "chain macvlan-host-route after macvlan, which yields the pod's addresses"

func recordName(ip netip.Addr) string { return recordPrefix + ip.String() }

func recordAddr(name string) (netip.Addr, bool) {
	s, ok := strings.CutPrefix(name, recordPrefix)
	if !ok {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(s)
	return ip, err == nil
}

func keyOf(cfg *Config, args *skel.CmdArgs) attachstate.Key {
	return attachstate.Key{Network: cfg.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

// Add ensures the sub-device and a host route to every pod address, then
// passes prevResult on unchanged. On failure it undoes what it did.
func Add(args *skel.CmdArgs) (err error) {
	cfg, err := Parse(args.StdinData)
	if err != nil {
		return err
	}
	prev, err := chain.RequirePrevResult(&cfg.PluginConf, prevHint)
	if err != nil {
		return err
	}
	targets := RouteTargets(chain.ContainerIPs(prev))
	if len(targets) == 0 {
		return cnierr.InvalidConfig("prevResult.ips", "[]", "no container address to route to; chain this plugin after macvlan with an IPAM")
	}
	if err := settleMaster(cfg); err != nil {
		return err
	}
	master, err := hostnet.Master(cfg.Master)
	if err != nil {
		return linkError(cfg, err)
	}
	pod, err := hostnet.InspectPodLink(args.Netns, args.IfName)
	if err != nil {
		return cnierr.Internal("the pod's "+args.IfName, err)
	}
	if err := PodLinkProblem(pod, cfg.Master, master.Attrs().Index); err != nil {
		return err
	}
	masterAddrs, err := hostnet.GlobalAddresses(master)
	if err != nil {
		return cnierr.Internal("addresses of "+cfg.Master, err)
	}
	// viaNode is planned before anything changes: bad input installs nothing.
	var via *ViaNodePlan
	if len(cfg.ViaNode) > 0 {
		if via, err = PlanViaNode(cfg, keyOf(cfg, args), chain.ContainerIPs(prev), masterAddrs); err != nil {
			return err
		}
	}
	store := attachstate.Store{Dir: cfg.StateDir}
	// Made anew (someone deleted it), the sub-device gets back the MAC its
	// pods are pinned to.
	recorded := func() net.HardwareAddr { return recordedMAC(store, cfg.Bridge) }
	link, err := hostnet.EnsureMacvlanBridge(cfg.Bridge, cfg.Master, cfg.MTU, recorded)
	if err != nil {
		return linkError(cfg, err)
	}
	log, closeLog := cfg.Open("network", cfg.Name, "containerID", args.ContainerID, "verb", "ADD")
	defer closeLog()
	defer func() {
		if err != nil {
			log.Error("add", "error", err)
		}
	}()
	unlock, err := store.HoldAgainstRestore()
	if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	defer unlock()
	if err := updateSubDevice(cfg, link, masterAddrs, store); err != nil {
		return err
	}
	podMAC := PinnedMAC(prev, pod)
	var pins []netip.Addr
	if pod != nil && len(cfg.HostAddresses) == 0 {
		pins = NodePins(masterAddrs, targets)
	}
	rec := owner{Key: keyOf(cfg, args), Bridge: cfg.Bridge, Master: cfg.Master, MTU: cfg.MTU, Netns: args.Netns,
		MAC: podMAC.String(), NodePins: pins}
	var done []netip.Addr
	defer func() {
		if err != nil {
			_ = hostnet.UnpinInPod(args.Netns, args.IfName, pins)
			for _, ip := range done {
				_ = hostnet.DelHostRoute(link.Attrs().Index, ip)
				_ = store.Delete(recordName(ip))
			}
		}
	}()
	for _, ip := range targets {
		if err := store.Save(recordName(ip), rec); err != nil {
			return cnierr.Internal("state "+cfg.StateDir, err)
		}
		done = append(done, ip)
		if err := hostnet.AddHostRoute(link, ip, PreferredSource(masterAddrs, ip), podMAC); err != nil {
			return cnierr.Internal(fmt.Sprintf("host route to %s via %s", ip, cfg.Bridge), err)
		}
		log.Info("route added", "ip", ip, "bridge", cfg.Bridge)
	}
	if err := hostnet.PinInPod(args.Netns, args.IfName, pins, link.Attrs().HardwareAddr); err != nil {
		return cnierr.Internal("the node's addresses in the pod", err)
	}
	if via != nil {
		vrec := &viaNodeRecord{Key: keyOf(cfg, args), ViaNodePlan: *via, Netns: args.Netns,
			MAC: link.Attrs().HardwareAddr.String(), Backend: cfg.Backend, IptablesFlavour: cfg.IptablesFlavour, Added: time.Now()}
		if err := installViaNode(cfg, store, vrec, args.IfName); err != nil {
			return err
		}
		withRoutes(prev, via)
		log.Info("viaNode routed", "routes", len(via.Routes), "replyPaths", len(via.Replies))
	}
	return chain.Print(prev, cfg.CNIVersion)
}

// lockSubDevice serializes, node-wide, the ADDs that update what the
// sub-device bridge records (its answers, its alias): networks of any
// stateDir may share it, and one's update must not be lost to another's.
func lockSubDevice(bridge string) (release func(), err error) {
	return netnslock.Acquire("hostroute-" + bridge)
}

// updateSubDevice brings the sub-device's answers for the node and its
// list of stateDirs up to date, under its lock.
func updateSubDevice(cfg *Config, link netlink.Link, masterAddrs []netip.Prefix, store attachstate.Store) error {
	release, err := lockSubDevice(cfg.Bridge)
	if err != nil {
		return cnierr.Internal("bridge "+cfg.Bridge, err)
	}
	defer release()
	if err := answerForNode(cfg, link, masterAddrs, store); err != nil {
		return err
	}
	if err := listStateDir(link, cfg.StateDir); err != nil {
		return cnierr.Internal("bridge "+cfg.Bridge+" alias", err)
	}
	return nil
}

// Del removes this attachment's host routes and their records. It succeeds
// when they, prevResult, the netns or the sub-device are gone already, and
// leaves alone a route another attachment owns now (its address reused).
// The sub-device stays: a concurrent ADD may be about to route through it.
func Del(args *skel.CmdArgs) error {
	cfg, err := Parse(args.StdinData)
	if err != nil {
		return err
	}
	key := keyOf(cfg, args)
	store := attachstate.Store{Dir: cfg.StateDir}
	unlock, err := store.HoldAgainstRestore()
	if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	defer unlock()
	log, closeLog := cfg.Open("network", cfg.Name, "containerID", args.ContainerID, "verb", "DEL")
	defer closeLog()
	var targets []netip.Addr
	var macs []net.HardwareAddr
	if prev, err := chain.PrevResult(&cfg.PluginConf); err == nil && prev != nil {
		targets = RouteTargets(chain.ContainerIPs(prev))
		macs = chain.ContainerMACs(prev)
	} else if targets, err = ownedBy(store, key); err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	// Each route goes through the sub-device its record names; without a
	// record, the configured one (when the master can still be told).
	fallback := ""
	if settleMaster(cfg) == nil {
		fallback = cfg.Bridge
	}
	var pins []netip.Addr              // the node's addresses in the pod
	owned := map[string][]netip.Addr{} // per sub-device
	var bridges []string
	for _, ip := range targets {
		var rec owner
		found, err := store.Load(recordName(ip), &rec)
		if attachstate.IsTorn(err) {
			// Moved aside: the route to this attachment's own address is
			// removed through the configured sub-device, as without a record.
			log.Warn("torn record", "error", err)
			fmt.Fprintf(os.Stderr, "macvlan-host-route: %v\n", err)
		} else if err != nil {
			return cnierr.Internal("state "+cfg.StateDir, err)
		}
		if found && rec.Key != key {
			continue
		}
		if found && pins == nil {
			pins = rec.NodePins // the same in each record of the attachment
		}
		bridge := fallback
		if found {
			bridge = rec.Bridge
		}
		if _, seen := owned[bridge]; !seen {
			bridges = append(bridges, bridge)
		}
		owned[bridge] = append(owned[bridge], ip)
	}
	for _, bridge := range bridges {
		ips := owned[bridge]
		if index := hostnet.LinkIndex(bridge); index != 0 {
			for _, ip := range ips {
				if err := hostnet.DelHostRoute(index, ip); err != nil {
					return cnierr.Internal("host route", err)
				}
			}
			// The node must not keep sending to the interface that goes: a pod
			// on two networks of one wire answers ARP on both (ARP flux), and
			// a new pod may reuse the address with another MAC.
			if err := hostnet.ForgetNeighbours(index, ips, macs); err != nil {
				return cnierr.Internal("neighbours on "+bridge, err)
			}
		}
		for _, ip := range ips {
			if err := store.Delete(recordName(ip)); err != nil {
				return cnierr.Internal("state "+cfg.StateDir, err)
			}
			log.Info("route removed", "ip", ip, "bridge", bridge)
		}
	}
	if args.Netns != "" {
		if err := hostnet.UnpinInPod(args.Netns, args.IfName, pins); err != nil {
			return cnierr.Internal("the node's addresses in the pod", err)
		}
	}
	if err := delViaNode(cfg, store, key, args.Netns); err != nil {
		return cnierr.Internal("viaNode", err)
	}
	return nil
}

// settleMaster finds the master a configuration left out, by macvlan's rule.
func settleMaster(cfg *Config) error {
	if cfg.Master != "" {
		return nil
	}
	name, err := hostnet.DefaultRouteLink()
	if err != nil {
		return cnierr.InvalidConfig("master", "", "left out, and the node's default route, which names it then (as for macvlan), is not there: "+err.Error())
	}
	return cfg.WithMaster(name)
}

// Check fails when the sub-device is missing or wrong, or a pod address of
// prevResult has no host route through it or is no longer pinned to the
// pod's MAC.
func Check(args *skel.CmdArgs) error {
	cfg, err := Parse(args.StdinData)
	if err != nil {
		return err
	}
	prev, err := chain.RequirePrevResult(&cfg.PluginConf, prevHint)
	if err != nil {
		return err
	}
	if err := settleMaster(cfg); err != nil {
		return err
	}
	link, err := hostnet.MacvlanBridge(cfg.Bridge, cfg.Master)
	if err != nil {
		return cnierr.CheckFailed("bridge %q: %v", cfg.Bridge, err)
	}
	store := attachstate.Store{Dir: cfg.StateDir}
	want, err := expectedAnswers(cfg, store)
	if err != nil {
		return err
	}
	have, err := hostnet.GlobalAddresses(link)
	if err != nil {
		return cnierr.Internal("addresses of "+cfg.Bridge, err)
	}
	for _, p := range want {
		if !slices.Contains(have, p) {
			return cnierr.CheckFailed("bridge %q does not answer for the node's address %s: pods cannot reach the node at it", cfg.Bridge, p.Addr())
		}
	}
	pod, err := hostnet.InspectPodLink(args.Netns, args.IfName)
	if err != nil {
		return cnierr.Internal("the pod's "+args.IfName, err)
	}
	podMAC := PinnedMAC(prev, pod)
	targets := RouteTargets(chain.ContainerIPs(prev))
	for _, ip := range targets {
		ok, err := hostnet.HasHostRoute(link.Attrs().Index, ip)
		if err != nil {
			return cnierr.Internal("list routes", err)
		}
		if !ok {
			return cnierr.CheckFailed("host route to %s via %q is missing", ip, cfg.Bridge)
		}
		if podMAC == nil {
			continue
		}
		if ok, err = hostnet.IsPinned(link.Attrs().Index, ip, podMAC); err != nil {
			return cnierr.Internal("list neighbours", err)
		} else if !ok {
			return cnierr.CheckFailed("the node's neighbour entry for %s on %q is not the pod's MAC %s, permanent: it would ask for the pod in its own name on the wire", ip, cfg.Bridge, podMAC)
		}
	}
	if pod != nil {
		pins, err := nodePinsOf(store, keyOf(cfg, args), targets)
		if err != nil {
			return cnierr.Internal("state "+cfg.StateDir, err)
		}
		what, err := hostnet.MissingPin(args.Netns, args.IfName, pins, link.Attrs().HardwareAddr)
		if err != nil {
			return cnierr.Internal("the pod's neighbours", err)
		}
		if what != "" {
			return cnierr.CheckFailed("%s is missing: the pod cannot reach the node at that address", what)
		}
	}
	return checkViaNode(store, keyOf(cfg, args), args.Netns)
}

// nodePinsOf are the node addresses the first of key's route records to
// ips says its pod was pinned to (each record of the attachment says the
// same).
func nodePinsOf(store attachstate.Store, key attachstate.Key, ips []netip.Addr) ([]netip.Addr, error) {
	for _, ip := range ips {
		var rec owner
		if found, err := store.Load(recordName(ip), &rec); err != nil && !attachstate.IsTorn(err) {
			return nil, err
		} else if found && rec.Key == key {
			return rec.NodePins, nil
		}
	}
	return nil, nil
}

// GC removes the routes of this network's attachments that are not in
// cni.dev/valid-attachments, and any route of ours on the sub-device that
// no record claims. It goes on past errors and reports them all.
func GC(args *skel.CmdArgs) error {
	cfg, err := Parse(args.StdinData)
	if err != nil {
		return err
	}
	var link netlink.Link
	if settleMaster(cfg) == nil {
		// A missing sub-device routes nothing; stale records still go.
		link, _ = hostnet.MacvlanBridge(cfg.Bridge, cfg.Master)
	}
	// Routes first, records second: an ADD writes its record before its
	// route, so every route listed here has its record by the time we read.
	var routed []netip.Addr
	if link != nil {
		if routed, err = hostnet.HostRoutes(link); err != nil {
			return cnierr.Internal("list routes", err)
		}
	}
	store := attachstate.Store{Dir: cfg.StateDir}
	unlock, err := store.HoldAgainstRestore()
	if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	defer unlock()
	names, err := store.Names()
	if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	var errs []error
	claimed := map[string]bool{}
	for _, name := range names {
		ip, ok := recordAddr(name)
		if !ok {
			continue // not a route's record
		}
		var rec owner
		if _, err := store.Load(name, &rec); attachstate.IsTorn(err) {
			fmt.Fprintf(os.Stderr, "macvlan-host-route: %v\n", err)
			continue // its route is left below
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		if rec.Network != cfg.Name || rec.Key.In(cfg.ValidAttachments) {
			claimed[name] = true
			continue
		}
		if index := hostnet.LinkIndex(rec.Bridge); index != 0 {
			if err := hostnet.DelHostRoute(index, ip); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		errs = append(errs, store.Delete(name))
	}
	errs = append(errs, gcViaNode(cfg, store, names)...)
	// A route no record of this stateDir claims is a leak only if no
	// record of another stateDir routing through the sub-device does. The
	// sub-device is read again for its list of stateDirs: an ADD of a
	// stateDir lists it before it adds its route, so every route listed
	// above has its stateDir in this list.
	if link != nil {
		if link, err = netlink.LinkByIndex(link.Attrs().Index); err != nil {
			link = nil // gone meanwhile: no list to trust
		}
	}
	others, sure := otherClaims(link, cfg.StateDir)
	for _, ip := range routed {
		if claimed[recordName(ip)] || others[recordName(ip)] || !sure {
			continue
		}
		// A torn record cannot say whose the route is: it may be a valid
		// pod's, which only that pod's DEL may take.
		if _, err := store.Load(recordName(ip), &owner{}); attachstate.IsTorn(err) {
			continue
		}
		errs = append(errs, hostnet.DelHostRoute(link.Attrs().Index, ip))
	}
	if err := errors.Join(errs...); err != nil {
		log, closeLog := cfg.Open("network", cfg.Name, "verb", "GC")
		defer closeLog()
		log.Error("gc", "error", err)
		return cnierr.Internal("gc", err)
	}
	return nil
}

// otherClaims are the route records of the stateDirs other than own that
// route through link, by name; sure is false when link does not list own
// among them (a sub-device of an earlier release, or a list too long):
// then no route can be told to be nobody's.
func otherClaims(link netlink.Link, own string) (claims map[string]bool, sure bool) {
	if link == nil {
		return nil, false
	}
	dirs, ok := stateDirsOf(link)
	if !ok || !slices.Contains(dirs, filepath.Clean(own)) {
		return nil, false
	}
	claims = map[string]bool{}
	for _, dir := range dirs {
		if dir == filepath.Clean(own) {
			continue
		}
		names, err := attachstate.Store{Dir: dir}.Names()
		if err != nil {
			return nil, false
		}
		for _, name := range names {
			claims[name] = true
		}
	}
	return claims, true
}

// Status fails while the master is missing: ADD could not work.
func Status(args *skel.CmdArgs) error {
	cfg, err := Parse(args.StdinData)
	if err != nil {
		return err
	}
	if err := settleMaster(cfg); err != nil {
		return cnierr.Unavailable("master: %v", err)
	}
	if _, err := hostnet.Master(cfg.Master); err != nil {
		return cnierr.Unavailable("master %q: %v", cfg.Master, err)
	}
	return nil
}

// ownedBy lists the addresses whose records name key: how DEL finds its
// routes when the runtime has lost prevResult.
func ownedBy(store attachstate.Store, key attachstate.Key) ([]netip.Addr, error) {
	names, err := store.Names()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, name := range names {
		ip, ok := recordAddr(name)
		if !ok {
			continue
		}
		var rec owner
		if found, err := store.Load(name, &rec); err != nil || !found || rec.Key != key {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}

func linkError(cfg *Config, err error) error {
	var conflict *hostnet.ConflictError
	switch {
	case errors.Is(err, hostnet.ErrNoMaster):
		return cnierr.InvalidConfig("master", cfg.Master, "no such link in the node's network namespace")
	case errors.As(err, &conflict):
		return cnierr.InvalidConfig("bridge", cfg.Bridge, conflict.Reason+"; refusing to take it over")
	}
	return cnierr.Internal("bridge "+cfg.Bridge, err)
}
