package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// interleaveNetworks are the networks the interleaving test runs on one
// node, all on one master (one sub-device): one keeps macvlan-host-route's
// and portmap-lite's records in one stateDir, with viaNode through
// iptables; the other in stateDirs of their own, with viaNode and
// portmap-lite through nftables. Each hands out its own addresses.
var interleaveNetworks = []struct {
	name, extra, portmap, pool string
	shared                     bool
}{
	{"inter-a", `"viaNode":["10.96.0.0/12","fd00:10:96::/112"]`, `"type":"portmap-lite"`, "192.168.70.", true},
	{"inter-b", `"viaNode":["10.96.0.0/12","fd00:10:96::/112"],"backend":"nftables"`, `"type":"portmap-lite","backend":"nftables"`, "192.168.71.", false},
}

// gone removes a pod's netns (its links go with it), once.
func gone(pod ns.NetNS) {
	if _, err := os.Stat(pod.Path()); err == nil {
		pod.Close()
		_ = testutils.UnmountNS(pod)
	}
}

// interleaved is one attachment the model knows of.
type interleaved struct {
	net  int
	id   string
	addr int // index in its network's pool
	port int
	pod  ns.NetNS
	rt   *libcni.RuntimeConf
	lost bool // its DEL never came; its pod is gone
}

