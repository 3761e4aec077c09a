package main

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/nat"
	"github.com/cnichain/plugins/pkg/sandbox"
)

// Buckets is how many bucket chains the iptables backend spreads jumps over.
const Buckets = nat.Buckets

// addServing adds a pod on list with maps as its portMappings and, when the
// ADD succeeds, a web server in it answering "hello from NAME", once its
// IPv6 addresses are usable; the pod is deleted at cleanup.
func addServing(t *testing.T, sb *sandbox.Sandbox, rtm *sandbox.Runtime, list *libcni.NetworkConfigList, name string, maps ...map[string]any) (*libcni.RuntimeConf, error) {
	t.Helper()
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, name, "eth0")
	att.CapabilityArgs = map[string]any{"portMappings": maps}
	if _, err := rtm.Add(list, att); err != nil {
		return att, err
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	sandbox.WaitDAD(t, pod)
	sandbox.ServeTCP(t, pod, 80, "hello from "+name)
	return att, nil
}

// mustAddServing is addServing where the ADD must succeed.
func mustAddServing(t *testing.T, sb *sandbox.Sandbox, rtm *sandbox.Runtime, list *libcni.NetworkConfigList, name string, maps ...map[string]any) *libcni.RuntimeConf {
	t.Helper()
	att, err := addServing(t, sb, rtm, list, name, maps...)
	if err != nil {
		t.Fatalf("ADD %s: %v", name, err)
	}
	return att
}

func tcpPort(port int) map[string]any {
	return map[string]any{"hostPort": port, "containerPort": 80, "protocol": "tcp"}
}

// deleteOurTables deletes portmap-lite's nftables tables, as `nft flush
// ruleset` would.
func deleteOurTables(t *testing.T, sb *sandbox.Sandbox) {
	t.Helper()
	err := sb.Node.Do(func(ns.NetNS) error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tables, err := c.ListTables()
		if err != nil {
			return err
		}
		for _, table := range tables {
			if table.Name == "cnichain-portmap" {
				c.DelTable(table)
			}
		}
		return c.Flush()
	})
	if err != nil {
		t.Fatalf("delete our tables: %v", err)
	}
}

// TestOnePortOnTwoAddresses: two pods map the same hostPort, one on
// 127.0.0.1 and the node's IPv6 address, the other on every address; each
// address reaches its own pod, the more specific mapping winning. With
// nftables, a third pod asking for a hostPort already taken on every
// address is refused with the taken key named, and installs nothing; with
// iptables, as the reference portmap, it would be shadowed silently.
func TestOnePortOnTwoAddresses(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) { onePortOnTwoAddresses(t, backend) })
	}
}

