package servicecidr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
)

// PluginType is the plugin whose viaNode the cluster's ServiceCIDRs go in.
const PluginType = "macvlan-host-route"

// Rewrite returns the conflist source with the cluster's prefixes in the
// viaNode of every macvlan-host-route plugin, beside the plugin's own
// (kept: a user may route more than the Services through the node, such
// as a node-local DNS address): sorted, de-duplicated, masked. Every other
// key and plugin is kept, its value as it was but for whitespace; the
// conflist's and those plugins' keys come out sorted (the others' in their
// order), all indented, so the output is the same for the same input. A plugin with no viaNode and no prefixes to add is left without.
// A conflist without such a plugin is an error: there is nowhere to put
// the prefixes.
func Rewrite(source []byte, cluster []netip.Prefix) ([]byte, error) {
	conflist, plugins, err := decodeConflist(source)
	if err != nil {
		return nil, err
	}
	found := false
	for i, raw := range plugins {
		plugin, ok := asHostRoute(raw)
		if !ok {
			continue // not ours to change, whatever it is
		}
		found = true
		own, err := viaNode(plugin["viaNode"])
		if err != nil {
			return nil, fmt.Errorf("conflist plugins[%d] (%s): %w", i, PluginType, err)
		}
		all := union(own, cluster)
		if len(all) == 0 {
			continue
		}
		strs := make([]string, len(all))
		for j, p := range all {
			strs[j] = p.String()
		}
		if plugin["viaNode"], err = marshal(strs, false); err != nil {
			return nil, err
		}
		if plugins[i], err = marshal(plugin, false); err != nil {
			return nil, err
		}
	}
	if !found {
		return nil, fmt.Errorf("conflist has no %q plugin: nowhere to put the cluster's ServiceCIDRs", PluginType)
	}
	if conflist["plugins"], err = marshal(plugins, false); err != nil {
		return nil, err
	}
	return marshal(conflist, true)
}

// IsRewriteOf tells whether installed is what Rewrite makes of source with
// some prefixes: those in installed's viaNode. With several
// macvlan-host-route plugins of viaNodes of their own it may say no to a
// rewrite, never yes to anything else.
func IsRewriteOf(installed, source []byte) bool {
	_, plugins, err := decodeConflist(installed)
	if err != nil {
		return false
	}
	var all []netip.Prefix
	for _, raw := range plugins {
		plugin, ok := asHostRoute(raw)
		if !ok {
			continue
		}
		prefixes, err := viaNode(plugin["viaNode"])
		if err != nil {
			return false
		}
		all = append(all, prefixes...)
	}
	again, err := Rewrite(source, all)
	return err == nil && bytes.Equal(again, installed)
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

// viaNode parses a plugin's viaNode: absent or null is none.
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
