// Package nat holds every NAT rule the project can write, for a port
// mapping of one attachment in one address family: DNAT of
// hostIP:hostPort/protocol to the pod, the masquerading of hairpin,
// localhost or all mapped connections, and the per-node dispatch into a
// pod's chains; each as a pure function, rendered for iptables (rules for
// one iptables-restore) and for nftables (expressions for one netlink
// transaction), with the appliers of both.
//
// Per-pod rules go through iptables-restore, never go-iptables: go-iptables
// runs one iptables process per rule and takes the xtables lock each time,
// which is what makes the reference portmap slow (75 processes for an ADD of
// 10 mappings); iptables-restore applies a whole attachment atomically in
// one. go-iptables is used where a process or two is fine: telling what an
// older iptables supports, once per node (iptbatch.Runner.Features), and
// STATUS (iptbatch.Runner.Status). The shared chains are set up through
// iptables-restore too, in the same locked save-and-restore that repairs
// attachments after a firewall reload, so that setting up and repairing
// cannot disagree.
//
// With nftables, the shared chains dispatch through verdict maps
// (nftmaps.go): ADD and DEL add and delete their own elements by key.
package nat

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/iptbatch"
)

// The backends.
const (
	BackendIPTables = "iptables"
	BackendNFTables = "nftables"
)

// Mapping is a validated port mapping. HostIP is the zero Addr for "any
// address of the node" in both families, 0.0.0.0 or :: for any address of
// one family, else the one address the mapping listens on.
type Mapping struct {
	HostPort      uint16     `json:"hostPort"`
	ContainerPort uint16     `json:"containerPort"`
	Protocol      string     `json:"protocol"`
	HostIP        netip.Addr `json:"hostIP"`
}

// The shared chains, created once per node and family. The "CNI-LITE-"
// prefix keeps ours apart from the reference portmap's CNI-HOSTPORT-* and
// CNI-DN-*, so both plugins can serve pods on one node.
//
// The per-pod jumps are spread over Buckets chains under each shared
// chain: iptables-restore's -D reads the rules of the chain it deletes
// from, so a DEL that read one chain holding every pod's jump would grow
// with the pods on the node; a bucket holds 1/32 of them. A dispatch jump
// goes to the bucket of its hostPort, so the pods that map one port meet
// in one chain, in the order they were added, and the first one keeps the
// port, as with the reference portmap. The buckets of mappings on one
// hostIP (HA) are walked before those of mappings on every address (HP):
// a pod mapped on one address wins it over a pod mapped on all, whichever
// came first, as the nftables backend's two maps decide. The masquerade
// jumps, one per pod address, go to the bucket of the attachment's key.
const (
	HostPortsChain   = "CNI-LITE-HOSTPORTS" // from PREROUTING and OUTPUT, for local destinations
	SNATChain        = "CNI-LITE-SNAT"      // from POSTROUTING
	oneAddrPrefix    = "CNI-LITE-HA-"       // CNI-LITE-HA-00 .. -1f, first in CNI-LITE-HOSTPORTS
	hostPortsPrefix  = "CNI-LITE-HP-"       // CNI-LITE-HP-00 .. -1f, after them
	snatBucketPrefix = "CNI-LITE-MS-"       // CNI-LITE-MS-00 .. -1f, from CNI-LITE-SNAT
	Buckets          = 32
	dnatPrefix       = "CNI-LITE-DN-"
	snatPrefix       = "CNI-LITE-SN-"
	// HashLen keeps chain names at iptables' limit of 28 characters.
	HashLen           = 28 - len(dnatPrefix)
	portsPerBucketRun = 8
	// multiportMax is how many ports one multiport match takes.
	multiportMax = 15
)

// Jump is a rule in a shared chain leading into an attachment's chain.
type Jump struct {
	Chain string        `json:"chain"`
	Rule  iptbatch.Rule `json:"rule"`
}

// FamilyPlan is what one attachment installs in one family's nat table.
type FamilyPlan struct {
	Family    iptbatch.Family `json:"family"`
	PodIP     netip.Addr      `json:"podIP"`
	DNATChain string          `json:"dnatChain"`
	SNATChain string          `json:"snatChain,omitempty"`
	DNAT      []iptbatch.Rule `json:"dnat"`
	SNAT      []iptbatch.Rule `json:"snat,omitempty"`
	Jumps     []Jump          `json:"jumps"`
	// Localnet says traffic to 127.0.0.1 is forwarded to PodIP, which needs
	// route_localnet on the interface towards the pod.
	Localnet bool `json:"localnet,omitempty"`
	// Maps and MasqAll are what the rules were made from, for the nftables
	// backend, which builds its expressions from them.
	Maps    []Mapping `json:"maps"`
	MasqAll bool      `json:"masqAll,omitempty"`
	Comment string    `json:"comment"`
}

