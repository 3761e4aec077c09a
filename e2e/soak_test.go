package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnichain/plugins/pkg/sandbox"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// soakChain is an example chain of net.d/ and how to prove a pod on it works.
type soakChain struct {
	name string // the run's name; the file's when empty
	file string
	// setup adapts the file's text to the sandbox (paths, a service), if needed.
	setup func(t *testing.T, sb *sandbox.Sandbox, text string) string
	// caps and args give pod i its capability arguments and CNI_ARGS.
	caps func(i int) map[string]any
	args func(i int) [][2]string
	// works proves pod i, at ip, is reachable the way the chain promises.
	works func(t *testing.T, sb *sandbox.Sandbox, pod ns.NetNS, i int, ip netip.Addr) error
	// restoreDuring runs the restore of our plugins over and over, against
	// their records, while pods are added and deleted.
	restoreDuring bool
}

var soakChains = []soakChain{
	{
		file: "00-default.conflist", // macvlan + host-local + macvlan-host-route
		works: func(t *testing.T, sb *sandbox.Sandbox, _ ns.NetNS, _ int, ip netip.Addr) error {
			return sandbox.Ping(sb.Node, ip)
		},
	},
	{
		file: "mynet.conflist", // bridge + host-local + portmap-lite
		caps: func(i int) map[string]any {
			return map[string]any{"portMappings": []map[string]any{{"hostPort": 40000 + i, "containerPort": 80, "protocol": "tcp"}}}
		},
		works: hostPortWorks(40000),
	},
	{
		file: "20-dockin.conf", // the Dockin bridge network, static-ipam, addresses from CNI_ARGS
		args: func(i int) [][2]string {
			return [][2]string{{"IgnoreUnknown", "1"}, {"IP", fmt.Sprintf("192.168.2.%d/24", 3+i)}, {"GATEWAY", "192.168.2.1"}}
		},
		works: func(t *testing.T, sb *sandbox.Sandbox, _ ns.NetNS, _ int, ip netip.Addr) error {
			return sandbox.Ping(sb.Node, ip)
		},
	},
	{
		file:  "40-dockin-cni.conf", // multinic: two NICs per pod from a resource manager
		setup: multinicSetup,
		args: func(i int) [][2]string {
			return [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "soak"}, {"K8S_POD_NAME", fmt.Sprintf("pod-%d", i)}}
		},
		works: func(t *testing.T, sb *sandbox.Sandbox, _ ns.NetNS, i int, _ netip.Addr) error {
			for _, ip := range []string{fmt.Sprintf("192.168.1.%d", 2+i), fmt.Sprintf("192.168.2.%d", 2+i)} {
				if err := sandbox.Ping(sb.Node, netip.MustParseAddr(ip)); err != nil {
					return err
				}
			}
			return nil
		},
	},
	wholeChainSoak(""),
	wholeChainSoak("nftables"),
	{
		file: "35-macvlan-services.conflist", // the whole chain with viaNode: Services through the node
		setup: func(t *testing.T, sb *sandbox.Sandbox, text string) string {
			sb.EnableForwarding(t)
			return text
		},
		caps: func(i int) map[string]any {
			return map[string]any{
				"ips":          []string{fmt.Sprintf("192.168.%d.%d/16", 55+i/200, 30+i%200), fmt.Sprintf("fd00:c0a8::55:%x/64", 30+i)},
				"portMappings": []map[string]any{{"hostPort": 42000 + i, "containerPort": 80, "protocol": "tcp"}},
			}
		},
		works:         hostPortWorks(42000),
		restoreDuring: true,
	},
	{
		file: "10-static-macvlan.conflist", // macvlan + static-ipam, addresses per pod
		caps: func(i int) map[string]any {
			return map[string]any{"ips": []string{fmt.Sprintf("192.168.%d.%d/16", 100+i/200, 2+i%200)}}
		},
		works: func(t *testing.T, sb *sandbox.Sandbox, pod ns.NetNS, _ int, _ netip.Addr) error {
			return sandbox.Ping(pod, sandbox.LANIPv4.Addr())
		},
	},
}

