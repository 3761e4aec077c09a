package hostroute

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/hostnet"
	"github.com/cnichain/plugins/pkg/nat"
)

// A macvlan pod's gateway is a router of the lan, so a Service's ClusterIP
// or the node-local DNS address never meets the node's kube-proxy rules.
// viaNode routes those destinations in the pod through the node instead,
// over the path the pod already has to it: the sub-device.

// ViaNodePlan is what an attachment's viaNode installs: routes in the pod
// and, unless replyViaNode is false, reply paths on the node.
type ViaNodePlan struct {
	Routes  []hostnet.PodRoute `json:"routes"`
	Replies []nat.ReplyPath    `json:"replies,omitempty"`
}

// PlanViaNode plans cfg.ViaNode for the attachment key whose pod has the
// addresses pod, on a node whose addresses facing the pods are nodeAddrs.
// Each destination goes through the node's address in the subnet of the
// pod's first address of its family (as the host route's source does), so
// the choice is the same on every ADD. A destination of a family the pod
// has no address in, one that overlaps the pod's own subnet (reached on its
// link already), or a pod subnet where the node has no address, is an
// error naming the key and the value.
func PlanViaNode(cfg *Config, key attachstate.Key, pod []netip.Prefix, nodeAddrs []netip.Prefix) (*ViaNodePlan, error) {
	plan := &ViaNodePlan{}
	for i, dst := range cfg.ViaNode {
		field := fmt.Sprintf("viaNode[%d]", i)
		var own netip.Prefix
		for _, p := range pod {
			if p.Addr().Is4() == dst.Addr().Is4() {
				own = p
				break
			}
		}
		family := "IPv4"
		if dst.Addr().Is6() {
			family = "IPv6"
		}
		if !own.IsValid() {
			return nil, cnierr.InvalidConfig(field, dst, "the pod has no "+family+" address to route it from")
		}
		if dst.Overlaps(own.Masked()) {
			return nil, cnierr.InvalidConfig(field, dst, fmt.Sprintf("overlaps the pod's own subnet %s, which the pod reaches on its link", own.Masked()))
		}
		via := PreferredSource(nodeAddrs, own.Addr())
		if !via.IsValid() {
			return nil, cnierr.InvalidConfig(field, dst, fmt.Sprintf("the node has no %s address in the pod's subnet %s on %q to route it through", family, own.Masked(), cfg.Master))
		}
		plan.Routes = append(plan.Routes, hostnet.PodRoute{Dst: dst, Via: via})
		reply := nat.ReplyPath{Pod: own.Addr(), Node: via, Comment: nat.Comment(key.Network, key.ContainerID)}
		samePod := func(r nat.ReplyPath) bool { return r.Pod == reply.Pod }
		if *cfg.ReplyViaNode && !slices.ContainsFunc(plan.Replies, samePod) {
			plan.Replies = append(plan.Replies, reply)
		}
	}
	return plan, nil
}

// viaNodeRecord is what an attachment's viaNode installed and how, saved
// (as stateDir/vianode-<key ID>) before anything is installed.
type viaNodeRecord struct {
	attachstate.Key
	ViaNodePlan
	Netns string `json:"netns,omitempty"`
	// MAC is the sub-device's, which the pod's neighbour entries name.
	MAC             string `json:"mac"`
	Backend         string `json:"backend"`
	IptablesFlavour string `json:"iptablesFlavour,omitempty"`
	// Added is when ADD ran: of records of one pod address (a container
	// whose DEL has not come yet, its address handed on), a restore gives
	// the reply path to the newest.
	Added time.Time `json:"added,omitzero"`
}

// viaNodePrefix names viaNode's records by plugin and purpose: a stateDir
// may be portmap-lite's too, whose records are named by the key's ID
// alone, as an earlier release named these.
const viaNodePrefix = "vianode-"

func viaNodeRecordName(key attachstate.Key) string { return viaNodePrefix + key.ID() }

// isViaNodeRecordName tells the names of viaNode's records, and the names
// earlier releases gave them (which portmap-lite's records have too: what
// is in them tells).
func isViaNodeRecordName(name string) (ours, earlier bool) {
	if id, found := strings.CutPrefix(name, viaNodePrefix); found {
		return attachstate.IsKeyID(id), false
	}
	return false, attachstate.IsKeyID(name)
}

// isViaNode tells a viaNode record from another plugin's record of the
// same name (an earlier release's name): viaNode always routes something.
func (rec *viaNodeRecord) isViaNode() bool { return len(rec.Routes) > 0 }

// loadViaNode reads the attachment's viaNode record, under its name or an
// earlier release's, and returns the name it has.
func loadViaNode(store attachstate.Store, key attachstate.Key) (rec *viaNodeRecord, name string, found bool, err error) {
	rec, name = &viaNodeRecord{}, viaNodeRecordName(key)
	if found, err = store.Load(name, rec); found || err != nil {
		return rec, name, found, err
	}
	earlier := &viaNodeRecord{}
	if found, err := store.Load(key.ID(), earlier); err == nil && found && earlier.isViaNode() {
		return earlier, key.ID(), true, nil
	}
	return rec, name, false, nil
}

func (rec *viaNodeRecord) replies() nat.ReplyBackend {
	return nat.ReplyBackendFor(rec.Backend, rec.IptablesFlavour)
}

// PodNetns and Describe are what a restore needs of a record.
func (rec *viaNodeRecord) PodNetns() string { return rec.Netns }
func (rec *viaNodeRecord) Describe(name string) string {
	return fmt.Sprintf("viaNode of network %q, container %s", rec.Network, rec.ContainerID)
}