// DNATChainName and SNATChainName name an attachment's chains after its key.
func DNATChainName(k attachstate.Key) string { return dnatPrefix + k.ID()[:HashLen] }
func SNATChainName(k attachstate.Key) string { return snatPrefix + k.ID()[:HashLen] }

// SNATBucket is the bucket chain under SNATChain that holds the jumps
// into k's masquerade chain.
func SNATBucket(k attachstate.Key) string {
	n, _ := strconv.ParseUint(k.ID()[:4], 16, 32) // the ID is hex
	return bucketName(snatBucketPrefix, int(n%Buckets))
}

// DispatchBucket is the bucket chain under HostPortsChain that holds the
// dispatch jumps of mapping m: by its hostPort, in the tier of mappings on
// one address or of those on every address. Runs of portsPerBucketRun
// consecutive ports share a bucket, so a pod mapping a range of ports
// needs few multiport jumps, and the runs spread over all buckets.
func DispatchBucket(m Mapping) string {
	prefix := hostPortsPrefix
	if onOneAddress(m) {
		prefix = oneAddrPrefix
	}
	return bucketName(prefix, int(m.HostPort/portsPerBucketRun)%Buckets)
}

func bucketName(prefix string, i int) string { return fmt.Sprintf("%s%02x", prefix, i) }

// onOneAddress reports whether m listens on one address of the node only.
func onOneAddress(m Mapping) bool { return m.HostIP.IsValid() && !m.HostIP.IsUnspecified() }

// IsAttachmentChain reports whether chain is an attachment chain of ours,
// and the key-ID prefix it carries.
func IsAttachmentChain(chain string) (idPrefix string, ok bool) {
	for _, p := range []string{dnatPrefix, snatPrefix} {
		if s, found := strings.CutPrefix(chain, p); found && len(s) == HashLen {
			return s, true
		}
	}
	return "", false
}

// Spec is what one attachment's rules in one family are made from.
type Spec struct {
	Family  iptbatch.Family
	Key     attachstate.Key
	PodIP   netip.Addr
	Maps    []Mapping
	Comment string
	// MasqAll masquerades every mapped connection, not only hairpin and
	// localhost ones; SNAT false masquerades nothing.
	MasqAll, SNAT bool
	// RandomFully puts --random-fully on MASQUERADE (iptables).
	RandomFully bool
	// Conditions are extra iptables matches on the dispatch jumps.
	Conditions *[]string
}

// NewFamilyPlan plans the rules of s.
func NewFamilyPlan(s Spec) FamilyPlan {
	fp := FamilyPlan{Family: s.Family, PodIP: s.PodIP, DNATChain: DNATChainName(s.Key), Maps: s.Maps, MasqAll: s.MasqAll, Comment: s.Comment}
	fp.Jumps = dispatchJumps(fp.DNATChain, s.Maps, s.Conditions, s.Comment)
	// Mappings on one address first: a packet for it that entered the
	// chain must not meet the pod's mapping of the same port on every one.
	for _, m := range s.Maps {
		if onOneAddress(m) {
			fp.DNAT = append(fp.DNAT, dnatRule(m, s.PodIP, s.Comment))
		}
	}
	for _, m := range s.Maps {
		if !onOneAddress(m) {
			fp.DNAT = append(fp.DNAT, dnatRule(m, s.PodIP, s.Comment))
		}
	}
	if s.SNAT {
		fp.SNATChain = SNATChainName(s.Key)
		fp.SNAT, fp.Localnet = snatRules(s.Maps, s.PodIP, s.MasqAll, s.RandomFully, s.Comment)
		fp.Jumps = append(fp.Jumps, Jump{SNATBucket(s.Key), iptbatch.Rule{"-d", hostPrefix(s.PodIP), "-m", "comment", "--comment", s.Comment, "-j", fp.SNATChain}})
	}
	return fp
}

