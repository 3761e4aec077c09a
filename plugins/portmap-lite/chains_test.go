package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/sandbox"
)

// TestAfterOtherMainPlugins: portmap-lite after ptp (with and without its
// ipMasq) and after a bridge whose gateway is a router outside the node.
// The hostPort answers the lan and the node; the masquerade decision
// (masqAll unset) keeps client addresses where replies come back through
// the node on their own, and masquerades where they would not.
func TestAfterOtherMainPlugins(t *testing.T) {
	const ipam = `"ipam":{"type":"static-ipam","addresses":[{"address":"%s/24","gateway":"%s"}],"routes":[{"dst":"0.0.0.0/0"}]}`
	tests := []struct {
		name    string
		setup   func(t *testing.T, sb *sandbox.Sandbox)
		main    string
		pod     string
		masqAll bool // what the decision must be
	}{
		{
			name: "ptp with ipMasq", pod: "10.96.0.2", masqAll: false,
			main: `{"type":"ptp","ipMasq":true,` + fmt.Sprintf(ipam, "10.96.0.2", "10.96.0.1") + `}`,
		},
		{
			name: "ptp without ipMasq", pod: "10.96.1.2", masqAll: false,
			main: `{"type":"ptp","ipMasq":false,` + fmt.Sprintf(ipam, "10.96.1.2", "10.96.1.1") + `}`,
		},
		{
			// The operator's bridge: the node has an address on it, and the
			// pods' gateway is a router namespace on the same bridge.
			name: "bridge without isGateway, the gateway a router outside the node", pod: "10.95.0.2", masqAll: true,
			setup: func(t *testing.T, sb *sandbox.Sandbox) {
				router := sb.NewPod(t)
				sandbox.MustRun(t, sb.Node, "ip", "link", "add", "gwbr0", "type", "bridge")
				sandbox.MustRun(t, sb.Node, "ip", "addr", "add", "10.95.0.254/24", "dev", "gwbr0")
				sandbox.MustRun(t, sb.Node, "ip", "link", "set", "gwbr0", "up")
				sandbox.MustRun(t, sb.Node, "ip", "link", "add", "rt0", "type", "veth", "peer", "name", "eth0", "netns", router.Path())
				sandbox.MustRun(t, sb.Node, "ip", "link", "set", "rt0", "master", "gwbr0", "up")
				sandbox.MustRun(t, router, "ip", "addr", "add", "10.95.0.1/24", "dev", "eth0")
				sandbox.MustRun(t, router, "ip", "link", "set", "eth0", "up")
			},
			main: `{"type":"bridge","bridge":"gwbr0","isGateway":false,` + fmt.Sprintf(ipam, "10.95.0.2", "10.95.0.1") + `}`,
		},
	}
	for _, tt := range tests {
		for _, backend := range []string{"iptables", "nftables"} {
			t.Run(tt.name+"/"+backend, func(t *testing.T) {
				sb := sandbox.New(t)
				sb.EnableForwarding(t)
				if tt.setup != nil {
					tt.setup(t, sb)
				}
				rtm := sb.Runtime(t)
				list := sb.Localize(t, sandbox.ListFromJSON(t, fmt.Sprintf(`{"cniVersion":"1.1.0","name":"after","plugins":[%s,
					{"type":"portmap-lite","backend":%q,"capabilities":{"portMappings":true}}]}`, tt.main, backend)))
				att := mustAddServing(t, sb, rtm, list, "after", tcpPort(9090))
				for _, from := range []struct {
					name string
					ns   ns.NetNS
					to   string
				}{{"the lan", sb.LAN, "192.168.0.5:9090"}, {"the node", sb.Node, "192.168.0.5:9090"}, {"the node on 127.0.0.1", sb.Node, "127.0.0.1:9090"}} {
					got, err := sandbox.DialTCP(from.ns, netip.MustParseAddrPort(from.to))
					if err != nil || got != "hello from after" {
						t.Errorf("hostPort from %s: %q, %v", from.name, got, err)
					}
				}
				record := sandbox.MustRun(t, sb.Node, "sh", "-c", "cat "+sb.Dir+"/state/portmap-lite/*")
				if want := fmt.Sprintf(`"masqAll":%v`, tt.masqAll); tt.masqAll != strings.Contains(record, `"masqAll":true`) {
					t.Errorf("the record does not say %s:\n%s", want, record)
				}
				if err := rtm.Check(list, att); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
				if err := rtm.Del(list, att); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				if got, err := sandbox.DialTCP(sb.LAN, netip.MustParseAddrPort("192.168.0.5:9090")); err == nil {
					t.Fatalf("the hostPort still answers after DEL: %q", got)
				}
			})
		}
	}
}

