package nat

import (
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/iptbatch"
)

// With nftables, the shared chains dispatch through verdict maps, as
// kube-proxy's nftables mode does: a mapped port's key leads straight to
// its pod's DNAT chain and a pod's address to its SNAT chain. A packet
// costs one hash lookup however many pods the node has, and an ADD or DEL
// adds or deletes its own elements by key: neither reads the table.
const (
	anyAddrMap = "hostports-any"  // protocol . port: mappings on every address
	oneAddrMap = "hostports-addr" // address . protocol . port: a mapping on one hostIP
	podMap     = "masq-pods"      // pod address
)

// dispatchElem is one element of a dispatch map: key leads to chain.
type dispatchElem struct {
	Map   string
	Key   []byte
	Chain string
}

// dispatchElems are the map elements leading into fp's chains: one per
// distinct hostIP/protocol/port, and the pod's address when fp
// masquerades. Keys are laid out as the kernel loads them into registers:
// each part padded to 4 bytes.
func dispatchElems(fp *FamilyPlan) []dispatchElem {
	var out []dispatchElem
	add := func(e dispatchElem) {
		if !slices.ContainsFunc(out, func(o dispatchElem) bool { return o.Map == e.Map && string(o.Key) == string(e.Key) }) {
			out = append(out, e)
		}
	}
	for _, m := range fp.Maps {
		protoPort := append(pad4([]byte{protoNumber(m.Protocol)}), pad4(binaryutil.BigEndian.PutUint16(m.HostPort))...)
		if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
			add(dispatchElem{oneAddrMap, append(m.HostIP.AsSlice(), protoPort...), fp.DNATChain})
		} else {
			add(dispatchElem{anyAddrMap, protoPort, fp.DNATChain})
		}
	}
	if fp.SNATChain != "" {
		add(dispatchElem{podMap, fp.PodIP.AsSlice(), fp.SNATChain})
	}
	return out
}

func pad4(b []byte) []byte { return append(b, make([]byte, (4-len(b)%4)%4)...) }

func protoNumber(proto string) byte {
	return map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}[proto]
}

// dispatchMaps are the verdict maps of fam's table.
func dispatchMaps(fam iptbatch.Family) []*nftables.Set {
	t := nftTableOf(fam)
	addr := nftables.TypeIPAddr
	if fam == iptbatch.IPv6 {
		addr = nftables.TypeIP6Addr
	}
	vmap := func(name string, key ...nftables.SetDatatype) *nftables.Set {
		s := &nftables.Set{Table: t, Name: name, IsMap: true, DataType: nftables.TypeVerdict, KeyType: key[0]}
		if len(key) > 1 {
			s.KeyType, s.Concatenation = nftables.MustConcatSetType(key...), true
		}
		return s
	}
	return []*nftables.Set{
		vmap(oneAddrMap, addr, nftables.TypeInetProto, nftables.TypeInetService),
		vmap(anyAddrMap, nftables.TypeInetProto, nftables.TypeInetService),
		vmap(podMap, addr),
	}
}

// mapRef names a map of fam's table, for adding and deleting elements.
func mapRef(fam iptbatch.Family, name string) *nftables.Set {
	return &nftables.Set{Table: nftTableOf(fam), Name: name, IsMap: true}
}

// dispatchLookups are the rules that look the maps up: in hostports, a
// mapping on one address before one on every address; in masq, the pod.
// A key is loaded part by part into consecutive 32-bit registers, from
// NFT_REG32_00 (8), each part starting a new one.
func dispatchLookups(fam iptbatch.Family, maps []*nftables.Set) (hostports [][]expr.Any, masq []expr.Any) {
	const first = 8
	offset, size := uint32(16), uint32(4)
	if fam == iptbatch.IPv6 {
		offset, size = 24, 16
	}
	daddr := func() expr.Any {
		return &expr.Payload{DestRegister: first, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size}
	}
	protoPort := func(reg uint32) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
			&expr.Payload{DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		}
	}
	lookup := func(s *nftables.Set) expr.Any {
		return &expr.Lookup{SourceRegister: first, SetName: s.Name, SetID: s.ID, IsDestRegSet: true}
	}
	one := append(append([]expr.Any{daddr()}, protoPort(first+size/4)...), lookup(maps[0]))
	anyAddr := append(protoPort(first), lookup(maps[1]))
	return [][]expr.Any{one, anyAddr}, []expr.Any{daddr(), lookup(maps[2])}
}

// verdictChain is the chain a verdict map element's data jumps to.
func verdictChain(val []byte) string {
	ad, err := netlink.NewAttributeDecoder(val)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			return string(trimNUL(ad.Bytes()))
		}
	}
	return ""
}

func trimNUL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == 0 {
		return b[:n-1]
	}
	return b
}
