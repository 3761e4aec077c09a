package main

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// TestAnADDAfterAFlushIsReachable: after a firewall reload flushed the nat
// table (the shared chains stay, empty; nothing jumps to them), the next
// pod's ADD, with no restore run, puts back the way in to its rules: the
// lan reaches its hostPort over both families, with each iptables flavour,
// and CHECK passes.
func TestAnADDAfterAFlushIsReachable(t *testing.T) {
	for _, flavour := range []string{"nft", "legacy"} {
		t.Run("iptables-"+flavour, func(t *testing.T) {
			sb := sandbox.New(t)
			rtm := sb.Runtime(t)
			list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(fmt.Sprintf(`"type":"portmap-lite","iptablesFlavour":%q`, flavour))))
			mustAddServing(t, sb, rtm, list, "before-flush", tcpPort(9300))
			for _, cmd := range []string{"iptables-" + flavour, "ip6tables-" + flavour} {
				sandbox.MustRun(t, sb.Node, cmd, "-t", "nat", "-F")
			}
			after := mustAddServing(t, sb, rtm, list, "after-flush", tcpPort(9301))
			sandbox.WaitDAD(t, sb.Node)
			sandbox.WaitDAD(t, sb.LAN)
			for _, node := range []netip.Addr{sandbox.NodeIPv4.Addr(), sandbox.NodeIPv6.Addr()} {
				to := netip.AddrPortFrom(node, 9301)
				if got, err := sandbox.DialTCP(sb.LAN, to); err != nil || got != "hello from after-flush" {
					t.Errorf("the lan -> %s: %q, %v; want the pod added after the flush\n%s", to, got, err, sandbox.MustRun(t, sb.Node, "ip6tables-"+flavour+"-save", "-c"))
				}
			}
			if err := rtm.Check(list, after); err != nil {
				t.Errorf("CHECK of the pod added after the flush: %v", err)
			}
		})
	}
}
