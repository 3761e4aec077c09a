package hostroute

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/hostnet"
)

// answers is what a sub-device answers for: copies of master addresses
// (which an earlier release made, and which stay while pods it routed may
// be there) and each network's hostAddresses; a restore puts them all
// back.
type answers struct {
	Copies []netip.Prefix `json:"copies,omitempty"`
	// ListedBy is each network's hostAddresses: networks of one stateDir
	// share the sub-device and this record, each with its own.
	ListedBy map[string][]netip.Prefix `json:"listedBy,omitempty"`
	// Listed is an earlier release's one list for every network.
	Listed []netip.Prefix `json:"listed,omitempty"`
	// MAC is the sub-device's, which a restore gives it back: the pods'
	// neighbour entries hold it.
	MAC string `json:"mac,omitempty"`
}

func (a answers) equal(b answers) bool {
	return a.MAC == b.MAC && slices.Equal(a.Copies, b.Copies) && slices.Equal(a.Listed, b.Listed) &&
		maps.EqualFunc(a.ListedBy, b.ListedBy, slices.Equal)
}

// held is every address the record says the sub-device answers for.
func (a answers) held() []netip.Prefix {
	out := slices.Concat(a.Copies, a.Listed)
	for _, network := range slices.Sorted(maps.Keys(a.ListedBy)) {
		out = append(out, a.ListedBy[network]...)
	}
	return out
}

func answersRecord(bridge string) string { return "answers-" + bridge }

// answerForNode makes the sub-device answer for hostAddresses when set.
// Copies of the master's addresses, which an earlier release put on it for
// the pods to find the node, are brought up to date while a pod is routed
// through it (it may be one of that release's, which asks for the node),
// and taken away by the first ADD that finds none: pods of this release
// are pinned to the node's addresses instead (NodePins). It changes
// addresses of the sub-device only, which is ours. The record is read,
// changed and written back: the caller holds the sub-device's lock
// (lockSubDevice).
func answerForNode(cfg *Config, link netlink.Link, masterAddrs []netip.Prefix, store attachstate.Store) error {
	var rec answers
	if _, err := store.Load(answersRecord(cfg.Bridge), &rec); attachstate.IsTorn(err) {
		// Moved aside: the copies it listed are what the sub-device holds
		// of the master's addresses.
		fmt.Fprintf(os.Stderr, "macvlan-host-route: %v\n", err)
		held, err := hostnet.GlobalAddresses(link)
		if err != nil {
			return cnierr.Internal("addresses of "+cfg.Bridge, err)
		}
		for _, p := range held {
			if slices.Contains(masterAddrs, p) {
				rec.Copies = append(rec.Copies, p)
			}
		}
	} else if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	var want []netip.Prefix
	switch {
	case len(cfg.HostAddresses) > 0:
		want = listedAnswers(cfg)
	case len(rec.Copies) > 0:
		routed, err := podsRouted(link, store)
		if err != nil {
			return cnierr.Internal("state "+cfg.StateDir, err)
		}
		if routed {
			arpIgnore, err := hostnet.ARPIgnore(cfg.Bridge)
			if err != nil {
				return cnierr.Internal("arp_ignore", err)
			}
			want = Answered(masterAddrs, arpIgnore)
		}
	}
	was := rec
	was.ListedBy = maps.Clone(rec.ListedBy)
	rec.MAC = link.Attrs().HardwareAddr.String()
	var had []netip.Prefix
	if len(cfg.HostAddresses) == 0 {
		had, rec.Copies = rec.Copies, want
		delete(rec.ListedBy, cfg.Name)
	} else {
		if rec.ListedBy == nil {
			rec.ListedBy = map[string][]netip.Prefix{}
		}
		rec.ListedBy[cfg.Name] = want
	}
	// Most ADDs find it as it was: no write then.
	if !rec.equal(was) {
		if err := store.Save(answersRecord(cfg.Bridge), rec); err != nil {
			return cnierr.Internal("state "+cfg.StateDir, err)
		}
	}
	for _, p := range had {
		if !slices.Contains(want, p) {
			if err := hostnet.DelAddress(link, p); err != nil {
				return cnierr.Internal("bridge "+cfg.Bridge, err)
			}
		}
	}
	for _, p := range want {
		if err := hostnet.EnsureAddress(link, p); err != nil {
			return cnierr.Internal("bridge "+cfg.Bridge, err)
		}
	}
	return nil
}

// recordedMAC is the sub-device's MAC as its record has it; nil when there
// is none or it cannot be read (answerForNode says so).
func recordedMAC(store attachstate.Store, bridge string) net.HardwareAddr {
	var rec answers
	if found, err := store.Load(answersRecord(bridge), &rec); !found || err != nil {
		return nil
	}
	mac, _ := net.ParseMAC(rec.MAC)
	return mac
}

// listedAnswers are hostAddresses as the sub-device holds them.
func listedAnswers(cfg *Config) []netip.Prefix {
	out := make([]netip.Prefix, len(cfg.HostAddresses))
	for i, a := range cfg.HostAddresses {
		out[i] = netip.PrefixFrom(a, a.BitLen())
	}
	return out
}

// podsRouted reports whether a record of store's stateDir, or of another
// the sub-device lists, routes a pod through it; true when it lists none
// (a sub-device of an earlier release): its pods cannot be told.
func podsRouted(link netlink.Link, store attachstate.Store) (bool, error) {
	dirs, ok := stateDirsOf(link)
	if !ok {
		return true, nil
	}
	for _, dir := range append(dirs, store.Dir) {
		names, err := attachstate.Store{Dir: dir}.Names()
		if err != nil {
			return false, err
		}
		if slices.ContainsFunc(names, func(n string) bool { _, ok := recordAddr(n); return ok }) {
			return true, nil
		}
	}
	return false, nil
}

// expectedAnswers are the addresses CHECK wants on the sub-device: the
// listed ones, or the copies its record says it holds.
func expectedAnswers(cfg *Config, store attachstate.Store) ([]netip.Prefix, error) {
	if len(cfg.HostAddresses) > 0 {
		return listedAnswers(cfg), nil
	}
	var rec answers
	if _, err := store.Load(answersRecord(cfg.Bridge), &rec); err != nil && !attachstate.IsTorn(err) {
		return nil, cnierr.Internal("state "+cfg.StateDir, err)
	}
	return rec.Copies, nil
}
