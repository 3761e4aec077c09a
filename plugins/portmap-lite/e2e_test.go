package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/nat"
	"github.com/cnichain/plugins/pkg/sandbox"
)

func TestMain(m *testing.M) { sandbox.Main(m) }

// dualNet is mynet with IPv6 too; PORTMAP is replaced by the plugin under test.
const dualNet = `{"cniVersion":"1.0.0","name":"dualnet","plugins":[
	{"type":"bridge","bridge":"dual0","isGateway":true,"hairpinMode":true,"ipMasq":true,
	 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.20.0/24"}],[{"subnet":"fd00:f4::/64"}]],
	         "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
	{PORTMAP,"capabilities":{"portMappings":true}}]}`

// The plugins under test, as their entry in a list: both backends of ours,
// and the reference portmap.
var variants = []struct{ name, entry string }{
	{"portmap-lite", `"type":"portmap-lite"`},
	{"portmap-lite nftables", `"type":"portmap-lite","backend":"nftables"`},
	{"portmap-lite legacy", `"type":"portmap-lite","iptablesFlavour":"legacy"`},
	{"portmap", `"type":"portmap"`},
}

func dualNetWith(entry string) string { return strings.Replace(dualNet, "PORTMAP", entry, 1) }

var mappings = map[string]any{"portMappings": []map[string]any{
	{"hostPort": 9090, "containerPort": 80, "protocol": "tcp"},
	{"hostPort": 9091, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
	{"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
}}

// natState is the nat tables of the node in both families (iptables, its
// legacy flavour, and our nftables tables), without what is meant to
// outlive pods: the shared chains and their entry jumps, ours and the
// reference's, and iptables-save's timestamps and counters.
func natState(t *testing.T, sb *sandbox.Sandbox) string {
	t.Helper()
	return iptablesState(t, sb) + "\n" + nftState(t, sb)
}

// nftState lists the chains of our nftables tables other than the shared
// ones (and those only when they hold more than the dispatch lookups), with
// their rule counts, and the elements of the dispatch maps.
func nftState(t *testing.T, sb *sandbox.Sandbox) string {
	t.Helper()
	shared := map[string]int{"prerouting": -1, "output": -1, "postrouting": -1, "hostports": 2, "masq": 1}
	var out []string
	for _, ch := range sb.NFTChains(t) {
		if ch.Table != "cnichain-portmap" {
			continue
		}
		if want, ok := shared[ch.Name]; !ok || (want >= 0 && ch.Rules != want) {
			out = append(out, fmt.Sprintf("nft %d %s: %d rules", ch.Family, ch.Name, ch.Rules))
		}
	}
	for _, set := range sb.NFTSets(t) {
		if set.Table == "cnichain-portmap" && set.Elements > 0 {
			out = append(out, fmt.Sprintf("nft %d map %s: %d elements", set.Family, set.Name, set.Elements))
		}
	}
	return strings.Join(out, "\n")
}

// nftBaseRules counts the rules of our tables' base chains.
func nftBaseRules(t *testing.T, sb *sandbox.Sandbox) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, ch := range sb.NFTChains(t) {
		if ch.Table == "cnichain-portmap" && ch.Base {
			out[fmt.Sprintf("%d/%s", ch.Family, ch.Name)] = ch.Rules
		}
	}
	return out
}

func iptablesState(t *testing.T, sb *sandbox.Sandbox) string {
	t.Helper()
	shared := regexp.MustCompile(`CNI-LITE-HOSTPORTS|CNI-LITE-SNAT|CNI-HOSTPORT-|^:CNI-LITE-(HA|HP|MS)-`)
	counters := regexp.MustCompile(`\[\d+:\d+\]`)
	var keep []string
	for _, cmd := range []string{"iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		keep = append(keep, "== "+cmd)
		for _, line := range strings.Split(sandbox.MustRun(t, sb.Node, cmd, "-t", "nat"), "\n") {
			if !strings.HasPrefix(line, "#") && !shared.MatchString(line) {
				keep = append(keep, counters.ReplaceAllString(line, ""))
			}
		}
	}
	return strings.Join(keep, "\n")
}

func podAddrs(t *testing.T, r *current.Result) (v4, v6 netip.Addr) {
	t.Helper()
	for _, ipc := range r.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		if a = a.Unmap(); a.Is4() {
			v4 = a
		} else {
			v6 = a
		}
	}
	if !v4.IsValid() || !v6.IsValid() {
		t.Fatalf("result lacks an IPv4 or IPv6 address: %v", r)
	}
	return v4, v6
}

