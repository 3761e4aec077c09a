package servicecidr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/cnichain/plugins/plugins/macvlan-host-route/hostroute"
)

// PluginType is the plugin whose viaNode the cluster's ServiceCIDRs go in.
const PluginType = "macvlan-host-route"

// Rewrite returns the conflist source with the cluster's prefixes in the
// viaNode of every macvlan-host-route plugin, beside the plugin's own
// (kept: a user may route more than the Services through the node, such
// as a node-local DNS address): sorted, de-duplicated, masked. A prefix
// the plugin would refuse is left out (see admit). Every other key and
// plugin is kept, its value as it was but for whitespace; the conflist's
// and those plugins' keys come out sorted (the others' in their order),
// all indented, so the output is the same for the same input. A plugin
// with no viaNode and no prefixes to add is left without. A conflist
// without such a plugin, or with a viaNode the plugin refuses, is an
// error: there is nowhere to put the prefixes.
//
// Keys are found as the plugin and the CNI runtime find them, with
// encoding/json, which ignores their case: a viaNode spelt "vianode" is
// the one rewritten (under its own spelling), and a plugin with two keys
// folding to "viaNode", or to "type", is an error, for which of them the
// plugin reads depends on their order.
func Rewrite(source []byte, cluster []netip.Prefix) ([]byte, error) {
	r, err := rewrite(source, cluster)
	if err != nil {
		return nil, err
	}
	return r.out, nil
}

// rewritten is what rewrite makes of a conflist.
type rewritten struct {
	out []byte
	// leftOut says why each prefix left out of a plugin's viaNode is.
	leftOut []error
	// viaNode is each macvlan-host-route plugin's viaNode as written (nil
	// where it has none), by the plugin's index.
	viaNode map[int][]netip.Prefix
	// added is the cluster's prefixes written in any plugin's viaNode.
	added []netip.Prefix
}

// rewrite is Rewrite, which also tells what it wrote and left out.
func rewrite(source []byte, cluster []netip.Prefix) (*rewritten, error) {
	conflist, plugins, err := decodeConflist(source)
	if err != nil {
		return nil, err
	}
	ours, err := hostRoutes(plugins)
	if err != nil {
		return nil, err
	}
	if len(ours) == 0 {
		return nil, fmt.Errorf("conflist has no %q plugin: nowhere to put the cluster's ServiceCIDRs", PluginType)
	}
	pods := podNetworkOf(plugins)
	r := &rewritten{viaNode: map[int][]netip.Prefix{}}
	for _, plugin := range ours {
		i := plugin.index
		kept, refused := admit(plugin.own, pods, cluster)
		for _, rf := range refused {
			r.leftOut = append(r.leftOut, fmt.Errorf("ServiceCIDR value %s: left out of conflist plugins[%d] (%s): %w", rf.p, i, PluginType, rf.err))
		}
		r.added = append(r.added, kept...)
		all := union(plugin.own, kept)
		if len(all) == 0 {
			continue
		}
		r.viaNode[i] = all
		strs := make([]string, len(all))
		for j, p := range all {
			strs[j] = p.String()
		}
		if plugin.keys[plugin.viaNodeKey], err = marshal(strs, false); err != nil {
			return nil, err
		}
		if plugins[i], err = marshal(plugin.keys, false); err != nil {
			return nil, err
		}
	}
	r.added = union(r.added)
	if conflist["plugins"], err = marshal(plugins, false); err != nil {
		return nil, err
	}
	if r.out, err = marshal(conflist, true); err != nil {
		return nil, err
	}
	return r, nil
}

// refusal is a prefix admit leaves out, and why.
type refusal struct {
	p   netip.Prefix
	err error
}

