package multinic

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

func TestLoadDelegateAndWithIPAM(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("test.json", `{"cniVersion":"0.2.0","name":"test","type":"bridge","bridge":"br0"}`)
	write("routed.conflist", `{"cniVersion":"1.0.0","name":"routed","plugins":[
		{"type":"bridge","bridge":"br9","ipam":{"type":"host-local","subnet":"10.9.0.0/16","routes":[{"dst":"10.0.0.0/8"}],"dns":{"nameservers":["10.9.0.53"]}}},
		{"type":"portmap-lite","capabilities":{"portMappings":true}}]}`)

	nets, err := ParseResponse([]byte(sourceAnswer))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("a single .json conf becomes a list; the master gets a default route", func(t *testing.T) {
		base, err := LoadDelegate(dir, "test")
		if err != nil {
			t.Fatal(err)
		}
		out, err := WithIPAM(base, "static-ipam", nets[0])
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			CNIVersion string
			Plugins    []struct {
				Type   string
				Bridge string
				IPAM   json.RawMessage
			}
		}
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatal(err)
		}
		want := `{"addresses":[{"address":"192.168.1.2/24","gateway":"192.168.1.1"}],"routes":[{"dst":"0.0.0.0/0"}],"type":"static-ipam"}`
		if list.CNIVersion != "0.2.0" || len(list.Plugins) != 1 || list.Plugins[0].Bridge != "br0" || string(list.Plugins[0].IPAM) != want {
			t.Fatalf("delegate = %s\nwant ipam %s", out, want)
		}
	})
	t.Run("a conflist keeps its chain and the ipam's routes and dns", func(t *testing.T) {
		base, err := LoadDelegate(dir, "routed")
		if err != nil {
			t.Fatal(err)
		}
		out, err := WithIPAM(base, "static-ipam", nets[1])
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"portmap-lite"`, `"routes":[{"dst":"10.0.0.0/8"}]`, `"nameservers":["10.9.0.53"]`, `"address":"192.168.2.2/24"`, `"type":"static-ipam"`} {
			if !strings.Contains(string(out), want) {
				t.Errorf("delegate lacks %s:\n%s", want, out)
			}
		}
		if strings.Contains(string(out), "host-local") {
			t.Errorf("the original ipam survived:\n%s", out)
		}
	})
	t.Run("a type without a configuration", func(t *testing.T) {
		_, err := LoadDelegate(dir, "dockin")
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, `no configuration for network type "dockin" (dockin.conflist, dockin.conf, dockin.json)`) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestMerge(t *testing.T) {
	idx := func(i int) *int { return &i }
	master := &current.Result{CNIVersion: "1.0.0",
		Interfaces: []*current.Interface{{Name: "br0"}, {Name: "veth1"}, {Name: "eth0", Sandbox: "/p"}},
		IPs:        []*current.IPConfig{{Address: net.IPNet{IP: net.ParseIP("192.168.1.2"), Mask: net.CIDRMask(24, 32)}, Interface: idx(2)}},
		Routes:     []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}},
	}
	other := &current.Result{CNIVersion: "1.0.0",
		Interfaces: []*current.Interface{{Name: "br1"}, {Name: "veth2"}, {Name: "net0", Sandbox: "/p"}},
		IPs:        []*current.IPConfig{{Address: net.IPNet{IP: net.ParseIP("192.168.2.2"), Mask: net.CIDRMask(24, 32)}, Interface: idx(2)}},
	}
	got := Merge(master, []*current.Result{other})
	if len(got.Interfaces) != 6 || len(got.IPs) != 2 || *got.IPs[1].Interface != 5 || got.Interfaces[5].Name != "net0" || len(got.Routes) != 1 {
		t.Fatalf("Merge = %+v", got)
	}
	if *master.IPs[0].Interface != 2 || *other.IPs[0].Interface != 2 || len(master.Interfaces) != 3 {
		t.Fatal("Merge changed its inputs")
	}
}

func TestParse(t *testing.T) {
	cfg, err := Parse([]byte(`{"cniVersion":"0.2.0","name":"dockin-cni","type":"multinic","confDir":"/etc/cni/dockin/net.d",
		"binDir":"/opt/cni/bin","logFile":"/tmp/x.log","logLevel":"debug","backend":"http://localhost:10002/rmController/getPodMultiNetwork"}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TimeoutDur != DefaultTimeout || cfg.IPAMType != "static-ipam" || cfg.StateDir != DefaultStateDir {
		t.Fatalf("defaults: %+v", cfg)
	}
	for conf, want := range map[string]string{
		`{"backend":"http://x"}`:                                  "confDir: missing",
		`{"confDir":"/d"}`:                                        "backend: missing",
		`{"confDir":"/d","backend":"ftp://x"}`:                    `backend "ftp://x"`,
		`{"confDir":"/d","backend":"http://x","timeout":"soon"}`:  `timeout "soon"`,
		`{"confDir":"/d","backend":"http://x","logLevel":"loud"}`: `logLevel "loud"`,
	} {
		_, err := Parse([]byte(conf))
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, want) {
			t.Errorf("Parse(%s) = %v, want %q", conf, err, want)
		}
	}
}
