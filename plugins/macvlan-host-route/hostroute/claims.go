package hostroute

import (
	"net/netip"
	"strings"

	"github.com/cnichain/plugins/pkg/attachstate"
)

// OwnsLink tells a sub-device of ours by its alias (the list of the
// stateDirs of the networks routed through it): what the node agent reacts
// to when a link is deleted. The links of pods, which the reference macvlan
// creates on the node and moves into their netns, carry none.
func OwnsLink(alias string) bool { return strings.HasPrefix(alias, aliasPrefix) }

// Claimed tells whether a record in stateDir claims the host route (and
// the pinned neighbour) of any of the pod addresses, for a pod whose netns
// is still there, once no ADD, DEL or GC is under way in stateDir: a route
// deleted with its record was its DEL's or GC's to delete. A record that
// cannot be read claims it: a restore then says why.
func Claimed(stateDir string, pods []netip.Addr) bool {
	store := attachstate.Store{Dir: stateDir}
	unlock, err := store.Quiet()
	if err != nil {
		return true
	}
	defer unlock()
	for _, ip := range pods {
		var rec owner
		found, err := store.Load(recordName(ip), &rec)
		if err != nil || (found && !attachstate.NetnsGone(rec.PodNetns())) {
			return true
		}
	}
	return false
}
