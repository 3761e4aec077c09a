package nat

import (
	"fmt"
	"net/netip"
	"slices"
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

// TestSharedBatch: on an empty nat table the shared chains, their
// buckets and their entry jumps are created, the SNAT jump first in
// POSTROUTING; on a node set up already nothing is; on a node of the
// previous release (no buckets) the buckets are added.
func TestSharedBatch(t *testing.T) {
	lines := strings.Split(SharedBatch(iptbatch.Saved{}).Text(), "\n")
	for _, want := range []string{
		":CNI-LITE-HOSTPORTS - [0:0]", ":CNI-LITE-SNAT - [0:0]", ":CNI-LITE-HP-00 - [0:0]", ":CNI-LITE-MS-1f - [0:0]",
		"-A CNI-LITE-HOSTPORTS -j CNI-LITE-HP-00", "-A CNI-LITE-HOSTPORTS -j CNI-LITE-HP-1f", "-A CNI-LITE-SNAT -j CNI-LITE-MS-1f",
		"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-I POSTROUTING -j CNI-LITE-SNAT",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("on an empty table, no %q in:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	if n := len(lines); n != 1+2+2*Buckets+2*Buckets+3+2 { // *nat, chains, buckets, their jumps, entry jumps, COMMIT, ""
		t.Errorf("%d lines on an empty table", n)
	}
	if slices.Index(lines, ":CNI-LITE-MS-1f - [0:0]") > slices.Index(lines, "-A CNI-LITE-HOSTPORTS -j CNI-LITE-HP-00") {
		t.Error("a chain is declared after the first rule")
	}
	done := iptbatch.ParseSave(strings.Replace(strings.Join(lines, "\n"), "-I POSTROUTING", "-A POSTROUTING", 1))
	if b := SharedBatch(done); !b.Empty() {
		t.Fatalf("on a node set up:\n%s", b.Text())
	}
	old := iptbatch.ParseSave(strings.Join([]string{"*nat", ":CNI-LITE-HOSTPORTS - [0:0]", ":CNI-LITE-SNAT - [0:0]",
		"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-A POSTROUTING -j CNI-LITE-SNAT", "COMMIT", ""}, "\n"))
	upgrade := SharedBatch(old).Text()
	if strings.Contains(upgrade, "POSTROUTING") || strings.Contains(upgrade, ":CNI-LITE-HOSTPORTS") || !strings.Contains(upgrade, "-A CNI-LITE-SNAT -j CNI-LITE-MS-00") {
		t.Errorf("on the previous release's node:\n%s", upgrade)
	}
}

// TestBucketChains: an attachment's jumps go to one bucket of each shared
// chain, the same for its key whenever asked, and keys spread over all.
func TestBucketChains(t *testing.T) {
	hp, ms := BucketChains(key)
	if hp2, ms2 := BucketChains(key); hp != hp2 || ms != ms2 || hp[len(hp)-2:] != ms[len(ms)-2:] {
		t.Fatalf("BucketChains = %s %s, then %s %s", hp, ms, hp2, ms2)
	}
	seen := map[string]bool{}
	for i := range 1000 {
		hp, _ := BucketChains(attachstate.Key{Network: "n", ContainerID: fmt.Sprint(i), IfName: "eth0"})
		seen[hp] = true
	}
	if len(seen) != Buckets {
		t.Errorf("1000 keys fill %d buckets, want %d", len(seen), Buckets)
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

// TestKeepJumpChains: a rebuilt plan checks an attachment where its jumps
// were installed when the rules are the same, and nowhere else.
func TestKeepJumpChains(t *testing.T) {
	spec := Spec{Family: iptbatch.IPv4, Key: key, PodIP: netip.MustParseAddr("10.0.0.7"), SNAT: true, Comment: "c",
		Maps: []Mapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}}
	for _, tt := range []struct {
		name      string
		installed func(fp *FamilyPlan)
		want      []string
	}{
		{"the previous release's jumps from the shared chains", func(fp *FamilyPlan) {
			fp.Jumps[0].Chain, fp.Jumps[1].Chain = HostPortsChain, SNATChain
		}, []string{HostPortsChain, SNATChain}},
		{"a jump with another rule keeps the bucket", func(fp *FamilyPlan) {
			fp.Jumps[0].Chain, fp.Jumps[0].Rule = HostPortsChain, iptbatch.Rule{"-j", "ELSEWHERE"}
		}, nil},
		{"another number of jumps changes nothing", func(fp *FamilyPlan) {
			fp.Jumps = fp.Jumps[:1]
			fp.Jumps[0].Chain = HostPortsChain
		}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fp, installed := NewFamilyPlan(spec), NewFamilyPlan(spec)
			tt.installed(&installed)
			fp.KeepJumpChains(&installed)
			hp, ms := BucketChains(key)
			want := tt.want
			if want == nil {
				want = []string{hp, ms}
			}
			if got := []string{fp.Jumps[0].Chain, fp.Jumps[1].Chain}; !slices.Equal(got, want) {
				t.Errorf("jumps from %v, want %v", got, want)
			}
		})
	}
}