func onePortOnTwoAddresses(t *testing.T, backend string) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(`"type":"portmap-lite","backend":"`+backend+`"`)))
	before := natState(t, sb)
	// The pod on every address comes first, the one on two addresses after
	// it: the more specific must win whatever the order, and whatever
	// bucket its key would pick (the release before sorted by that, and
	// "local" here is named to have come after "every" there).
	every, err := addServing(t, sb, rtm, list, "every", tcpPort(9600))
	if err != nil {
		t.Fatalf("ADD of the pod on every address: %v", err)
	}
	local, err := addServing(t, sb, rtm, list, nameInKeyBucket(t, "local", keyBucket("every")+1, Buckets),
		map[string]any{"hostPort": 9600, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
		map[string]any{"hostPort": 9600, "containerPort": 80, "protocol": "tcp", "hostIP": sandbox.NodeIPv6.Addr().String()})
	if err != nil {
		t.Fatalf("ADD of the pod on 127.0.0.1: %v", err)
	}
	localName := local.ContainerID
	sandbox.WaitDAD(t, sb.Node)
	for _, tt := range []struct {
		name string
		from ns.NetNS
		to   netip.AddrPort
		want string
	}{
		{"the node on 127.0.0.1", sb.Node, netip.MustParseAddrPort("127.0.0.1:9600"), "hello from " + localName},
		{"a lan client on the node's IPv6 address", sb.LAN, netip.AddrPortFrom(sandbox.NodeIPv6.Addr(), 9600), "hello from " + localName},
		{"a lan client on the node's IPv4 address", sb.LAN, netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), 9600), "hello from every"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := sandbox.DialTCP(tt.from, tt.to); err != nil || got != tt.want {
				t.Fatalf("%s: %q, %v; want %q", tt.to, got, err, tt.want)
			}
		})
	}
	if backend == "iptables" {
		t.Run("a third pod on a taken port waits behind the first, as with the reference", func(t *testing.T) {
			// Named so that the release before would have put it first.
			later := mustAddServing(t, sb, rtm, list, nameInKeyBucket(t, "later", 0, keyBucket("every")), tcpPort(9600))
			to := netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), 9600)
			if got, err := sandbox.DialTCP(sb.LAN, to); err != nil || got != "hello from every" {
				t.Fatalf("%s with a later pod on the port: %q, %v; want the first", to, got, err)
			}
			if err := rtm.Del(list, later); err != nil {
				t.Fatal(err)
			}
		})
	}
	if backend == "nftables" {
		t.Run("a third pod on a taken port is refused and installs nothing", func(t *testing.T) {
			held, heldNAT := nftState(t, sb), natState(t, sb)
			att, err := addServing(t, sb, rtm, list, "taken", tcpPort(9600))
			if err == nil {
				t.Fatal("ADD of a hostPort another attachment holds on every address succeeded")
			}
			if !strings.Contains(err.Error(), "tcp . 9600") || !strings.Contains(err.Error(), "another attachment") {
				t.Errorf("the error does not name the taken key: %v", err)
			}
			if after := nftState(t, sb); after != held {
				t.Errorf("the refused ADD left:\n%s\nwant:\n%s", after, held)
			}
			// The runtime's DEL after a failed ADD, for bridge's rules.
			if err := rtm.Del(list, att); err != nil {
				t.Fatalf("DEL after the refused ADD: %v", err)
			}
			if after := natState(t, sb); after != heldNAT {
				t.Errorf("DEL of the refused ADD took:\n%s\nwant:\n%s", after, heldNAT)
			}
		})
	}
	for _, att := range []*libcni.RuntimeConf{local, every} {
		if err := rtm.Del(list, att); err != nil {
			t.Fatalf("DEL %s: %v", att.ContainerID, err)
		}
	}
	if after := natState(t, sb); after != before {
		t.Fatalf("nat tables after DEL:\n%s\nbefore:\n%s", after, before)
	}
}

// keyBucket is the bucket the release before put the jumps of container
// id's attachment on dualnet's eth0 in: by the hash of its key.
func keyBucket(id string) int {
	n, _ := strconv.ParseUint(attachKey(id).ID()[:4], 16, 32)
	return int(n % Buckets)
}

// attachKey is the key of container id's attachment on dualnet's eth0.
func attachKey(id string) attachstate.Key {
	return attachstate.Key{Network: "dualnet", ContainerID: id, IfName: "eth0"}
}

// nameInKeyBucket is the first of prefix-0, prefix-1, ... whose keyBucket
// is in [lo, hi).
func nameInKeyBucket(t *testing.T, prefix string, lo, hi int) string {
	t.Helper()
	for i := range 10000 {
		name := fmt.Sprintf("%s-%d", prefix, i)
		if b := keyBucket(name); b >= lo && b < hi {
			return name
		}
	}
	t.Fatalf("no %s-N in key buckets [%d, %d)", prefix, lo, hi)
	return ""
}

