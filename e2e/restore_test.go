package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// bridgeHostPort is bridge + host-local + portmap-lite, IPv4 and IPv6,
// without ipMasq: a firewall flush would take the reference bridge's own
// masquerade chains too, which it cannot delete afterwards.
const bridgeHostPort = `{"cniVersion":"1.1.0","name":"restore-br","plugins":[
	{"type":"bridge","bridge":"rbr0","isGateway":true,"hairpinMode":true,
	 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.252.0.0/24"}],[{"subnet":"fd00:fc::/64"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
	{"type":"portmap-lite",BACKEND"capabilities":{"portMappings":true}}]}`

// TestRestoreAfterAFirewallReload: pods through the whole macvlan chain and
// through bridge + portmap-lite work; a firewall reload flushes the nat
// table and a network manager deletes the host routes and the sub-device;
// the traffic stops; the restore commands bring it back, a second restore
// changes nothing, and DEL afterwards leaves the node as it was. With the
// nftables backend, a flush of the standard tables takes nothing of ours.
func TestRestoreAfterAFirewallReload(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) {
			sb := sandbox.New(t)
			sb.EnableForwarding(t)
			rtm := sb.Runtime(t)
			entry := fmt.Sprintf(`"backend":%q,`, backend)
			lists := []*libcni.NetworkConfigList{
				wholeChainList(t, sb, backend),
				sb.Localize(t, sandbox.ListFromJSON(t, strings.Replace(bridgeHostPort, "BACKEND", entry, 1))),
			}
			ports := []int{8080, 9090}
			pods := make([]ns.NetNS, len(lists))
			atts := make([]*libcni.RuntimeConf, len(lists))
			warm := sb.NewPod(t)
			for i, list := range lists {
				w := sandbox.Attachment(warm, fmt.Sprintf("warm-%d", i), "eth0")
				w.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": ports[i], "containerPort": 80, "protocol": "tcp"}}}
				mustAdd(t, rtm, list, w)
				mustDel(t, rtm, list, w)
			}
			before := sb.Snapshot(t)
			for i, list := range lists {
				pods[i] = sb.NewPod(t)
				atts[i] = sandbox.Attachment(pods[i], fmt.Sprintf("restore-%d", i), "eth0")
				atts[i].CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": ports[i], "containerPort": 80, "protocol": "tcp"}}}
				mustAdd(t, rtm, list, atts[i])
				t.Cleanup(func() { _ = rtm.Del(list, atts[i]) })
				sandbox.WaitDAD(t, pods[i])
				sandbox.ServeTCP(t, pods[i], 80, fmt.Sprintf("pod %d", i))
			}
			sandbox.ServeTCP(t, sb.Node, 7070, "the node")
			node4, node6 := sandbox.NodeIPv4.Addr(), sandbox.NodeIPv6.Addr()
			paths := []path{
				{"lan -> macvlan pod's hostPort", sb.LAN, netip.AddrPortFrom(node4, 8080), "tcp", "pod 0"},
				{"lan -> macvlan pod's hostPort, IPv6", sb.LAN, netip.AddrPortFrom(node6, 8080), "tcp", "pod 0"},
				{"lan -> bridge pod's hostPort", sb.LAN, netip.AddrPortFrom(node4, 9090), "tcp", "pod 1"},
				{"lan -> bridge pod's hostPort, IPv6", sb.LAN, netip.AddrPortFrom(node6, 9090), "tcp", "pod 1"},
				{"node -> macvlan pod", sb.Node, netip.AddrPortFrom(podV4, 80), "tcp", "pod 0"},
				{"macvlan pod -> node, IPv6", pods[0], netip.AddrPortFrom(node6, 7070), "tcp", "the node"},
				{"node 127.0.0.1 -> macvlan pod's hostPort", sb.Node, netip.MustParseAddrPort("127.0.0.1:8080"), "tcp", "pod 0"},
			}
			works := func(t *testing.T, when string) {
				t.Helper()
				for _, p := range paths {
					if err := p.check(); err != nil {
						t.Errorf("%s: %v", when, err)
					}
				}
			}
			works(t, "before the reload")

			for _, cmd := range [][]string{
				{"iptables", "-t", "nat", "-F"}, {"iptables", "-t", "nat", "-X"},
				{"ip6tables", "-t", "nat", "-F"}, {"ip6tables", "-t", "nat", "-X"},
				{"ip", "route", "flush", "proto", "197"}, {"ip", "-6", "route", "flush", "proto", "197"},
				{"ip", "link", "del", "eno1.host"},
			} {
				sandbox.MustRun(t, sb.Node, cmd[0], cmd[1:]...)
			}
			if backend == "nftables" {
				// Our own tables: a flush of the standard ones leaves them.
				if got, err := sandbox.DialTCP(sb.LAN, netip.AddrPortFrom(node4, 9090)); err != nil || got != "pod 1" {
					t.Errorf("bridge pod's hostPort after the flush, nftables backend: %q, %v", got, err)
				}
			} else {
				if got, err := sandbox.DialTCP(sb.LAN, netip.AddrPortFrom(node4, 9090)); err == nil {
					t.Errorf("the flush did not break the hostPort (%q): the test proves nothing", got)
				}
			}
			if got, err := sandbox.DialTCP(sb.Node, netip.AddrPortFrom(podV4, 80)); err == nil {
				t.Errorf("the node reached the macvlan pod without its route (%q): the test proves nothing", got)
			}

			restore := func() {
				t.Helper()
				bin := sandbox.Plugins(t)
				for _, c := range []struct{ plugin, dir string }{
					{"macvlan-host-route", filepath.Join(sb.Dir, "state", "macvlan-host-route")},
					{"portmap-lite", filepath.Join(sb.Dir, "state", "portmap-lite")},
				} {
					out, err := sandbox.Run(sb.Node, nil, filepath.Join(bin, c.plugin), "restore", "-state-dir", c.dir)
					if err != nil {
						t.Fatalf("%s restore: %v\n%s", c.plugin, err, out)
					}
				}
			}
			restore()
			works(t, "after restore")
			once := sb.Snapshot(t)
			restore()
			if twice := sb.Snapshot(t); twice != once {
				t.Errorf("a second restore changed the node:\n%s\nafter the first:\n%s", twice, once)
			}
			for i, list := range lists {
				atts[i].CapabilityArgs = nil
				mustDel(t, rtm, list, atts[i])
			}
			// The sub-device was made anew: same state, another link index.
			if after := sb.Snapshot(t); canonical(after) != canonical(before) {
				t.Fatalf("node after DEL:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
}

// canonical is a snapshot without link indexes and in sorted lines, for
// comparing nodes whose links were made in another order.
func canonical(snapshot string) string {
	lines := strings.Split(snapshot, "\n")
	for i, l := range lines {
		if n, rest, ok := strings.Cut(l, ": "); ok && strings.Trim(n, "0123456789") == "" {
			lines[i] = rest
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestRestoreSkipsPodsThatAreGone: a record whose pod's netns has gone is
// left alone (GC removes it), and the restore says so.
func TestRestoreSkipsPodsThatAreGone(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, strings.Replace(bridgeHostPort, "BACKEND", "", 1)))
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "gone", "eth0")
	att.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 9090, "containerPort": 80, "protocol": "tcp"}}}
	mustAdd(t, rtm, list, att)
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	// The netns path goes as when a runtime removed the pod without DEL.
	ghost := *att
	ghost.NetNS = filepath.Join(sb.Dir, "no-such-netns")
	sandbox.MustRun(t, sb.Node, "iptables", "-t", "nat", "-F")
	sandbox.MustRun(t, sb.Node, "iptables", "-t", "nat", "-X")
	stateDir := filepath.Join(sb.Dir, "state", "portmap-lite")
	sandbox.MustRun(t, sb.Node, "sh", "-c", fmt.Sprintf(`sed -i 's|"netns":"[^"]*"|"netns":"%s"|' %s/*`, ghost.NetNS, stateDir))
	out, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), "portmap-lite"), "restore", "-state-dir", stateDir)
	if err != nil || !strings.Contains(out, "skipped") || !strings.Contains(out, "no-such-netns is gone") {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	if rules := sandbox.MustRun(t, sb.Node, "iptables-save", "-t", "nat"); strings.Contains(rules, "CNI-LITE-DN-") {
		t.Fatalf("the gone pod's rules were put back:\n%s", rules)
	}
}

