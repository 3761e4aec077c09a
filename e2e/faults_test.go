package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// faultChains are the chains whose teardown faults are exercised, at
// cniVersion 1.1.0 so that GC applies. The bridges have no ipMasq: the
// reference bridge (v1.9.1, still in v1.10.0) finds the masquerade rules to delete from the
// addresses inside the pod's netns, so when the netns is gone before DEL
// its rules stay behind for good, which would hide whether ours went.
var faultChains = map[string]string{
	"macvlan-host-route": `{"cniVersion":"1.1.0","name":"fault-hr","plugins":[
		{"type":"macvlan","master":"eno1","ipam":{"type":"host-local","subnet":"192.168.0.0/16","rangeStart":"192.168.3.2","rangeEnd":"192.168.3.250"}},
		{"type":"macvlan-host-route","master":"eno1"}]}`,
	"portmap-lite": `{"cniVersion":"1.1.0","name":"fault-pm","plugins":[
		{"type":"bridge","bridge":"fault0","isGateway":true,"hairpinMode":true,
		 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.250.0.0/24"}],[{"subnet":"fd00:fa::/64"}]]}},
		{"type":"portmap-lite","capabilities":{"portMappings":true}}]}`,
	"portmap-lite nftables": `{"cniVersion":"1.1.0","name":"fault-nft","plugins":[
		{"type":"bridge","bridge":"fault1","isGateway":true,"hairpinMode":true,
		 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.251.0.0/24"}],[{"subnet":"fd00:fb::/64"}]]}},
		{"type":"portmap-lite","backend":"nftables","capabilities":{"portMappings":true}}]}`,
}

var faultCaps = map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}, {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}}}

// TestTeardownFaults: whatever goes wrong around a pod's teardown, the node
// ends exactly as before the pod.
func TestTeardownFaults(t *testing.T) {
	for name, text := range faultChains {
		t.Run(name, func(t *testing.T) {
			sb := sandbox.New(t)
			rtm := sb.Runtime(t)
			list := sb.Localize(t, sandbox.ListFromJSON(t, text))
			n := 0
			newPod := func() (*libcni.RuntimeConf, ns.NetNS) {
				n++
				pod := sb.NewPod(t)
				att := sandbox.Attachment(pod, fmt.Sprintf("fault-%d", n), "eth0")
				att.CapabilityArgs = faultCaps
				return att, pod
			}
			// Warm up: what stays by design (bridge, sub-device, shared chains).
			att, _ := newPod()
			mustAdd(t, rtm, list, att)
			mustDel(t, rtm, list, att)
			before := sb.Snapshot(t)
			clean := func(t *testing.T, what string) {
				t.Helper()
				if after := sb.Snapshot(t); after != before {
					t.Fatalf("%s left the node changed:\n%s\nbefore:\n%s", what, after, before)
				}
			}

			t.Run("the pod's netns is gone before DEL", func(t *testing.T) {
				pod, err := testutils.NewNS()
				if err != nil {
					t.Fatal(err)
				}
				n++
				att := sandbox.Attachment(pod, fmt.Sprintf("fault-%d", n), "eth0")
				att.CapabilityArgs = faultCaps
				mustAdd(t, rtm, list, att)
				pod.Close()
				if err := testutils.UnmountNS(pod); err != nil {
					t.Fatal(err)
				}
				mustDel(t, rtm, list, att)
				clean(t, "DEL after the netns went")
			})
			t.Run("DEL twice, and DEL of a pod never added", func(t *testing.T) {
				att, _ := newPod()
				mustAdd(t, rtm, list, att)
				mustDel(t, rtm, list, att)
				mustDel(t, rtm, list, att)
				never, _ := newPod()
				mustDel(t, rtm, list, never)
				clean(t, "two DELs")
			})
			t.Run("the runtime lost its cached result: DEL without prevResult", func(t *testing.T) {
				att, _ := newPod()
				mustAdd(t, rtm, list, att)
				if err := os.RemoveAll(sb.Dir + "/cache/results"); err != nil {
					t.Fatal(err)
				}
				mustDel(t, rtm, list, att)
				clean(t, "DEL without prevResult")
			})
			t.Run("a torn record: GC passes and keeps the valid pod, DEL removes what the key names", func(t *testing.T) {
				att, _ := newPod()
				mustAdd(t, rtm, list, att)
				if n := tearRecords(t, sb); n == 0 {
					t.Fatal("no record to tear: the test proves nothing")
				}
				for range 2 { // the second finds the record moved aside
					if err := rtm.GC(list, []types.GCAttachment{{ContainerID: att.ContainerID, IfName: "eth0"}}); err != nil {
						t.Fatalf("GC with a torn record: %v", err)
					}
				}
				if strings.Contains(name, "portmap-lite") {
					if save := sandbox.MustRun(t, sb.Node, "iptables-save", "-t", "nat"); !strings.Contains(save, "--dport 8080") && !strings.Contains(name, "nftables") {
						t.Fatalf("GC removed the valid pod's rules:\n%s", save)
					}
				}
				mustDel(t, rtm, list, att)
				mustDel(t, rtm, list, att)
				clean(t, "DEL after a torn record")
			})
			t.Run("GC with some pods missing removes exactly theirs", func(t *testing.T) {
				keep, _ := newPod()
				drop, _ := newPod()
				// Two live pods cannot share a hostPort (the nftables backend refuses it).
				drop.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}, {"hostPort": 5354, "containerPort": 53, "protocol": "udp"}}}
				mustAdd(t, rtm, list, keep)
				mustAdd(t, rtm, list, drop)
				// The runtime forgets drop (as after a crash) and collects.
				if err := rtm.GC(list, []types.GCAttachment{{ContainerID: keep.ContainerID, IfName: "eth0"}}); err != nil {
					t.Fatalf("GC: %v", err)
				}
				if err := rtm.Check(list, keep); err != nil {
					t.Fatalf("GC broke the valid pod: %v", err)
				}
				if got := records(t, sb); got != 1 {
					t.Fatalf("%d records after GC, want keep's only", got)
				}
				// The runtime's DEL of drop finds nothing of ours left; bridge's veth goes.
				mustDel(t, rtm, list, drop)
				mustDel(t, rtm, list, keep)
				clean(t, "GC")
			})
		})
	}
}