// TestUpgradeFromPerPodJumps: the previous release dispatched with one jump
// rule per pod in the nftables table's shared chains. On such a table this
// release adds its maps in front of those jumps; the old attachment passes
// CHECK, both pods are reached, and DEL of both leaves nothing of either.
func TestUpgradeFromPerPodJumps(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(`"type":"portmap-lite","backend":"nftables"`)))
	before := natState(t, sb)
	old := mustAddServing(t, sb, rtm, list, "old", tcpPort(9700))
	if err := sb.Node.Do(func(ns.NetNS) error { return toPerPodJumps(t) }); err != nil {
		t.Fatalf("rewrite the table as the previous release laid it out: %v", err)
	}
	if state := nftState(t, sb); strings.Contains(state, " map ") || !strings.Contains(state, "hostports: 1 rules") {
		t.Fatalf("the table is not the previous release's layout:\n%s", state)
	}
	if err := rtm.Check(list, old); err != nil {
		t.Fatalf("CHECK of the old attachment: %v", err)
	}
	cur := mustAddServing(t, sb, rtm, list, "new", tcpPort(9701))
	for port, want := range map[uint16]string{9700: "hello from old", 9701: "hello from new"} {
		to := netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), port)
		if got, err := sandbox.DialTCP(sb.LAN, to); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", to, got, err, want)
		}
	}
	for _, att := range []*libcni.RuntimeConf{old, cur} {
		if err := rtm.Del(list, att); err != nil {
			t.Fatalf("DEL %s: %v", att.ContainerID, err)
		}
	}
	// The old table's shared chains are left with the lookups only.
	if after := natState(t, sb); after != before {
		t.Fatalf("nat tables after DEL:\n%s\nbefore:\n%s", after, before)
	}
}

// toPerPodJumps rewrites our tables as the previous release left them: each
// dispatch element becomes a jump rule in hostports (masq for a pod
// address), and the maps and their lookups go.
func toPerPodJumps(t *testing.T) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		table := &nftables.Table{Name: "cnichain-portmap", Family: fam}
		sets, err := c.GetSets(table)
		if err != nil {
			return err
		}
		for _, parent := range []string{"hostports", "masq"} {
			ch := &nftables.Chain{Name: parent, Table: table}
			rules, err := c.GetRules(table, ch)
			if err != nil {
				return err
			}
			for _, r := range rules {
				if err := c.DelRule(r); err != nil {
					return err
				}
			}
		}
		for _, s := range sets {
			elems, err := c.GetSetElements(s)
			if err != nil {
				return err
			}
			parent := map[bool]string{true: "masq", false: "hostports"}[s.Name == "masq-pods"]
			for _, e := range elems {
				chain := chainOfElement(t, c, table, e.Comment, parent == "masq")
				c.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: parent, Table: table},
					Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}})
			}
			c.DelSet(s)
		}
	}
	return c.Flush()
}

// chainOfElement finds the attachment chain a map element leads to by its
// comment, the attachment's, which the chain's rules carry too.
func chainOfElement(t *testing.T, c *nftables.Conn, table *nftables.Table, comment string, snat bool) string {
	chains, err := c.ListChainsOfTableFamily(table.Family)
	if err != nil {
		t.Fatal(err)
	}
	prefix := map[bool]string{true: "CNI-LITE-SN-", false: "CNI-LITE-DN-"}[snat]
	for _, ch := range chains {
		if ch.Table.Name != table.Name || !strings.HasPrefix(ch.Name, prefix) {
			continue
		}
		if rules, err := c.GetRules(table, ch); err == nil && len(rules) > 0 && strings.Contains(string(rules[0].UserData), comment) {
			return ch.Name
		}
	}
	t.Fatalf("no %s chain for the element of %q", prefix, comment)
	return ""
}

