package nat

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/iptbatch"
)

var key = attachstate.Key{Network: "mynet", ContainerID: "cnitool-77383ca0a0715733ca6f", IfName: "eth0"}

func TestChainNames(t *testing.T) {
	dn, sn := DNATChainName(key), SNATChainName(key)
	if len(dn) != 28 || len(sn) != 28 || !strings.HasPrefix(dn, "CNI-LITE-DN-") || !strings.HasPrefix(sn, "CNI-LITE-SN-") {
		t.Fatalf("chain names %q %q: want CNI-LITE-DN-/SN- and 28 characters", dn, sn)
	}
	other := key
	other.IfName = "net1"
	if DNATChainName(other) == dn {
		t.Fatal("two interfaces of one container share a chain")
	}
	renamed := key
	renamed.Network = "mynet2"
	if DNATChainName(renamed) == dn {
		t.Fatal("a renamed network reuses the chain (plugins#752)")
	}
	if id, ok := IsAttachmentChain(dn); !ok || !strings.HasPrefix(key.ID(), id) {
		t.Fatalf("IsAttachmentChain(%q) = %q, %v", dn, id, ok)
	}
	for _, c := range []string{"CNI-HOSTPORT-DNAT", "CNI-DN-be1eedf7a76853f303ebd", HostPortsChain, SNATChain} {
		if _, ok := IsAttachmentChain(c); ok {
			t.Errorf("IsAttachmentChain(%q) claims a chain that is not an attachment's", c)
		}
	}
}

// TestSharedBatch: on an empty nat table the shared chains and their entry
// jumps are created, the SNAT jump first in POSTROUTING; on a node set up
// already nothing is.
func TestSharedBatch(t *testing.T) {
	want := strings.Join([]string{"*nat",
		":CNI-LITE-HOSTPORTS - [0:0]",
		":CNI-LITE-SNAT - [0:0]",
		"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-I POSTROUTING -j CNI-LITE-SNAT",
		"COMMIT", ""}, "\n")
	if got := SharedBatch(iptbatch.Saved{}).Text(); got != want {
		t.Fatalf("on an empty table:\n%s\nwant:\n%s", got, want)
	}
	set := iptbatch.ParseSave(want[:strings.Index(want, "COMMIT")] + "")
	set.Rules = []string{
		"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-A POSTROUTING -j CNI-LITE-SNAT",
	}
	if b := SharedBatch(set); !b.Empty() {
		t.Fatalf("on a node set up:\n%s", b.Text())
	}
}

// TestNewFamilyPlan: what one attachment's family plan holds, per option.
func TestNewFamilyPlan(t *testing.T) {
	pod := netip.MustParseAddr("10.0.0.7")
	maps := []Mapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}
	tests := []struct {
		name string
		spec Spec
		want func(fp FamilyPlan) string // "" when right
	}{
		{"DNAT and the dispatch jump, no SNAT with snat off", Spec{Family: iptbatch.IPv4, Key: key, PodIP: pod, Maps: maps, Comment: "c"},
			func(fp FamilyPlan) string {
				if len(fp.DNAT) != 1 || len(fp.SNAT) != 0 || fp.SNATChain != "" || len(fp.Jumps) != 1 {
					return fmt.Sprintf("%+v", fp)
				}
				return ""
			}},
		{"hairpin and localhost masquerade", Spec{Family: iptbatch.IPv4, Key: key, PodIP: pod, Maps: maps, Comment: "c", SNAT: true},
			func(fp FamilyPlan) string {
				if len(fp.SNAT) != 2 || !fp.Localnet || len(fp.Jumps) != 2 {
					return fmt.Sprintf("%+v", fp)
				}
				return ""
			}},
		{"everything masqueraded, random-fully", Spec{Family: iptbatch.IPv4, Key: key, PodIP: pod, Maps: maps, Comment: "c", SNAT: true, MasqAll: true, RandomFully: true},
			func(fp FamilyPlan) string {
				if len(fp.SNAT) != 1 || !strings.HasSuffix(fp.SNAT[0].String(), "-j MASQUERADE --random-fully") || !fp.MasqAll {
					return fmt.Sprintf("%+v", fp.SNAT)
				}
				return ""
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if msg := tt.want(NewFamilyPlan(tt.spec)); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}