// udpFlows counts the node's conntrack entries for UDP to port.
func udpFlows(t *testing.T, sb *sandbox.Sandbox, port uint16) int {
	t.Helper()
	n := 0
	err := sb.Node.Do(func(ns.NetNS) error {
		for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
			flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, fam)
			if err != nil {
				return err
			}
			for _, f := range flows {
				if f.Forward.Protocol == unix.IPPROTO_UDP && f.Forward.DstPort == port {
					n++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("conntrack: %v", err)
	}
	return n
}

// TestTraffic runs the same traffic through portmap-lite and through the
// reference portmap in the same chain: the two are interchangeable.
func TestTraffic(t *testing.T) {
	for _, v := range variants {
		plugin := v.name
		t.Run(plugin, func(t *testing.T) {
			sb := sandbox.New(t)
			rtm := sb.Runtime(t)
			list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(v.entry)))
			before := natState(t, sb)
			pod := sb.NewPod(t)
			att := sandbox.Attachment(pod, "web-"+strings.ReplaceAll(plugin, " ", "-"), "eth0")
			att.CapabilityArgs = mappings
			res, err := rtm.Add(list, att)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			t.Cleanup(func() { _ = rtm.Del(list, att) })
			r, _ := current.NewResultFromResult(res)
			_, v6 := podAddrs(t, r)
			sandbox.WaitDAD(t, pod)
			sandbox.WaitDAD(t, sb.Node)
			sandbox.ServeTCP(t, pod, 80, "hello from the pod")
			sandbox.ServeUDP(t, pod, 53, "udp from the pod")

			tcp := []struct {
				name string
				from ns.NetNS
				to   netip.AddrPort
			}{
				{"a lan client on the node's address", sb.LAN, netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), 9090)},
				{"the node on 127.0.0.1 (hostIP 127.0.0.1)", sb.Node, netip.MustParseAddrPort("127.0.0.1:9091")},
				{"the node on 127.0.0.1 (no hostIP)", sb.Node, netip.MustParseAddrPort("127.0.0.1:9090")},
				{"the pod itself on the node's address (hairpin)", pod, netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), 9090)},
				{"a lan client over IPv6", sb.LAN, netip.AddrPortFrom(sandbox.NodeIPv6.Addr(), 9090)},
				{"the pod itself over IPv6 (hairpin)", pod, netip.AddrPortFrom(sandbox.NodeIPv6.Addr(), 9090)},
			}
			for _, tt := range tcp {
				t.Run("tcp from "+tt.name, func(t *testing.T) {
					got, err := sandbox.DialTCP(tt.from, tt.to)
					if err != nil || got != "hello from the pod" {
						t.Fatalf("%s -> %s: %q, %v", tt.name, tt.to, got, err)
					}
				})
			}
			t.Run("the rules are where the backend puts them", func(t *testing.T) {
				ipt := iptablesState(t, sb)
				legacyAt := strings.Index(ipt, "== iptables-legacy-save")
				got := map[string]bool{
					"nftables": strings.Contains(nftState(t, sb), "CNI-LITE-DN-"),
					"iptables": strings.Contains(ipt[:legacyAt], "CNI-LITE-DN-"),
					"legacy":   strings.Contains(ipt[legacyAt:], "CNI-LITE-DN-"),
				}
				want := map[string]map[string]bool{
					"portmap-lite":          {"iptables": true},
					"portmap-lite nftables": {"nftables": true},
					"portmap-lite legacy":   {"legacy": true},
					"portmap":               {},
				}[plugin]
				for where, in := range got {
					if in != want[where] {
						t.Errorf("attachment chains in %s: %v, want %v", where, in, want[where])
					}
				}
			})
			t.Run("udp from a lan client", func(t *testing.T) {
				got, err := sandbox.DialUDP(sb.LAN, netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), 5353))
				if err != nil || got != "udp from the pod" {
					t.Fatalf("udp: %q, %v", got, err)
				}
			})
			t.Run("CHECK passes", func(t *testing.T) {
				if err := rtm.Check(list, att); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("DEL leaves the nat tables as they were, and succeeds twice", func(t *testing.T) {
				if n := udpFlows(t, sb, 5353); n == 0 {
					t.Fatal("no conntrack entry for the UDP mapping: the flush below would prove nothing")
				}
				if err := rtm.Del(list, att); err != nil {
					t.Fatal(err)
				}
				// A new pod on the port would get a dead flow (plugins#123); the
				// reference flushes on DEL too since v1.10.0.
				if n := udpFlows(t, sb, 5353); n != 0 {
					t.Errorf("%d UDP conntrack entries to hostPort 5353 survive DEL", n)
				}
				if after := natState(t, sb); after != before {
					t.Fatalf("nat tables after DEL:\n%s\nbefore ADD:\n%s", after, before)
				}
				if strings.Contains(natState(t, sb), v6.String()) {
					t.Fatal("a rule for the pod's IPv6 address remains")
				}
				if err := rtm.Del(list, att); err != nil {
					t.Fatalf("second DEL: %v", err)
				}
			})
		})
	}
}