// TestInterleavedLifecycles: pods added, deleted, lost (a DEL that never
// comes, the pod gone) and their addresses handed on, networks GCed and
// restored, nat tables flushed and restored, several at a time in a random
// order, with a model of what should exist: after every step each live
// attachment passes CHECK (its host routes, pins, DNAT rules and reply
// paths are there); after the last DEL and GC the node is as it was.
// CNICHAIN_INTERLEAVE_STEPS (default 25; make soak runs more) bounds it;
// the seed is printed, and CNICHAIN_INTERLEAVE_SEED replays one.
func TestInterleavedLifecycles(t *testing.T) {
	seed := uint64(envInt("CNICHAIN_INTERLEAVE_SEED", int(time.Now().UnixNano()%1_000_000_000)))
	steps := envInt("CNICHAIN_INTERLEAVE_STEPS", 25)
	t.Logf("seed %d (replay: CNICHAIN_INTERLEAVE_SEED=%d)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay this run with CNICHAIN_INTERLEAVE_SEED=%d CNICHAIN_INTERLEAVE_STEPS=%d", seed, steps)
		}
	})
	rnd := rand.New(rand.NewPCG(seed, 0))
	sb := sandbox.New(t)
	sb.EnableForwarding(t)
	rtm := sb.Runtime(t)
	var lists []*libcni.NetworkConfigList
	var stateDirs []string
	for _, n := range interleaveNetworks {
		text := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[
			{"type":"macvlan","master":"eno1","mode":"bridge","capabilities":{"ips":true},
			 "ipam":{"type":"static-ipam","routes":[{"dst":"0.0.0.0/0","gw":"192.168.0.1"},{"dst":"::/0","gw":"fd00:c0a8::1"}]}},
			{"type":"macvlan-host-route","master":"eno1",%s},
			{%s,"capabilities":{"portMappings":true}}]}`, n.name, n.extra, n.portmap)
		local := string(sb.Localize(t, sandbox.ListFromJSON(t, text)).Bytes)
		hostroute, portmap := filepath.Join(sb.Dir, "state", "macvlan-host-route"), filepath.Join(sb.Dir, "state", "portmap-lite")
		own := filepath.Join(sb.Dir, "state", n.name)
		if n.shared {
			local = strings.ReplaceAll(strings.ReplaceAll(local, hostroute, own), portmap, own)
			stateDirs = append(stateDirs, own, own)
		} else {
			local = strings.ReplaceAll(strings.ReplaceAll(local, hostroute, own+"-hostroute"), portmap, own+"-portmap")
			stateDirs = append(stateDirs, own+"-hostroute", own+"-portmap")
		}
		lists = append(lists, sandbox.ListFromJSON(t, local))
	}
	var mu sync.Mutex // guards atts and the counters
	var atts []*interleaved
	nextID, nextPort := 0, 9400
	addrOf := func(net, addr int) []string {
		p := interleaveNetworks[net].pool
		return []string{fmt.Sprintf("%s%d/16", p, 10+addr), fmt.Sprintf("fd00:c0a8::%d:%d/64", 70+net, 10+addr)}
	}
	const poolSize = 4
	add := func(net int) error {
		mu.Lock()
		// A free address, or one a lost attachment still holds (handed on).
		var free []int
		for a := range poolSize {
			if !slices.ContainsFunc(atts, func(x *interleaved) bool { return x.net == net && x.addr == a && !x.lost }) {
				free = append(free, a)
			}
		}
		if len(free) == 0 {
			mu.Unlock()
			return nil
		}
		// Taken at once: two ADDs at a time never get one address.
		att := &interleaved{net: net, id: fmt.Sprintf("c%d", nextID), addr: free[rnd.IntN(len(free))], port: nextPort}
		atts = append(atts, att)
		nextID++
		nextPort++
		mu.Unlock()
		pod, err := testutils.NewNS()
		if err != nil {
			return err
		}
		att.pod = pod
		t.Cleanup(func() { gone(pod) })
		att.rt = sandbox.Attachment(att.pod, att.id, "eth0")
		att.rt.CapabilityArgs = map[string]any{"ips": addrOf(net, att.addr),
			"portMappings": []map[string]any{{"hostPort": att.port, "containerPort": 80, "protocol": "tcp"}}}
		if _, err := rtm.Add(lists[net], att.rt); err != nil {
			return fmt.Errorf("ADD %s (%s): %w", att.id, interleaveNetworks[net].name, err)
		}
		return nil
	}
	del := func(att *interleaved) error {
		if err := rtm.Del(lists[att.net], att.rt); err != nil {
			return fmt.Errorf("DEL %s: %w", att.id, err)
		}
		mu.Lock()
		atts = slices.DeleteFunc(atts, func(x *interleaved) bool { return x == att })
		mu.Unlock()
		return nil
	}
	lose := func(att *interleaved) error {
		mu.Lock()
		att.lost = true
		mu.Unlock()
		gone(att.pod)
		return nil
	}
	gc := func(net int) error {
		mu.Lock()
		var valid []types.GCAttachment
		var gone []*interleaved
		for _, x := range atts {
			if x.net != net {
				continue
			}
			if x.lost {
				gone = append(gone, x)
			} else {
				valid = append(valid, types.GCAttachment{ContainerID: x.id, IfName: "eth0"})
			}
		}
		mu.Unlock()
		if err := rtm.GC(lists[net], valid); err != nil {
			return fmt.Errorf("GC %s: %w", interleaveNetworks[net].name, err)
		}
		mu.Lock()
		atts = slices.DeleteFunc(atts, func(x *interleaved) bool { return slices.Contains(gone, x) })
		mu.Unlock()
		return nil
	}
	restore := func() error {
		for i, dir := range stateDirs {
			plugin := "macvlan-host-route"
			if i%2 == 1 {
				plugin = "portmap-lite"
			}
			if out, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), plugin), "restore", "-state-dir", dir); err != nil {
				return fmt.Errorf("%s restore -state-dir %s: %w\n%s", plugin, dir, err, out)
			}
		}
		return nil
	}
	flushAndRestore := func() error {
		for _, cmd := range []string{"iptables", "ip6tables"} {
			if _, err := sandbox.Run(sb.Node, nil, cmd, "-t", "nat", "-F"); err != nil {
				return err
			}
		}
		return restore()
	}
	// What stays by design (the sub-device, the shared chains and tables)
	// comes with a first pod of each network.
	for net := range lists {
		if err := add(net); err != nil {
			t.Fatal(err)
		}
		if err := del(atts[0]); err != nil {
			t.Fatal(err)
		}
	}
	before := sb.Snapshot(t)

	for step := range steps {
		// One to three operations at once, each on an attachment of its
		// own (or none).
		mu.Lock()
		var live []*interleaved
		for _, x := range atts {
			if !x.lost {
				live = append(live, x)
			}
		}
		mu.Unlock()
		rnd.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
		var ops []string
		var run []func() error
		// A runtime lists what it is adding among the valid attachments of
		// a GC: a network is not GCed while a pod is added to it.
		adding, collecting := map[int]bool{}, map[int]bool{}
		for range 1 + rnd.IntN(3) {
			switch k := rnd.IntN(10); {
			case k < 4:
				net := rnd.IntN(len(lists))
				if collecting[net] {
					continue
				}
				adding[net] = true
				ops, run = append(ops, "add to "+interleaveNetworks[net].name), append(run, func() error { return add(net) })
			case k < 6 && len(live) > 0:
				att := live[0]
				live = live[1:]
				ops, run = append(ops, "del "+att.id), append(run, func() error { return del(att) })
			case k < 7 && len(live) > 0:
				att := live[0]
				live = live[1:]
				ops, run = append(ops, "lose "+att.id), append(run, func() error { return lose(att) })
			case k < 8:
				net := rnd.IntN(len(lists))
				if adding[net] {
					continue
				}
				collecting[net] = true
				ops, run = append(ops, "gc "+interleaveNetworks[net].name), append(run, func() error { return gc(net) })
			case k < 9:
				ops, run = append(ops, "restore"), append(run, restore)
			default:
				ops, run = append(ops, "flush the nat tables, then restore"), append(run, flushAndRestore)
			}
		}
		var wg sync.WaitGroup
		errs := make([]error, len(run))
		for i, f := range run {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = f() }()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("step %d (%s): %s: %v", step, strings.Join(ops, ", "), ops[i], err)
			}
		}
		// A flush without its restore happens only in the step that
		// restores; every live attachment is whole after each step.
		mu.Lock()
		check := slices.Clone(atts)
		mu.Unlock()
		for _, x := range check {
			if x.lost {
				continue
			}
			if err := rtm.Check(lists[x.net], x.rt); err != nil {
				t.Fatalf("step %d (%s): CHECK of live %s (%s, address %v): %v", step, strings.Join(ops, ", "), x.id,
					interleaveNetworks[x.net].name, addrOf(x.net, x.addr), err)
			}
		}
	}
	// The end: every live attachment deleted, every network GCed.
	for _, x := range slices.Clone(atts) {
		if !x.lost {
			if err := del(x); err != nil {
				t.Fatal(err)
			}
		}
	}
	for net := range lists {
		if err := gc(net); err != nil {
			t.Fatal(err)
		}
	}
	if after := sb.Snapshot(t); after != before {
		t.Fatalf("the node after the last DEL and GC:\n%s\nbefore:\n%s", after, before)
	}
}
