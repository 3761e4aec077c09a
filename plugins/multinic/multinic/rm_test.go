package multinic

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// sourceAnswer is the Dockin README's example, with the second network's
// gateway moved into its subnet (the original, 192.168.1.1 for
// 192.168.2.2/24, is off-link and is refused: see TestParseResponseErrors).
const sourceAnswer = `{"code":0,"reqId":"1234","message":"success","data":[
	{"type":"test","podIp":"192.168.1.2","subnetMask":"255.255.255.0","gateway":"192.168.1.1","ifName":"eth0","master":true},
	{"type":"dockin","podIp":"192.168.2.2","subnetMask":"255.255.255.0","gateway":"192.168.2.1","ifName":"net0","master":false}]}`

func TestParseResponse(t *testing.T) {
	nets, err := ParseResponse([]byte(sourceAnswer))
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(nets)
	want := "[{test eth0 192.168.1.2/24 192.168.1.1 true} {dockin net0 192.168.2.2/24 192.168.2.1 false}]"
	if got != want {
		t.Fatalf("ParseResponse = %s, want %s", got, want)
	}
	// The master comes first whatever the RM's order, and a gateway may be absent.
	nets, err = ParseResponse([]byte(`{"code":0,"data":[
		{"type":"b","podIp":"10.0.0.2","subnetMask":"255.255.0.0","ifName":"net1"},
		{"type":"a","podIp":"10.1.0.2","subnetMask":"255.255.255.252","gateway":"10.1.0.1","ifName":"eth0","master":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if !nets[0].Master || nets[0].Type != "a" || nets[1].Address.String() != "10.0.0.2/16" || nets[1].Gateway.IsValid() {
		t.Fatalf("ParseResponse = %v", nets)
	}
}

func TestParseResponseErrors(t *testing.T) {
	entry := func(fields string) string {
		return `{"code":0,"data":[` + fields + `]}`
	}
	ok := `{"type":"test","podIp":"192.168.1.2","subnetMask":"255.255.255.0","gateway":"192.168.1.1","ifName":"eth0","master":true}`
	tests := []struct {
		name, body, want string
		code             uint
	}{
		{"not JSON", `<html>`, "not the expected JSON", CodeUpstream},
		{"RM refuses", `{"code":3,"reqId":"r1","message":"pod unknown"}`, `resource manager refused: code 3, message "pod unknown", reqId "r1"`, types.ErrTryAgainLater},
		{"no networks", `{"code":0,"data":[]}`, "no network", CodeUpstream},
		{"two masters", entry(ok + `,` + strings.Replace(strings.Replace(ok, "eth0", "net0", 1), "192.168.1.2", "192.168.1.3", 1)), "marked 2 networks master", CodeUpstream},
		{"no master", entry(strings.Replace(ok, "true", "false", 1)), "marked 0 networks master", CodeUpstream},
		{"bad IP", entry(strings.Replace(ok, "192.168.1.2", "192.168.1.300", 1)), `data[0].podIp "192.168.1.300"`, CodeUpstream},
		{"IPv6 pod address", entry(strings.Replace(ok, `"192.168.1.2"`, `"fd00::2"`, 1)), `data[0].podIp "fd00::2"`, CodeUpstream},
		{"bad mask", entry(strings.Replace(ok, "255.255.255.0", "255.0.255.0", 1)), `data[0].subnetMask "255.0.255.0"`, CodeUpstream},
		{"the source's off-link gateway", entry(strings.Replace(strings.Replace(ok, "192.168.1.2", "192.168.2.2", 1), `"master":true`, `"master":true`, 1)),
			`data[0].gateway "192.168.1.1": not an address inside 192.168.2.0/24`, CodeUpstream},
		{"duplicate ifName", entry(ok + `,` + strings.Replace(strings.Replace(ok, "true", "false", 1), "192.168.1.2", "192.168.1.3", 1)), `data[1].ifName "eth0": given to two networks`, CodeUpstream},
		{"duplicate address", entry(ok + `,` + strings.Replace(strings.Replace(ok, "true", "false", 1), "eth0", "net0", 1)), `data[1].podIp "192.168.1.2": given to two networks`, CodeUpstream},
		{"ifName too long", entry(strings.Replace(ok, "eth0", "a-very-long-ifname", 1)), `data[0].ifName "a-very-long-ifname"`, CodeUpstream},
		{"ifName with a slash", entry(strings.Replace(ok, "eth0", "e/0", 1)), `data[0].ifName "e/0"`, CodeUpstream},
		{"type escaping confDir", entry(strings.Replace(ok, `"test"`, `"../etc/x"`, 1)), `data[0].type "../etc/x"`, CodeUpstream},
		{"empty type", entry(strings.Replace(ok, `"test"`, `""`, 1)), `data[0].type ""`, CodeUpstream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseResponse([]byte(tt.body))
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != tt.code || !strings.Contains(cniErr.Msg, tt.want) {
				t.Fatalf("ParseResponse error = %v, want code %d containing %q", err, tt.code, tt.want)
			}
		})
	}
}

func FuzzParseResponse(f *testing.F) {
	f.Add([]byte(sourceAnswer))
	f.Add([]byte(`{"code":1,"message":"x"}`))
	f.Add([]byte(`{"code":0,"data":[{"type":"a","podIp":"1.2.3.4","subnetMask":"255.255.255.255","ifName":"eth0","master":true}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		nets, err := ParseResponse(body)
		if err != nil {
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Msg == "" {
				t.Fatalf("ParseResponse returned %v, not a CNI error with a message", err)
			}
			return
		}
		if len(nets) == 0 || !nets[0].Master {
			t.Fatalf("accepted %v without the master first", nets)
		}
		seen := map[string]bool{}
		for _, n := range nets[1:] {
			if n.Master {
				t.Fatalf("two masters in %v", nets)
			}
		}
		for _, n := range nets {
			if seen[n.IfName] || strings.ContainsAny(n.Type, "/\\") || (n.Gateway.IsValid() && !n.Address.Masked().Contains(n.Gateway)) {
				t.Fatalf("accepted an invalid network %+v", n)
			}
			seen[n.IfName] = true
		}
	})
}
