package nat

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/cnichain/plugins/pkg/iptbatch"
)

// TestDispatchElems: one element per distinct key, in the map its hostIP
// calls for, keys padded as the kernel loads them, and the pod's address
// only when the attachment masquerades.
func TestDispatchElems(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.244.0.7"), netip.MustParseAddr("fd00::7")
	any4 := netip.MustParseAddr("0.0.0.0")
	tcp := func(port uint16, host netip.Addr) Mapping {
		return Mapping{HostPort: port, ContainerPort: 80, Protocol: "tcp", HostIP: host}
	}
	for _, tt := range []struct {
		name string
		fp   FamilyPlan
		want []string // map: key as nft prints it
	}{
		{"every address, no masquerade", FamilyPlan{Family: iptbatch.IPv4, PodIP: v4, Maps: []Mapping{tcp(8080, netip.Addr{})}},
			[]string{"hostports-any: tcp . 8080"}},
		{"0.0.0.0 is every address, and a repeated key is one element", FamilyPlan{Family: iptbatch.IPv4, PodIP: v4,
			Maps: []Mapping{tcp(8080, netip.Addr{}), tcp(8080, any4)}}, []string{"hostports-any: tcp . 8080"}},
		{"one hostIP, and masquerade", FamilyPlan{Family: iptbatch.IPv4, PodIP: v4, SNATChain: "SN",
			Maps: []Mapping{tcp(8080, netip.MustParseAddr("127.0.0.1")), {HostPort: 53, ContainerPort: 53, Protocol: "udp"}}},
			[]string{"hostports-addr: 127.0.0.1 . tcp . 8080", "hostports-any: udp . 53", "masq-pods: 10.244.0.7"}},
		{"IPv6", FamilyPlan{Family: iptbatch.IPv6, PodIP: v6, SNATChain: "SN",
			Maps: []Mapping{tcp(8080, netip.MustParseAddr("fd00::5")), {HostPort: 9, ContainerPort: 9, Protocol: "sctp"}}},
			[]string{"hostports-addr: fd00::5 . tcp . 8080", "hostports-any: sctp . 9", "masq-pods: fd00::7"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.fp.DNATChain = "DN"
			var got []string
			for _, e := range dispatchElems(&tt.fp) {
				got = append(got, e.Map+": "+describeKey(e, tt.fp.Family))
				if want := map[bool]string{true: "SN", false: "DN"}[e.Map == podMap]; e.Chain != want {
					t.Errorf("%s leads to %s, want %s", got[len(got)-1], e.Chain, want)
				}
				if len(e.Key)%4 != 0 {
					t.Errorf("key %x is not padded to 32-bit registers", e.Key)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("elements %q, want %q", got, tt.want)
			}
		})
	}
}

// TestDispatchMapKeys: each map's key length is what its elements carry.
func TestDispatchMapKeys(t *testing.T) {
	for _, fam := range []iptbatch.Family{iptbatch.IPv4, iptbatch.IPv6} {
		pod := map[iptbatch.Family]netip.Addr{iptbatch.IPv4: netip.MustParseAddr("10.0.0.1"), iptbatch.IPv6: netip.MustParseAddr("fd00::1")}[fam]
		fp := FamilyPlan{Family: fam, PodIP: pod, DNATChain: "DN", SNATChain: "SN",
			Maps: []Mapping{{HostPort: 1, Protocol: "tcp"}, {HostPort: 2, Protocol: "tcp", HostIP: pod}}}
		lens := map[string]uint32{}
		for _, m := range dispatchMaps(fam) {
			lens[m.Name] = m.KeyType.Bytes
		}
		for _, e := range dispatchElems(&fp) {
			if got := uint32(len(e.Key)); got != lens[e.Map] {
				t.Errorf("%s %s: key of %d bytes, map %s takes %d", fam, describeKey(e, fam), got, e.Map, lens[e.Map])
			}
		}
		if len(lens) != 3 {
			t.Errorf("%s: maps %v", fam, fmt.Sprint(lens))
		}
	}
}

// TestTakenElems: only keys held by another chain are taken; a key held
// by the attachment's own chain, or not held, is not.
func TestTakenElems(t *testing.T) {
	fp := FamilyPlan{Family: iptbatch.IPv4, PodIP: netip.MustParseAddr("10.0.0.7"), DNATChain: "DN", SNATChain: "SN",
		Maps: []Mapping{{HostPort: 80, ContainerPort: 80, Protocol: "tcp"}, {HostPort: 53, ContainerPort: 53, Protocol: "udp"}}}
	elems := dispatchElems(&fp)
	st := dispatchState{anyAddrMap: {string(elems[0].Key): "OTHER", string(elems[1].Key): "DN"}}
	got := takenElems(&fp, st)
	if len(got) != 1 || got[0] != `"tcp . 80" in map hostports-any leads to OTHER, another attachment's chain, not DN` {
		t.Errorf("taken = %q", got)
	}
	if got := takenElems(&fp, dispatchState{}); got != nil {
		t.Errorf("on an empty table, taken = %q", got)
	}
}
