package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"

	"github.com/cnichain/plugins/pkg/sandbox"
)

func TestMain(m *testing.M) { sandbox.Main(m) }

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestBench is `make bench`. It is skipped in `make test`: it takes minutes.
func TestBench(t *testing.T) {
	if os.Getenv("CNICHAIN_BENCH") == "" {
		t.Skip("make bench runs this (CNICHAIN_BENCH=1)")
	}
	rounds := envInt("CNICHAIN_BENCH_ROUNDS", 15)
	most := envInt("CNICHAIN_BENCH_PODS", 500)
	levels := []int{0, min(100, most), most}
	levels = slices.Compact(levels)
	r := &report{}

	// CNICHAIN_BENCH_ONLY=hostroute,portmap runs those sections alone.
	only := strings.Split(os.Getenv("CNICHAIN_BENCH_ONLY"), ",")
	for _, b := range []struct {
		name string
		run  func()
	}{
		{"ipam", func() { benchIPAM(t, r, rounds) }},
		{"hostroute", func() { benchHostRoute(t, r, rounds) }},
		{"portmap", func() { benchPortmap(t, r, rounds, levels, envInt("CNICHAIN_BENCH_MANY_PODS", 2000)) }},
		{"wholechain", func() { benchWholeChain(t, r, rounds) }},
		{"throughput", func() { benchThroughput(t, r, envInt("CNICHAIN_BENCH_THROUGHPUT_PODS", 200), 16) }},
		{"agent", func() { benchAgent(t, r, rounds, most) }},
	} {
		if only[0] == "" || slices.Contains(only, b.name) {
			b.run()
		}
	}

	out := os.Getenv("CNICHAIN_BENCH_OUT")
	if out == "" {
		out = "."
	}
	if err := writeFile(out+"/RESULTS.md", r.markdown(rounds), os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// chainCase is one conflist whose ADD and DEL are timed through libcni.
type chainCase struct {
	label string
	rtm   *sandbox.Runtime
	list  *libcni.NetworkConfigList
	pod   ns.NetNS
	caps  map[string]any // the runtime's capability arguments, if any
	add   series
	del   series
}

func (c *chainCase) round(t *testing.T, i int) {
	att := sandbox.Attachment(c.pod, fmt.Sprintf("%s-%d", c.label, i), "eth0")
	att.CapabilityArgs = c.caps
	d, err := timed(func() error { _, err := c.rtm.Add(c.list, att); return err })
	if err != nil {
		t.Fatalf("%s ADD: %v", c.label, err)
	}
	c.add.d = append(c.add.d, d)
	d, err = timed(func() error { return c.rtm.Del(c.list, att) })
	if err != nil {
		t.Fatalf("%s DEL: %v", c.label, err)
	}
	c.del.d = append(c.del.d, d)
}

func newChainCase(t *testing.T, sb *sandbox.Sandbox, label, text string) *chainCase {
	return &chainCase{label: label, rtm: sb.Runtime(t), list: sb.Localize(t, sandbox.ListFromJSON(t, text)), pod: sb.NewPod(t)}
}

// benchIPAM: static-ipam against the reference static, both under macvlan.
func benchIPAM(t *testing.T, r *report, rounds int) {
	sb := sandbox.New(t)
	list := `{"cniVersion":"1.0.0","name":"ipam-%s","plugins":[{"type":"macvlan","master":"eno1",
		"ipam":{"type":%q,"addresses":[{"address":"192.168.5.10/16","gateway":"192.168.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}}]}`
	ours := newChainCase(t, sb, "static-ipam", fmt.Sprintf(list, "ours", "static-ipam"))
	ref := newChainCase(t, sb, "static", fmt.Sprintf(list, "ref", "static"))
	for i := 0; i < rounds; i++ {
		ours.round(t, i)
		ref.round(t, i)
	}
	const s = "1. static-ipam vs reference static, under macvlan (chain via libcni)"
	r.rows = append(r.rows, row{section: s, name: "ADD", ours: &ours.add, ref: &ref.add}, row{section: s, name: "DEL", ours: &ours.del, ref: &ref.del})
}

// benchHostRoute: what macvlan-host-route adds to a macvlan chain, and its
// own ADD against loopback's, the floor of any exec'd plugin.
func benchHostRoute(t *testing.T, r *report, rounds int) {
	sb := sandbox.New(t)
	chain := `{"cniVersion":"1.0.0","name":"hr-%s","plugins":[{"type":"macvlan","master":"eno1",
		"ipam":{"type":"static-ipam","addresses":[{"address":"192.168.6.10/16"}]}}%s]}`
	with := newChainCase(t, sb, "with", fmt.Sprintf(chain, "with", `,{"type":"macvlan-host-route","master":"eno1"}`))
	without := newChainCase(t, sb, "without", fmt.Sprintf(chain, "without", ""))
	pod := sb.NewPod(t)
	conf := []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"direct","type":"macvlan-host-route","master":"eno1","stateDir":%q,
		"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"192.168.6.20/16"}]}}`, sb.Dir+"/hr-state"))
	loConf := []byte(`{"cniVersion":"1.0.0","name":"lo","type":"loopback"}`)
	var hrAdd, hrDel, loAdd series
	for i := 0; i < rounds; i++ {
		with.round(t, i)
		without.round(t, i)
		inv := sandbox.Invocation{Command: "ADD", ContainerID: fmt.Sprintf("hr-%d", i), NetNS: pod.Path(), IfName: "eth0"}
		hrAdd.d = append(hrAdd.d, mustTime(t, func() error { _, err := sb.Invoke(t, "macvlan-host-route", conf, inv); return err }))
		inv.Command = "DEL"
		hrDel.d = append(hrDel.d, mustTime(t, func() error { _, err := sb.Invoke(t, "macvlan-host-route", conf, inv); return err }))
		inv.Command = "ADD"
		loAdd.d = append(loAdd.d, mustTime(t, func() error { _, err := sb.Invoke(t, "loopback", loConf, inv); return err }))
	}
	const s = "2. macvlan + macvlan-host-route vs macvlan alone"
	r.rows = append(r.rows,
		row{section: s, name: "chain ADD (with / without our plugin)", ours: &with.add, ref: &without.add},
		row{section: s, name: "chain DEL (with / without our plugin)", ours: &with.del, ref: &without.del},
		row{section: s, name: "macvlan-host-route ADD alone / loopback ADD", ours: &hrAdd, ref: &loAdd},
		row{section: s, name: "macvlan-host-route DEL alone / loopback ADD", ours: &hrDel, ref: &loAdd},
	)
	r.loopback = loAdd.median()
	ratio := float64(hrAdd.median()) / float64(loAdd.median())
	r.check("macvlan-host-route ADD within 1.5x of loopback's ADD", ratio <= 1.5, fmt.Sprintf("%.2fx", ratio))
}

// benchWholeChain: the headline chain (macvlan + static-ipam ->
// macvlan-host-route -> portmap-lite) against what a user of the reference
// plugins would write for a hostPort on a macvlan pod (macvlan + static ->
// portmap with masqAll), one pod at a time, then 16 pods at once. Both
// IPAMs hand out the same result in every row: in the bursts each pod's
// addresses come from the ips capability, to which the reference static
// gives no gateway, so neither chain names one there (the default routes
// name theirs): an IPv6 gateway makes macvlan wait for the address's DAD,
// which the last row measures.
func benchWholeChain(t *testing.T, r *report, rounds int) {
	sb := sandbox.New(t)
	sb.EnableForwarding(t)
	withGateways := `"addresses":[{"address":"192.168.7.10/16","gateway":"192.168.0.1"},{"address":"fd00:c0a8::7:10/64","gateway":"fd00:c0a8::1"}],
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]`
	routesOnly := `"addresses":[{"address":"192.168.7.10/16"},{"address":"fd00:c0a8::7:10/64"}],
		"routes":[{"dst":"0.0.0.0/0","gw":"192.168.0.1"},{"dst":"::/0","gw":"fd00:c0a8::1"}]`
	chain := func(name, ipamType, addresses string, hostRouteKeys ...string) *chainCase {
		macvlan := fmt.Sprintf(`{"type":"macvlan","master":"eno1","mode":"bridge","capabilities":{"ips":true},"ipam":{"type":%q,%s}}`, ipamType, addresses)
		rest := `{"type":"macvlan-host-route","master":"eno1"` + strings.Join(hostRouteKeys, "") + `},{"type":"portmap-lite","capabilities":{"portMappings":true}}`
		if ipamType == "static" {
			rest = `{"type":"portmap","masqAll":true,"capabilities":{"portMappings":true}}`
		}
		return newChainCase(t, sb, name, fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[%s,%s]}`, name, macvlan, rest))
	}
	ours, ref := chain("whole", "static-ipam", withGateways), chain("whole-ref", "static", withGateways)
	oursNoGW := chain("whole-nogw", "static-ipam", routesOnly)
	oursVia := chain("whole-via", "static-ipam", withGateways, `,"viaNode":["10.96.0.0/12","fd00:10:96::/112","169.254.20.10/32"]`)
	ours.caps = map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}
	ref.caps = map[string]any{"portMappings": []map[string]any{{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}}}
	oursNoGW.caps = map[string]any{"portMappings": []map[string]any{{"hostPort": 8082, "containerPort": 80, "protocol": "tcp"}}}
	oursVia.caps = map[string]any{"portMappings": []map[string]any{{"hostPort": 8083, "containerPort": 80, "protocol": "tcp"}}}
	for i := 0; i < rounds; i++ {
		ours.round(t, i)
		ref.round(t, i)
		oursNoGW.round(t, i)
		oursVia.round(t, i)
	}
	const s = "5. the whole chain: macvlan + static-ipam -> macvlan-host-route -> portmap-lite vs macvlan + static -> portmap (masqAll)"
	r.rows = append(r.rows,
		row{section: s, name: "ADD, 1 mapping", ours: &ours.add, ref: &ref.add},
		row{section: s, name: "DEL, 1 mapping", ours: &ours.del, ref: &ref.del})
	const parallel = 16
	bursts := max(3, rounds/5)
	oursBurstCase, refBurstCase := chain("whole-burst", "static-ipam", routesOnly), chain("whole-burst-ref", "static", routesOnly)
	viaBurstCase := chain("whole-burst-via", "static-ipam", routesOnly, `,"viaNode":["10.96.0.0/12","fd00:10:96::/112","169.254.20.10/32"]`)
	var oursBurst, refBurst, viaBurst, oursBurstDel, refBurstDel, viaBurstDel series
	for b := 0; b < bursts; b++ {
		for _, c := range []struct {
			cc       *chainCase
			add, del *series
			v4       int
		}{{oursBurstCase, &oursBurst, &oursBurstDel, 70}, {refBurstCase, &refBurst, &refBurstDel, 71}, {viaBurstCase, &viaBurst, &viaBurstDel, 72}} {
			atts := make([]*libcni.RuntimeConf, parallel)
			for i := range atts {
				atts[i] = sandbox.Attachment(sb.NewPod(t), fmt.Sprintf("%s-%d-%d", c.cc.label, b, i), "eth0")
				atts[i].CapabilityArgs = map[string]any{
					"ips":          []string{fmt.Sprintf("192.168.%d.%d/16", c.v4, 10+i), fmt.Sprintf("fd00:c0a8::%d:%x/64", c.v4, 10+i)},
					"portMappings": []map[string]any{{"hostPort": 20000 + 100*c.v4 + i, "containerPort": 80, "protocol": "tcp"}},
				}
			}
			c.add.d = append(c.add.d, burst(t, atts, func(a *libcni.RuntimeConf) error { _, err := c.cc.rtm.Add(c.cc.list, a); return err })...)
			c.del.d = append(c.del.d, burst(t, atts, func(a *libcni.RuntimeConf) error { return c.cc.rtm.Del(c.cc.list, a) })...)
		}
	}
	for _, c := range []struct {
		verb      string
		via, ours *series
	}{{"ADD", &viaBurst, &oursBurst}, {"DEL", &viaBurstDel, &oursBurstDel}} {
		r.rows = append(r.rows, row{section: s, name: fmt.Sprintf("ours: %s of %d pods at once with viaNode / without, median", c.verb, parallel), ours: c.via, ref: c.ours})
		got := float64(c.via.median()) / float64(c.ours.median())
		r.check(fmt.Sprintf("the whole chain's %s of %d pods at once with viaNode within 1.2x of the same without", c.verb, parallel), got <= 1.2, fmt.Sprintf("%.2fx at the median, %.2fx at p90", got, float64(c.via.p90())/float64(c.ours.p90())))
	}
	r.rows = append(r.rows,
		row{section: s, name: fmt.Sprintf("ADD, %d pods at once, median (no address gateway in either)", parallel), ours: &oursBurst, ref: &refBurst},
		row{section: s, name: "ours: ADD with the IPv6 gateway (DAD wait) / without", ours: &ours.add, ref: &oursNoGW.add},
		row{section: s, name: "ours: ADD with viaNode (3 pod routes, 2 reply paths) / without", ours: &oursVia.add, ref: &ours.add},
		row{section: s, name: "ours: DEL with viaNode / without", ours: &oursVia.del, ref: &ours.del})
	p99 := func(s *series) string { return ms(s.quantile(0.99)) }
	r.notes = append(r.notes, fmt.Sprintf("The whole chain, ADD of %d pods at once (%d bursts, %d samples each): p50 / p99 ours %s / %s ms, reference %s / %s ms.",
		parallel, bursts, len(oursBurst.d), ms(oursBurst.median()), p99(&oursBurst), ms(refBurst.median()), p99(&refBurst)),
		fmt.Sprintf("An IPv6 address with a gateway makes macvlan wait for its DAD before it adds the routes: ADD of the whole chain %s ms with the gateway, %s ms without (the default route naming it instead), for either IPAM.",
			ms(ours.add.median()), ms(oursNoGW.add.median())), "")
}

// burst runs fn for every attachment at once and returns each one's time.
func burst(t *testing.T, atts []*libcni.RuntimeConf, fn func(*libcni.RuntimeConf) error) []time.Duration {
	t.Helper()
	out := make([]time.Duration, len(atts))
	errs := make([]error, len(atts))
	var wg sync.WaitGroup
	for i, a := range atts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = timed(func() error { return fn(a) })
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func mustTime(t *testing.T, fn func() error) time.Duration {
	t.Helper()
	d, err := timed(fn)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// portmapNode is a node namespace where one portmap plugin serves pods:
// ours and the reference each get their own, so that each sees only its
// own rules, however many pods are already on it.
type portmapNode struct {
	label  string // as shown in the tables
	plugin string
	extra  string // more configuration keys, e.g. the backend
	sb     *sandbox.Sandbox
	pod    ns.NetNS // CNI_NETNS of every call; portmap never enters it
	pods   int
}

func mappingsJSON(n, base int) string {
	var m []string
	for i := 0; i < n; i++ {
		m = append(m, fmt.Sprintf(`{"hostPort":%d,"containerPort":%d,"protocol":"tcp"}`, base+i, 8000+i))
	}
	return "[" + strings.Join(m, ",") + "]"
}

// conf is the plugin's stdin, as a runtime sends it after bridge: the
// mappings in runtimeConfig and the pod's address in prevResult.
func (n *portmapNode) conf(podIP string, mappings string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"benchnet","type":%q,"stateDir":%q%s,
		"runtimeConfig":{"portMappings":%s},
		"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":%q,"interface":0}]}}`,
		n.plugin, n.sb.Dir+"/state", n.extra, mappings, podIP+"/16"))
}

func (n *portmapNode) invoke(t *testing.T, cmd, id string, conf []byte) time.Duration {
	t.Helper()
	inv := sandbox.Invocation{Command: cmd, ContainerID: id, NetNS: n.pod.Path(), IfName: "eth0"}
	return mustTime(t, func() error { _, err := n.sb.Invoke(t, n.plugin, conf, inv); return err })
}

// fill adds background pods, one mapping each, until the node has want.
func (n *portmapNode) fill(t *testing.T, want int) {
	for ; n.pods < want; n.pods++ {
		ip := fmt.Sprintf("10.244.%d.%d", 1+n.pods/250, 2+n.pods%250)
		n.invoke(t, "ADD", fmt.Sprintf("bg-%d", n.pods), n.conf(ip, mappingsJSON(1, 40000+n.pods)))
	}
}

func newPortmapNode(t *testing.T, label, plugin, extra string) *portmapNode {
	sb := sandbox.New(t)
	// A route to the pod subnet, as a bridge would have: route_localnet goes on its interface.
	sandbox.MustRun(t, sb.Node, "ip", "route", "add", "10.244.0.0/16", "dev", "eno1")
	return &portmapNode{label: label, plugin: plugin, extra: extra, sb: sb, pod: sb.NewPod(t)}
}

// benchPortmap: portmap-lite against the reference portmap, ADD and DEL at
// 1, 10 and 50 mappings, with 0, 100 and 500 other pods on the node; then
// ours alone with many more (2000) against itself on an empty node; and
// the processes each spawns.
func benchPortmap(t *testing.T, r *report, rounds int, levels []int, many int) {
	ours := newPortmapNode(t, "portmap-lite", "portmap-lite", "")
	nft := newPortmapNode(t, "portmap-lite (nftables)", "portmap-lite", `,"backend":"nftables"`)
	ref := newPortmapNode(t, "portmap", "portmap", "")
	execCounts(t, r, ours, nft, ref)
	sizes := []int{1, 10, 50}
	lines := map[string][]float64{}
	var order []string
	// Empty nodes of each backend are measured in the same rounds as the
	// crowded ones, and loopback's ADD and a netfilter socket's release
	// beside the nftables node: a ratio of two times taken minutes apart
	// would measure the machine's drift too (loopback's ADD has measured
	// anything from 5 to 10 ms on one VM in one day).
	emptyOurs := newPortmapNode(t, "portmap-lite, empty node", "portmap-lite", "")
	emptyNFT := newPortmapNode(t, "portmap-lite (nftables), empty node", "portmap-lite", `,"backend":"nftables"`)
	// at[level][size] are the series of our two backends, crowded and empty.
	type timings struct {
		add, del, nftAdd, nftDel                     series
		emptyAdd, emptyDel, emptyNFTAdd, emptyNFTDel series
		loopback, release                            series
	}
	at := map[int]map[int]*timings{}
	loConf := []byte(`{"cniVersion":"1.0.0","name":"lo","type":"loopback"}`)
	measure := func(level int, nodes []*portmapNode, withRef bool) (map[int]*timings, map[int]*series) {
		got, refAdd := map[int]*timings{}, map[int]*series{}
		for _, size := range sizes {
			tm, ra, rd := &timings{}, &series{}, &series{}
			mappings := mappingsJSON(size, 20000)
			for i := 0; i < rounds; i++ {
				for _, n := range nodes {
					add, del := ra, rd
					switch n {
					case ours:
						add, del = &tm.add, &tm.del
					case nft:
						add, del = &tm.nftAdd, &tm.nftDel
					case emptyOurs:
						add, del = &tm.emptyAdd, &tm.emptyDel
					case emptyNFT:
						add, del = &tm.emptyNFTAdd, &tm.emptyNFTDel
					}
					id := fmt.Sprintf("m-%d-%d-%d", level, size, i)
					conf := n.conf("10.244.0.2", mappings)
					add.d = append(add.d, n.invoke(t, "ADD", id, conf))
					del.d = append(del.d, n.invoke(t, "DEL", id, conf))
				}
				inv := sandbox.Invocation{Command: "ADD", ContainerID: fmt.Sprintf("lo-%d-%d-%d", level, size, i), NetNS: nft.pod.Path(), IfName: "eth0"}
				tm.loopback.d = append(tm.loopback.d, mustTime(t, func() error { _, err := nft.sb.Invoke(t, "loopback", loConf, inv); return err }))
				tm.release.d = append(tm.release.d, releaseWait(t, nft.sb.Node))
			}
			got[size], refAdd[size] = tm, ra
			if withRef {
				s := fmt.Sprintf("3-4. portmap-lite vs reference portmap, %d other pods on the node", level)
				r.rows = append(r.rows,
					row{section: s, name: fmt.Sprintf("ADD, %d mappings", size), ours: &tm.add, ref: ra},
					row{section: s, name: fmt.Sprintf("DEL, %d mappings", size), ours: &tm.del, ref: rd},
					row{section: s, name: fmt.Sprintf("ADD, %d mappings, nftables backend", size), ours: &tm.nftAdd, ref: ra},
					row{section: s, name: fmt.Sprintf("DEL, %d mappings, nftables backend", size), ours: &tm.nftDel, ref: rd})
			}
		}
		return got, refAdd
	}
	refAt := map[int]map[int]*series{}
	for _, level := range levels {
		for _, n := range []*portmapNode{ours, nft, ref} {
			n.fill(t, level)
		}
		at[level], refAt[level] = measure(level, []*portmapNode{ours, nft, ref, emptyOurs, emptyNFT}, true)
		for _, size := range sizes {
			for _, l := range []struct {
				name string
				s    *series
			}{{fmt.Sprintf("portmap-lite, %d mappings", size), &at[level][size].add}, {fmt.Sprintf("portmap-lite nftables, %d mappings", size), &at[level][size].nftAdd}, {fmt.Sprintf("portmap, %d mappings", size), refAt[level][size]}} {
				if _, ok := lines[l.name]; !ok {
					order = append(order, l.name)
				}
				lines[l.name] = append(lines[l.name], float64(l.s.median().Microseconds())/1000)
			}
		}
	}
	top := levels[len(levels)-1]
	if many > top {
		// The reference would take most of an hour to fill this node: ours
		// alone, against its own times on an empty node.
		ours.fill(t, many)
		nft.fill(t, many)
		at[many], _ = measure(many, []*portmapNode{ours, nft, emptyOurs, emptyNFT}, false)
		s := fmt.Sprintf("3-4. portmap-lite with %d other pods on the node vs portmap-lite on an empty node, in the same rounds", many)
		for _, size := range sizes {
			tm := at[many][size]
			r.rows = append(r.rows,
				row{section: s, name: fmt.Sprintf("ADD, %d mappings", size), ours: &tm.add, ref: &tm.emptyAdd},
				row{section: s, name: fmt.Sprintf("DEL, %d mappings", size), ours: &tm.del, ref: &tm.emptyDel},
				row{section: s, name: fmt.Sprintf("ADD, %d mappings, nftables backend", size), ours: &tm.nftAdd, ref: &tm.emptyNFTAdd},
				row{section: s, name: fmt.Sprintf("DEL, %d mappings, nftables backend", size), ours: &tm.nftDel, ref: &tm.emptyNFTDel})
		}
	}
	for _, size := range []int{10, 50} {
		want := map[int]float64{10: 0.2, 50: 0.05}[size]
		got := float64(at[0][size].add.median()) / float64(refAt[0][size].median())
		r.check(fmt.Sprintf("portmap-lite ADD at %d mappings at most %.2f of the reference's", size, want), got <= want, fmt.Sprintf("%.3f", got))
	}
	ratio := func(a, b *series) float64 { return float64(a.median()) / float64(b.median()) }
	// nftables against loopback's ADD, the floor of any exec'd plugin, in
	// the same rounds; a DEL deletes, and its socket's release then waits
	// for the kernel's RCU grace period, timed alone beside it.
	var worstAdd, worstDel, worstRelease float64
	var worstAddAt, worstDelAt string
	for level, bySize := range at {
		for size, tm := range bySize {
			if got := ratio(&tm.nftAdd, &tm.loopback); got > worstAdd {
				worstAdd, worstAddAt = got, fmt.Sprintf("%d mappings, %d pods", size, level)
			}
			if got := ratio(&tm.nftDel, &tm.loopback); got > worstDel {
				worstDel, worstDelAt = got, fmt.Sprintf("%d mappings, %d pods", size, level)
			}
			worstRelease = max(worstRelease, ratio(&tm.release, &tm.loopback))
		}
	}
	empty1 := at[0][1]
	r.check("portmap-lite nftables ADD within 1.2x of loopback's ADD (same rounds) at any mappings and pods", worstAdd <= 1.2,
		fmt.Sprintf("slowest %.2fx (%s); %.2fx at 1 mapping on an empty node", worstAdd, worstAddAt, ratio(&empty1.nftAdd, &empty1.loopback)))
	r.check("portmap-lite nftables DEL within 1.2x of loopback's ADD (same rounds) at any mappings and pods", worstDel <= 1.2,
		fmt.Sprintf("slowest %.2fx (%s); %.2fx at 1 mapping on an empty node; a netfilter socket's release after a deletion alone takes %.2fx-%.2fx loopback's ADD (%s ms at the median on an empty node)",
			worstDel, worstDelAt, ratio(&empty1.nftDel, &empty1.loopback), ratio(&empty1.release, &empty1.loopback), worstRelease, ms(empty1.release.median())))
	for _, c := range []struct {
		verb, backend string
		limit         float64
		pick, empty   func(*timings) *series
	}{
		{"ADD", "iptables", 1.5, func(tm *timings) *series { return &tm.add }, func(tm *timings) *series { return &tm.emptyAdd }},
		{"DEL", "iptables", 1.5, func(tm *timings) *series { return &tm.del }, func(tm *timings) *series { return &tm.emptyDel }},
		{"ADD", "nftables", 1.5, func(tm *timings) *series { return &tm.nftAdd }, func(tm *timings) *series { return &tm.emptyNFTAdd }},
		{"DEL", "nftables", 1.2, func(tm *timings) *series { return &tm.nftDel }, func(tm *timings) *series { return &tm.emptyNFTDel }},
	} {
		for _, size := range sizes {
			got := ratio(c.pick(at[top][size]), c.empty(at[top][size]))
			detail := fmt.Sprintf("%.2fx", got)
			if crowded, ok := at[many]; ok {
				detail += fmt.Sprintf("; %.2fx with %d pods", ratio(c.pick(crowded[size]), c.empty(crowded[size])), many)
			}
			r.check(fmt.Sprintf("portmap-lite %s %s (%d mappings) with %d pods on the node at most %.1fx its time on an empty node (same rounds)", c.backend, c.verb, size, top, c.limit), got <= c.limit, detail)
		}
	}
	if crowded, ok := at[many]; ok {
		for _, c := range []struct {
			backend     string
			pick, empty func(*timings) *series
		}{
			{"iptables", func(tm *timings) *series { return &tm.add }, func(tm *timings) *series { return &tm.emptyAdd }},
			{"nftables", func(tm *timings) *series { return &tm.nftAdd }, func(tm *timings) *series { return &tm.emptyNFTAdd }},
		} {
			worst := 0.0
			for _, size := range sizes {
				worst = max(worst, ratio(c.pick(crowded[size]), c.empty(crowded[size])))
			}
			r.check(fmt.Sprintf("portmap-lite %s ADD with %d pods on the node within 1.2x of its time on an empty node (same rounds) at any mappings", c.backend, many), worst <= 1.2, fmt.Sprintf("worst %.2fx", worst))
		}
	}
	out := os.Getenv("CNICHAIN_BENCH_OUT")
	if out == "" {
		out = "."
	}
	if err := latencyPlot(out+"/latency.png", levels, lines, order); err != nil {
		t.Errorf("plot: %v", err)
	}
	benchRestore(t, r, rounds, ours, nft)
}

// benchRestore times `portmap-lite restore` on the nodes benchPortmap
// filled: everything to put back after a flush of the nat table (iptables
// backend), and nothing to do (both backends).
func benchRestore(t *testing.T, r *report, rounds int, ipt, nft *portmapNode) {
	restore := func(n *portmapNode) time.Duration {
		return mustTime(t, func() error {
			_, err := sandbox.Run(n.sb.Node, nil, filepath.Join(sandbox.Plugins(t), "portmap-lite"), "restore", "-state-dir", n.sb.Dir+"/state")
			return err
		})
	}
	var full, noop, nftNoop series
	for i := 0; i < max(3, rounds/3); i++ {
		for _, cmd := range [][]string{{"iptables", "-t", "nat", "-F"}, {"iptables", "-t", "nat", "-X"}} {
			sandbox.MustRun(t, ipt.sb.Node, cmd[0], cmd[1:]...)
		}
		full.d = append(full.d, restore(ipt))
		noop.d = append(noop.d, restore(ipt))
		nftNoop.d = append(nftNoop.d, restore(nft))
	}
	if rules := sandbox.MustRun(t, ipt.sb.Node, "iptables-save", "-t", "nat"); strings.Count(rules, ":CNI-LITE-DN-") != ipt.pods {
		t.Errorf("restore put back %d attachment chains, want %d", strings.Count(rules, ":CNI-LITE-DN-"), ipt.pods)
	}
	r.notes = append(r.notes, "", fmt.Sprintf("`portmap-lite restore` with %d attachments on the node (median of %d): after `iptables -t nat -F -X`, "+
		"everything put back in one iptables-restore: %s ms; nothing missing: %s ms (iptables), %s ms (nftables).",
		ipt.pods, len(full.d), ms(full.median()), ms(noop.median()), ms(nftNoop.median())), "")
	r.check(fmt.Sprintf("portmap-lite restore of %d attachments within 1 s", ipt.pods), full.median() < time.Second, ms(full.median())+" ms")
	for _, c := range []struct {
		backend string
		s       *series
	}{{"iptables", &noop}, {"nftables", &nftNoop}} {
		r.check(fmt.Sprintf("portmap-lite restore (%s) of %d attachments with nothing missing within 100 ms", c.backend, ipt.pods), c.s.median() < 100*time.Millisecond, ms(c.s.median())+" ms")
	}
}

// releaseWait times the close of a netfilter netlink socket right after a
// transaction of it deleted something in node: nf_tables' handler of the
// socket's release waits there for the deleted objects' RCU grace period.
// Any program's nftables deletion pays it once per socket (nft's,
// iptables-nft's, ours); with no deletion, the close takes microseconds.
func releaseWait(t *testing.T, node ns.NetNS) time.Duration {
	var d time.Duration
	err := node.Do(func(ns.NetNS) error {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return err
		}
		table := c.AddTable(&nftables.Table{Name: "cnichain-bench-release", Family: nftables.TableFamilyIPv4})
		c.AddChain(&nftables.Chain{Name: "c", Table: table})
		err = c.Flush()
		if err == nil {
			c.DelTable(table)
			err = c.Flush()
		}
		start := time.Now()
		cerr := c.CloseLasting()
		d = time.Since(start)
		return errors.Join(err, cerr)
	})
	if err != nil {
		t.Fatalf("time a netfilter socket's release: %v", err)
	}
	return d
}