// TestKilledMidADD: portmap-lite is SIGKILLed after installing IPv4 and
// before IPv6 (its ip6tables-restore kills it); a later DEL, or GC, removes
// everything it had installed.
func TestKilledMidADD(t *testing.T) {
	for _, cleanup := range []string{"DEL", "GC"} {
		t.Run("then "+cleanup, func(t *testing.T) {
			sb := sandbox.New(t)
			rtm := sb.Runtime(t)
			list := sb.Localize(t, sandbox.ListFromJSON(t, faultChains["portmap-lite"]))
			warm := sandbox.Attachment(sb.NewPod(t), "warm", "eth0")
			warm.CapabilityArgs = faultCaps
			mustAdd(t, rtm, list, warm)
			mustDel(t, rtm, list, warm)
			before := sb.Snapshot(t)

			dir := t.TempDir()
			killer := "#!/bin/sh\nkill -KILL $PPID\nexit 1\n"
			if err := os.WriteFile(dir+"/ip6tables-restore", []byte(killer), 0o755); err != nil {
				t.Fatal(err)
			}
			path := os.Getenv("PATH")
			t.Setenv("PATH", dir+":"+path)
			att := sandbox.Attachment(sb.NewPod(t), "killed", "eth0")
			att.CapabilityArgs = faultCaps
			if _, err := rtm.Add(list, att); err == nil {
				t.Fatal("ADD succeeded though the plugin was killed")
			}
			os.Setenv("PATH", path)
			if save := sandbox.MustRun(t, sb.Node, "iptables-save", "-t", "nat"); !strings.Contains(save, "CNI-LITE-DN-") {
				t.Fatalf("the kill came before anything was installed; the test proves nothing:\n%s", save)
			}
			switch cleanup {
			case "DEL":
				mustDel(t, rtm, list, att)
			case "GC":
				if err := rtm.GC(list, []types.GCAttachment{}); err != nil {
					t.Fatalf("GC: %v", err)
				}
				// bridge's own leftovers for the pod go with its DEL; GC is for ours.
				mustDel(t, rtm, list, att)
			}
			if after := sb.Snapshot(t); after != before {
				t.Fatalf("after the killed ADD and %s:\n%s\nbefore:\n%s", cleanup, after, before)
			}
		})
	}
}

// records counts our plugins' state records in the sandbox.
func records(t *testing.T, sb *sandbox.Sandbox) int {
	t.Helper()
	n := 0
	for _, plugin := range []string{"macvlan-host-route", "portmap-lite"} {
		entries, _ := os.ReadDir(sb.Dir + "/state/" + plugin)
		for _, e := range entries {
			// answers-<bridge> is the sub-device's, not an attachment's.
			if !e.IsDir() && !strings.HasPrefix(e.Name(), ".") && !strings.HasPrefix(e.Name(), "answers-") {
				n++
			}
		}
	}
	return n
}

// tearRecords cuts every attachment record of our plugins in the sandbox
// to half its length, as a disk that lost the end of a write would, and
// returns how many it cut.
func tearRecords(t *testing.T, sb *sandbox.Sandbox) int {
	t.Helper()
	n := 0
	for _, plugin := range []string{"macvlan-host-route", "portmap-lite", "multinic"} {
		dir := sb.Dir + "/state/" + plugin
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() || strings.HasPrefix(e.Name(), ".") || strings.HasPrefix(e.Name(), "answers-") {
				continue
			}
			data, err := os.ReadFile(dir + "/" + e.Name())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dir+"/"+e.Name(), data[:len(data)/2], 0o600); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	return n
}

func mustAdd(t *testing.T, rtm *sandbox.Runtime, list *libcni.NetworkConfigList, att *libcni.RuntimeConf) {
	t.Helper()
	if _, err := rtm.Add(list, att); err != nil {
		t.Fatalf("ADD %s: %v", att.ContainerID, err)
	}
}

func mustDel(t *testing.T, rtm *sandbox.Runtime, list *libcni.NetworkConfigList, att *libcni.RuntimeConf) {
	t.Helper()
	if err := rtm.Del(list, att); err != nil {
		t.Fatalf("DEL %s: %v", att.ContainerID, err)
	}
}