// wholeChainSoak is the whole chain (macvlan + static-ipam ->
// macvlan-host-route -> portmap-lite), on portmap-lite's backend when
// set, with restores running all along.
func wholeChainSoak(backend string) soakChain {
	c := soakChain{
		file: wholeChain,
		setup: func(t *testing.T, sb *sandbox.Sandbox, text string) string {
			sb.EnableForwarding(t)
			if backend == "" {
				return text
			}
			return withPluginKey(t, text, "portmap-lite", "backend", backend)
		},
		caps: func(i int) map[string]any {
			return map[string]any{
				"ips":          []string{fmt.Sprintf("192.168.%d.%d/16", 60+i/200, 2+i%200), fmt.Sprintf("fd00:c0a8::60:%x/64", 2+i)},
				"portMappings": []map[string]any{{"hostPort": 41000 + i, "containerPort": 80, "protocol": "tcp"}},
			}
		},
		works:         hostPortWorks(41000),
		restoreDuring: true,
	}
	if backend != "" {
		c.name = wholeChain + " " + backend
	}
	return c
}

// withPluginKey sets key to value in the entry of plugin in the list text.
func withPluginKey(t *testing.T, text, plugin, key string, value any) string {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal([]byte(text), &raw); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range raw["plugins"].([]any) {
		if entry := p.(map[string]any); entry["type"] == plugin {
			entry[key], found = value, true
		}
	}
	if !found {
		t.Fatalf("the list has no %s entry", plugin)
	}
	out, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// hostPortWorks proves pod i by a lan client's connection to the node's
// hostPort base+i.
func hostPortWorks(base int) func(*testing.T, *sandbox.Sandbox, ns.NetNS, int, netip.Addr) error {
	return func(t *testing.T, sb *sandbox.Sandbox, pod ns.NetNS, i int, _ netip.Addr) error {
		want := fmt.Sprintf("pod %d", i)
		sandbox.ServeTCP(t, pod, 80, want)
		got, err := sandbox.DialTCP(sb.LAN, netip.AddrPortFrom(sandbox.NodeIPv4.Addr(), uint16(base+i)))
		if err == nil && got != want {
			err = fmt.Errorf("hostPort %d answered %q, want %q", base+i, got, want)
		}
		return err
	}
}

// TestSoak adds N pods, K at a time, on each example chain while deleting
// others, proves every pod works, deletes them all, and checks that the node
// is exactly as it was. `make test` runs N=20, K=8; `make soak` 200 and 16.
// multinicSetup serves a resource manager that gives pod-<i> eth0
// 192.168.1.<2+i> on br0 and net0 192.168.2.<2+i> on br1, and points the
// configuration at it, at net.d/dockin.d and at the sandbox.
func multinicSetup(t *testing.T, sb *sandbox.Sandbox, text string) string {
	ln := sandbox.ServeHTTP(t, sb.Node, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Query().Get("podName"), "pod-"))
		if err != nil {
			http.Error(w, "unknown pod", http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, `{"code":0,"reqId":"soak","message":"success","data":[
			{"type":"test","podIp":"192.168.1.%d","subnetMask":"255.255.255.0","gateway":"192.168.1.1","ifName":"eth0","master":true},
			{"type":"dockin","podIp":"192.168.2.%d","subnetMask":"255.255.255.0","gateway":"192.168.2.1","ifName":"net0","master":false}]}`, 2+i, 2+i)
	}))
	return strings.NewReplacer(
		"/etc/cni/dockin/net.d", filepath.Join(sandbox.NetD(), "dockin.d"),
		"/opt/cni/bin", sandbox.Plugins(t),
		"/data/kubernetes", sb.Dir,
		"http://localhost:10002", "http://"+ln.Addr().String(),
		`"type": "multinic",`, fmt.Sprintf(`"type": "multinic", "stateDir": %q,`, filepath.Join(sb.Dir, "state", "multinic")),
	).Replace(text)
}

func TestSoak(t *testing.T) {
	n, k := envInt("CNICHAIN_SOAK_PODS", 20), envInt("CNICHAIN_SOAK_PARALLEL", 8)
	for _, c := range soakChains {
		name := c.name
		if name == "" {
			name = c.file
		}
		t.Run(name, func(t *testing.T) { soak(t, c, n, k) })
	}
}