// TestMasqAllFalseBehindARouter shows what the decision is for: with
// masqAll forced off, a pod whose gateway is not the node answers a lan
// client from its own address, around the node, and the client never gets
// the answer.
func TestMasqAllFalseBehindARouter(t *testing.T) {
	sb := sandbox.New(t)
	sb.EnableForwarding(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, `{"cniVersion":"1.1.0","name":"nomasq","plugins":[
		{"type":"macvlan","master":"eno1","ipam":{"type":"static-ipam","addresses":[{"address":"192.168.50.30/16","gateway":"192.168.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}},
		{"type":"macvlan-host-route","master":"eno1"},
		{"type":"portmap-lite","masqAll":false,"capabilities":{"portMappings":true}}]}`))
	rtm := sb.Runtime(t)
	mustAddServing(t, sb, rtm, list, "nomasq", tcpPort(9090))
	if got, err := sandbox.DialTCP(sb.LAN, netip.MustParseAddrPort("192.168.0.5:9090")); err == nil {
		t.Fatalf("the lan got %q with masqAll false: the decision would not matter", got)
	}
	if got, err := sandbox.DialTCP(sb.Node, netip.MustParseAddrPort("192.168.0.5:9090")); err != nil || got != "hello from nomasq" {
		t.Fatalf("from the node: %q, %v", got, err)
	}
}

// TestRandomFully: MASQUERADE rules take --random-fully where the node's
// iptables has it (1.6.2 and later: this one), and a node whose iptables
// says it is older gets rules without it that work all the same.
func TestRandomFully(t *testing.T) {
	for _, tt := range []struct {
		name  string
		older bool
	}{{"the node's iptables", false}, {"an iptables that says it is 1.6.1", true}} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.older {
				pretendOlderIPTables(t)
			}
			sb := sandbox.New(t)
			rtm := sb.Runtime(t)
			list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(`"type":"portmap-lite"`)))
			pod := sb.NewPod(t)
			att := sandbox.Attachment(pod, "random", "eth0")
			att.CapabilityArgs = mappings
			if _, err := rtm.Add(list, att); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			t.Cleanup(func() { _ = rtm.Del(list, att) })
			rules := sandbox.MustRun(t, sb.Node, "iptables-save", "-t", "nat")
			if got := strings.Contains(rules, "-j MASQUERADE --random-fully"); got == tt.older || !strings.Contains(rules, "-j MASQUERADE") {
				t.Fatalf("--random-fully on MASQUERADE: %v, want %v:\n%s", got, !tt.older, rules)
			}
			sandbox.ServeTCP(t, pod, 80, "hello from the pod")
			for _, from := range []ns.NetNS{sb.LAN, pod} { // a lan client, and the pod itself (masqueraded)
				if got, err := sandbox.DialTCP(from, netip.MustParseAddrPort("192.168.0.5:9090")); err != nil || got != "hello from the pod" {
					t.Errorf("hostPort: %q, %v", got, err)
				}
			}
			if err := rtm.Check(list, att); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
		})
	}
}