// TestSystemdUnits: the unit runs the agent where make install puts it,
// with flags it has, and installs where systemd looks.
func TestSystemdUnits(t *testing.T) {
	dir := filepath.Join(sandbox.NetD(), "..", "scripts", "systemd")
	unit, err := os.ReadFile(filepath.Join(dir, "cnichain-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	var execs []string
	for _, line := range strings.Split(string(unit), "\n") {
		if cmd, ok := strings.CutPrefix(line, "ExecStart="); ok {
			execs = append(execs, cmd)
		}
	}
	if want := []string{"/usr/local/sbin/cnichain-agent"}; !slices.Equal(execs, want) {
		t.Fatalf("ExecStart lines = %q, want %q", execs, want)
	}
	makefile, err := os.ReadFile(filepath.Join(sandbox.NetD(), "..", "Makefile"))
	if err != nil || !strings.Contains(string(makefile), "$(DESTDIR)/usr/local/sbin/cnichain-agent") {
		t.Errorf("make install does not put the agent where the unit runs it (%v)", err)
	}
	out, _ := sandbox.Run(sandbox.NewNS(t), nil, filepath.Join(sandbox.Plugins(t), "cnichain-agent"), "-h")
	for _, flag := range []string{"-portmap-state-dir", "-hostroute-state-dir", "-canary-every"} {
		if !strings.Contains(out, flag) {
			t.Errorf("cnichain-agent -h lacks %s:\n%s", flag, out)
		}
	}
}
