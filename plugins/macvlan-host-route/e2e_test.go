package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnichain/plugins/pkg/sandbox"
)

func TestMain(m *testing.M) { sandbox.Main(m) }

// macvlanOnly is the source document's chain without our plugin.
const macvlanOnly = `{"cniVersion":"0.4.0","name":"plain","plugins":[{"type":"macvlan","master":"eno1",
	"ipam":{"type":"static-ipam","addresses":[{"address":"192.168.1.50/16","gateway":"192.168.0.1"}]}}]}`

// dualStack routes an IPv4 and an IPv6 pod address, and gives the node's
// IPv6 address to the sub-device: NDP answers only for addresses of the
// interface a solicitation arrives on.
const dualStack = `{"cniVersion":"1.1.0","name":"dual","plugins":[
	{"type":"macvlan","master":"eno1","ipam":{"type":"static-ipam","addresses":[
		{"address":"192.168.1.60/16","gateway":"192.168.0.1"},{"address":"fd00:c0a8::60/64"}]}},
	{"type":"macvlan-host-route","master":"eno1","hostAddresses":["fd00:c0a8::5"]}]}`

func podIP(t *testing.T, res types.Result) netip.Addr {
	t.Helper()
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 {
		t.Fatalf("result %v: %v", res, err)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	return a.Unmap()
}

func nodeRoutes(t *testing.T, sb *sandbox.Sandbox) string {
	t.Helper()
	return sandbox.MustRun(t, sb.Node, "ip", "route", "show", "table", "all") + sandbox.MustRun(t, sb.Node, "ip", "-6", "route", "show", "table", "all")
}

// TestWithoutThePluginTheNodeCannotReachThePod proves what the plugin is
// for: with macvlan alone the node and its pod cannot talk.
func TestWithoutThePluginTheNodeCannotReachThePod(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sandbox.ListFromJSON(t, macvlanOnly)
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "plain-1", "eth0")
	if _, err := rtm.Add(list, att); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	if err := sandbox.Ping(sb.LAN, netip.MustParseAddr("192.168.1.50")); err != nil {
		t.Fatalf("the lan host cannot reach the pod either, so the test proves nothing: %v", err)
	}
	if err := sandbox.Ping(sb.Node, netip.MustParseAddr("192.168.1.50")); err == nil {
		t.Fatal("the node reached a macvlan pod without macvlan-host-route")
	}
}