// TestSourceDocument is the seed's session: cnitool add with CAP_ARGS,
// iptables-save | grep <pod IP>, a connection to 127.0.0.1:9090, then
// cnitool del, here without CAP_ARGS, which must still clean up.
func TestSourceDocument(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	before := natState(t, sb)
	capArgs := `CAP_ARGS={"portMappings":[{"hostPort":9090,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]}`
	out, err := sb.Cnitool(t, sandbox.NetD(), "add", "mynet", pod, capArgs)
	if err != nil {
		t.Fatalf("cnitool add: %v", err)
	}
	t.Cleanup(func() { _, _ = sb.Cnitool(t, sandbox.NetD(), "del", "mynet", pod) })
	ip := regexp.MustCompile(`"address": "(10\.244\.10\.\d+)/24"`).FindStringSubmatch(out)
	if ip == nil {
		t.Fatalf("cnitool add printed %s", out)
	}
	var lines []string
	for _, l := range strings.Split(sandbox.MustRun(t, sb.Node, "iptables-save"), "\n") {
		if strings.Contains(l, ip[1]) {
			lines = append(lines, l)
		}
	}
	grep := strings.Join(lines, "\n")
	for _, want := range []string{
		"-d 127.0.0.1/32 -p tcp -m tcp --dport 9090 -m comment --comment \"name: \\\"mynet\\\" id: \\\"cnitool-",
		"-j DNAT --to-destination " + ip[1] + ":80",
		"-s 127.0.0.1/32 -d " + ip[1] + "/32 -p tcp -m tcp --dport 80 -m comment",
		"-j MASQUERADE",
	} {
		if !strings.Contains(grep, want) {
			t.Errorf("iptables-save | grep %s lacks %q:\n%s", ip[1], want, grep)
		}
	}
	sandbox.ServeTCP(t, pod, 80, "nginx")
	if got, err := sandbox.DialTCP(sb.Node, netip.MustParseAddrPort("127.0.0.1:9090")); err != nil || got != "nginx" {
		t.Fatalf("curl 127.0.0.1:9090: %q, %v", got, err)
	}
	for i := 1; i <= 2; i++ {
		if _, err := sb.Cnitool(t, sandbox.NetD(), "del", "mynet", pod); err != nil {
			t.Fatalf("cnitool del #%d (no CAP_ARGS): %v", i, err)
		}
	}
	if after := natState(t, sb); after != before {
		t.Fatalf("nat tables after cnitool del without CAP_ARGS:\n%s\nbefore:\n%s", after, before)
	}
}

