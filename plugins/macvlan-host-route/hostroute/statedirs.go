package hostroute

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// A sub-device is shared by every network on its master, whatever their
// stateDirs: its alias lists those stateDirs, so that a GC can tell a
// route no record of any of them claims (a leak it may remove) from a
// route of another stateDir's network (never its own to remove). The
// kernel keeps the list with the sub-device, node-wide, at no cost to a
// packet.
const aliasPrefix = "cnichain-statedirs:"

// aliasMax is the kernel's limit on an alias (IFALIASZ, 256, with its NUL).
const aliasMax = 255

// aliasOverflow is the alias of a sub-device whose stateDirs do not fit in
// one: it lists none, so that no GC takes another's route for unclaimed.
// It stays so for the sub-device's life.
const aliasOverflow = aliasPrefix + "too many to list"

// stateDirsOf returns the stateDirs the sub-device's alias lists; ok is
// false when it lists none (a sub-device of an earlier release, or one
// whose list would not fit).
func stateDirsOf(link netlink.Link) (dirs []string, ok bool) {
	text, found := strings.CutPrefix(link.Attrs().Alias, aliasPrefix)
	if !found || json.Unmarshal([]byte(text), &dirs) != nil {
		return nil, false
	}
	return dirs, true
}

// aliasWith is the sub-device's alias with dir listed; changed is false
// when it is listed already. When the list would not fit, it is
// aliasOverflow: then GC in any stateDir removes no unclaimed route, for
// it cannot tell whose it is (listing some would let their GC take the
// routes of those left out).
func aliasWith(link netlink.Link, dir string) (alias string, changed bool) {
	if link.Attrs().Alias == aliasOverflow {
		return "", false
	}
	dirs, _ := stateDirsOf(link)
	dir = filepath.Clean(dir)
	if slices.Contains(dirs, dir) {
		return "", false
	}
	data, err := json.Marshal(append(dirs, dir))
	if err != nil || len(aliasPrefix)+len(data) > aliasMax {
		return aliasOverflow, true
	}
	return aliasPrefix + string(data), true
}

// listStateDir lists dir in the sub-device's alias, if it is not there.
// The caller holds lockSubDevice: the alias is read anew under it, for an
// ADD or a restore of another stateDir may have changed it since link was
// read, and a list computed from the old one would lose theirs.
func listStateDir(link netlink.Link, dir string) error {
	fresh, err := netlink.LinkByIndex(link.Attrs().Index)
	if err != nil {
		return err
	}
	alias, changed := aliasWith(fresh, dir)
	if !changed {
		return nil
	}
	return netlink.LinkSetAlias(fresh, alias)
}
