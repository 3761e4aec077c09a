package main

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnichain/plugins/pkg/nat"
	"github.com/cnichain/plugins/pkg/sandbox"
)

// TestFlavourIsRecorded: the iptables flavour that installed an
// attachment's rules is what restores, checks and removes them, whatever
// the configuration says later. One pod is added with the legacy flavour,
// one with the system's (nft); both nat tables are flushed; one restore
// puts each pod's rules back where they were; the first pod's DEL with the
// configuration's flavour changed removes its rules from legacy.
func TestFlavourIsRecorded(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	legacy := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(`"type":"portmap-lite","iptablesFlavour":"legacy"`)))
	system := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(`"type":"portmap-lite"`)))
	before := natState(t, sb)
	a := mustAddServing(t, sb, rtm, legacy, "in-legacy", tcpPort(9200))
	b := mustAddServing(t, sb, rtm, system, "in-nft", tcpPort(9201))
	chainOf := func(id string) string { return nat.DNATChainName(attachKey(id)) }
	where := func() (inLegacy, inNFT string) {
		return sandbox.MustRun(t, sb.Node, "iptables-legacy-save", "-t", "nat"), sandbox.MustRun(t, sb.Node, "iptables-nft-save", "-t", "nat")
	}
	for _, cmd := range []string{"iptables-legacy", "iptables-nft", "ip6tables-legacy", "ip6tables-nft"} {
		sandbox.MustRun(t, sb.Node, cmd, "-t", "nat", "-F")
		sandbox.MustRun(t, sb.Node, cmd, "-t", "nat", "-X")
	}
	out, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), "portmap-lite"), "restore", "-state-dir", filepath.Join(sb.Dir, "state", "portmap-lite"))
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	inLegacy, inNFT := where()
	if !strings.Contains(inLegacy, ":"+chainOf("in-legacy")) || strings.Contains(inNFT, chainOf("in-legacy")) {
		t.Errorf("the legacy pod's chain after restore: in legacy %v, in nft %v; want legacy only",
			strings.Contains(inLegacy, chainOf("in-legacy")), strings.Contains(inNFT, chainOf("in-legacy")))
	}
	if !strings.Contains(inNFT, ":"+chainOf("in-nft")) || strings.Contains(inLegacy, chainOf("in-nft")) {
		t.Errorf("the nft pod's chain after restore: in nft %v, in legacy %v; want nft only",
			strings.Contains(inNFT, chainOf("in-nft")), strings.Contains(inLegacy, chainOf("in-nft")))
	}
	for _, tt := range []struct {
		port int
		want string
	}{{9200, "hello from in-legacy"}, {9201, "hello from in-nft"}} {
		to := netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), uint16(tt.port))
		if got, err := sandbox.DialTCP(sb.LAN, to); err != nil || got != tt.want {
			t.Errorf("%s after restore: %q, %v; want %q", to, got, err, tt.want)
		}
	}
	// The legacy pod, checked and deleted with the configuration changed.
	if err := rtm.Check(system, a); err != nil {
		t.Errorf("CHECK of the legacy pod with the flavour changed: %v", err)
	}
	if err := rtm.Del(system, a); err != nil {
		t.Fatalf("DEL of the legacy pod with the flavour changed: %v", err)
	}
	if err := rtm.Del(system, b); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if inLegacy, _ := where(); strings.Contains(inLegacy, chainOf("in-legacy")) {
		t.Errorf("DEL with the flavour changed left the legacy pod's rules:\n%s", inLegacy)
	}
	if after := natState(t, sb); after != before {
		t.Errorf("nat tables after DEL:\n%s\nbefore:\n%s", after, before)
	}
}
