package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// TestConditions: with conditionsV4/V6, which iptables-save prints in an
// order of its own (the -s before the -p), CHECK passes right after ADD,
// restore puts back a missing jump once and adds nothing when all is there,
// and the conditions hold: a client they match gets through, one they do
// not match does not.
func TestConditions(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	entry := `"type":"portmap-lite","conditionsV4":["-s","192.168.0.0/16"],"conditionsV6":["-s","fd00:c0a8::/64"]`
	list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(entry)))
	att := mustAddServing(t, sb, rtm, list, "cond", tcpPort(8081))
	if err := rtm.Check(list, att); err != nil {
		t.Fatalf("CHECK right after ADD: %v", err)
	}
	jumps := func() int {
		return strings.Count(sandbox.MustRun(t, sb.Node, "iptables-save", "-t", "nat"), "-j CNI-LITE-DN-") +
			strings.Count(sandbox.MustRun(t, sb.Node, "ip6tables-save", "-t", "nat"), "-j CNI-LITE-DN-")
	}
	if n := jumps(); n != 2 {
		t.Fatalf("%d jumps into the DNAT chains after ADD, want one per family", n)
	}
	restore := func() {
		t.Helper()
		out, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), "portmap-lite"), "restore", "-state-dir", filepath.Join(sb.Dir, "state", "portmap-lite"))
		if err != nil {
			t.Fatalf("restore: %v\n%s", err, out)
		}
	}
	restore()
	restore()
	if n := jumps(); n != 2 {
		t.Fatalf("%d jumps into the DNAT chains after two restores, want one per family", n)
	}
	// A jump taken away is missing for CHECK, and one restore puts it back.
	saved := sandbox.MustRun(t, sb.Node, "iptables-save", "-t", "nat")
	batch := "*nat\n"
	for _, line := range strings.Split(saved, "\n") {
		if strings.HasPrefix(line, "-A CNI-LITE-HP-") && strings.Contains(line, "-j CNI-LITE-DN-") {
			batch += "-D" + strings.TrimPrefix(line, "-A") + "\n"
		}
	}
	file := filepath.Join(t.TempDir(), "delete-jump")
	if err := os.WriteFile(file, []byte(batch+"COMMIT\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sandbox.MustRun(t, sb.Node, "iptables-restore", "--noflush", file)
	if err := rtm.Check(list, att); err == nil || !strings.Contains(err.Error(), "rule missing") {
		t.Fatalf("CHECK with the jump gone = %v, want the missing rule named", err)
	}
	restore()
	if n := jumps(); n != 2 {
		t.Fatalf("%d jumps into the DNAT chains after restoring one, want one per family", n)
	}
	if err := rtm.Check(list, att); err != nil {
		t.Fatalf("CHECK after restore: %v", err)
	}
	sandbox.WaitDAD(t, sb.Node)
	for _, to := range []netip.Addr{sandbox.NodeIPv4.Addr(), sandbox.NodeIPv6.Addr()} {
		if got, err := sandbox.DialTCP(sb.LAN, netip.AddrPortFrom(to, 8081)); err != nil || got != "hello from cond" {
			t.Errorf("lan -> %s:8081 (matched by the conditions): %q, %v", to, got, err)
		}
	}
	// From 127.0.0.1 the -s condition does not match: no DNAT, nothing listens.
	if got, err := sandbox.DialTCP(sb.Node, netip.MustParseAddrPort("127.0.0.1:8081")); err == nil {
		t.Errorf("127.0.0.1:8081 (not matched by the conditions) answered %q", got)
	}
}
