package hostroute

import (
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/hostnet"
)

// answers is what a sub-device answers for: copies of master addresses,
// which the record lets a later ADD take away once the master no longer
// has them, and hostAddresses; a restore puts both back.
type answers struct {
	Copies []netip.Prefix `json:"copies,omitempty"`
	Listed []netip.Prefix `json:"listed,omitempty"`
	// MAC is the sub-device's, which a restore gives it back: the pods'
	// neighbour caches hold it.
	MAC string `json:"mac,omitempty"`
}

func (a answers) equal(b answers) bool {
	return a.MAC == b.MAC && slices.Equal(a.Copies, b.Copies) && slices.Equal(a.Listed, b.Listed)
}

func answersRecord(bridge string) string { return "answers-" + bridge }

// answerForNode makes the sub-device answer for the node's addresses that
// pods talk to: hostAddresses when set, else copies of the master's that
// Answered picks, brought up to date (added and taken away) on every ADD.
// It changes addresses of the sub-device only, which is ours. The record
// is read, changed and written back: the caller holds the sub-device's
// lock (lockSubDevice).
func answerForNode(cfg *Config, link netlink.Link, masterAddrs []netip.Prefix, store attachstate.Store) error {
	want, err := nodeAnswers(cfg, masterAddrs)
	if err != nil {
		return err
	}

	var rec answers
	if _, err := store.Load(answersRecord(cfg.Bridge), &rec); attachstate.IsTorn(err) {
		// Moved aside: the copies it listed are found again by this ADD.
		fmt.Fprintf(os.Stderr, "macvlan-host-route: %v\n", err)
	} else if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	was := rec
	rec.MAC = link.Attrs().HardwareAddr.String()
	var had []netip.Prefix
	if len(cfg.HostAddresses) == 0 {
		had, rec.Copies = rec.Copies, want
	} else {
		rec.Listed = want
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

// nodeAnswers are the addresses the sub-device must answer for now, given
// the master's.
func nodeAnswers(cfg *Config, masterAddrs []netip.Prefix) ([]netip.Prefix, error) {
	if len(cfg.HostAddresses) > 0 {
		out := make([]netip.Prefix, len(cfg.HostAddresses))
		for i, a := range cfg.HostAddresses {
			out[i] = netip.PrefixFrom(a, a.BitLen())
		}
		return out, nil
	}
	arpIgnore, err := hostnet.ARPIgnore(cfg.Bridge)
	if err != nil {
		return nil, cnierr.Internal("arp_ignore", err)
	}
	return Answered(masterAddrs, arpIgnore), nil
}
