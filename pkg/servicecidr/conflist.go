package servicecidr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

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
func Rewrite(source []byte, cluster []netip.Prefix) ([]byte, error) {
	out, _, err := rewrite(source, cluster)
	return out, err
}

// rewrite is Rewrite, which also returns why each prefix left out of a
// plugin's viaNode is.
func rewrite(source []byte, cluster []netip.Prefix) ([]byte, []error, error) {
	conflist, plugins, err := decodeConflist(source)
	if err != nil {
		return nil, nil, err
	}
	found := false
	var leftOut []error
	for i, raw := range plugins {
		plugin, ok := asHostRoute(raw)
		if !ok {
			continue // not ours to change, whatever it is
		}
		found = true
		own, err := viaNode(plugin["viaNode"])
		if err != nil {
			return nil, nil, fmt.Errorf("conflist plugins[%d] (%s): %w", i, PluginType, err)
		}
		kept, refused := admit(own, cluster)
		for _, r := range refused {
			leftOut = append(leftOut, fmt.Errorf("ServiceCIDR value %s: left out of conflist plugins[%d] (%s): %w", r.p, i, PluginType, r.err))
		}
		all := union(own, kept)
		if len(all) == 0 {
			continue
		}
		strs := make([]string, len(all))
		for j, p := range all {
			strs[j] = p.String()
		}
		if plugin["viaNode"], err = marshal(strs, false); err != nil {
			return nil, nil, err
		}
		if plugins[i], err = marshal(plugin, false); err != nil {
			return nil, nil, err
		}
	}
	if !found {
		return nil, nil, fmt.Errorf("conflist has no %q plugin: nowhere to put the cluster's ServiceCIDRs", PluginType)
	}
	if conflist["plugins"], err = marshal(plugins, false); err != nil {
		return nil, nil, err
	}
	out, err := marshal(conflist, true)
	return out, leftOut, err
}

// refusal is a prefix admit leaves out, and why.
type refusal struct {
	p   netip.Prefix
	err error
}

// admit is what of the cluster's prefixes a plugin whose own viaNode is
// own may hold: each as viaNodeEntry makes it, of a family own has. The
// plugin refuses an entry of a family its pod has no address in, failing
// the pod's ADD, and a user whose own viaNode lists IPv4 ranges alone has
// IPv4-only pods, most likely. An empty own viaNode tells nothing: every
// family is kept, and a pod lacking one fails where the cluster has it.
func admit(own, cluster []netip.Prefix) (kept []netip.Prefix, left []refusal) {
	has := func(v4 bool) bool {
		return len(own) == 0 || slices.ContainsFunc(own, func(p netip.Prefix) bool { return p.Addr().Is4() == v4 })
	}
	for _, c := range cluster {
		p, err := viaNodeEntry(c)
		switch {
		case err != nil:
			left = append(left, refusal{c, err})
		case !has(p.Addr().Is4()):
			family, other := "IPv6", "IPv4"
			if p.Addr().Is4() {
				family, other = other, family
			}
			left = append(left, refusal{c, fmt.Errorf("%s, and the plugin's own viaNode lists %s ranges alone: its pods are taken to have no %s address, for which the plugin refuses the entry (list an %s range of your own to take the cluster's)", family, other, family, family)})
		default:
			kept = append(kept, p)
		}
	}
	return kept, left
}

// IsRewriteOf tells whether installed is what Rewrite makes of source with
// some prefixes: those in installed's viaNode but not in source's. With
// several macvlan-host-route plugins it may say no to a rewrite, never
// yes to anything else.
func IsRewriteOf(installed, source []byte) bool {
	got, err := viaNodes(installed)
	if err != nil {
		return false
	}
	own, err := viaNodes(source)
	if err != nil {
		return false
	}
	var cluster []netip.Prefix
	for _, p := range got {
		if !slices.Contains(own, p) {
			cluster = append(cluster, p)
		}
	}
	again, err := Rewrite(source, cluster)
	return err == nil && bytes.Equal(again, installed)
}

// viaNodes is every macvlan-host-route plugin's viaNode in conflist,
// together.
func viaNodes(conflist []byte) ([]netip.Prefix, error) {
	_, plugins, err := decodeConflist(conflist)
	if err != nil {
		return nil, err
	}
	var all []netip.Prefix
	for _, raw := range plugins {
		plugin, ok := asHostRoute(raw)
		if !ok {
			continue
		}
		prefixes, err := viaNode(plugin["viaNode"])
		if err != nil {
			return nil, err
		}
		all = append(all, prefixes...)
	}
	return all, nil
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

// asHostRoute decodes a plugin's keys if it is a macvlan-host-route.
func asHostRoute(raw json.RawMessage) (map[string]json.RawMessage, bool) {
	var plugin map[string]json.RawMessage
	var typ string
	if json.Unmarshal(raw, &plugin) != nil || json.Unmarshal(plugin["type"], &typ) != nil || typ != PluginType {
		return nil, false
	}
	return plugin, true
}

// viaNode parses a plugin's viaNode (absent or null is none), refusing
// what the plugin refuses.
func viaNode(raw json.RawMessage) ([]netip.Prefix, error) {
	var strs []string
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &strs); err != nil {
			return nil, fmt.Errorf("viaNode %s: not a list of CIDRs: %w", raw, err)
		}
	}
	prefixes := make([]netip.Prefix, 0, len(strs))
	for i, s := range strs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("viaNode[%d] %q: not a CIDR such as 10.96.0.0/12: %w", i, s, err)
		}
		if err := hostroute.CheckViaNodeEntry(p); err != nil {
			return nil, fmt.Errorf("viaNode[%d] %q: %w (%s would refuse it)", i, s, err, PluginType)
		}
		if slices.Contains(prefixes, p) {
			return nil, fmt.Errorf("viaNode[%d] %q: listed twice (%s would refuse it)", i, s, PluginType)
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