// withRoutes is prev with the plan's routes added, as the pod has them.
func withRoutes(prev *current.Result, plan *ViaNodePlan) {
	for _, r := range plan.Routes {
		dst := r.Dst
		prev.Routes = append(prev.Routes, &types.Route{
			Dst: net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
			GW:  r.Via.AsSlice(),
		})
	}
}

// installViaNode records and installs plan for the attachment; on failure
// it removes what it installed.
func installViaNode(cfg *Config, store attachstate.Store, rec *viaNodeRecord, ifname string) (err error) {
	name := viaNodeRecordName(rec.Key)
	if err := store.Save(name, rec); err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	defer func() {
		if err != nil {
			_ = removeViaNode(store, name, rec, ifname)
		}
	}()
	mac, _ := net.ParseMAC(rec.MAC)
	if err := hostnet.SetPodRoutes(rec.Netns, ifname, rec.Routes, mac); err != nil {
		return cnierr.Internal("viaNode routes in the pod", err)
	}
	if len(rec.Replies) > 0 {
		if err := rec.replies().Install(rec.Replies); err != nil {
			return cnierr.Internal("viaNode reply path ("+rec.Backend+")", err)
		}
	}
	return nil
}

// removeViaNode removes what rec installed, and rec (called name): the
// pod's routes while its netns is there, the reply paths always.
func removeViaNode(store attachstate.Store, name string, rec *viaNodeRecord, ifname string) error {
	var errs []error
	if rec.Netns != "" {
		errs = append(errs, hostnet.DelPodRoutes(rec.Netns, ifname, rec.Routes))
	}
	if len(rec.Replies) > 0 {
		errs = append(errs, rec.replies().Uninstall(rec.Replies))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return store.Delete(name)
}

// delViaNode is DEL's part for viaNode: from the attachment's record; a
// torn one leaves what the key names, the reply paths commented with its
// network and container in the configured backend.
func delViaNode(cfg *Config, store attachstate.Store, key attachstate.Key, netns string) error {
	rec, name, found, err := loadViaNode(store, key)
	if attachstate.IsTorn(err) {
		fmt.Fprintf(os.Stderr, "macvlan-host-route: %v; removing the reply paths the attachment's key names\n", err)
		b := nat.ReplyBackendFor(cfg.Backend, cfg.IptablesFlavour)
		paths, err := nat.NetworkReplies(b, cfg.Name)
		if err != nil {
			return err
		}
		var own []nat.ReplyPath
		for _, p := range paths {
			if p.Comment == nat.Comment(key.Network, key.ContainerID) {
				own = append(own, p)
			}
		}
		if len(own) > 0 {
			if err := b.Uninstall(own); err != nil {
				return err
			}
		}
		return store.Delete(name)
	}
	if err != nil || !found {
		return err
	}
	if netns != "" {
		rec.Netns = netns
	}
	return removeViaNode(store, name, rec, key.IfName)
}

// checkViaNode fails naming the first part of the attachment's viaNode
// that is missing: a pod route, a neighbour entry, a reply path.
func checkViaNode(store attachstate.Store, key attachstate.Key, netns string) error {
	rec, _, found, err := loadViaNode(store, key)
	if err != nil || !found {
		return err
	}
	mac, _ := net.ParseMAC(rec.MAC)
	what, err := hostnet.MissingPodRoute(netns, key.IfName, rec.Routes, mac)
	if err != nil {
		return cnierr.Internal("the pod's routes", err)
	}
	if what == "" && len(rec.Replies) > 0 {
		if what, err = nat.MissingReply(rec.replies(), rec.Replies); err != nil {
			return cnierr.Internal("reply paths", err)
		}
	}
	if what != "" {
		return cnierr.CheckFailed("viaNode: %s is missing", what)
	}
	return nil
}

// gcViaNode removes the viaNode of this network's attachments that are not
// valid, then the reply paths of this network (told by their comment) that
// neither a record nor a valid attachment accounts for.
func gcViaNode(cfg *Config, store attachstate.Store, names []string) []error {
	var errs []error
	sawRecord := false
	accounted := map[string]bool{}
	for _, v := range cfg.ValidAttachments {
		accounted[nat.Comment(cfg.Name, v.ContainerID)] = true
	}
	for _, name := range names {
		ours, earlier := isViaNodeRecordName(name)
		if !ours && !earlier {
			continue
		}
		var rec viaNodeRecord
		found, err := store.Load(name, &rec)
		if attachstate.IsTorn(err) {
			if ours {
				fmt.Fprintf(os.Stderr, "macvlan-host-route: %v\n", err)
			}
			continue
		}
		if err != nil || !found {
			errs = append(errs, err)
			continue
		}
		if !rec.isViaNode() {
			continue // portmap-lite's record, in a stateDir they share
		}
		sawRecord = true
		if rec.Network != cfg.Name || rec.In(cfg.ValidAttachments) {
			accounted[nat.Comment(rec.Network, rec.ContainerID)] = true
			continue
		}
		errs = append(errs, removeViaNode(store, name, &rec, rec.IfName))
	}
	// Reply paths of this network exist only where it routes viaNode; a
	// node that never did need not have the backend's tools.
	if len(cfg.ViaNode) == 0 && !sawRecord {
		return errs
	}
	b := nat.ReplyBackendFor(cfg.Backend, cfg.IptablesFlavour)
	paths, err := nat.NetworkReplies(b, cfg.Name)
	errs = append(errs, err)
	var orphans []nat.ReplyPath
	for _, p := range paths {
		if !accounted[p.Comment] {
			orphans = append(orphans, p)
		}
	}
	if len(orphans) > 0 {
		errs = append(errs, b.Uninstall(orphans))
	}
	return errs
}