// TestNFTablesRestoreAtScale: more attachments than one restore
// transaction holds; our tables deleted (as `nft flush ruleset` would) come
// back whole from the records, a second restore sends nothing, and DEL of
// every attachment leaves only the shared layout.
func TestNFTablesRestoreAtScale(t *testing.T) {
	const pods = 300
	sb := sandbox.New(t)
	sandbox.MustRun(t, sb.Node, "ip", "route", "add", "10.244.0.0/16", "dev", "eno1")
	pod := sb.NewPod(t)
	stateDir := sb.Dir + "/state"
	conf := func(i int) []byte {
		return fmt.Appendf(nil, `{"cniVersion":"1.0.0","name":"scale","type":"portmap-lite","backend":"nftables","stateDir":%q,
			"runtimeConfig":{"portMappings":[{"hostPort":%d,"containerPort":80,"protocol":"tcp"}]},
			"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.244.%d.%d/16","interface":0}]}}`,
			stateDir, 40000+i, 1+i/250, 2+i%250)
	}
	invoke := func(cmd string, i int) {
		t.Helper()
		inv := sandbox.Invocation{Command: cmd, ContainerID: fmt.Sprintf("scale-%d", i), NetNS: pod.Path(), IfName: "eth0"}
		if _, err := sb.Invoke(t, "portmap-lite", conf(i), inv); err != nil {
			t.Fatalf("%s %d: %v", cmd, i, err)
		}
	}
	empty := nftState(t, sb)
	for i := 0; i < pods; i++ {
		invoke("ADD", i)
	}
	t.Cleanup(func() {
		for i := 0; i < pods; i++ {
			inv := sandbox.Invocation{Command: "DEL", ContainerID: fmt.Sprintf("scale-%d", i), NetNS: pod.Path(), IfName: "eth0"}
			_, _ = sb.Invoke(t, "portmap-lite", conf(i), inv)
		}
	})
	installed := nftState(t, sb)
	if !strings.Contains(installed, fmt.Sprintf("map hostports-any: %d elements", pods)) {
		t.Fatalf("after %d ADDs:\n%s", pods, installed)
	}
	deleteOurTables(t, sb)
	restore := func() {
		t.Helper()
		out, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), "portmap-lite"), "restore", "-state-dir", stateDir)
		if err != nil {
			t.Fatalf("restore: %v\n%s", err, out)
		}
	}
	restore()
	if got := nftState(t, sb); got != installed {
		t.Fatalf("after restore:\n%s\nwant:\n%s", got, installed)
	}
	restore()
	if got := nftState(t, sb); got != installed {
		t.Fatalf("after a second restore:\n%s\nwant:\n%s", got, installed)
	}
	for i := 0; i < pods; i++ {
		invoke("DEL", i)
	}
	if got := nftState(t, sb); got != empty {
		t.Fatalf("after DEL of every attachment:\n%s\nwant:\n%s", got, empty)
	}
}

// TestRestoreLeavesATakenPort: while an attachment's rules are gone (our
// tables deleted), another takes its hostPort; restore brings the first
// back without that port, says so, and the second keeps it, also after the
// first is deleted (whose DEL must not delete the port's element by key).
func TestRestoreLeavesATakenPort(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, dualNetWith(`"type":"portmap-lite","backend":"nftables"`)))
	first := mustAddServing(t, sb, rtm, list, "first", tcpPort(9800))
	deleteOurTables(t, sb)
	mustAddServing(t, sb, rtm, list, "second", tcpPort(9800))
	out, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), "portmap-lite"), "restore", "-state-dir", filepath.Join(sb.Dir, "state", "portmap-lite"))
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	if !strings.Contains(out, `not restored, another attachment holds the hostPort: "tcp . 9800"`) {
		t.Errorf("restore does not say the port was taken:\n%s", out)
	}
	to := netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), 9800)
	if got, err := sandbox.DialTCP(sb.LAN, to); err != nil || got != "hello from second" {
		t.Errorf("%s after restore: %q, %v; want the second pod", to, got, err)
	}
	if err := rtm.Del(list, first); err != nil {
		t.Fatalf("DEL of the first: %v", err)
	}
	if got, err := sandbox.DialTCP(sb.LAN, to); err != nil || got != "hello from second" {
		t.Errorf("%s after the first's DEL: %q, %v; want the second pod", to, got, err)
	}
	if state := nftState(t, sb); strings.Count(state, "CNI-LITE-DN-") != 2 { // the second's, in both families
		t.Errorf("after the first's DEL:\n%s", state)
	}
}
