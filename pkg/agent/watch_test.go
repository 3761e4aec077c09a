package agent

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestNFTReason(t *testing.T) {
	nat := &nftables.Table{Name: "nat", Family: nftables.TableFamilyIPv4}
	kubeProxy := &nftables.Table{Name: "kube-proxy", Family: nftables.TableFamilyIPv4}
	portmap := &nftables.Table{Name: "cnichain-portmap", Family: nftables.TableFamilyIPv6}
	jump := func(chain string) []expr.Any {
		return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
	}
	delChain := func(t *nftables.Table, name string) *nftables.MonitorEvent {
		return &nftables.MonitorEvent{Type: nftables.MonitorEventTypeDelChain, Data: &nftables.Chain{Table: t, Name: name}}
	}
	delRule := func(t *nftables.Table, chain string, exprs []expr.Any) *nftables.MonitorEvent {
		return &nftables.MonitorEvent{Type: nftables.MonitorEventTypeDelRule, Data: &nftables.Rule{Table: t, Chain: &nftables.Chain{Name: chain}, Exprs: exprs}}
	}
	delTable := func(t *nftables.Table) *nftables.MonitorEvent {
		return &nftables.MonitorEvent{Type: nftables.MonitorEventTypeDelTable, Data: t}
	}
	unreadable := delRule(nat, "PREROUTING", nil)
	unreadable.Error = errors.New("unknown expression")
	for _, tc := range []struct {
		name  string
		event *nftables.MonitorEvent
		ours  bool
	}{
		// Ours, taken by others: a restore.
		{"our shared chain deleted (iptables -t nat -X)", delChain(nat, "CNI-LITE-HOSTPORTS"), true},
		{"a bucket chain of ours deleted", delChain(nat, "CNI-LITE-HP-0a"), true},
		{"the jump from PREROUTING into ours deleted", delRule(nat, "PREROUTING", jump("CNI-LITE-HOSTPORTS")), true},
		{"the jump from POSTROUTING into viaNode's deleted", delRule(nat, "POSTROUTING", jump("CNI-LITE-VIANODE")), true},
		{"a rule of our shared chain deleted", delRule(nat, "CNI-LITE-HOSTPORTS", jump("CNI-LITE-HP-0a")), true},
		{"a base chain's rule that could not be read", unreadable, true},
		{"iptables-nft's nat table deleted (nft flush ruleset)", delTable(nat), true},
		{"our nftables table deleted", delTable(portmap), true},
		{"viaNode's nftables table deleted", delTable(&nftables.Table{Name: "cnichain-vianode"}), true},
		{"a base chain of our nftables table deleted", delChain(portmap, "prerouting"), true},
		{"a rule of our nftables dispatch chain deleted", delRule(portmap, "hostports", nil), true},
		{"the nftables monitor failed", &nftables.MonitorEvent{Type: nftables.MonitorEventTypeOOB, Error: errors.New("no buffer space")}, true},
		// Our own verbs' deletions: no restore.
		{"a pod's DNAT chain deleted by its DEL", delChain(nat, "CNI-LITE-DN-0123456789abcdef"), false},
		{"a pod's SNAT chain deleted by its DEL", delChain(portmap, "CNI-LITE-SN-0123456789abcdef"), false},
		{"a pod's rule in its bucket deleted by its DEL", delRule(nat, "CNI-LITE-HP-0a", jump("CNI-LITE-DN-0123456789abcdef")), false},
		{"an earlier release's pod jump in our dispatch chain deleted by its DEL", delRule(nat, "CNI-LITE-HOSTPORTS", jump("CNI-LITE-DN-0123456789abcdef")), false},
		{"an earlier release's pod jump in our nftables dispatch chain deleted by its DEL", delRule(portmap, "masq", jump("CNI-LITE-SN-0123456789abcdef")), false},
		// Others' own: no restore.
		{"kube-proxy's endpoint chain deleted (iptables-nft)", delChain(nat, "KUBE-SEP-ABCDEFGHIJKLMNOP"), false},
		{"kube-proxy's jump from PREROUTING deleted", delRule(nat, "PREROUTING", jump("KUBE-SERVICES")), false},
		{"kube-proxy's nftables Service chain deleted", delChain(kubeProxy, "service-ABCD-default/web/tcp/"), false},
		{"kube-proxy's nftables table deleted (a mode change)", delTable(kubeProxy), false},
		{"kube-proxy's base chain deleted", delChain(kubeProxy, "nat-prerouting"), false},
		{"another's inet table called nat deleted", delTable(&nftables.Table{Name: "nat", Family: nftables.TableFamilyINet}), false},
		{"firewalld's table deleted (a reload)", delTable(&nftables.Table{Name: "firewalld", Family: nftables.TableFamilyINet}), false},
		{"a rule of iptables-nft's filter table deleted", delRule(&nftables.Table{Name: "filter"}, "FORWARD", jump("CNI-LITE-HOSTPORTS")), false},
		{"a chain added", &nftables.MonitorEvent{Type: nftables.MonitorEventTypeNewChain, Data: &nftables.Chain{Table: nat, Name: "CNI-LITE-HOSTPORTS"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nftReason(tc.event) != ""; got != tc.ours {
				t.Fatalf("calls for a restore: %v, want %v (reason %q)", got, tc.ours, nftReason(tc.event))
			}
		})
	}
}

// TestStillClaimed: the triggers of pod addresses call for a restore only
// while a record claims one of them; the question is asked once.
func TestStillClaimed(t *testing.T) {
	a, b := netip.MustParseAddr("192.168.50.20"), netip.MustParseAddr("fd00::20")
	burst := func() []trigger {
		return []trigger{{reason: "route a", pod: a}, {reason: "link"}, {reason: "neighbour b", pod: b}}
	}
	for _, tc := range []struct {
		name    string
		claimed func([]netip.Addr) bool
		want    string
	}{
		{"a record claims one of them", func(p []netip.Addr) bool { return slices.Contains(p, b) }, "route a; link; neighbour b"},
		{"no record claims any (their DELs deleted them)", func([]netip.Addr) bool { return false }, "link"},
		{"no way to ask", nil, "route a; link; neighbour b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asked := 0
			claimed := tc.claimed
			if claimed != nil {
				claimed = func(p []netip.Addr) bool { asked++; return tc.claimed(p) }
			}
			if got := summarize(stillClaimed(burst(), claimed)); got != tc.want {
				t.Fatalf("kept %q, want %q", got, tc.want)
			}
			if asked > 1 {
				t.Fatalf("asked %d times, want once", asked)
			}
		})
	}
	if got := stillClaimed([]trigger{{reason: "route a", pod: a}}, func([]netip.Addr) bool { return false }); len(got) != 0 {
		t.Fatalf("kept %q, want none", summarize(got))
	}
}