// execShim counts the runs of the batch binaries per name (the bridge
// plugin in the chain runs iptables itself, which is not ours to count).
func execShim(t *testing.T) func() map[string]int {
	runs := sandbox.ExecShim(t, "iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save")
	return func() map[string]int {
		counts := map[string]int{}
		for _, name := range runs() {
			counts[name]++
		}
		return counts
	}
}

// TestProcessesPerPod: on a node already set up, ADD runs one
// iptables-restore per family, DEL one per family, and a pod without port
// mappings costs no process at all (the reference takes the lock on every
// DEL: plugins#510).
func TestProcessesPerPod(t *testing.T) {
	for _, tt := range []struct {
		backend string
		want    map[string]int // per ADD and per DEL
	}{
		{"iptables", map[string]int{"iptables-restore": 1, "ip6tables-restore": 1}},
		{"nftables", map[string]int{}},
	} {
		t.Run(tt.backend, func(t *testing.T) {
			sb := sandbox.New(t)
			rtm := sb.Runtime(t)
			list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(`"type":"portmap-lite","backend":"`+tt.backend+`"`)))
			count := execShim(t)
			add := func(id string, caps map[string]any) *libcni.RuntimeConf {
				att := sandbox.Attachment(sb.NewPod(t), id, "eth0")
				att.CapabilityArgs = caps
				if _, err := rtm.Add(list, att); err != nil {
					t.Fatalf("ADD %s: %v", id, err)
				}
				t.Cleanup(func() { _ = rtm.Del(list, att) })
				return att
			}
			add("first", mappings) // sets up the shared chains
			count()
			many := map[string]any{"portMappings": func() []map[string]any {
				var m []map[string]any
				for i := 0; i < 50; i++ {
					// Distinct container ports: 150 rules in one transaction (and 150 netlink echoes).
					m = append(m, map[string]any{"hostPort": 20000 + i, "containerPort": 8000 + i, "protocol": "tcp"})
				}
				return m
			}()}
			att := add("second", many)
			if got := count(); !maps.Equal(got, tt.want) {
				t.Errorf("ADD with 50 mappings ran %v, want %v", got, tt.want)
			}
			if err := rtm.Del(list, att); err != nil {
				t.Fatal(err)
			}
			if got := count(); !maps.Equal(got, tt.want) {
				t.Errorf("DEL ran %v, want %v", got, tt.want)
			}
			plain := add("no-mappings", nil)
			if err := rtm.Del(list, plain); err != nil {
				t.Fatal(err)
			}
			if got := count(); len(got) != 0 {
				t.Errorf("ADD and DEL of a pod without mappings ran %v, want nothing", got)
			}
		})
	}
}

// TestConcurrentFirstADDs: pods added at once on a fresh node race to set
// up the shared chains; each entry jump must exist exactly once.
func TestConcurrentFirstADDs(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) { concurrentFirstADDs(t, backend) })
	}
}

