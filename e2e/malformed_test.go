package e2e

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnichain/plugins/pkg/sandbox"
)

const prevResult = `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"192.168.1.40/16","interface":0}]}`

// prevWith is a prevResult with the given body.
func prevWith(body string) string { return `"prevResult":{"cniVersion":"1.0.0",` + body + `}` }

// TestMalformedInput: each bad configuration or environment fails with the
// spec's code, a message naming the field, and no change on the node.
func TestMalformedInput(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	state := fmt.Sprintf(`"stateDir":%q`, sb.Dir+"/state")
	ipam := func(ipam string) string {
		return `{"cniVersion":"1.0.0","name":"n","type":"macvlan","ipam":` + ipam + `}`
	}
	hr := func(body string) string {
		return `{"cniVersion":"1.0.0","name":"n","type":"macvlan-host-route",` + state + `,` + body + `}`
	}
	pm := func(body string) string {
		return `{"cniVersion":"1.0.0","name":"n","type":"portmap-lite",` + state + `,` + body + `}`
	}
	maps := func(m string) string { return prevResult + `,"runtimeConfig":{"portMappings":[` + m + `]}` }
	mn := func(body string) string {
		return `{"cniVersion":"1.0.0","name":"n","type":"multinic",` + state + `,` + body + `}`
	}
	tests := []struct {
		plugin, name, conf string
		containerID        string // default "c1"
		ifName             string // default "eth0"
		cniArgs            string
		code               uint
		field              string
	}{
		{"static-ipam", "not JSON", `{"name":`, "", "", "", types.ErrDecodingFailure, "network config"},
		{"static-ipam", "no ipam", `{"cniVersion":"1.0.0","name":"n"}`, "", "", "", 7, "ipam"},
		{"static-ipam", "address not CIDR", ipam(`{"addresses":[{"address":"10.0.0.2"}]}`), "", "", "", 7, "ipam.addresses[0].address"},
		{"static-ipam", "gateway outside the subnet", ipam(`{"addresses":[{"address":"10.0.0.2/24","gateway":"10.0.9.1"}]}`), "", "", "", 7, "ipam.addresses[0].gateway"},
		{"static-ipam", "IPv4 gateway on an IPv6 address", ipam(`{"addresses":[{"address":"fd00::2/64","gateway":"10.0.0.1"}]}`), "", "", "", 7, "ipam.addresses[0].gateway"},
		{"static-ipam", "route without dst", ipam(`{"addresses":[{"address":"10.0.0.2/24"}],"routes":[{"gw":"10.0.0.1"}]}`), "", "", "", 7, "ipam.routes[0].dst"},
		{"static-ipam", "route gw of the other family", ipam(`{"addresses":[{"address":"10.0.0.2/24"}],"routes":[{"dst":"::/0","gw":"10.0.0.1"}]}`), "", "", "", 7, "ipam.routes[0].gw"},
		{"static-ipam", "duplicate addresses", ipam(`{"addresses":[{"address":"10.0.0.2/24"},{"address":"10.0.0.2/16"}]}`), "", "", "", 7, "ipam.addresses"},
		{"static-ipam", "no address at all", ipam(`{}`), "", "", "", 7, "addresses"},
		{"static-ipam", "CNI_ARGS IP not CIDR", ipam(`{}`), "", "", "IP=10.0.0.2", 4, "CNI_ARGS IP"},
		{"static-ipam", "CNI_ARGS GATEWAY not an IP", ipam(`{}`), "", "", "IP=10.0.0.2/24;GATEWAY=x", 4, "CNI_ARGS GATEWAY"},
		{"static-ipam", "CNI_ARGS unknown key", ipam(`{}`), "", "", "IP=10.0.0.2/24;EVIL=1", 4, "CNI_ARGS"},
		{"static-ipam", "CNI_ARGS without =", ipam(`{}`), "", "", "IP", 4, "CNI_ARGS"},
		{"static-ipam", "capability ips not CIDR", `{"cniVersion":"1.0.0","name":"n","ipam":{},"runtimeConfig":{"ips":["x"]}}`, "", "", "", 7, "runtimeConfig.ips[0]"},
		{"static-ipam", "args ips not CIDR", `{"cniVersion":"1.0.0","name":"n","ipam":{},"args":{"cni":{"ips":["x"]}}}`, "", "", "", 7, "args.cni.ips[0]"},
		{"static-ipam", "two IPv4 addresses in 0.2.0", `{"cniVersion":"0.2.0","name":"n","ipam":{"addresses":[{"address":"10.0.0.2/24"},{"address":"10.0.1.2/24"}]}}`, "", "", "", 1, "cniVersion"},
		{"static-ipam", "unknown cniVersion", `{"cniVersion":"9.9.9","name":"n","ipam":{}}`, "", "", "", 1, "9.9.9"},
		{"static-ipam", "no network name", `{"cniVersion":"1.0.0","ipam":{}}`, "", "", "", 7, "network name"},
		{"static-ipam", "container ID with a newline", ipam(`{"addresses":[{"address":"10.0.0.2/24"}]}`), "a\n-A INPUT -j ACCEPT", "", "", 4, "containerID"},
		{"static-ipam", "interface name too long", ipam(`{"addresses":[{"address":"10.0.0.2/24"}]}`), "", "eth0123456789abcdef", "", 4, "interface name"},
		{"static-ipam", "interface name with a slash", ipam(`{"addresses":[{"address":"10.0.0.2/24"}]}`), "", "eth0/1", "", 4, "interface name"},

		{"macvlan-host-route", "not JSON", `[`, "", "", "", 6, "network config"},
		{"macvlan-host-route", "no master", hr(prevResult), "", "", "", 7, "master"},
		{"macvlan-host-route", "master with whitespace", hr(`"master":"eno 1",` + prevResult), "", "", "", 7, "master"},
		{"macvlan-host-route", "bridge too long", hr(`"master":"eno1","bridge":"eno1.host.bridge",` + prevResult), "", "", "", 7, "bridge"},
		{"macvlan-host-route", "mtu too small", hr(`"master":"eno1","mtu":1,` + prevResult), "", "", "", 7, "mtu"},
		{"macvlan-host-route", "host address not an IP", hr(`"master":"eno1","hostAddresses":["node"],` + prevResult), "", "", "", 7, "hostAddresses[0]"},
		{"macvlan-host-route", "no prevResult", hr(`"master":"eno1"`), "", "", "", 7, "prevResult"},
		{"macvlan-host-route", "prevResult without IPs", hr(`"master":"eno1","prevResult":{"cniVersion":"1.0.0"}`), "", "", "", 7, "prevResult.ips"},
		{"macvlan-host-route", "prevResult that is not a result", hr(`"master":"eno1","prevResult":{"cniVersion":"1.0.0","ips":"x"}`), "", "", "", 6, "prevResult"},
		{"macvlan-host-route", "prevResult with a null interface", hr(`"master":"eno1",` + prevWith(`"interfaces":[null],"ips":[{"address":"192.168.1.40/16","interface":0}]`)), "", "", "", 7, "prevResult.interfaces[0]"},
		{"macvlan-host-route", "prevResult with a null address", hr(`"master":"eno1",` + prevWith(`"ips":[null]`)), "", "", "", 7, "prevResult.ips[0]"},
		{"macvlan-host-route", "prevResult naming a missing interface", hr(`"master":"eno1",` + prevWith(`"interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"192.168.1.40/16","interface":3}]`)), "", "", "", 7, "prevResult.ips[0].interface"},
		{"macvlan-host-route", "viaNode not a CIDR", hr(`"master":"eno1","viaNode":["10.96.0.0"],` + prevResult), "", "", "", 7, "viaNode[0]"},
		{"macvlan-host-route", "viaNode swallowing the metadata address", hr(`"master":"eno1","viaNode":["169.254.0.0/16"],` + prevResult), "", "", "", 7, "viaNode[0]"},
		{"macvlan-host-route", "master absent from the node", hr(`"master":"eno9",` + prevResult), "", "", "", 7, "master"},
		{"macvlan-host-route", "container ID starting with -A", hr(`"master":"eno1",` + prevResult), "-A", "", "", 4, "containerID"},

		{"portmap-lite", "not JSON", `{"a"}`, "", "", "", 6, "network config"},
		{"portmap-lite", "hostPort 0", pm(maps(`{"hostPort":0,"containerPort":80}`)), "", "", "", 7, "runtimeConfig.portMappings[0].hostPort"},
		{"portmap-lite", "containerPort 70000", pm(maps(`{"hostPort":80,"containerPort":70000}`)), "", "", "", 7, "runtimeConfig.portMappings[0].containerPort"},
		{"portmap-lite", "protocol icmp", pm(maps(`{"hostPort":80,"containerPort":80,"protocol":"icmp"}`)), "", "", "", 7, "runtimeConfig.portMappings[0].protocol"},
		{"portmap-lite", "hostIP not an IP", pm(maps(`{"hostPort":80,"containerPort":80,"hostIP":"node1"}`)), "", "", "", 7, "runtimeConfig.portMappings[0].hostIP"},
		{"portmap-lite", "hostIP ::1", pm(maps(`{"hostPort":80,"containerPort":80,"hostIP":"::1"}`)), "", "", "", 7, "runtimeConfig.portMappings[0].hostIP"},
		{"portmap-lite", "hostIP of a family the pod lacks", pm(maps(`{"hostPort":80,"containerPort":80,"hostIP":"fd00::5"}`)), "", "", "", 7, "runtimeConfig.portMappings"},
		{"portmap-lite", "two mappings of one port", pm(maps(`{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":81}`)), "", "", "", 7, "runtimeConfig.portMappings[1]"},
		{"portmap-lite", "markMasqBit", pm(`"markMasqBit":13,` + maps(`{"hostPort":80,"containerPort":80}`)), "", "", "", 7, "markMasqBit"},
		{"portmap-lite", "externalSetMarkChain", pm(`"externalSetMarkChain":"KUBE-MARK-MASQ",` + maps(`{"hostPort":80,"containerPort":80}`)), "", "", "", 7, "externalSetMarkChain"},
		{"portmap-lite", "unknown backend", pm(`"backend":"ebpf",` + maps(`{"hostPort":80,"containerPort":80}`)), "", "", "", 7, "backend"},
		{"portmap-lite", "a condition spanning lines", pm(`"conditionsV4":["-s","10.0.0.0/8\n-A INPUT -j ACCEPT"],` + maps(`{"hostPort":80,"containerPort":80}`)), "", "", "", 7, "conditionsV4[1]"},
		{"portmap-lite", "no prevResult", pm(`"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}`), "", "", "", 7, "prevResult"},
		{"portmap-lite", "prevResult without container IPs", pm(`"prevResult":{"cniVersion":"1.0.0"},"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}`), "", "", "", 7, "prevResult.ips"},
		{"portmap-lite", "prevResult with a null interface", pm(prevWith(`"interfaces":[null],"ips":[{"address":"192.168.1.40/16","interface":0}]`) + `,"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}`), "", "", "", 7, "prevResult.interfaces[0]"},
		{"portmap-lite", "prevResult with a negative interface index", pm(prevWith(`"interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"192.168.1.40/16","interface":-1}]`) + `,"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}`), "", "", "", 7, "prevResult.ips[0].interface"},
		{"portmap-lite", "prevResult with a null route", pm(prevWith(`"ips":[{"address":"192.168.1.40/16"}],"routes":[null]`) + `,"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80}]}`), "", "", "", 7, "prevResult.routes[0]"},
		{"portmap-lite", "container ID with a quote and #", pm(maps(`{"hostPort":80,"containerPort":80}`)), `x" #`, "", "", 4, "containerID"},
		{"portmap-lite", "network name with a space", `{"cniVersion":"1.0.0","name":"my net","type":"portmap-lite"}`, "", "", "", 7, "network name"},

		{"multinic", "no confDir", mn(`"backend":"http://127.0.0.1:1/rm"`), "", "", "IgnoreUnknown=1;K8S_POD_NAME=p", 7, "confDir"},
		{"multinic", "backend not a URL", mn(`"confDir":"/x","backend":"localhost:10002"`), "", "", "IgnoreUnknown=1;K8S_POD_NAME=p", 7, "backend"},
		{"multinic", "timeout not a duration", mn(`"confDir":"/x","backend":"http://127.0.0.1:1/rm","timeout":"5"`), "", "", "IgnoreUnknown=1;K8S_POD_NAME=p", 7, "timeout"},
		{"multinic", "no K8S_POD_NAME", mn(`"confDir":"/x","backend":"http://127.0.0.1:1/rm"`), "", "", "IgnoreUnknown=1", 4, "K8S_POD_NAME"},
	}
	before := sb.Snapshot(t)
	for _, tt := range tests {
		t.Run(tt.plugin+"/"+tt.name, func(t *testing.T) {
			inv := sandbox.Invocation{Command: "ADD", ContainerID: "c1", NetNS: pod.Path(), IfName: "eth0", CNIArgs: tt.cniArgs}
			if tt.containerID != "" {
				inv.ContainerID = tt.containerID
			}
			if tt.ifName != "" {
				inv.IfName = tt.ifName
			}
			out, err := sb.Invoke(t, tt.plugin, []byte(tt.conf), inv)
			var cniErr *types.Error
			if !errors.As(err, &cniErr) {
				t.Fatalf("ADD = %s, %v; want a CNI error", out, err)
			}
			if cniErr.Code != tt.code || !strings.Contains(cniErr.Msg+" "+cniErr.Details, tt.field) {
				t.Fatalf("ADD error = code %d %q (%q), want code %d naming %q", cniErr.Code, cniErr.Msg, cniErr.Details, tt.code, tt.field)
			}
			if after := sb.Snapshot(t); after != before {
				t.Fatalf("the node changed:\n%s\nbefore:\n%s", after, before)
			}
		})
	}
	if len(tests) < 40 {
		t.Errorf("%d cases; the table promises at least 40", len(tests))
	}
}
