package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// macvlanChain is macvlan (master and mode as given, "" leaves the key out)
// with static-ipam giving addr, then macvlan-host-route (master likewise).
func macvlanChain(name, master, mode, addr, gateway string) string {
	opt := func(key, value string) string {
		if value == "" {
			return ""
		}
		return fmt.Sprintf(`%q:%q,`, key, value)
	}
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[
		{"type":"macvlan",%s%s"ipam":{"type":"static-ipam","addresses":[{"address":%q,"gateway":%q}],"routes":[{"dst":"0.0.0.0/0"}]}},
		{%s"type":"macvlan-host-route"}]}`, name, opt("master", master), opt("mode", mode), addr, gateway, opt("master", master))
}

// TestModesTheSubDeviceCannotReach: a pod's macvlan in vepa, private or
// passthru mode exchanges no frames with the node's bridge-mode sub-device,
// so ADD refuses it, naming mode, and installs nothing.
func TestModesTheSubDeviceCannotReach(t *testing.T) {
	for _, mode := range []string{"vepa", "private", "passthru"} {
		t.Run(mode, func(t *testing.T) {
			sb := sandbox.New(t)
			rtm := sb.Runtime(t)
			list := sb.Localize(t, sandbox.ListFromJSON(t, macvlanChain("m-"+mode, "eno1", mode, "192.168.1.85/16", "192.168.0.1")))
			before := sb.Snapshot(t)
			att := sandbox.Attachment(sb.NewPod(t), "mode-"+mode, "eth0")
			_, err := rtm.Add(list, att)
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, fmt.Sprintf(`mode %q`, mode)) {
				t.Fatalf("ADD = %v, want code 7 naming mode %q", err, mode)
			}
			// The runtime deletes what a failed ADD may have left (macvlan's link).
			if err := rtm.Del(list, att); err != nil {
				t.Fatalf("DEL after the failed ADD: %v", err)
			}
			if after := sb.Snapshot(t); after != before {
				t.Fatalf("the node changed:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
}

// TestMasterLeftOut: with no master in either plugin, both take the link
// of the node's default route, as the reference macvlan does.
func TestMasterLeftOut(t *testing.T) {
	sb := sandbox.New(t)
	sandbox.MustRun(t, sb.Node, "ip", "route", "add", "default", "via", sandbox.LANIPv4.Addr().String(), "dev", sandbox.Uplink)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, macvlanChain("nomaster", "", "", "192.168.1.86/16", "192.168.0.1")))
	att := sandbox.Attachment(sb.NewPod(t), "nomaster", "eth0")
	if _, err := rtm.Add(list, att); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	if out := sandbox.MustRun(t, sb.Node, "ip", "route", "show", "proto", "197"); !strings.Contains(out, "192.168.1.86 dev eno1.host") {
		t.Fatalf("want the route through eno1.host:\n%s", out)
	}
	if err := sandbox.Ping(sb.Node, netip.MustParseAddr("192.168.1.86")); err != nil {
		t.Fatal(err)
	}
	if err := rtm.Check(list, att); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := rtm.Del(list, att); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if out := sandbox.MustRun(t, sb.Node, "ip", "route", "show", "proto", "197"); out != "" {
		t.Fatalf("routes left:\n%s", out)
	}
}

// TestTwoMasters: a macvlan network on eno1 and one on a second master
// (another uplink, or the VLAN sub-interface eno1.100), on one node: each
// gets its own sub-device and routes, and deleting the pod of one never
// touches the other's.
func TestTwoMasters(t *testing.T) {
	second := []struct {
		name  string
		setup func(t *testing.T, sb *sandbox.Sandbox) string // returns the master
		dev   string
	}{
		{"a second uplink", func(t *testing.T, sb *sandbox.Sandbox) string {
			sb.AddUplink(t, "eno2", "eth1", netip.MustParsePrefix("192.168.100.5/24"), netip.MustParsePrefix("192.168.100.1/24"))
			return "eno2"
		}, "eno2.host"},
		{"a VLAN sub-interface", func(t *testing.T, sb *sandbox.Sandbox) string {
			sandbox.RequireLinkKind(t, "vlan", "id", "100")
			return sb.AddVLAN(t, 100, netip.MustParsePrefix("192.168.100.5/24"), netip.MustParsePrefix("192.168.100.1/24"))
		}, "eno1.100.host"},
	}
	for _, sec := range second {
		t.Run(sec.name, func(t *testing.T) {
			sb := sandbox.New(t)
			master := sec.setup(t, sb)
			rtm := sb.Runtime(t)
			nets := []struct {
				list *libcni.NetworkConfigList
				att  *libcni.RuntimeConf
				ip   netip.Addr
				dev  string
			}{
				{list: sandbox.ListFromJSON(t, macvlanChain("first", "eno1", "", "192.168.1.87/16", "192.168.0.1")), ip: netip.MustParseAddr("192.168.1.87"), dev: "eno1.host"},
				{list: sandbox.ListFromJSON(t, macvlanChain("second", master, "", "192.168.100.20/24", "192.168.100.1")), ip: netip.MustParseAddr("192.168.100.20"), dev: sec.dev},
			}
			for i := range nets {
				n := &nets[i]
				n.list = sb.Localize(t, n.list)
				n.att = sandbox.Attachment(sb.NewPod(t), fmt.Sprintf("two-%d", i), "eth0")
				if _, err := rtm.Add(n.list, n.att); err != nil {
					t.Fatalf("ADD on %s: %v", n.dev, err)
				}
				t.Cleanup(func() { _ = rtm.Del(n.list, n.att) })
			}
			for _, n := range nets {
				if out := sandbox.MustRun(t, sb.Node, "ip", "route", "show", "proto", "197"); !strings.Contains(out, n.ip.String()+" dev "+n.dev) {
					t.Fatalf("no route to %s through %s:\n%s", n.ip, n.dev, out)
				}
				if err := sandbox.Ping(sb.Node, n.ip); err != nil {
					t.Fatalf("node -> %s: %v", n.ip, err)
				}
				if err := sandbox.Ping(sb.LAN, n.ip); err != nil {
					t.Fatalf("lan -> %s: %v", n.ip, err)
				}
			}
			// The first pod goes; the second keeps its route and its traffic.
			if err := rtm.Del(nets[0].list, nets[0].att); err != nil {
				t.Fatal(err)
			}
			out := sandbox.MustRun(t, sb.Node, "ip", "route", "show", "proto", "197")
			if strings.Contains(out, nets[0].ip.String()) || !strings.Contains(out, nets[1].ip.String()+" dev "+sec.dev) {
				t.Fatalf("after deleting the first pod:\n%s", out)
			}
			if err := sandbox.Ping(sb.Node, nets[1].ip); err != nil {
				t.Fatalf("node -> the second pod after the first went: %v", err)
			}
			if err := rtm.Check(nets[1].list, nets[1].att); err != nil {
				t.Fatalf("CHECK of the second pod: %v", err)
			}
		})
	}
}

// TestMasterMismatch: macvlan on one master and macvlan-host-route naming
// another would route to the pod through a link that cannot reach it: ADD
// refuses, naming master.
func TestMasterMismatch(t *testing.T) {
	sb := sandbox.New(t)
	sb.AddUplink(t, "eno2", "eth1", netip.MustParsePrefix("192.168.100.5/24"), netip.MustParsePrefix("192.168.100.1/24"))
	rtm := sb.Runtime(t)
	text := strings.Replace(macvlanChain("mismatch", "eno1", "", "192.168.1.88/16", "192.168.0.1"), `"master":"eno1","type":"macvlan-host-route"`, `"master":"eno2","type":"macvlan-host-route"`, 1)
	list := sb.Localize(t, sandbox.ListFromJSON(t, text))
	att := sandbox.Attachment(sb.NewPod(t), "mismatch", "eth0")
	_, err := rtm.Add(list, att)
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, `master "eno2": the pod's macvlan eth0 sits on another link`) {
		t.Fatalf("ADD = %v, want code 7 naming master", err)
	}
	_ = rtm.Del(list, att)
	if out := sandbox.MustRun(t, sb.Node, "ip", "route", "show", "proto", "197"); out != "" {
		t.Fatalf("routes left:\n%s", out)
	}
}