func TestSourceDocumentChain(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.LoadList(t, "00-default.conflist"))
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "default-1", "eth0")
	res, err := rtm.Add(list, att)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	ip := podIP(t, res)

	t.Run("the result of macvlan passes through", func(t *testing.T) {
		r, _ := current.NewResultFromResult(res)
		if len(r.Interfaces) != 1 || r.Interfaces[0].Name != "eth0" || r.IPs[0].Address.String() != ip.String()+"/16" {
			t.Fatalf("result = %+v", r)
		}
	})
	t.Run("the node has the bridge-mode sub-device, up", func(t *testing.T) {
		out := sandbox.MustRun(t, sb.Node, "ip", "-d", "link", "show", "eno1.host")
		for _, want := range []string{"eno1.host@eno1", "macvlan mode bridge", "UP"} {
			if !strings.Contains(out, want) {
				t.Errorf("ip link lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("the node has a scope-link host route to the pod through it", func(t *testing.T) {
		if out := nodeRoutes(t, sb); !strings.Contains(out, ip.String()+" dev eno1.host proto 197 scope link") {
			t.Fatalf("node routes lack %s dev eno1.host:\n%s", ip, out)
		}
	})
	t.Run("node pings pod and pod pings node", func(t *testing.T) {
		if err := sandbox.Ping(sb.Node, ip); err != nil {
			t.Fatal(err)
		}
		if err := sandbox.Ping(pod, sandbox.NodeIPv4.Addr()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("CHECK passes, and fails once the route is gone", func(t *testing.T) {
		if err := rtm.Check(list, att); err != nil {
			t.Fatal(err)
		}
		sandbox.MustRun(t, sb.Node, "ip", "route", "del", ip.String(), "dev", "eno1.host")
		err := rtm.Check(list, att)
		if err == nil || !strings.Contains(err.Error(), "host route to "+ip.String()+` via "eno1.host" is missing`) {
			t.Fatalf("CHECK = %v, want it to name the missing route", err)
		}
		sandbox.MustRun(t, sb.Node, "ip", "route", "add", ip.String(), "dev", "eno1.host", "proto", "197", "scope", "link")
	})
	t.Run("DEL removes the route, keeps the sub-device, and succeeds twice", func(t *testing.T) {
		if err := rtm.Del(list, att); err != nil {
			t.Fatal(err)
		}
		if out := nodeRoutes(t, sb); strings.Contains(out, "proto 197") {
			t.Fatalf("routes of ours remain:\n%s", out)
		}
		sandbox.MustRun(t, sb.Node, "ip", "link", "show", "eno1.host")
		if err := rtm.Del(list, att); err != nil {
			t.Fatalf("second DEL: %v", err)
		}
	})
}

func TestDualStack(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, dualStack))
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "dual-1", "eth0")
	if _, err := rtm.Add(list, att); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	out := nodeRoutes(t, sb)
	for _, want := range []string{"192.168.1.60 dev eno1.host", "fd00:c0a8::60 dev eno1.host"} {
		if !strings.Contains(out, want) {
			t.Errorf("node routes lack %q:\n%s", want, out)
		}
	}
	sandbox.WaitDAD(t, pod)
	for _, ip := range []string{"192.168.1.60", "fd00:c0a8::60"} {
		if err := sandbox.Ping(sb.Node, netip.MustParseAddr(ip)); err != nil {
			t.Errorf("node -> pod %s: %v", ip, err)
		}
	}
	if err := sandbox.Ping(pod, sandbox.NodeIPv6.Addr()); err != nil {
		t.Errorf("pod -> node over IPv6: %v", err)
	}
	if err := rtm.Del(list, att); err != nil {
		t.Fatal(err)
	}
	if out := nodeRoutes(t, sb); strings.Contains(out, "proto 197") {
		t.Fatalf("routes of ours remain:\n%s", out)
	}
}

func TestCnitool(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	out, err := sb.Cnitool(t, sandbox.NetD(), "add", "default", pod)
	if err != nil {
		t.Fatalf("cnitool add: %v", err)
	}
	t.Cleanup(func() { _, _ = sb.Cnitool(t, sandbox.NetD(), "del", "default", pod) })
	if !strings.Contains(out, `"address": "192.168.1.2/16"`) {
		t.Fatalf("cnitool add printed %s", out)
	}
	if routes := nodeRoutes(t, sb); !strings.Contains(routes, "192.168.1.2 dev eno1.host") {
		t.Fatalf("node routes:\n%s", routes)
	}
	if err := sandbox.Ping(sb.Node, netip.MustParseAddr("192.168.1.2")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := sb.Cnitool(t, sandbox.NetD(), "del", "default", pod); err != nil {
			t.Fatalf("cnitool del #%d: %v", i+1, err)
		}
	}
	if routes := nodeRoutes(t, sb); strings.Contains(routes, "proto 197") {
		t.Fatalf("routes of ours remain:\n%s", routes)
	}
}

// conf is our plugin's configuration, with a prevResult when ips are given.
func conf(sb *sandbox.Sandbox, master, extra string, ips ...string) []byte {
	prev := ""
	if len(ips) > 0 {
		var list []string
		for _, ip := range ips {
			list = append(list, fmt.Sprintf(`{"address":%q}`, ip))
		}
		prev = fmt.Sprintf(`,"prevResult":{"cniVersion":"1.0.0","ips":[%s]}`, strings.Join(list, ","))
	}
	return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"direct","type":"macvlan-host-route","master":%q,"stateDir":%q%s%s}`,
		master, sb.Dir+"/state", extra, prev))
}

// inNetwork is conf turned into network name's, with its records in
// stateDir.
func inNetwork(sb *sandbox.Sandbox, name, stateDir string) func([]byte) []byte {
	return func(c []byte) []byte {
		return bytes.Replace(bytes.Replace(c, []byte(`"name":"direct"`), []byte(`"name":"`+name+`"`), 1),
			[]byte(`"stateDir":"`+sb.Dir+`/state"`), []byte(`"stateDir":"`+stateDir+`"`), 1)
	}
}

func TestDelWithoutPrevResultAndGC(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	add := func(id, ip string) {
		t.Helper()
		if _, err := sb.Invoke(t, "macvlan-host-route", conf(sb, "eno1", "", ip+"/16"),
			sandbox.Invocation{Command: "ADD", ContainerID: id, NetNS: pod.Path(), IfName: "eth0"}); err != nil {
			t.Fatalf("ADD %s: %v", id, err)
		}
	}
	add("a", "192.168.1.71")
	add("b", "192.168.1.72")
	add("c", "192.168.1.73")

	t.Run("DEL without prevResult finds its route by its record", func(t *testing.T) {
		if _, err := sb.Invoke(t, "macvlan-host-route", conf(sb, "eno1", ""),
			sandbox.Invocation{Command: "DEL", ContainerID: "a", IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
		out := nodeRoutes(t, sb)
		if strings.Contains(out, "192.168.1.71 ") || !strings.Contains(out, "192.168.1.72 ") {
			t.Fatalf("want only a's route gone:\n%s", out)
		}
	})
	t.Run("GC removes the routes of attachments no longer valid, and leaked ones", func(t *testing.T) {
		// A route of ours that no record claims, as a crashed plugin version might leave.
		sandbox.MustRun(t, sb.Node, "ip", "route", "add", "192.168.1.99", "dev", "eno1.host", "proto", "197", "scope", "link")
		gc := conf(sb, "eno1", `,"cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"}]`)
		if _, err := sb.Invoke(t, "macvlan-host-route", gc, sandbox.Invocation{Command: "GC"}); err != nil {
			t.Fatal(err)
		}
		out := nodeRoutes(t, sb)
		if !strings.Contains(out, "192.168.1.72 ") || strings.Contains(out, "192.168.1.73 ") || strings.Contains(out, "192.168.1.99 ") {
			t.Fatalf("want only b's route left:\n%s", out)
		}
	})
}

func TestErrors(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	linksBefore := sandbox.MustRun(t, sb.Node, "ip", "-o", "link")
	tests := []struct {
		name     string
		conf     []byte
		setup    func(t *testing.T)
		wantCode uint
		wantMsg  string
	}{
		{name: "no prevResult", conf: conf(sb, "eno1", ""), wantCode: types.ErrInvalidNetworkConfig, wantMsg: "prevResult: missing"},
		{name: "prevResult without IPs", conf: []byte(`{"cniVersion":"1.0.0","name":"n","master":"eno1","prevResult":{"cniVersion":"1.0.0"}}`),
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "prevResult.ips"},
		{name: "master absent", conf: conf(sb, "eno9", "", "192.168.1.80/16"), wantCode: types.ErrInvalidNetworkConfig,
			wantMsg: `master "eno9": no such link`},
		{name: "a foreign link holds the bridge name", conf: conf(sb, "eno1", `,"bridge":"taken0"`, "192.168.1.80/16"),
			setup: func(t *testing.T) {
				sandbox.MustRun(t, sb.Node, "ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1")
				linksBefore = sandbox.MustRun(t, sb.Node, "ip", "-o", "link")
			},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: `bridge "taken0": is a veth, not a macvlan; refusing to take it over`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			routesBefore := nodeRoutes(t, sb)
			_, err := sb.Invoke(t, "macvlan-host-route", tt.conf, sandbox.Invocation{Command: "ADD", ContainerID: "x", NetNS: pod.Path(), IfName: "eth0"})
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != tt.wantCode || !strings.Contains(cniErr.Msg, tt.wantMsg) {
				t.Fatalf("ADD error = %v, want code %d containing %q", err, tt.wantCode, tt.wantMsg)
			}
			if after := nodeRoutes(t, sb); after != routesBefore {
				t.Errorf("routes changed by a failed ADD:\n%s", after)
			}
			if after := sandbox.MustRun(t, sb.Node, "ip", "-o", "link"); after != linksBefore {
				t.Errorf("links changed by a failed ADD:\n%s", after)
			}
		})
	}
	t.Run("STATUS fails with code 50 while the master is missing", func(t *testing.T) {
		_, err := sb.Invoke(t, "macvlan-host-route", conf(sb, "eno9", ""), sandbox.Invocation{Command: "STATUS"})
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != 50 || !strings.Contains(cniErr.Msg, `master "eno9"`) {
			t.Fatalf("STATUS = %v", err)
		}
		if _, err := sb.Invoke(t, "macvlan-host-route", conf(sb, "eno1", ""), sandbox.Invocation{Command: "STATUS"}); err != nil {
			t.Fatalf("STATUS with the master present: %v", err)
		}
	})
}

// TestGCLeavesOtherStateDirs: two networks on one master keep their
// records in stateDirs of their own (two runtimes); a GC of one removes
// its stale route and a route no record of either claims, and never the
// other network's route.
func TestGCLeavesOtherStateDirs(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	other := inNetwork(sb, "other", sb.Dir+"/state-other")
	for _, add := range []struct {
		id, ip string
		conf   func([]byte) []byte
	}{{"a", "192.168.1.81", func(c []byte) []byte { return c }}, {"b", "192.168.1.82", other}} {
		if _, err := sb.Invoke(t, "macvlan-host-route", add.conf(conf(sb, "eno1", "", add.ip+"/16")),
			sandbox.Invocation{Command: "ADD", ContainerID: add.id, NetNS: pod.Path(), IfName: "eth0"}); err != nil {
			t.Fatalf("ADD %s: %v", add.id, err)
		}
	}
	sandbox.MustRun(t, sb.Node, "ip", "route", "add", "192.168.1.99", "dev", "eno1.host", "proto", "197", "scope", "link")
	if _, err := sb.Invoke(t, "macvlan-host-route", conf(sb, "eno1", `,"cni.dev/valid-attachments":[]`), sandbox.Invocation{Command: "GC"}); err != nil {
		t.Fatal(err)
	}
	out := nodeRoutes(t, sb)
	if strings.Contains(out, "192.168.1.81 ") || strings.Contains(out, "192.168.1.99 ") || !strings.Contains(out, "192.168.1.82 ") {
		t.Fatalf("after GC of network direct, want its route and the unclaimed one gone, the other network's kept:\n%s", out)
	}
	if _, err := sb.Invoke(t, "macvlan-host-route", other(conf(sb, "eno1", "")), sandbox.Invocation{Command: "DEL", ContainerID: "b", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
}

// TestGCWithMoreStateDirsThanTheAliasHolds: three networks on one master
// whose stateDirs' paths do not fit in the sub-device's alias together: a
// GC of the first removes its own stale route and never another network's
// live one.
func TestGCWithMoreStateDirsThanTheAliasHolds(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	long := func(name string) string { return filepath.Join(sb.Dir, name+"-"+strings.Repeat("s", 100)) }
	in := func(name string) func([]byte) []byte { return inNetwork(sb, name, long(name)) }
	nets := []struct{ name, ip string }{{"net-a", "192.168.1.71"}, {"net-b", "192.168.1.72"}, {"net-c", "192.168.1.73"}}
	for _, n := range nets {
		if _, err := sb.Invoke(t, "macvlan-host-route", in(n.name)(conf(sb, "eno1", "", n.ip+"/16")),
			sandbox.Invocation{Command: "ADD", ContainerID: n.name, NetNS: pod.Path(), IfName: "eth0"}); err != nil {
			t.Fatalf("ADD %s: %v", n.name, err)
		}
	}
	if total := len(long("net-a")) + len(long("net-b")) + len(long("net-c")); total < 255 {
		t.Fatalf("the stateDirs' paths take %d bytes together, which fit in an alias: the test proves nothing", total)
	}
	if _, err := sb.Invoke(t, "macvlan-host-route", in("net-a")(conf(sb, "eno1", `,"cni.dev/valid-attachments":[]`)), sandbox.Invocation{Command: "GC"}); err != nil {
		t.Fatal(err)
	}
	out := nodeRoutes(t, sb)
	if strings.Contains(out, "192.168.1.71 ") || !strings.Contains(out, "192.168.1.72 ") || !strings.Contains(out, "192.168.1.73 ") {
		t.Fatalf("after GC of net-a, want its route gone and the other networks' kept:\n%s", out)
	}
	for _, n := range nets[1:] {
		if _, err := sb.Invoke(t, "macvlan-host-route", in(n.name)(conf(sb, "eno1", "")), sandbox.Invocation{Command: "DEL", ContainerID: n.name, IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStateDirsListedUnderRaces: ADDs of three networks with stateDirs of
// their own, and restores of each, all at once on a sub-device made anew:
// the sub-device lists every stateDir after each round (an update computed
// from the alias read before the lock was taken lost another's).
func TestStateDirsListedUnderRaces(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	dir := func(name string) string { return filepath.Join(sb.Dir, "state-"+name) }
	in := func(name string) func([]byte) []byte { return inNetwork(sb, name, dir(name)) }
	nets := []string{"net-a", "net-b", "net-c"}
	for round := range envRounds(t, 8) {
		var wg sync.WaitGroup
		errs := make(chan error, 2*len(nets))
		for i, n := range nets {
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, err := sb.Invoke(t, "macvlan-host-route", in(n)(conf(sb, "eno1", "", fmt.Sprintf("192.168.1.%d/16", 60+i))),
					sandbox.Invocation{Command: "ADD", ContainerID: fmt.Sprintf("%s-%d", n, round), NetNS: pod.Path(), IfName: "eth0"})
				errs <- err
			}()
			go func() {
				defer wg.Done()
				_, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), "macvlan-host-route"), "restore", "-state-dir", dir(n))
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		alias := sandbox.MustRun(t, sb.Node, "ip", "link", "show", "eno1.host")
		for _, n := range nets {
			if !strings.Contains(alias, dir(n)) {
				t.Fatalf("round %d: the sub-device's alias %s does not list %s", round, alias, dir(n))
			}
		}
		for i, n := range nets {
			if _, err := sb.Invoke(t, "macvlan-host-route", in(n)(conf(sb, "eno1", "", fmt.Sprintf("192.168.1.%d/16", 60+i))),
				sandbox.Invocation{Command: "DEL", ContainerID: fmt.Sprintf("%s-%d", n, round), NetNS: pod.Path(), IfName: "eth0"}); err != nil {
				t.Fatal(err)
			}
		}
		sandbox.MustRun(t, sb.Node, "ip", "link", "del", "eno1.host")
	}
}

// TestEachNetworksHostAddressesRestored: two networks of one stateDir on
// one sub-device, each with hostAddresses of its own: a sub-device made
// anew by a restore answers for both networks' (the record kept one list,
// the last ADD's).
func TestEachNetworksHostAddressesRestored(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	nets := []struct{ name, ip, listed string }{{"net-a", "192.168.1.51", "10.99.0.1"}, {"net-b", "192.168.1.52", "10.99.0.2"}}
	for _, n := range nets {
		c := inNetwork(sb, n.name, sb.Dir+"/state")(conf(sb, "eno1", `,"hostAddresses":["`+n.listed+`"]`, n.ip+"/16"))
		if _, err := sb.Invoke(t, "macvlan-host-route", c, sandbox.Invocation{Command: "ADD", ContainerID: n.name, NetNS: pod.Path(), IfName: "eth0"}); err != nil {
			t.Fatalf("ADD %s: %v", n.name, err)
		}
		t.Cleanup(func() {
			_, _ = sb.Invoke(t, "macvlan-host-route", c, sandbox.Invocation{Command: "DEL", ContainerID: n.name, NetNS: pod.Path(), IfName: "eth0"})
		})
	}
	sandbox.MustRun(t, sb.Node, "ip", "link", "del", "eno1.host")
	if out, err := sandbox.Run(sb.Node, nil, filepath.Join(sandbox.Plugins(t), "macvlan-host-route"), "restore", "-state-dir", sb.Dir+"/state"); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	addrs := sandbox.MustRun(t, sb.Node, "ip", "-o", "addr", "show", "dev", "eno1.host")
	for _, n := range nets {
		if !strings.Contains(addrs, " "+n.listed+"/32 ") {
			t.Errorf("the sub-device made anew lacks %s's hostAddress %s:\n%s", n.name, n.listed, addrs)
		}
	}
}

// envRounds is CNICHAIN_RACE_ROUNDS, or def.
func envRounds(t *testing.T, def int) int {
	t.Helper()
	if n, err := strconv.Atoi(os.Getenv("CNICHAIN_RACE_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return def
}

// earlierRelease leaves in the sandbox's stateDir what a release that put
// copies of the master's addresses on the sub-device left: its record of
// them, and the route record of a pod it made, which asks for the node.
func earlierRelease(t *testing.T, sb *sandbox.Sandbox, copies string) {
	t.Helper()
	dir := sb.Dir + "/state"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"answers-eno1.host":   `{"copies":` + copies + `}`,
		"route-192.168.1.199": `{"network":"old","containerID":"old","ifName":"eth0","bridge":"eno1.host"}`,
	} {
		if err := os.WriteFile(dir+"/"+name, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConcurrentADDsKeepEveryAnswer: ADDs of two networks sharing the
// sub-device and the stateDir, one naming hostAddresses, one bringing an
// earlier release's copies of the master's up to date, run at once; the
// sub-device's record keeps both.
func TestConcurrentADDsKeepEveryAnswer(t *testing.T) {
	sb := sandbox.New(t)
	// A copy of an address the master no longer has: each ADD of the
	// copying network takes it away, a lost update would bring it back.
	earlierRelease(t, sb, `["fd00:c0a8::99/64"]`)
	pod := sb.NewPod(t)
	const n = 16
	errs := make(chan error, n)
	for i := range n {
		extra, name := "", "copies"
		if i%2 == 0 {
			extra, name = `,"hostAddresses":["192.168.0.5"]`, "listed"
		}
		c := bytes.Replace(conf(sb, "eno1", extra, fmt.Sprintf("192.168.1.%d/16", 100+i)), []byte(`"name":"direct"`), []byte(`"name":"`+name+`"`), 1)
		go func() {
			_, err := sb.Invoke(t, "macvlan-host-route", c, sandbox.Invocation{Command: "ADD", ContainerID: fmt.Sprint("c", i), NetNS: pod.Path(), IfName: "eth0"})
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent ADD: %v", err)
		}
	}
	data, err := os.ReadFile(sb.Dir + "/state/answers-eno1.host")
	if err != nil {
		t.Fatal(err)
	}
	if s := string(data); !strings.Contains(s, `"listed":["192.168.0.5/32"]`) || !strings.Contains(s, `"copies":["fd00:c0a8::5/64"]`) {
		t.Fatalf("the sub-device's record lost an update: %s", s)
	}
}

// TestCopiesOfAnEarlierRelease: a node upgraded while pods of a release
// that copied the master's addresses onto the sub-device run keeps the
// copies while any pod is routed through it (those pods ask for the node),
// and the first ADD that finds none takes them away; a new node has none.
func TestCopiesOfAnEarlierRelease(t *testing.T) {
	sb := sandbox.New(t)
	earlierRelease(t, sb, `["fd00:c0a8::5/64"]`)
	sandbox.MustRun(t, sb.Node, "ip", "link", "add", "eno1.host", "link", "eno1", "type", "macvlan", "mode", "bridge")
	sandbox.MustRun(t, sb.Node, "ip", "addr", "add", "fd00:c0a8::5/64", "dev", "eno1.host", "nodad", "noprefixroute")
	pod := sb.NewPod(t)
	run := func(verb, id, addr string) {
		t.Helper()
		c := conf(sb, "eno1", "", addr)
		if _, err := sb.Invoke(t, "macvlan-host-route", c, sandbox.Invocation{Command: verb, ContainerID: id, NetNS: pod.Path(), IfName: "eth0"}); err != nil {
			t.Fatalf("%s %s: %v", verb, id, err)
		}
		if verb == "ADD" {
			t.Cleanup(func() {
				sb.Invoke(t, "macvlan-host-route", c, sandbox.Invocation{Command: "DEL", ContainerID: id, NetNS: pod.Path(), IfName: "eth0"})
			})
		}
	}
	copies := func() string {
		return sandbox.MustRun(t, sb.Node, "ip", "-6", "addr", "show", "dev", "eno1.host", "scope", "global")
	}
	// The first ADD lists the stateDir on the sub-device; the second finds
	// only the earlier release's pod routed.
	run("ADD", "new-1", "192.168.1.101/16")
	run("DEL", "new-1", "192.168.1.101/16")
	run("ADD", "new-2", "192.168.1.102/16")
	if !strings.Contains(copies(), "fd00:c0a8::5/64") {
		t.Fatalf("the copy went while the earlier release's pod is routed:\n%s", copies())
	}
	if err := os.Remove(sb.Dir + "/state/route-192.168.1.199"); err != nil { // its DEL
		t.Fatal(err)
	}
	run("DEL", "new-2", "192.168.1.102/16")
	run("ADD", "new-3", "192.168.1.103/16")
	if out := copies(); strings.Contains(out, "fd00:c0a8::5") {
		t.Fatalf("the copy stayed with no pod of the earlier release left:\n%s", out)
	}
	if data, _ := os.ReadFile(sb.Dir + "/state/answers-eno1.host"); strings.Contains(string(data), "copies") {
		t.Fatalf("the record still lists copies: %s", data)
	}
}

// dualStackCopyless is the headline's first two plugins: the node's
// addresses are the master's, not listed.
const dualStackCopyless = `{"cniVersion":"1.1.0","name":"dual","plugins":[
	{"type":"macvlan","master":"eno1","mode":"bridge","ipam":{"type":"static-ipam","addresses":[
		{"address":"192.168.1.70/16","gateway":"192.168.0.1"},{"address":"fd00:c0a8::70/64"}]}},
	{"type":"macvlan-host-route","master":"eno1"}]}`

// TestTheLANReachesTheNodeAtTheMastersMAC: the sub-device hears the wire,
// so it must not answer the LAN's ARP or NDP for the node's addresses,
// nor ask for a pod in the node's name (its ARP requests go out on the
// wire too). Either moves the LAN's entry for the node to the sub-device's
// MAC: the node's traffic from the LAN then comes in on the sub-device,
// where strict rp_filter (and firewalld's IPv6 rpfilter) drops it, and
// stops when the sub-device goes. The pod reaches the node all the same:
// it is pinned to the node's addresses.
func TestTheLANReachesTheNodeAtTheMastersMAC(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sb.Localize(t, sandbox.ListFromJSON(t, dualStackCopyless))
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "flux-1", "eth0")
	if _, err := rtm.Add(list, att); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	sandbox.WaitDAD(t, pod)
	pod4, pod6 := netip.MustParseAddr("192.168.1.70"), netip.MustParseAddr("fd00:c0a8::70")
	node4, node6 := sandbox.NodeIPv4.Addr(), sandbox.NodeIPv6.Addr()
	// The LAN takes every ARP answer, not only the first within a second:
	// a sub-device's answer cannot hide behind the master's earlier one
	// (NDP has no such wait: the last answer wins).
	sandbox.MustRun(t, sb.LAN, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/neigh/eth0/locktime")
	master := macOf(sandbox.MustRun(t, sb.Node, "ip", "-o", "link", "show", "eno1"), "link/ether ")
	sub := macOf(sandbox.MustRun(t, sb.Node, "ip", "-o", "link", "show", "eno1.host"), "link/ether ")
	// stays watches the LAN's entries for the node for a second: a late
	// answer or request from the sub-device would change them.
	stays := func(after string) {
		t.Helper()
		for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			for _, node := range []netip.Addr{node4, node6} {
				out := sandbox.MustRun(t, sb.LAN, "ip", "neigh", "show", node.String(), "dev", "eth0")
				if got := macOf(out, "lladdr "); got != master {
					t.Fatalf("after %s the LAN reaches the node %s at %s, not at eno1's %s (eno1.host's is %s):\n%s",
						after, node, got, master, sub, out)
				}
			}
		}
	}
	sandbox.MustRun(t, sb.LAN, "ip", "neigh", "flush", "dev", "eth0")
	for _, node := range []netip.Addr{node4, node6} {
		if err := sandbox.Ping(sb.LAN, node); err != nil {
			t.Fatal(err)
		}
	}
	stays("the LAN asked for the node")
	for _, ip := range []netip.Addr{pod4, pod6} {
		if err := sandbox.Ping(sb.Node, ip); err != nil {
			t.Fatalf("node -> pod %s: %v", ip, err)
		}
	}
	stays("the node reached the pod")
	for _, node := range []netip.Addr{node4, node6} {
		if err := sandbox.Ping(pod, node); err != nil {
			t.Fatalf("pod -> node %s: %v", node, err)
		}
	}
	if out := sandbox.MustRun(t, sb.Node, "ip", "addr", "show", "dev", "eno1.host", "scope", "global"); strings.Contains(out, "inet") {
		t.Errorf("the sub-device holds node addresses, which it answers the LAN for:\n%s", out)
	}
	podMAC := macOf(sandbox.MustRun(t, pod, "ip", "-o", "link", "show", "eth0"), "link/ether ")
	nodeSide := sandbox.MustRun(t, sb.Node, "ip", "neigh", "show", "dev", "eno1.host")
	podSide := sandbox.MustRun(t, pod, "ip", "neigh", "show", "dev", "eth0")
	for _, want := range []struct{ where, table, entry string }{
		{"the node", nodeSide, fmt.Sprintf("%s lladdr %s PERMANENT", pod4, podMAC)},
		{"the node", nodeSide, fmt.Sprintf("%s lladdr %s PERMANENT", pod6, podMAC)},
		{"the pod", podSide, fmt.Sprintf("%s lladdr %s PERMANENT", node4, sub)},
		{"the pod", podSide, fmt.Sprintf("%s lladdr %s PERMANENT", node6, sub)},
	} {
		if !strings.Contains(want.table, want.entry) {
			t.Errorf("%s's neighbours:\n%swant %q", want.where, want.table, want.entry)
		}
	}
	if err := rtm.Check(list, att); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	for _, c := range []struct {
		netns        ns.NetNS
		ip, dev, mac string
		want         string
	}{
		{sb.Node, pod4.String(), "eno1.host", podMAC, "neighbour entry for " + pod4.String()},
		{pod, node6.String(), "eth0", sub, "permanent neighbour entry " + node6.String()},
	} {
		sandbox.MustRun(t, c.netns, "ip", "neigh", "del", c.ip, "dev", c.dev)
		if err := rtm.Check(list, att); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("CHECK without %s on %s = %v, want it named", c.ip, c.dev, err)
		}
		sandbox.MustRun(t, c.netns, "ip", "neigh", "replace", c.ip, "lladdr", c.mac, "nud", "permanent", "dev", c.dev)
	}
	if err := rtm.Del(list, att); err != nil {
		t.Fatal(err)
	}
	if out := sandbox.MustRun(t, sb.Node, "ip", "neigh", "show", "dev", "eno1.host"); strings.Contains(out, "PERMANENT") {
		t.Errorf("DEL left the node's pinned entries:\n%s", out)
	}
	if out := sandbox.MustRun(t, pod, "ip", "neigh", "show", "nud", "permanent"); out != "" {
		t.Errorf("DEL left the pod's pinned entries:\n%s", out)
	}
}

// macOf is the link-layer address that follows key in ip's output, or "".
func macOf(out, key string) string {
	_, rest, ok := strings.Cut(out, key)
	if !ok {
		return ""
	}
	mac, _, _ := strings.Cut(rest, " ")
	return mac
}

// TestASubDeviceMadeAnewKeepsItsMAC: when someone deletes the sub-device,
// the next ADD makes it anew with the MAC the running pods are pinned to,
// so once a restore has put their routes back they reach the node again.
func TestASubDeviceMadeAnewKeepsItsMAC(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	first := sb.Localize(t, sandbox.ListFromJSON(t, dualStackCopyless))
	second := sb.Localize(t, sandbox.ListFromJSON(t, strings.NewReplacer("::70", "::71", ".1.70", ".1.71").Replace(dualStackCopyless)))
	old, young := sb.NewPod(t), sb.NewPod(t)
	oldAtt, youngAtt := sandbox.Attachment(old, "old", "eth0"), sandbox.Attachment(young, "young", "eth0")
	if _, err := rtm.Add(first, oldAtt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { _ = rtm.Del(first, oldAtt) })
	subMAC := func() string {
		return macOf(sandbox.MustRun(t, sb.Node, "ip", "-o", "link", "show", "eno1.host"), "link/ether ")
	}
	was := subMAC()
	sandbox.MustRun(t, sb.Node, "ip", "link", "del", "eno1.host")
	if _, err := rtm.Add(second, youngAtt); err != nil {
		t.Fatalf("ADD after the sub-device went: %v", err)
	}
	t.Cleanup(func() { _ = rtm.Del(second, youngAtt) })
	if now := subMAC(); now != was {
		t.Fatalf("the sub-device came back with MAC %s, not %s: the old pod is pinned to that", now, was)
	}
	restore := filepath.Join(sandbox.Plugins(t), "macvlan-host-route")
	if out, err := sandbox.Run(sb.Node, nil, restore, "restore", "-state-dir", filepath.Join(sb.Dir, "state", "macvlan-host-route")); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	sandbox.WaitDAD(t, old)
	for _, node := range []netip.Addr{sandbox.NodeIPv4.Addr(), sandbox.NodeIPv6.Addr()} {
		if err := sandbox.Ping(old, node); err != nil {
			t.Errorf("the old pod -> node %s: %v", node, err)
		}
	}
}
