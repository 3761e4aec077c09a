package chain

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	current "github.com/containernetworking/cni/pkg/types/100"
)

func TestPrevResultAndContainerIPs(t *testing.T) {
	tests := []struct {
		name string
		conf string
		want string
	}{
		{
			name: "bridge lists host interfaces too; only the sandbox one counts",
			conf: `{"cniVersion":"1.0.0","name":"n","prevResult":{"cniVersion":"1.0.0",
				"interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/p"}],
				"ips":[{"address":"10.244.10.1/24","interface":0},{"address":"10.244.10.7/24","interface":2},{"address":"fd00::7/64","interface":2}]}}`,
			want: "10.244.10.7/24 fd00::7/64",
		},
		{
			name: "addresses without an interface index all count",
			conf: `{"cniVersion":"0.3.0","name":"n","prevResult":{"cniVersion":"0.3.0","ips":[{"version":"4","address":"192.168.1.2/16"}]}}`,
			want: "192.168.1.2/16",
		},
		{
			name: "a 0.2.0 result converts",
			conf: `{"cniVersion":"0.2.0","name":"n","prevResult":{"cniVersion":"0.2.0","ip4":{"ip":"192.168.2.7/24"}}}`,
			want: "192.168.2.7/24",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var conf types.PluginConf
			if err := json.Unmarshal([]byte(tt.conf), &conf); err != nil {
				t.Fatal(err)
			}
			res, err := PrevResult(&conf)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range ContainerIPs(res) {
				got = append(got, p.String())
			}
			if strings.Join(got, " ") != tt.want {
				t.Fatalf("ContainerIPs = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPrevResultAbsentOrBroken(t *testing.T) {
	res, err := PrevResult(&types.PluginConf{CNIVersion: "1.0.0"})
	if res != nil || err != nil {
		t.Fatalf("no prevResult: got %v, %v; want nil, nil", res, err)
	}
	var conf types.PluginConf
	_ = json.Unmarshal([]byte(`{"cniVersion":"1.0.0","prevResult":{"ips":"nope"}}`), &conf)
	_, err = PrevResult(&conf)
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrDecodingFailure || !strings.Contains(cniErr.Msg, "prevResult") {
		t.Fatalf("broken prevResult: err = %v, want a code-6 error naming prevResult", err)
	}
}

func TestPrefix(t *testing.T) {
	tests := []struct {
		in   net.IPNet
		want string
		ok   bool
	}{
		{net.IPNet{IP: net.ParseIP("10.0.0.7"), Mask: net.CIDRMask(24, 32)}, "10.0.0.7/24", true},
		{net.IPNet{IP: net.ParseIP("10.0.0.7"), Mask: net.CIDRMask(120, 128)}, "10.0.0.7/24", true},
		{net.IPNet{IP: net.ParseIP("fd00::7"), Mask: net.CIDRMask(64, 128)}, "fd00::7/64", true},
		{net.IPNet{IP: net.ParseIP("10.0.0.7"), Mask: net.IPMask{255, 0, 255, 0}}, "", false},
		{net.IPNet{}, "", false},
	}
	for _, tt := range tests {
		got, ok := Prefix(tt.in)
		if ok != tt.ok || (ok && got.String() != tt.want) {
			t.Errorf("Prefix(%v) = %v, %v; want %s, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzPrevResult(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/p"}],"ips":[{"address":"10.0.0.7/24","interface":0}]}}`))
	f.Add([]byte(`{"cniVersion":"0.2.0","name":"n","prevResult":{"cniVersion":"0.2.0","ip4":{"ip":"192.168.2.7/24"},"ip6":{"ip":"fd00::7/64"}}}`))
	f.Add([]byte(`{"cniVersion":"0.3.1","name":"n","prevResult":{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.0.0.7/24","interface":9}]}}`))
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0"} {
		for _, body := range shapeCases {
			f.Add([]byte(`{"cniVersion":"` + v + `","name":"n","prevResult":{"cniVersion":"` + v + `",` + body.json + `}}`))
		}
	}
	f.Fuzz(func(t *testing.T, conf []byte) {
		var pc types.PluginConf
		if json.Unmarshal(conf, &pc) != nil {
			return
		}
		res, err := PrevResult(&pc)
		if err != nil {
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || (cniErr.Code != types.ErrDecodingFailure && cniErr.Code != types.ErrInvalidNetworkConfig) {
				t.Fatalf("PrevResult returned %v, not a code-6 or code-7 CNI error", err)
			}
			return
		}
		if res == nil {
			return
		}
		// What the plugins read of a result must not panic and must give valid addresses.
		for _, p := range ContainerIPs(res) {
			if !p.IsValid() {
				t.Fatalf("invalid container address %v from %s", p, conf)
			}
			Gateway(res, p.Addr())
		}
		ContainerMACs(res)
	})
}

// shapeCases are results that crashed libcni's converters or the plugins'
// indexing, and the field each error must name.
var shapeCases = []struct {
	name, json, field string
}{
	{"a null interface", `"interfaces":[null],"ips":[{"address":"10.0.0.7/24","interface":0}]`, "prevResult.interfaces[0]"},
	{"a null address entry", `"interfaces":[{"name":"eth0"}],"ips":[{"address":"10.0.0.7/24","interface":0},null]`, "prevResult.ips[1]"},
	{"a null route", `"ips":[{"address":"10.0.0.7/24"}],"routes":[null]`, "prevResult.routes[0]"},
	{"an interface index past the list", `"interfaces":[{"name":"eth0"}],"ips":[{"address":"10.0.0.7/24","interface":1}]`, "prevResult.ips[0].interface"},
	{"a negative interface index", `"interfaces":[{"name":"eth0"}],"ips":[{"address":"10.0.0.7/24","interface":-1}]`, "prevResult.ips[0].interface"},
	{"an interface index and no interfaces", `"ips":[{"address":"10.0.0.7/24","interface":0}]`, "prevResult.ips[0].interface"},
}

func TestPrevResultShape(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		for _, tt := range shapeCases {
			t.Run(v+"/"+tt.name, func(t *testing.T) {
				var pc types.PluginConf
				conf := `{"cniVersion":"` + v + `","name":"n","prevResult":{"cniVersion":"` + v + `",` + tt.json + `}}`
				if err := json.Unmarshal([]byte(conf), &pc); err != nil {
					t.Fatal(err)
				}
				_, err := PrevResult(&pc)
				var cniErr *types.Error
				if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, tt.field) {
					t.Fatalf("PrevResult error = %v, want code 7 naming %s", err, tt.field)
				}
			})
		}
	}
	t.Run("null dns and a valid result pass", func(t *testing.T) {
		var pc types.PluginConf
		conf := `{"cniVersion":"1.0.0","name":"n","prevResult":{"cniVersion":"1.0.0","dns":null,"interfaces":[{"name":"eth0","sandbox":"/p"}],"ips":[{"address":"10.0.0.7/24","interface":0}]}}`
		_ = json.Unmarshal([]byte(conf), &pc)
		if res, err := PrevResult(&pc); err != nil || len(ContainerIPs(res)) != 1 {
			t.Fatalf("PrevResult = %v, %v", res, err)
		}
	})
}

func TestFromPlugin(t *testing.T) {
	r, err := types040.NewResult([]byte(`{"cniVersion":"0.4.0","interfaces":[null],"ips":[{"version":"4","address":"10.0.0.7/24","interface":0}]}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = FromPlugin(r, "the result of network bridge")
	if err == nil || !strings.Contains(err.Error(), "the result of network bridge.interfaces[0]") {
		t.Fatalf("FromPlugin = %v, want an error naming the null interface", err)
	}
}

func TestGateway(t *testing.T) {
	res := func(text string) *current.Result {
		t.Helper()
		r, err := current.NewResult([]byte(text))
		if err != nil {
			t.Fatal(err)
		}
		res, err := current.NewResultFromResult(r)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	tests := []struct {
		name   string
		result string
		ip     string
		want   string
	}{
		{"the address's gateway", `{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.7/24","gateway":"10.0.0.1"}]}`, "10.0.0.7", "10.0.0.1"},
		{"a default route's gw wins", `{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.7/24","gateway":"10.0.0.1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.254"}]}`, "10.0.0.7", "10.0.0.254"},
		{"a default route of the other family is not it", `{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.7/24"}],"routes":[{"dst":"::/0","gw":"fd00::1"}]}`, "10.0.0.7", "invalid IP"},
		{"a narrower route is not the default", `{"cniVersion":"1.0.0","ips":[{"address":"fd00::7/64","gateway":"fd00::1"}],"routes":[{"dst":"fd01::/64","gw":"fd00::9"}]}`, "fd00::7", "fd00::1"},
		{"no gateway at all", `{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.7/24"}],"routes":[{"dst":"0.0.0.0/0"}]}`, "10.0.0.7", "invalid IP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Gateway(res(tt.result), netip.MustParseAddr(tt.ip)).String(); got != tt.want {
				t.Errorf("Gateway = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestContainerMACs(t *testing.T) {
	r, err := current.NewResult([]byte(`{"cniVersion":"1.0.0","interfaces":[
		{"name":"br0","mac":"02:00:00:00:00:01"},
		{"name":"eth0","mac":"02:00:00:00:00:02","sandbox":"/var/run/netns/a"},
		{"name":"net1","mac":"","sandbox":"/var/run/netns/a"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	res, _ := current.NewResultFromResult(r)
	if got := fmt.Sprint(ContainerMACs(res)); got != "[02:00:00:00:00:02]" {
		t.Fatalf("ContainerMACs = %s, want the container's one MAC", got)
	}
}
