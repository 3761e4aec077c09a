package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnichain/plugins/pkg/sandbox"
)

func TestMain(m *testing.M) { sandbox.Main(m) }

// podState returns the pod's addresses, IPv4 routes and IPv6 routes of eth0.
func podState(t *testing.T, pod ns.NetNS) (addrs, routes, routes6 string) {
	t.Helper()
	return sandbox.MustRun(t, pod, "ip", "-o", "addr", "show", "dev", "eth0"),
		sandbox.MustRun(t, pod, "ip", "route", "show", "dev", "eth0"),
		sandbox.MustRun(t, pod, "ip", "-6", "route", "show", "dev", "eth0")
}

func requireContains(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(got, want) {
			t.Errorf("%s lacks %q:\n%s", what, want, got)
		}
	}
}

// requirePodClean fails unless the pod is back to loopback only.
func requirePodClean(t *testing.T, pod ns.NetNS) {
	t.Helper()
	if out := sandbox.MustRun(t, pod, "ip", "-o", "link"); strings.Count(out, "\n") != 1 {
		t.Errorf("pod still has links after DEL:\n%s", out)
	}
}

func TestMacvlanWithStaticIPAM(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sandbox.LoadList(t, "10-static-macvlan.conflist")
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "macvlan-static-1", "eth0")

	res, err := rtm.Add(list, att)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })

	t.Run("the pod gets the configured addresses and routes", func(t *testing.T) {
		addrs, routes, routes6 := podState(t, pod)
		requireContains(t, "pod addresses", addrs, "192.168.1.20/16", "fd00:c0a8::20/64")
		requireContains(t, "pod IPv4 routes", routes, "default via 192.168.0.1")
		requireContains(t, "pod IPv6 routes", routes6, "default via fd00:c0a8::1")
	})
	t.Run("the result carries the resolver settings", func(t *testing.T) {
		// The reference macvlan reports its own top-level "dns", not the IPAM's.
		r, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(r.DNS.Nameservers, ","); got != "192.168.0.1" || strings.Join(r.DNS.Search, ",") != "example.com" {
			t.Errorf("dns = %+v, want nameserver 192.168.0.1 and search example.com", r.DNS)
		}
	})
	t.Run("the pod reaches the lan host through its gateway", func(t *testing.T) {
		if err := sandbox.Ping(pod, sandbox.LANIPv4.Addr()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("CHECK passes", func(t *testing.T) {
		if err := rtm.Check(list, att); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("STATUS and GC pass", func(t *testing.T) {
		if err := rtm.Status(list); err != nil {
			t.Fatal(err)
		}
		if err := rtm.GC(list, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("DEL removes the interface and a second DEL succeeds", func(t *testing.T) {
		if err := rtm.Del(list, att); err != nil {
			t.Fatal(err)
		}
		requirePodClean(t, pod)
		if err := rtm.Del(list, att); err != nil {
			t.Fatalf("second DEL: %v", err)
		}
	})
}

// TestPerPodAddresses runs each address source through the reference
// macvlan, in every cniVersion a list may have.
func TestPerPodAddresses(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	tests := []struct {
		name      string
		args      [][2]string
		caps      map[string]any
		argsIPs   string
		wantAddrs []string
		wantRoute string
	}{
		{
			name: "CNI_ARGS IP and GATEWAY", args: [][2]string{{"IP", "192.168.3.7/16,fd00:c0a8::37/64"}, {"GATEWAY", "192.168.0.1"}},
			wantAddrs: []string{"192.168.3.7/16", "fd00:c0a8::37/64"}, wantRoute: "default via 192.168.0.1",
		},
		{
			name: "args convention ips beat CNI_ARGS", args: [][2]string{{"IP", "192.168.3.7/16"}}, argsIPs: `["192.168.4.8/16"]`,
			wantAddrs: []string{"192.168.4.8/16"}, wantRoute: "default via 192.168.0.254",
		},
		{
			name: "capability ips beat both", args: [][2]string{{"IP", "192.168.3.7/16"}}, argsIPs: `["192.168.4.8/16"]`,
			caps:      map[string]any{"ips": []string{"192.168.5.9/16"}},
			wantAddrs: []string{"192.168.5.9/16"}, wantRoute: "default via 192.168.0.254",
		},
	}
	for _, version := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		for i, tt := range tests {
			t.Run(version+"/"+tt.name, func(t *testing.T) {
				args := ""
				if tt.argsIPs != "" {
					args = fmt.Sprintf(`,"args":{"cni":{"ips":%s}}`, tt.argsIPs)
				}
				// The configured address only lends its gateway to per-pod addresses of its subnet.
				list := sandbox.ListFromJSON(t, fmt.Sprintf(`{"cniVersion":%q,"name":"perpod","plugins":[{
					"type":"macvlan","master":"eno1","capabilities":{"ips":true}%s,
					"ipam":{"type":"static-ipam","addresses":[{"address":"192.168.9.9/16","gateway":"192.168.0.254"}],
					"routes":[{"dst":"0.0.0.0/0"}]}}]}`, version, args))
				pod := sb.NewPod(t)
				att := sandbox.Attachment(pod, fmt.Sprintf("perpod-%s-%d", version, i), "eth0")
				// Runtimes send IgnoreUnknown: the main plugin reads CNI_ARGS too.
				att.Args, att.CapabilityArgs = append([][2]string{{"IgnoreUnknown", "1"}}, tt.args...), tt.caps
				if _, err := rtm.Add(list, att); err != nil {
					t.Fatalf("ADD: %v", err)
				}
				t.Cleanup(func() { _ = rtm.Del(list, att) })
				addrs, routes, _ := podState(t, pod)
				requireContains(t, "pod addresses", addrs, tt.wantAddrs...)
				requireContains(t, "pod routes", routes, tt.wantRoute)
				if strings.Contains(addrs, "192.168.9.9") {
					t.Errorf("the configured default address was handed out too:\n%s", addrs)
				}
				if version != "0.3.1" {
					if err := rtm.Check(list, att); err != nil {
						t.Errorf("CHECK: %v", err)
					}
				}
				if err := rtm.Del(list, att); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				requirePodClean(t, pod)
			})
		}
	}
}

// TestDockinBridge is the Dockin scenario: a cniVersion 0.2.0 bridge network
// whose pod address comes from CNI_ARGS, run by cnitool as an operator would.
func TestDockinBridge(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	out, err := sb.Cnitool(t, sandbox.NetD(), "add", "dockin", pod, "CNI_ARGS=IgnoreUnknown=1;IP=192.168.2.77/24;GATEWAY=192.168.2.1")
	if err != nil {
		t.Fatalf("cnitool add: %v", err)
	}
	t.Cleanup(func() { _, _ = sb.Cnitool(t, sandbox.NetD(), "del", "dockin", pod) })
	var res struct {
		IP4 struct{ IP, Gateway string } `json:"ip4"`
		DNS struct {
			Nameservers []string
			Domain      string
			Search      []string
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("cnitool add printed %s: %v", out, err)
	}
	if res.IP4.IP != "192.168.2.77/24" || res.IP4.Gateway != "192.168.2.1" || strings.Join(res.DNS.Nameservers, ",") != "8.8.8.8" ||
		res.DNS.Domain != "example.com" || strings.Join(res.DNS.Search, ",") != "example.com" {
		t.Errorf("0.2.0 result = %s, want ip4 192.168.2.77/24 via 192.168.2.1 and the IPAM's dns", out)
	}
	addrs, routes, _ := podState(t, pod)
	requireContains(t, "pod addresses", addrs, "192.168.2.77/24")
	requireContains(t, "pod routes", routes, "default via 192.168.2.1")
	if err := sandbox.Ping(sb.Node, mustAddr(t, "192.168.2.77")); err != nil {
		t.Errorf("node cannot reach the pod over the bridge: %v", err)
	}
	if _, err := sb.Cnitool(t, sandbox.NetD(), "del", "dockin", pod); err != nil {
		t.Fatalf("cnitool del: %v", err)
	}
	requirePodClean(t, pod)
}

// TestFailedADDLeavesNothing: a bad per-pod address fails with the CNI
// error of static-ipam, and after the DEL a runtime sends for a failed ADD
// nothing is left. (The reference macvlan (v1.9.1, still in v1.10.0) does not roll its link back
// itself when its IPAM fails: cmdAdd shadows err, so its deferred cleanup
// never runs. The DEL is what removes it.)
func TestFailedADDLeavesNothing(t *testing.T) {
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := sandbox.LoadList(t, "10-static-macvlan.conflist")
	linksBefore := sandbox.MustRun(t, sb.Node, "ip", "-o", "link")
	tests := []struct {
		name    string
		args    [][2]string
		wantErr string
	}{
		{"a bare address in no configured subnet", [][2]string{{"IP", "10.9.3.7"}}, `CNI_ARGS IP "10.9.3.7"`},
		{"not an address", [][2]string{{"IP", "192.168.3.7/33"}}, `CNI_ARGS IP "192.168.3.7/33"`},
		{"gateway in no subnet", [][2]string{{"IP", "192.168.3.7/24"}, {"GATEWAY", "10.0.0.1"}}, `CNI_ARGS GATEWAY "10.0.0.1"`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := sb.NewPod(t)
			att := sandbox.Attachment(pod, fmt.Sprintf("fail-%d", i), "eth0")
			att.Args = append([][2]string{{"IgnoreUnknown", "1"}}, tt.args...)
			_, err := rtm.Add(list, att)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ADD error = %v, want one containing %q", err, tt.wantErr)
			}
			if err := rtm.Del(list, att); err != nil {
				t.Fatalf("DEL after the failed ADD: %v", err)
			}
			requirePodClean(t, pod)
			if after := sandbox.MustRun(t, sb.Node, "ip", "-o", "link"); after != linksBefore {
				t.Errorf("node links changed:\n%s\nwant\n%s", after, linksBefore)
			}
		})
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
