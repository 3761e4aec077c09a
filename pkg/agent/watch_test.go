package agent

import (
	"errors"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
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
		// Others' own: no restore.
		{"kube-proxy's endpoint chain deleted (iptables-nft)", delChain(nat, "KUBE-SEP-ABCDEFGHIJKLMNOP"), false},
		{"kube-proxy's jump from PREROUTING deleted", delRule(nat, "PREROUTING", jump("KUBE-SERVICES")), false},
		{"kube-proxy's nftables Service chain deleted", delChain(kubeProxy, "service-ABCD-default/web/tcp/"), false},
		{"kube-proxy's nftables table deleted (a mode change)", delTable(kubeProxy), false},
		{"kube-proxy's base chain deleted", delChain(kubeProxy, "nat-prerouting"), false},
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

// TestStillClaimed: of a burst's triggers, those whose deleted thing no
// record claims any more (its own DEL deleted it) are dropped.
func TestStillClaimed(t *testing.T) {
	yes, no := func() bool { return true }, func() bool { return false }
	got := stillClaimed([]trigger{{reason: "a", claimed: no}, {reason: "b"}, {reason: "c", claimed: yes}, {reason: "d", claimed: no}})
	if summarize(got) != "b; c" {
		t.Fatalf("kept %q, want b; c", summarize(got))
	}
	if got := stillClaimed([]trigger{{reason: "a", claimed: no}}); len(got) != 0 {
		t.Fatalf("kept %q, want none", summarize(got))
	}
}