func soak(t *testing.T, c soakChain, n, k int) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.LoadList(t, c.file))
	if c.setup != nil {
		list = sandbox.ListFromJSON(t, c.setup(t, sb, string(list.Bytes)))
	}
	pods := make([]ns.NetNS, n)
	atts := make([]*libcni.RuntimeConf, n)
	for i := range atts {
		pods[i] = sb.NewPod(t)
		atts[i] = sandbox.Attachment(pods[i], fmt.Sprintf("soak-%d", i), "eth0")
		if c.caps != nil {
			atts[i].CapabilityArgs = c.caps(i)
		}
		if c.args != nil {
			atts[i].Args = c.args(i)
		}
	}
	// What a pod leaves on purpose (a bridge, the macvlan sub-device, shared
	// chains) appears with the first; the node must return to this.
	warm := sandbox.Attachment(sb.NewPod(t), "warm", "eth0")
	if c.caps != nil {
		warm.CapabilityArgs = c.caps(n)
	}
	if c.args != nil {
		warm.Args = c.args(n)
	}
	if _, err := rtm.Add(list, warm); err != nil {
		t.Fatal(err)
	}
	if err := rtm.Del(list, warm); err != nil {
		t.Fatal(err)
	}
	before := sb.Snapshot(t)

	ips := make([]netip.Addr, n)
	add := func(i int) error {
		res, err := rtm.Add(list, atts[i])
		if err != nil {
			return fmt.Errorf("ADD pod %d: %w", i, err)
		}
		r, err := current.NewResultFromResult(res)
		if err != nil || len(r.IPs) == 0 {
			return fmt.Errorf("pod %d result %v: %v", i, res, err)
		}
		ips[i], _ = netip.AddrFromSlice(r.IPs[0].Address.IP)
		ips[i] = ips[i].Unmap()
		return nil
	}
	del := func(i int) error {
		if err := rtm.Del(list, atts[i]); err != nil {
			return fmt.Errorf("DEL pod %d: %w", i, err)
		}
		return nil
	}
	if c.restoreDuring {
		stop := restoreAllAlong(t, sb)
		defer stop()
	}
	// The first half goes in; then the second half goes in while the first
	// half is deleted and added again, interleaved; then all go.
	half := n / 2
	parallel(t, k, half, add)
	parallel(t, k, 2*(n-half)+half, func(j int) error {
		switch {
		case j < n-half:
			return add(half + j)
		case j < 2*(n-half):
			if i := j - (n - half); i < half {
				if err := del(i); err != nil {
					return err
				}
				return add(i)
			}
			return nil
		}
		return nil
	})
	for i := range atts {
		if err := c.works(t, sb, pods[i], i, ips[i]); err != nil {
			t.Errorf("pod %d (%s): %v", i, ips[i], err)
		}
	}
	parallel(t, k, n, del)
	if c.restoreDuring {
		stop := restoreAllAlong(t, sb)
		stop() // a last restore with every pod gone must put nothing back
	}
	if after := sb.Snapshot(t); after != before {
		t.Fatalf("the node is not as before the soak:\n%s\nbefore:\n%s", after, before)
	}
	if err := rtm.GC(sandbox.ListFromJSON(t, string(list.Bytes)), []types.GCAttachment{}); err != nil && list.CNIVersion == "1.1.0" {
		t.Errorf("GC after the soak: %v", err)
	}
}

// restoreAllAlong runs portmap-lite's and macvlan-host-route's restore, in
// turn, over and over against the sandbox's records until stop is called;
// stop waits for the run in progress (so at least one runs) and fails
// the test if any failed.
func restoreAllAlong(t *testing.T, sb *sandbox.Sandbox) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		runs := 0
		for {
			for _, plugin := range []string{"portmap-lite", "macvlan-host-route"} {
				out, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), plugin), "restore", "-state-dir", filepath.Join(sb.Dir, "state", plugin))
				if err != nil {
					result <- fmt.Errorf("%s restore (run %d): %v\n%s", plugin, runs+1, err, out)
					return
				}
			}
			runs++
			select {
			case <-done:
				t.Logf("%d restores of both plugins ran", runs)
				result <- nil
				return
			default:
			}
		}
	}()
	return func() {
		t.Helper()
		close(done)
		if err := <-result; err != nil {
			t.Error(err)
		}
	}
}

// parallel runs fn(0..n-1), k at a time, and fails the test on any error.
func parallel(t *testing.T, k, n int, fn func(i int) error) {
	t.Helper()
	sem := make(chan struct{}, k)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(i); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
}