// concurrentFirstADDs: half the pods keep their records in one stateDir,
// half in another, as two runtimes would: the shared chains are set up
// under a node-wide lock, so neither duplicates the other's entry jumps.
func concurrentFirstADDs(t *testing.T, backend string) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(`"type":"portmap-lite","backend":"`+backend+`"`)))
	lists := []*libcni.NetworkConfigList{list, withStateDir(t, list, filepath.Join(sb.Dir, "state", "other-runtime"))}
	before := natState(t, sb)
	const n = 8
	atts := make([]*libcni.RuntimeConf, n)
	errs := make(chan error, n)
	for i := range atts {
		atts[i] = sandbox.Attachment(sb.NewPod(t), fmt.Sprintf("race-%d", i), "eth0")
		atts[i].CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 30000 + i, "containerPort": 80, "protocol": "tcp"}}}
		go func(att *libcni.RuntimeConf) { _, err := rtm.Add(lists[i%2], att); errs <- err }(atts[i])
	}
	for range atts {
		if err := <-errs; err != nil {
			t.Errorf("concurrent ADD: %v", err)
		}
	}
	if backend == "nftables" {
		state := nftState(t, sb)
		for _, fam := range []string{"2", "10"} { // NFPROTO_IPV4, NFPROTO_IPV6
			if c := strings.Count(state, "nft "+fam+" CNI-LITE-DN-"); c != n {
				t.Errorf("family %s: %d DNAT chains, want %d:\n%s", fam, c, n, state)
			}
		}
		baseRules := nftBaseRules(t, sb)
		for chain, count := range baseRules {
			if count != 1 {
				t.Errorf("%s has %d rules, want one jump", chain, count)
			}
		}
		if len(baseRules) != 6 {
			t.Errorf("base chains %v, want prerouting, output, postrouting in both families", baseRules)
		}
	}
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		if backend == "nftables" {
			break
		}
		save := sandbox.MustRun(t, sb.Node, cmd, "-t", "nat")
		for _, jump := range []string{"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS", "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS", "-A POSTROUTING -j CNI-LITE-SNAT",
			"-A CNI-LITE-HOSTPORTS -j CNI-LITE-HA-00", "-A CNI-LITE-HOSTPORTS -j CNI-LITE-HP-1f", "-A CNI-LITE-SNAT -j CNI-LITE-MS-00"} {
			if c := strings.Count(save, jump+"\n"); c != 1 {
				t.Errorf("%s: %q appears %d times, want once", cmd, jump, c)
			}
		}
		if c := strings.Count(save, ":CNI-LITE-DN-"); c != n {
			t.Errorf("%s: %d DNAT chains, want %d", cmd, c, n)
		}
	}
	for i, att := range atts {
		go func(att *libcni.RuntimeConf) { errs <- rtm.Del(lists[i%2], att) }(att)
	}
	for range atts {
		if err := <-errs; err != nil {
			t.Errorf("concurrent DEL: %v", err)
		}
	}
	if after := natState(t, sb); after != before {
		t.Fatalf("nat tables after concurrent DELs:\n%s\nbefore:\n%s", after, before)
	}
}

// withStateDir is list with portmap-lite's stateDir set to dir.
func withStateDir(t *testing.T, list *libcni.NetworkConfigList, dir string) *libcni.NetworkConfigList {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal(list.Bytes, &raw); err != nil {
		t.Fatal(err)
	}
	for _, p := range raw["plugins"].([]any) {
		if plugin := p.(map[string]any); plugin["type"] == "portmap-lite" {
			plugin["stateDir"] = dir
		}
	}
	text, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	return sandbox.ListFromJSON(t, string(text))
}

// TestGC: GC keeps the valid attachments' rules and removes the others',
// including chains of ours that no record accounts for.
func TestGC(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) { gc(t, backend) })
	}
}