// dispatchJumps send traffic for the mapped ports into the attachment's
// DNAT chain, from the bucket of each port, per protocol and, for mappings
// on one address, per address, so that a packet only enters the chains of
// pods that map its port there.
func dispatchJumps(chain string, maps []Mapping, conditions *[]string, comment string) []Jump {
	type group struct {
		bucket, proto string
		addr          netip.Addr // valid for mappings on one address
	}
	var groups []group
	ports := map[group][]string{}
	for _, m := range maps {
		g := group{DispatchBucket(m), m.Protocol, netip.Addr{}}
		if onOneAddress(m) {
			g.addr = m.HostIP
		}
		if _, seen := ports[g]; !seen {
			groups = append(groups, g)
		}
		if p := strconv.Itoa(int(m.HostPort)); !slices.Contains(ports[g], p) {
			ports[g] = append(ports[g], p)
		}
	}
	slices.SortFunc(groups, func(a, b group) int {
		return cmp.Or(strings.Compare(a.bucket, b.bucket), strings.Compare(a.proto, b.proto), a.addr.Compare(b.addr))
	})
	var jumps []Jump
	for _, g := range groups {
		for chunk := range slices.Chunk(ports[g], multiportMax) {
			var rule iptbatch.Rule
			if g.addr.IsValid() {
				rule = iptbatch.Rule{"-d", hostPrefix(g.addr)}
			}
			rule = append(rule, "-p", g.proto, "-m", "multiport", "--dports", strings.Join(chunk, ","))
			if conditions != nil {
				rule = append(rule, *conditions...)
			}
			rule = append(rule, "-m", "comment", "--comment", comment, "-j", chain)
			jumps = append(jumps, Jump{g.bucket, rule})
		}
	}
	return jumps
}

func dnatRule(m Mapping, pod netip.Addr, comment string) iptbatch.Rule {
	var r iptbatch.Rule
	if onOneAddress(m) {
		r = append(r, "-d", hostPrefix(m.HostIP))
	}
	return append(r, "-p", m.Protocol, "-m", m.Protocol, "--dport", strconv.Itoa(int(m.HostPort)),
		"-m", "comment", "--comment", comment,
		"-j", "DNAT", "--to-destination", netip.AddrPortFrom(pod, m.ContainerPort).String())
}

// snatRules masquerades what the pod could not answer otherwise: a
// connection from the pod to its own hostPort (hairpin: the reply would go
// straight back inside the pod), and, for IPv4, one from 127.0.0.1 (the
// pod cannot route a reply to the node's loopback). With masqAll, every
// connection to the mapped ports. randomFully picks source ports at random
// (--random-fully), so that many clients masqueraded to one node address
// do not collide on them (the reference portmap does the same).
func snatRules(maps []Mapping, pod netip.Addr, masqAll, randomFully bool, comment string) (rules []iptbatch.Rule, localnet bool) {
	masq := iptbatch.Rule{"-j", "MASQUERADE"}
	if randomFully {
		masq = append(masq, "--random-fully")
	}
	type target struct {
		proto string
		port  uint16
	}
	var done []target
	for _, m := range maps {
		t := target{m.Protocol, m.ContainerPort}
		local := ViaLoopback(m, pod)
		localnet = localnet || local
		if slices.Contains(done, t) {
			continue
		}
		done = append(done, t)
		match := append(iptbatch.Rule{"-d", hostPrefix(pod), "-p", m.Protocol, "-m", m.Protocol, "--dport", strconv.Itoa(int(m.ContainerPort)),
			"-m", "comment", "--comment", comment}, masq...)
		if masqAll {
			rules = append(rules, match)
			continue
		}
		if local {
			rules = append(rules, append(iptbatch.Rule{"-s", "127.0.0.1/32"}, match...))
		}
		rules = append(rules, append(iptbatch.Rule{"-s", hostPrefix(pod)}, match...))
	}
	return rules, localnet
}

// ViaLoopback reports whether m can be reached at 127.0.0.1 and forwarded
// to pod: IPv4 only, and only when it listens on any address or on 127.0.0.1.
func ViaLoopback(m Mapping, pod netip.Addr) bool {
	return pod.Is4() && (!m.HostIP.IsValid() || m.HostIP.IsUnspecified() || m.HostIP.IsLoopback())
}

