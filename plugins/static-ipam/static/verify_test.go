package static

import (
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnichain/plugins/pkg/cnierr"
)

func TestResultInEveryVersion(t *testing.T) {
	cfg, err := Parse(conf("0.2.0", dockinIPAM, ""), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			res, err := Result(cfg).GetAsVersion(v)
			if err != nil {
				t.Fatalf("GetAsVersion(%s): %v", v, err)
			}
			out, _ := json.Marshal(res)
			for _, want := range []string{"192.168.0.1/24", "192.168.0.254", "3ffe:ffff:0:1ff::1/64", "8.8.8.8", "192.168.0.0/16"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("result %s lacks %s", out, want)
				}
			}
		})
	}
}

func TestVerify(t *testing.T) {
	cfg, err := Parse(conf("1.0.0", dockinIPAM, ""), "")
	if err != nil {
		t.Fatal(err)
	}
	good := func() *current.Result {
		res, _ := current.NewResultFromResult(Result(cfg))
		return res
	}
	tests := []struct {
		name    string
		mutate  func(*current.Result)
		wantErr string
	}{
		{name: "result of ADD as it was", mutate: func(*current.Result) {}},
		{name: "extra addresses and routes from other plugins are fine", mutate: func(r *current.Result) {
			extra := *r.IPs[0]
			extra.Address.IP = []byte{10, 9, 9, 9}
			r.IPs = append(r.IPs, &extra)
			r.Routes = append(r.Routes, &types.Route{Dst: extra.Address})
		}},
		{name: "an address is missing", mutate: func(r *current.Result) { r.IPs = r.IPs[1:] },
			wantErr: "address 192.168.0.1/24 (from ipam.addresses) is missing from prevResult"},
		{name: "another gateway", mutate: func(r *current.Result) { r.IPs[0].Gateway = []byte{192, 168, 0, 1} },
			wantErr: `address 192.168.0.1/24 has gateway "192.168.0.1" in prevResult, want 192.168.0.254`},
		{name: "another prefix length", mutate: func(r *current.Result) { r.IPs[1].Address.Mask = net.CIDRMask(48, 128) },
			wantErr: "address 3ffe:ffff:0:1ff::1/64 is"},
		{name: "a route is missing", mutate: func(r *current.Result) { r.Routes = r.Routes[:1] },
			wantErr: `route to 192.168.0.0/16 via "192.168.1.1" is missing`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev := good()
			tt.mutate(prev)
			err := Verify(cfg, prev)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != cnierr.CodeCheckFailed || !strings.Contains(cniErr.Msg, tt.wantErr) {
				t.Fatalf("Verify error = %v, want code %d containing %q", err, cnierr.CodeCheckFailed, tt.wantErr)
			}
		})
	}
}