func TestNetlinkTriggers(t *testing.T) {
	cfg := Config{OwnsLink: func(alias string) bool { return alias == "ours" }}
	link := func(typ uint16, alias string, flags uint32) netlink.LinkUpdate {
		u := netlink.LinkUpdate{Header: unix.NlMsghdr{Type: typ}, Link: &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "eno1.host", Alias: alias}}}
		u.IfInfomsg.Flags = flags
		return u
	}
	route := func(typ uint16, proto netlink.RouteProtocol) netlink.RouteUpdate {
		return netlink.RouteUpdate{Type: typ, Route: netlink.Route{Protocol: proto, Dst: &net.IPNet{IP: net.ParseIP("192.168.50.20"), Mask: net.CIDRMask(32, 32)}}}
	}
	for _, tc := range []struct {
		name    string
		got     func() (trigger, bool)
		want    bool
		wantPod string
	}{
		{"our sub-device deleted", func() (trigger, bool) { return linkTrigger(cfg, link(unix.RTM_DELLINK, "ours", 0)) }, true, ""},
		{"our sub-device set down", func() (trigger, bool) { return linkTrigger(cfg, link(unix.RTM_NEWLINK, "ours", 0)) }, true, ""},
		{"our sub-device changed, still up", func() (trigger, bool) { return linkTrigger(cfg, link(unix.RTM_NEWLINK, "ours", unix.IFF_UP)) }, false, ""},
		{"a pod's link moved into its netns by the reference macvlan", func() (trigger, bool) { return linkTrigger(cfg, link(unix.RTM_DELLINK, "", 0)) }, false, ""},
		{"another's link deleted", func() (trigger, bool) { return linkTrigger(cfg, link(unix.RTM_DELLINK, "kube-ipvs0", 0)) }, false, ""},
		{"a host route of ours deleted", func() (trigger, bool) { return routeTrigger(route(unix.RTM_DELROUTE, 197)) }, true, "192.168.50.20"},
		{"another's route deleted", func() (trigger, bool) { return routeTrigger(route(unix.RTM_DELROUTE, 4)) }, false, ""},
		{"a host route of ours added", func() (trigger, bool) { return routeTrigger(route(unix.RTM_NEWROUTE, 197)) }, false, ""},
		{"an autoconfigured IPv6 address expired", func() (trigger, bool) {
			return addrTrigger(cfg, netlink.AddrUpdate{Scope: int(netlink.SCOPE_UNIVERSE), Flags: 0})
		}, false, ""},
		{"a link-local address deleted", func() (trigger, bool) {
			return addrTrigger(cfg, netlink.AddrUpdate{Scope: int(netlink.SCOPE_LINK), Flags: unix.IFA_F_PERMANENT})
		}, false, ""},
		{"a neighbour the kernel learnt went stale and was deleted", func() (trigger, bool) {
			return neighTrigger(cfg, netlink.NeighUpdate{Type: unix.RTM_DELNEIGH, Neigh: netlink.Neigh{State: netlink.NUD_STALE}})
		}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, ok := tc.got()
			if ok != tc.want {
				t.Fatalf("calls for a restore: %v, want %v (%q)", ok, tc.want, tr.reason)
			}
			if tc.wantPod != "" && tr.pod.String() != tc.wantPod {
				t.Fatalf("pod address %v, want %s", tr.pod, tc.wantPod)
			}
		})
	}
}