// AddBatch installs fp: the attachment's chains are declared (so a retried
// ADD replaces them), filled, and jumped to. The shared chains must exist.
func (fp *FamilyPlan) AddBatch() *iptbatch.Batch {
	b := iptbatch.NewBatch("nat")
	// The way in to the attachment's buckets, checked by the same process:
	// a flush of the nat table leaves the shared chains but not the jumps
	// into them, and a batch that succeeded then would leave the pod
	// unreachable. Without them the batch fails whole; Install then sets
	// the shared chains up and tries once more. (iptables-nft checks its
	// own view of the table: a flush between that and its commit slips
	// through, and the agent's restore puts the jumps back.)
	seen := map[string]bool{}
	for _, j := range fp.Jumps {
		if !seen[j.Chain] {
			seen[j.Chain] = true
			for _, e := range entryTo(j.Chain) {
				b.Check(e.Chain, e.Rule)
			}
		}
	}
	b.DeclareChain(fp.DNATChain)
	if fp.SNATChain != "" {
		b.DeclareChain(fp.SNATChain)
	}
	for _, r := range fp.DNAT {
		b.Append(fp.DNATChain, r)
	}
	for _, r := range fp.SNAT {
		b.Append(fp.SNATChain, r)
	}
	for _, j := range fp.Jumps {
		b.Append(j.Chain, j.Rule)
	}
	return b
}

// Repair adds to b what of fp saved lacks: its chains, their rules and the
// jumps into them. What is there is left as it is; rules that are missing
// go at the end of their chain, where their order does not matter.
func (fp *FamilyPlan) Repair(b *iptbatch.Batch, saved iptbatch.Saved) {
	for _, c := range []struct {
		name  string
		rules []iptbatch.Rule
	}{{fp.DNATChain, fp.DNAT}, {fp.SNATChain, fp.SNAT}} {
		if c.name == "" {
			continue
		}
		if !saved.HasChain(c.name) {
			b.DeclareChain(c.name)
		}
		for _, r := range c.rules {
			if !saved.HasRule(c.name, r) {
				b.Append(c.name, r)
			}
		}
	}
	// The jumps are told by where they are and where they lead, not by
	// their text: iptables-save prints a user's conditions its own way.
	// A chain short of some gets all of them anew, in order.
	for _, group := range fp.jumpGroups() {
		have := saved.RulesTo(group[0].Chain, group[0].Target())
		if len(have) == len(group) {
			continue
		}
		for _, line := range have {
			b.Raw("-D" + strings.TrimPrefix(line, "-A"))
		}
		for _, j := range group {
			b.Append(j.Chain, j.Rule)
		}
	}
}

// jumpGroups are fp's jumps grouped by the chain they sit in and the chain
// they lead to, in plan order.
func (fp *FamilyPlan) jumpGroups() [][]Jump {
	var groups [][]Jump
	index := map[[2]string]int{}
	for _, j := range fp.Jumps {
		k := [2]string{j.Chain, j.Target()}
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], j)
	}
	return groups
}

// Target is the attachment chain the jump leads to.
func (j Jump) Target() string {
	if n := len(j.Rule); n >= 2 && j.Rule[n-2] == "-j" {
		return j.Rule[n-1]
	}
	return ""
}

// DelBatch removes exactly what AddBatch installed.
func (fp *FamilyPlan) DelBatch() *iptbatch.Batch {
	b := iptbatch.NewBatch("nat")
	for _, j := range fp.Jumps {
		b.Delete(j.Chain, j.Rule)
	}
	b.RemoveChain(fp.DNATChain)
	if fp.SNATChain != "" {
		b.RemoveChain(fp.SNATChain)
	}
	return b
}

// Chains are the attachment chains of fp.
func (fp *FamilyPlan) Chains() []string {
	if fp.SNATChain == "" {
		return []string{fp.DNATChain}
	}
	return []string{fp.DNATChain, fp.SNATChain}
}

// Missing returns the first rule of fp that saved lacks, for CHECK.
func (fp *FamilyPlan) Missing(saved iptbatch.Saved) (string, bool) {
	for _, r := range fp.DNAT {
		if !saved.HasRule(fp.DNATChain, r) {
			return "-A " + fp.DNATChain + " " + r.String(), true
		}
	}
	for _, r := range fp.SNAT {
		if !saved.HasRule(fp.SNATChain, r) {
			return "-A " + fp.SNATChain + " " + r.String(), true
		}
	}
	for _, group := range fp.jumpGroups() {
		if have := saved.RulesTo(group[0].Chain, group[0].Target()); len(have) < len(group) {
			j := group[len(have)]
			return "-A " + j.Chain + " " + j.Rule.String(), true
		}
	}
	return "", false
}