// admit is what of the cluster's prefixes a plugin whose own viaNode is
// own, in a conflist whose pods are pods, may hold: each as viaNodeEntry
// makes it, of a family the pods have, overlapping none of their subnets
// (the plugin refuses an entry of a family its pod has no address in, or
// one overlapping the pod's own subnet, failing the pod's ADD). The pods'
// families are those the conflist's ipam gives them where it tells; else
// those of own (a user whose own viaNode lists IPv4 ranges alone has
// IPv4-only pods, most likely); else, own being empty, every family, and
// a pod lacking one fails where the cluster has it.
func admit(own []netip.Prefix, pods podNetwork, cluster []netip.Prefix) (kept []netip.Prefix, left []refusal) {
	has := func(p netip.Prefix) bool {
		if pods.known() {
			return pods.has(p)
		}
		return len(own) == 0 || slices.ContainsFunc(own, func(o netip.Prefix) bool { return o.Addr().Is4() == p.Addr().Is4() })
	}
	for _, c := range cluster {
		p, err := viaNodeEntry(c)
		if err != nil {
			left = append(left, refusal{c, err})
			continue
		}
		if !has(p) {
			family, other := "IPv6", "IPv4"
			if p.Addr().Is4() {
				family, other = other, family
			}
			if pods.known() {
				err = fmt.Errorf("%s, and the pods have %s addresses alone, as %s gives them: the plugin refuses an entry of a family the pod has no address in", family, other, pods.from)
			} else {
				err = fmt.Errorf("%s, and the plugin's own viaNode lists %s ranges alone: its pods are taken to have no %s address, for which the plugin refuses the entry (list an %s range of your own to take the cluster's)", family, other, family, family)
			}
			left = append(left, refusal{c, err})
			continue
		}
		if i := slices.IndexFunc(pods.subnets, p.Overlaps); i >= 0 {
			left = append(left, refusal{c, fmt.Errorf("overlaps the pods' own subnet %s, as %s gives it: the plugin refuses an entry overlapping the pod's subnet, which the pod reaches on its link", pods.subnets[i], pods.from)})
			continue
		}
		kept = append(kept, p)
	}
	return kept, left
}

// IsRewriteOf tells whether installed is what Rewrite makes of source with
// some prefixes: for each macvlan-host-route plugin, those in installed's
// viaNode but not in source's (a prefix one plugin was given, another
// may have left out, or listed itself).
func IsRewriteOf(installed, source []byte) bool {
	got, err := hostRoutesOf(installed)
	if err != nil {
		return false
	}
	own, err := hostRoutesOf(source)
	if err != nil || len(got) != len(own) {
		return false
	}
	var cluster []netip.Prefix
	for i := range got {
		if got[i].index != own[i].index {
			return false
		}
		for _, p := range got[i].own {
			if !slices.Contains(own[i].own, p) {
				cluster = append(cluster, p)
			}
		}
	}
	again, err := Rewrite(source, union(cluster))
	return err == nil && bytes.Equal(again, installed)
}

// hostRoutesOf is hostRoutes of a conflist's plugins.
func hostRoutesOf(conflist []byte) ([]hostRoute, error) {
	_, plugins, err := decodeConflist(conflist)
	if err != nil {
		return nil, err
	}
	return hostRoutes(plugins)
}

// hostRoute is a macvlan-host-route plugin of a conflist.
type hostRoute struct {
	// index is the plugin's in the conflist's plugins.
	index int
	keys  map[string]json.RawMessage
	// viaNodeKey is the key the plugin reads viaNode from: the one
	// folding to "viaNode" (encoding/json ignores case), else "viaNode".
	viaNodeKey string
	// own is its viaNode.
	own []netip.Prefix
}

