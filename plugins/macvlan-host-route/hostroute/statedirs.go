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
// when it is listed already, and when the list would not fit (then GC in
// that stateDir removes no unclaimed route: it cannot tell whose it is).
func aliasWith(link netlink.Link, dir string) (alias string, changed bool) {
	dirs, _ := stateDirsOf(link)
	dir = filepath.Clean(dir)
	if slices.Contains(dirs, dir) {
		return "", false
	}
	data, err := json.Marshal(append(dirs, dir))
	if err != nil || len(aliasPrefix)+len(data) > aliasMax {
		return "", false
	}
	return aliasPrefix + string(data), true
}

// listStateDir lists dir in the sub-device's alias, if it is not there.
func listStateDir(link netlink.Link, dir string) error {
	alias, changed := aliasWith(link, dir)
	if !changed {
		return nil
	}
	return netlink.LinkSetAlias(link, alias)
}