// SharedBatch adds whatever of the shared chains and their entry jumps
// saved lacks; it is empty on a node already set up. The buckets of
// mappings on one address must come first in HostPortsChain: when one of
// their jumps is missing (a node of the previous release has none), all
// go in anew at its head.
func SharedBatch(saved iptbatch.Saved) *iptbatch.Batch {
	b := iptbatch.NewBatch("nat")
	tiers := []struct{ parent, prefix string }{{HostPortsChain, oneAddrPrefix}, {HostPortsChain, hostPortsPrefix}, {SNATChain, snatBucketPrefix}}
	for _, c := range []string{HostPortsChain, SNATChain} {
		if !saved.HasChain(c) {
			b.DeclareChain(c)
		}
	}
	for _, tier := range tiers {
		for i := range Buckets {
			if bucket := bucketName(tier.prefix, i); !saved.HasChain(bucket) {
				b.DeclareChain(bucket)
			}
		}
	}
	for _, tier := range tiers {
		head := tier.prefix == oneAddrPrefix
		var missing bool
		for i := range Buckets {
			missing = missing || !saved.HasRule(tier.parent, iptbatch.Rule{"-j", bucketName(tier.prefix, i)})
		}
		switch {
		case !missing:
		case head:
			for i := range Buckets {
				for _, line := range saved.RulesTo(tier.parent, bucketName(tier.prefix, i)) {
					b.Raw("-D" + strings.TrimPrefix(line, "-A"))
				}
			}
			for i := Buckets - 1; i >= 0; i-- {
				b.Insert(tier.parent, iptbatch.Rule{"-j", bucketName(tier.prefix, i)})
			}
		default:
			for i := range Buckets {
				if jump := (iptbatch.Rule{"-j", bucketName(tier.prefix, i)}); !saved.HasRule(tier.parent, jump) {
					b.Append(tier.parent, jump)
				}
			}
		}
	}
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		if !saved.HasRule(chain, hostPortsEntry) {
			b.Append(chain, hostPortsEntry)
		}
	}
	// First in POSTROUTING: a rule before it that accepts (bridge's ipMasq
	// accepts traffic within the pod subnet) would end the nat table's
	// walk before a hairpin connection is masqueraded.
	if !saved.HasRule("POSTROUTING", snatEntry) {
		b.Insert("POSTROUTING", snatEntry)
	}
	return b
}

// The base chains' jumps into the shared chains.
var (
	hostPortsEntry = iptbatch.Rule{"-m", "addrtype", "--dst-type", "LOCAL", "-j", HostPortsChain}
	snatEntry      = iptbatch.Rule{"-j", SNATChain}
)

// entryTo is the jumps that lead into bucket, from the base chains on.
func entryTo(bucket string) []Jump {
	switch {
	case strings.HasPrefix(bucket, snatBucketPrefix):
		return []Jump{{"POSTROUTING", snatEntry}, {SNATChain, iptbatch.Rule{"-j", bucket}}}
	case strings.HasPrefix(bucket, oneAddrPrefix), strings.HasPrefix(bucket, hostPortsPrefix):
		return []Jump{{"PREROUTING", hostPortsEntry}, {"OUTPUT", hostPortsEntry}, {HostPortsChain, iptbatch.Rule{"-j", bucket}}}
	}
	return nil
}

func FamilyOf(ip netip.Addr) iptbatch.Family {
	if ip.Is4() {
		return iptbatch.IPv4
	}
	return iptbatch.IPv6
}

func hostPrefix(ip netip.Addr) string { return netip.PrefixFrom(ip, ip.BitLen()).String() }

// Comment is what every rule of an attachment says, as the reference
// portmap's do: the network and the container, quoted, within iptables'
// 256 bytes. It is how a GC tells the chains of its own network from
// other networks' that no record of its own accounts for.
func Comment(network, containerID string) string {
	s := fmt.Sprintf("name: %q id: %q", network, containerID)
	if len(s) > 255 {
		return s[:255]
	}
	return s
}

// CommentNetwork is the network a Comment names; ok is false for any
// other text, a comment cut short inside the network's name included.
func CommentNetwork(comment string) (network string, ok bool) {
	rest, found := strings.CutPrefix(comment, "name: ")
	if !found {
		return "", false
	}
	quoted, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return "", false
	}
	network, err = strconv.Unquote(quoted)
	return network, err == nil
}