// execCounts counts the iptables processes of one ADD and one DEL at 10
// mappings, through wrappers first in PATH.
func execCounts(t *testing.T, r *report, nodes ...*portmapNode) {
	path := os.Getenv("PATH")
	runs := sandbox.ExecShim(t, "iptables", "ip6tables", "iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save")
	defer os.Setenv("PATH", path) // the rest of the bench runs unwrapped
	count := func() string {
		names := runs()
		return fmt.Sprintf("%d (%s)", len(names), summarize(names))
	}
	r.notes = append(r.notes, "| plugin | iptables processes per ADD, 10 mappings | per DEL |", "|---|---|---|")
	for _, n := range nodes {
		// The first ADD on a node also sets up its shared chains: count a second one.
		conf := n.conf("10.244.0.3", mappingsJSON(10, 30000))
		n.invoke(t, "ADD", "warm", conf)
		n.invoke(t, "DEL", "warm", conf)
		count()
		n.invoke(t, "ADD", "count", conf)
		add := count()
		n.invoke(t, "DEL", "count", conf)
		del := count()
		r.notes = append(r.notes, fmt.Sprintf("| %s | %s | %s |", n.label, add, del))
	}
	r.notes = append(r.notes, "")
}

func summarize(names []string) string {
	counts := map[string]int{}
	var order []string
	for _, n := range names {
		if counts[n] == 0 {
			order = append(order, n)
		}
		counts[n]++
	}
	var parts []string
	for _, n := range order {
		parts = append(parts, fmt.Sprintf("%d %s", counts[n], n))
	}
	return strings.Join(parts, ", ")
}