// hostRoutes is the conflist's macvlan-host-route plugins, in order:
// those whose "type" is PluginType, found as encoding/json finds it
// (whatever the key's case). A plugin whose type may be ours with two keys
// folding to "type", or that is ours with two folding to "viaNode", or
// with a viaNode the plugin refuses, is an error naming it: which key the
// plugin (and the CNI runtime, for the type) reads depends on their order
// (libcni sorts them: "vianode" after "viaNode"), and a rewrite would
// leave the other in place.
func hostRoutes(plugins []json.RawMessage) ([]hostRoute, error) {
	var out []hostRoute
	for i, raw := range plugins {
		var keys map[string]json.RawMessage
		if json.Unmarshal(raw, &keys) != nil {
			continue // not ours to change, whatever it is
		}
		types := keysFolding(keys, "type")
		if !slices.ContainsFunc(types, func(k string) bool {
			var typ string
			return json.Unmarshal(keys[k], &typ) == nil && typ == PluginType
		}) {
			continue
		}
		if len(types) > 1 {
			return nil, fmt.Errorf("conflist plugins[%d] (%s): keys %s: the plugin's type is one of them, depending on their order; keep one", i, PluginType, quoteAll(types))
		}
		plugin := hostRoute{index: i, keys: keys, viaNodeKey: "viaNode"}
		switch names := keysFolding(keys, "viaNode"); {
		case len(names) > 1:
			return nil, fmt.Errorf("conflist plugins[%d] (%s): keys %s: the plugin reads its viaNode from one of them alone (it ignores case), depending on their order; keep one", i, PluginType, quoteAll(names))
		case len(names) == 1:
			plugin.viaNodeKey = names[0]
		}
		var err error
		if plugin.own, err = viaNode(plugin.viaNodeKey, keys[plugin.viaNodeKey]); err != nil {
			return nil, fmt.Errorf("conflist plugins[%d] (%s): %w", i, PluginType, err)
		}
		out = append(out, plugin)
	}
	return out, nil
}

// quoteAll is keys quoted, joined with "and".
func quoteAll(keys []string) string {
	q := make([]string, len(keys))
	for i, k := range keys {
		q[i] = strconv.Quote(k)
	}
	return strings.Join(q, " and ")
}

// decodeConflist splits a conflist into its keys and its plugins.
func decodeConflist(data []byte) (map[string]json.RawMessage, []json.RawMessage, error) {
	var conflist map[string]json.RawMessage
	if err := json.Unmarshal(data, &conflist); err != nil {
		return nil, nil, fmt.Errorf("conflist: %w", err)
	}
	var plugins []json.RawMessage
	if raw, ok := conflist["plugins"]; ok {
		if err := json.Unmarshal(raw, &plugins); err != nil {
			return nil, nil, fmt.Errorf("conflist plugins: not a list of plugins: %w", err)
		}
	}
	return conflist, plugins, nil
}

// viaNode parses a plugin's viaNode (absent or null is none), the value
// of its key named key, refusing what the plugin refuses.
func viaNode(key string, raw json.RawMessage) ([]netip.Prefix, error) {
	var strs []string
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &strs); err != nil {
			return nil, fmt.Errorf("%s %s: not a list of CIDRs: %w", key, raw, err)
		}
	}
	prefixes := make([]netip.Prefix, 0, len(strs))
	for i, s := range strs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d] %q: not a CIDR such as 10.96.0.0/12: %w", key, i, s, err)
		}
		if err := hostroute.CheckViaNodeEntry(p); err != nil {
			return nil, fmt.Errorf("%s[%d] %q: %w (%s would refuse it)", key, i, s, err, PluginType)
		}
		if slices.Contains(prefixes, p) {
			return nil, fmt.Errorf("%s[%d] %q: listed twice (%s would refuse it)", key, i, s, PluginType)
		}
		prefixes = append(prefixes, p)
	}
	return prefixes, nil
}

// marshal is json.Marshal leaving <, > and & as they are (a value kept
// keeps its bytes), indented for a file when indent is set.
func marshal(v any, indent bool) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if indent {
		enc.SetIndent("", "  ")
	}
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("conflist: %w", err)
	}
	if !indent {
		return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
	}
	return buf.Bytes(), nil
}