// pretendOlderIPTables makes the node's iptables say it is 1.6.1, without
// --random-fully, for the rest of the test (wrappers first in PATH).
func pretendOlderIPTables(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	restore, _ := exec.LookPath("iptables-restore")
	ipt, _ := exec.LookPath("iptables")
	for name, script := range map[string]string{
		"iptables-restore": fmt.Sprintf("#!/bin/sh\nexec %s \"$@\"\n", restore),
		"iptables":         fmt.Sprintf("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'iptables v1.6.1'; exit 0; }\nexec %s \"$@\"\n", ipt),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
}

// TestUpgradeFromAnOlderRecord: an attachment added by the previous release
// (rules without --random-fully, jumps straight from the shared chains, a
// record without netns or randomFully) is checked, restored and deleted by
// this one: CHECK passes, DEL leaves the nat tables as before, no rule is
// stranded.
// The bucket chains in iptables-save's output: their declarations and
// entry jumps, and the rules in each.
var (
	bucketDecl = regexp.MustCompile(`^:CNI-LITE-(HA|HP|MS)-|^-A CNI-LITE-(HOSTPORTS|SNAT) -j CNI-LITE-(HA|HP|MS)-..$`)
	inHPBucket = regexp.MustCompile(`^-A CNI-LITE-H[AP]-.. `)
	inMSBucket = regexp.MustCompile(`^-A CNI-LITE-MS-.. `)
)

func TestUpgradeFromAnOlderRecord(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(`"type":"portmap-lite"`)))
	before := natState(t, sb)
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "upgrade", "eth0")
	att.CapabilityArgs = mappings
	t.Run("the old release adds", func(t *testing.T) {
		pretendOlderIPTables(t) // the rules as the old release wrote them
		if _, err := rtm.Add(list, att); err != nil {
			t.Fatalf("ADD: %v", err)
		}
	})
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	stateDir := filepath.Join(sb.Dir, "state", "portmap-lite")
	names, _ := (attachstate.Store{Dir: stateDir}).Names()
	if len(names) != 1 {
		t.Fatalf("records: %v", names)
	}
	var rec map[string]any
	data, err := os.ReadFile(filepath.Join(stateDir, names[0]))
	if err == nil {
		err = json.Unmarshal(data, &rec)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, newer := range []string{"netns", "randomFully"} {
		delete(rec, newer)
	}
	// The previous release jumped from the shared chains themselves, not
	// from buckets under them: so do the node and the record.
	unbucket := strings.NewReplacer("CNI-LITE-HA-", "CNI-LITE-HOSTPORTS#", "CNI-LITE-HP-", "CNI-LITE-HOSTPORTS#", "CNI-LITE-MS-", "CNI-LITE-SNAT#")
	for _, fam := range rec["families"].([]any) {
		for _, j := range fam.(map[string]any)["jumps"].([]any) {
			jump := j.(map[string]any)
			jump["chain"], _, _ = strings.Cut(unbucket.Replace(jump["chain"].(string)), "#")
		}
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		var old []string
		for _, line := range strings.Split(sandbox.MustRun(t, sb.Node, cmd+"-save", "-t", "nat"), "\n") {
			if bucketDecl.MatchString(line) {
				continue
			}
			line = inHPBucket.ReplaceAllString(line, "-A CNI-LITE-HOSTPORTS ")
			old = append(old, inMSBucket.ReplaceAllString(line, "-A CNI-LITE-SNAT "))
		}
		text := strings.Join(old, "\n")
		if strings.Contains(text, "CNI-LITE-HA-") || strings.Contains(text, "CNI-LITE-HP-") || strings.Contains(text, "CNI-LITE-MS-") || !strings.Contains(text, "-A CNI-LITE-SNAT -d ") {
			t.Fatalf("%s is not the previous release's layout:\n%s", cmd, text)
		}
		file := filepath.Join(t.TempDir(), cmd)
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := sandbox.Run(sb.Node, nil, cmd+"-restore", file); err != nil {
			t.Fatalf("%s-restore of the previous release's layout: %v\n%s", cmd, err, out)
		}
	}
	if data, err = json.Marshal(rec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stateDir, names[0]), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := rtm.Check(list, att); err != nil {
		t.Fatalf("CHECK of the old attachment: %v", err)
	}
	sandbox.MustRun(t, sb.Node, "iptables", "-t", "nat", "-F")
	sandbox.MustRun(t, sb.Node, "iptables", "-t", "nat", "-X")
	if out, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), "portmap-lite"), "restore", "-state-dir", stateDir); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	if err := rtm.Check(list, att); err != nil {
		t.Fatalf("CHECK after restoring the old attachment: %v", err)
	}
	att.CapabilityArgs = nil
	if err := rtm.Del(list, att); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if after := natState(t, sb); after != before {
		t.Fatalf("nat tables after DEL:\n%s\nbefore:\n%s", after, before)
	}
}