// benchThroughput adds then deletes pods pods through the whole chain
// (bridge, host-local, portmap), parallel at a time, for each plugin.
func benchThroughput(t *testing.T, r *report, pods, parallel int) {
	r.notes = append(r.notes, fmt.Sprintf("Throughput, bridge + host-local + the plugin, %d pods with one mapping each, %d at a time:", pods, parallel), "",
		"| plugin | ADD pods/s | DEL pods/s | failures |", "|---|---:|---:|---:|")
	for _, plugin := range []string{"portmap-lite", "portmap"} {
		sb := sandbox.New(t)
		rtm := sb.Runtime(t)
		list := sb.Localize(t, sandbox.ListFromJSON(t, fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tp","plugins":[
			{"type":"bridge","bridge":"tp0","isGateway":true,"ipMasq":true,"hairpinMode":true,
			 "ipam":{"type":"host-local","subnet":"10.250.0.0/16"}},
			{"type":%q,"capabilities":{"portMappings":true}}]}`, plugin)))
		atts := make([]*libcni.RuntimeConf, pods)
		for i := range atts {
			atts[i] = sandbox.Attachment(sb.NewPod(t), fmt.Sprintf("tp-%d", i), "eth0")
			atts[i].CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 50000 + i, "containerPort": 80, "protocol": "tcp"}}}
		}
		run := func(fn func(*libcni.RuntimeConf) error) (float64, int) {
			var failures int
			var mu sync.Mutex
			sem := make(chan struct{}, parallel)
			var wg sync.WaitGroup
			start := time.Now()
			for _, att := range atts {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; wg.Done() }()
					if err := fn(att); err != nil {
						mu.Lock()
						failures++
						if failures == 1 {
							t.Logf("%s: first failure: %v", plugin, err)
						}
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			return float64(pods) / time.Since(start).Seconds(), failures
		}
		addRate, addFail := run(func(a *libcni.RuntimeConf) error { _, err := rtm.Add(list, a); return err })
		delRate, delFail := run(func(a *libcni.RuntimeConf) error { return rtm.Del(list, a) })
		r.notes = append(r.notes, fmt.Sprintf("| %s | %.1f | %.1f | %d |", plugin, addRate, delRate, addFail+delFail))
		if plugin == "portmap-lite" {
			r.check("no failures in the throughput run", addFail+delFail == 0, fmt.Sprintf("%d", addFail+delFail))
		}
	}
}

// benchAgent: the node agent on a node with pods attachments of
// portmap-lite (iptables): what ADD and DEL cost with it running against
// without (it must not hold them up), its CPU and memory at rest, and how
// long it takes to put every attachment's rules back after a flush of the
// nat table.
func benchAgent(t *testing.T, r *report, rounds, pods int) {
	n := newPortmapNode(t, "agent", "portmap-lite", "")
	n.fill(t, pods)
	var without, withAgent struct{ add, del series }
	measure := func(into *struct{ add, del series }, tag string) {
		for i := 0; i < rounds; i++ {
			id := fmt.Sprintf("agent-%s-%d", tag, i)
			conf := n.conf("10.244.0.2", mappingsJSON(1, 20000))
			into.add.d = append(into.add.d, n.invoke(t, "ADD", id, conf))
			into.del.d = append(into.del.d, n.invoke(t, "DEL", id, conf))
		}
	}
	measure(&without, "off")
	cmd := exec.Command("nsenter", "--net="+n.sb.Node.Path(), filepath.Join(sandbox.Plugins(t), "cnichain-agent"),
		"-portmap-state-dir", n.sb.Dir+"/state", "-hostroute-state-dir", n.sb.Dir+"/hr-state", "-backoff-window", "1ms")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	time.Sleep(2 * time.Second) // its first restore
	cpu := func() time.Duration {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
		f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
		ut, _ := strconv.Atoi(f[11])
		st, _ := strconv.Atoi(f[12])
		return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
	}
	const rest = 20 * time.Second
	before := cpu()
	time.Sleep(rest)
	used := cpu() - before
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	rss := ""
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss = strings.TrimSpace(v)
		}
	}
	measure(&withAgent, "on")
	jumps := func() int {
		return strings.Count(sandbox.MustRun(t, n.sb.Node, "iptables-save", "-t", "nat"), "-j CNI-LITE-DN-")
	}
	installed := jumps()
	var back series
	for i := 0; i < rounds; i++ {
		sandbox.MustRun(t, n.sb.Node, "iptables", "-t", "nat", "-F")
		start := time.Now()
		for got := jumps(); got < installed; got = jumps() {
			if time.Since(start) > time.Minute {
				save := sandbox.MustRun(t, n.sb.Node, "iptables-save", "-t", "nat")
				out, err := sandbox.Run(n.sb.Node, nil, filepath.Join(sandbox.Plugins(t), "portmap-lite"), "restore", "-state-dir", n.sb.Dir+"/state")
				t.Logf("a restore by hand: %v %s; then %d jumps", err, out, jumps())
				t.Fatalf("gave up after a minute waiting for the agent to put %d attachments' jumps back (%d are):\n%s\n%d lines, %d rules:\n%.3000s", installed, got, logs.String(), strings.Count(save, "\n"), strings.Count(save, "\n-A "), save)
			}
			time.Sleep(10 * time.Millisecond)
		}
		back.d = append(back.d, time.Since(start))
	}
	s := fmt.Sprintf("7. the node agent, %d attachments of portmap-lite (iptables) on the node", pods)
	r.rows = append(r.rows,
		row{section: s, name: "ADD, 1 mapping: agent running / not", ours: &withAgent.add, ref: &without.add},
		row{section: s, name: "DEL, 1 mapping: agent running / not", ours: &withAgent.del, ref: &without.del})
	r.notes = append(r.notes, fmt.Sprintf("The node agent at rest with %d attachments: %s of CPU in %s (%.2f%%), %s resident. "+
		"After `iptables -t nat -F`, every attachment's rules back in %s (median of %d; worst %s), polled with iptables-save.",
		pods, used, rest, 100*float64(used)/float64(rest), rss, ms(back.median()), len(back.d), ms(back.quantile(1))), "")
}