func gc(t *testing.T, backend string) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	text := strings.Replace(dualNetWith(`"type":"portmap-lite","backend":"`+backend+`"`), `"1.0.0"`, `"1.1.0"`, 1)
	list := sb.Localize(t, sandbox.ListFromJSON(t, text))
	for i := 0; i < 3; i++ {
		att := sandbox.Attachment(sb.NewPod(t), fmt.Sprintf("gc-%d", i), "eth0")
		att.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 31000 + i, "containerPort": 80, "protocol": "tcp"}}}
		if _, err := rtm.Add(list, att); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rtm.Del(list, att) })
	}
	// Another network, with its records in a stateDir of its own: its pod
	// is nothing this network's GC may touch.
	other := strings.NewReplacer(`"dualnet"`, `"othernet"`, `"dual0"`, `"other0"`, "10.244.20.", "10.244.21.", "fd00:f4::", "fd00:f5::").Replace(text)
	otherList := withStateDir(t, sb.Localize(t, sandbox.ListFromJSON(t, other)), filepath.Join(sb.Dir, "state", "othernet"))
	mustAddServing(t, sb, rtm, otherList, "other", tcpPort(31100))
	// Chains a crashed plugin left behind with no record: one of this
	// network, one of the other (GC must leave it), one whose rules name
	// no network (GC cannot tell whose: it stays too).
	orphans := map[string]string{
		"CNI-LITE-DN-0123456789abcdef": nat.Comment("dualnet", "crashed"),
		"CNI-LITE-DN-fedcba9876543210": nat.Comment("othernet", "crashed"),
		"CNI-LITE-DN-aaaaaaaaaaaaaaaa": "left by hand",
	}
	for chain, comment := range orphans {
		addOrphan(t, sb, backend, chain, comment)
	}
	if err := rtm.GC(list, []types.GCAttachment{{ContainerID: "gc-1", IfName: "eth0"}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	state, chainMark := iptablesState(t, sb), ":CNI-LITE-DN-"
	if backend == "nftables" {
		state, chainMark = nftState(t, sb), " CNI-LITE-DN-"
	}
	// gc-1's and the other network's, in both families, and two orphans.
	if n := strings.Count(state, chainMark); n != 6 {
		t.Errorf("%d DNAT chains after GC, want gc-1's two, the other network's two and two orphans:\n%s", n, state)
	}
	for chain := range orphans {
		if gone := !strings.Contains(state, chain); gone != (chain == "CNI-LITE-DN-0123456789abcdef") {
			t.Errorf("orphan %s (%q) gone: %v, want only this network's gone:\n%s", chain, orphans[chain], gone, state)
		}
	}
	if backend == "iptables" && !strings.Contains(state, "--dport 31001") {
		t.Errorf("the valid attachment's rules went:\n%s", state)
	}
	to := netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), 31100)
	if got, err := sandbox.DialTCP(sb.LAN, to); err != nil || got != "hello from other" {
		t.Errorf("the other network's pod at %s after this network's GC: %q, %v", to, got, err)
	}
}

