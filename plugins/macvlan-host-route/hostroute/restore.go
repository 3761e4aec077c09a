package hostroute

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/hostnet"
	"github.com/cnichain/plugins/pkg/nat"
)

// Restore puts back, from the records in stateDir, what a network manager
// or a reconfiguration took away: each sub-device (bridge mode, up), the
// node addresses it answers for, the host route of every pod address, and
// the reply paths of viaNode that a firewall reload took.
// It touches nothing that is there and removes nothing. Pods that are gone
// (their netns no longer exists) are skipped, and said so on out: GC is
// what removes them. ADD, DEL and GC wait while it runs.
func Restore(stateDir string, out io.Writer) error {
	store := attachstate.Store{Dir: stateDir}
	isRoute := func(name string) bool { _, ok := recordAddr(name); return ok }
	loaded, unlock, err := attachstate.Restoring[owner](store, out, isRoute)
	if err != nil {
		return err
	}
	defer unlock()
	routes := map[string][]podAddr{} // per sub-device
	devices := map[string]owner{}    // a record naming each sub-device's master
	for _, l := range loaded {
		ip, _ := recordAddr(l.Name)
		rec := *l.Rec
		mac, _ := net.ParseMAC(rec.MAC) // none recorded: the kernel asks
		routes[rec.Bridge] = append(routes[rec.Bridge], podAddr{ip, mac})
		if d := devices[rec.Bridge]; d.Master == "" {
			devices[rec.Bridge] = rec
		}
	}
	var errs []error
	restored := 0
	for _, bridge := range slices.Sorted(maps.Keys(routes)) {
		n, err := restoreDevice(store, devices[bridge], routes[bridge])
		restored += n
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", bridge, err))
		}
	}
	fmt.Fprintf(out, "restored %d missing host routes of %d sub-devices from %s\n", restored, len(routes), stateDir)
	// The reply paths of viaNode, where a firewall reload took them.
	vias, err := attachstate.LoadLive[viaNodeRecord](store, out, func(name string) bool {
		ours, earlier := isViaNodeRecordName(name)
		return ours || earlier
	})
	errs = append(errs, err)
	// One repair per backend and flavour for every record's paths: each
	// reads the whole nat table, or map, of both families.
	type installer struct{ backend, flavour string }
	paths := map[installer][]nat.ReplyPath{}
	// Oldest first: of two records of one pod address, the newest's path
	// is the one put back.
	slices.SortStableFunc(vias, func(a, b attachstate.Loaded[*viaNodeRecord]) int { return a.Rec.Added.Compare(b.Rec.Added) })
	for _, v := range vias {
		if !v.Rec.isViaNode() {
			continue // portmap-lite's record, in a stateDir they share
		}
		by := installer{v.Rec.Backend, v.Rec.IptablesFlavour}
		paths[by] = append(paths[by], v.Rec.Replies...)
	}
	for by, list := range paths {
		if len(list) > 0 {
			errs = append(errs, nat.RepairReplies(nat.ReplyBackendFor(by.backend, by.flavour), list))
		}
	}
	return errors.Join(errs...)
}

// podAddr is a pod address a host route leads to, and the MAC the node
// reaches it at (nil: the kernel asks).
type podAddr struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// restoreDevice restores one sub-device, its answers and its routes to
// pods, and returns how many routes it added.
func restoreDevice(store attachstate.Store, dev owner, pods []podAddr) (int, error) {
	var ans answers
	if _, err := store.Load(answersRecord(dev.Bridge), &ans); err != nil && !attachstate.IsTorn(err) {
		return 0, err
	}
	var link netlink.Link
	var err error
	if dev.Master == "" {
		// A record older than masters in records: only a sub-device that is
		// still there can be routed through.
		index := hostnet.LinkIndex(dev.Bridge)
		if index == 0 {
			return 0, errors.New("missing, and its records do not name its master; the next ADD recreates it")
		}
		link, err = netlink.LinkByIndex(index)
	} else {
		mac, _ := net.ParseMAC(ans.MAC) // none recorded: the kernel picks one
		link, err = hostnet.EnsureMacvlanBridge(dev.Bridge, dev.Master, dev.MTU, func() net.HardwareAddr { return mac })
	}
	if err != nil {
		return 0, err
	}
	// A sub-device made anew has lost its list of stateDirs.
	release, err := lockSubDevice(dev.Bridge)
	if err != nil {
		return 0, err
	}
	err = listStateDir(link, store.Dir)
	release()
	if err != nil {
		return 0, err
	}
	var masterAddrs []netip.Prefix
	if master, err := hostnet.Master(dev.Master); err == nil {
		masterAddrs, _ = hostnet.GlobalAddresses(master)
	}
	var errs []error
	for _, p := range ans.held() {
		errs = append(errs, hostnet.EnsureAddress(link, p))
	}
	added := 0
	for _, p := range pods {
		if ok, err := hostnet.HasHostRoute(link.Attrs().Index, p.IP); err != nil || ok {
			// The route is there; its pinned neighbour may not be.
			errs = append(errs, err, hostnet.PinNeighbour(link.Attrs().Index, p.IP, p.MAC))
			continue
		}
		if err := hostnet.AddHostRoute(link, p.IP, PreferredSource(masterAddrs, p.IP), p.MAC); err != nil {
			errs = append(errs, err)
			continue
		}
		added++
	}
	return added, errors.Join(errs...)
}

// RestoreMain is `macvlan-host-route restore [-state-dir DIR]`, run by hand
// or by the systemd unit; it returns the exit status.
func RestoreMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("macvlan-host-route restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", DefaultStateDir, "the stateDir of the networks to restore")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := Restore(*stateDir, stdout); err != nil {
		fmt.Fprintf(stderr, "macvlan-host-route restore: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		return 1
	}
	return 0
}