// addOrphan adds an attachment chain with one rule commented comment, and
// a jump to it, as a plugin that crashed before writing its record would.
func addOrphan(t *testing.T, sb *sandbox.Sandbox, backend, chain, comment string) {
	t.Helper()
	if backend == "iptables" {
		sandbox.MustRun(t, sb.Node, "iptables", "-t", "nat", "-N", chain)
		sandbox.MustRun(t, sb.Node, "iptables", "-t", "nat", "-A", chain, "-m", "comment", "--comment", comment, "-j", "RETURN")
		sandbox.MustRun(t, sb.Node, "iptables", "-t", "nat", "-A", "CNI-LITE-HP-00", "-j", chain)
		return
	}
	err := sb.Node.Do(func(ns.NetNS) error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		table := &nftables.Table{Name: "cnichain-portmap", Family: nftables.TableFamilyIPv4}
		ch := c.AddChain(&nftables.Chain{Name: chain, Table: table})
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}},
			UserData: userdata.AppendString(nil, userdata.TypeComment, comment)})
		c.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: "hostports", Table: table},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}})
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestFailures: bad input and a failing ip6tables-restore end with a CNI
// error naming the cause, and the node's nat tables as they were.
func TestFailures(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	prev := `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
		"ips":[{"address":"10.244.30.2/24","interface":0},{"address":"fd00:30::2/64","interface":0}]}`
	conf := func(body string) []byte {
		return []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"failnet","type":"portmap-lite","stateDir":%q,%s}`, sb.Dir+"/state", body))
	}
	sandbox.MustRun(t, sb.Node, "ip", "route", "add", "10.244.30.0/24", "dev", "eno1")
	// Shared chains first, so that a failure cannot hide behind the bootstrap.
	if _, err := sb.Invoke(t, "portmap-lite", conf(prev+`,"runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1}]}`),
		sandbox.Invocation{Command: "ADD", ContainerID: "setup", NetNS: pod.Path(), IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Invoke(t, "portmap-lite", conf(`"x":0`), sandbox.Invocation{Command: "DEL", ContainerID: "setup", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	before := natState(t, sb)
	tests := []struct {
		name     string
		body     string
		shim     bool
		wantCode uint
		wantMsg  string
	}{
		{name: "no prevResult", body: `"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}`,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "prevResult: missing"},
		{name: "prevResult without container IPs", body: `"prevResult":{"cniVersion":"1.0.0"},"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}`,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "prevResult.ips"},
		{name: "hostPort out of range", body: prev + `,"runtimeConfig":{"portMappings":[{"hostPort":70000,"containerPort":80}]}`,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: `hostPort "70000"`},
		{name: "unknown protocol", body: prev + `,"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"gre"}]}`,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: `protocol "gre"`},
		{name: "duplicate mapping", body: prev + `,"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":8080}]}`,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "maps the same host address"},
		{name: "ip6tables-restore fails after IPv4 went in", shim: true,
			body:     prev + `,"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}`,
			wantCode: types.ErrInternal, wantMsg: "install IPv6 port mappings"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.shim {
				dir := t.TempDir()
				if err := os.WriteFile(dir+"/ip6tables-restore", []byte("#!/bin/sh\necho injected failure >&2\nexit 1\n"), 0o755); err != nil {
					t.Fatal(err)
				}
				t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
			}
			_, err := sb.Invoke(t, "portmap-lite", conf(tt.body), sandbox.Invocation{Command: "ADD", ContainerID: fmt.Sprintf("f%d", i), NetNS: pod.Path(), IfName: "eth0"})
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != tt.wantCode || !strings.Contains(cniErr.Msg, tt.wantMsg) {
				t.Fatalf("ADD error = %v, want code %d containing %q", err, tt.wantCode, tt.wantMsg)
			}
			if after := natState(t, sb); after != before {
				t.Fatalf("a failed ADD changed the nat tables:\n%s\nbefore:\n%s", after, before)
			}
			if names, _ := (attachstate.Store{Dir: sb.Dir + "/state"}).Names(); len(names) > 0 { // locks are dot files, not state
				t.Fatalf("a failed ADD left state: %v", names)
			}
		})
	}
	t.Run("STATUS fails with code 50 without the iptables binaries", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := sb.Invoke(t, "portmap-lite", []byte(`{"cniVersion":"1.1.0","name":"failnet","type":"portmap-lite"}`), sandbox.Invocation{Command: "STATUS"})
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != 50 || !strings.Contains(cniErr.Msg, "iptables-restore") {
			t.Fatalf("STATUS = %v", err)
		}
	})
	t.Run("STATUS passes on a node whose iptables and nftables work", func(t *testing.T) {
		for _, backend := range []string{"iptables", "nftables"} {
			conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"failnet","type":"portmap-lite","backend":%q}`, backend)
			if _, err := sb.Invoke(t, "portmap-lite", []byte(conf), sandbox.Invocation{Command: "STATUS"}); err != nil {
				t.Errorf("%s: STATUS = %v", backend, err)
			}
		}
	})
	t.Run("STATUS fails with code 50 when iptables cannot list the nat table", func(t *testing.T) {
		dir := t.TempDir()
		for _, name := range []string{"iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save", "ip6tables"} {
			real, err := exec.LookPath(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(real, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		broken := "#!/bin/sh\ncase \"$*\" in *--version*) echo 'iptables v1.8.11 (nf_tables)';; *) echo \"iptables: can't initialize iptables table 'nat': Table does not exist\" >&2; exit 3;; esac\n"
		if err := os.WriteFile(filepath.Join(dir, "iptables"), []byte(broken), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
		_, err := sb.Invoke(t, "portmap-lite", []byte(`{"cniVersion":"1.1.0","name":"failnet","type":"portmap-lite"}`), sandbox.Invocation{Command: "STATUS"})
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != 50 || !strings.Contains(cniErr.Msg, "nat table") {
			t.Fatalf("STATUS = %v", err)
		}
	})
}
