package portmap

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/iptbatch"
)

// The shared chains, created once per node and family. The "CNI-LITE-"
// prefix keeps ours apart from the reference portmap's CNI-HOSTPORT-* and
// CNI-DN-*, so both plugins can serve pods on one node.
const (
	HostPortsChain = "CNI-LITE-HOSTPORTS" // from PREROUTING and OUTPUT, for local destinations
	SNATChain      = "CNI-LITE-SNAT"      // from POSTROUTING
	dnatPrefix     = "CNI-LITE-DN-"
	snatPrefix     = "CNI-LITE-SN-"
	// hashLen keeps chain names at iptables' limit of 28 characters.
	hashLen = 28 - len(dnatPrefix)
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

// Plan is an attachment's rules in every family it has mappings in.
type Plan struct {
	Families []FamilyPlan `json:"families"`
	// UDPPorts are host ports whose conntrack entries go when mappings change.
	UDPPorts []uint16 `json:"udpPorts,omitempty"`
}

// DNATChainName and SNATChainName name an attachment's chains after its key.
func DNATChainName(k attachstate.Key) string { return dnatPrefix + k.ID()[:hashLen] }
func SNATChainName(k attachstate.Key) string { return snatPrefix + k.ID()[:hashLen] }

// IsAttachmentChain reports whether chain is an attachment chain of ours,
// and the key-ID prefix it carries.
func IsAttachmentChain(chain string) (idPrefix string, ok bool) {
	for _, p := range []string{dnatPrefix, snatPrefix} {
		if s, found := strings.CutPrefix(chain, p); found && len(s) == hashLen {
			return s, true
		}
	}
	return "", false
}

// Target is a container address to forward mapped ports to, and what ADD
// found out about the way back: whether the pod's replies to a client off
// its own link pass through the node on their own, because its gateway is
// an address of the node (bridge with isGateway, ptp). Behind macvlan or
// ipvlan they do not: the gateway is a router of the lan, or there is none.
type Target struct {
	IP             netip.Addr `json:"ip"`
	RepliesViaNode bool       `json:"repliesViaNode"`
}

// MasqueradeAll decides whether every connection forwarded to a target is
// masqueraded, not only hairpin and localhost ones. An explicit masqAll
// wins. Otherwise only where the pod's replies would bypass the node: there
// the client would get an answer from the pod's own address, not from the
// node's it connected to, and drop it. The cost, said in the README: such
// pods see the node's address as the client's.
func MasqueradeAll(explicit *bool, t Target) bool {
	if explicit != nil {
		return *explicit
	}
	return !t.RepliesViaNode
}

// Build plans the rules of cfg's mappings for the attachment k, whose
// container addresses are targets (the first of each family is used, as by
// the reference portmap). It fails on a mapping whose hostIP's family the
// container has no address in.
func Build(cfg *Config, k attachstate.Key, targets []Target) (*Plan, error) {
	plan := &Plan{}
	comment := trimComment(fmt.Sprintf("name: %q id: %q", cfg.Name, k.ContainerID))
	for _, fam := range []iptbatch.Family{iptbatch.IPv4, iptbatch.IPv6} {
		target, ok := first(targets, fam)
		pod := target.IP
		var maps []Mapping
		for _, m := range cfg.Mappings {
			if m.HostIP.IsValid() && familyOf(m.HostIP) != fam {
				continue
			}
			if !ok {
				if m.HostIP.IsValid() {
					return nil, fmt.Errorf("hostIP %s is %s but the container has no %s address", m.HostIP, fam, fam)
				}
				continue
			}
			maps = append(maps, m)
		}
		if len(maps) == 0 {
			continue
		}
		masqAll := MasqueradeAll(cfg.MasqAll, target)
		fp := FamilyPlan{Family: fam, PodIP: pod, DNATChain: DNATChainName(k), Maps: maps, MasqAll: masqAll, Comment: comment}
		conditions := cfg.ConditionsV4
		if fam == iptbatch.IPv6 {
			conditions = cfg.ConditionsV6
		}
		fp.Jumps = dispatchJumps(fp.DNATChain, maps, conditions, comment)
		for _, m := range maps {
			fp.DNAT = append(fp.DNAT, dnatRule(m, pod, comment))
		}
		if *cfg.SNAT {
			fp.SNATChain = SNATChainName(k)
			fp.SNAT, fp.Localnet = snatRules(maps, pod, masqAll, cfg.RandomFully, comment)
			fp.Jumps = append(fp.Jumps, Jump{SNATChain, iptbatch.Rule{"-d", hostPrefix(pod), "-m", "comment", "--comment", comment, "-j", fp.SNATChain}})
		}
		plan.Families = append(plan.Families, fp)
	}
	for _, m := range cfg.Mappings {
		if m.Protocol == "udp" && !slices.Contains(plan.UDPPorts, m.HostPort) {
			plan.UDPPorts = append(plan.UDPPorts, m.HostPort)
		}
	}
	return plan, nil
}

// dispatchJumps sends traffic for the mapped ports, per protocol, into the
// attachment's DNAT chain, so a packet only enters the chains of pods that
// map its port: the cost of a lookup does not grow with the pods on a node.
func dispatchJumps(chain string, maps []Mapping, conditions *[]string, comment string) []Jump {
	ports := map[string][]string{}
	var protos []string
	for _, m := range maps {
		p := strconv.Itoa(int(m.HostPort))
		if !slices.Contains(protos, m.Protocol) {
			protos = append(protos, m.Protocol)
		}
		if !slices.Contains(ports[m.Protocol], p) {
			ports[m.Protocol] = append(ports[m.Protocol], p)
		}
	}
	slices.Sort(protos)
	var jumps []Jump
	for _, proto := range protos {
		for chunk := range slices.Chunk(ports[proto], multiportMax) {
			rule := iptbatch.Rule{"-p", proto, "-m", "multiport", "--dports", strings.Join(chunk, ",")}
			if conditions != nil {
				rule = append(rule, *conditions...)
			}
			rule = append(rule, "-m", "comment", "--comment", comment, "-j", chain)
			jumps = append(jumps, Jump{HostPortsChain, rule})
		}
	}
	return jumps
}

func dnatRule(m Mapping, pod netip.Addr, comment string) iptbatch.Rule {
	var r iptbatch.Rule
	if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
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
		local := viaLoopback(m, pod)
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

// viaLoopback reports whether m can be reached at 127.0.0.1 and forwarded
// to pod: IPv4 only, and only when it listens on any address or on 127.0.0.1.
func viaLoopback(m Mapping, pod netip.Addr) bool {
	return pod.Is4() && (!m.HostIP.IsValid() || m.HostIP.IsUnspecified() || m.HostIP.IsLoopback())
}

// AddBatch installs fp: the attachment's chains are declared (so a retried
// ADD replaces them), filled, and jumped to. The shared chains must exist.
func (fp *FamilyPlan) AddBatch() *iptbatch.Batch {
	b := iptbatch.NewBatch("nat")
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
	for _, j := range fp.Jumps {
		if !saved.HasRule(j.Chain, j.Rule) {
			b.Append(j.Chain, j.Rule)
		}
	}
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
	for _, j := range fp.Jumps {
		if !saved.HasRule(j.Chain, j.Rule) {
			return "-A " + j.Chain + " " + j.Rule.String(), true
		}
	}
	return "", false
}

// SharedBatch adds whatever of the shared chains and their entry jumps
// saved lacks; it is empty on a node already set up.
func SharedBatch(saved iptbatch.Saved) *iptbatch.Batch {
	b := iptbatch.NewBatch("nat")
	for _, c := range []string{HostPortsChain, SNATChain} {
		if !saved.HasChain(c) {
			b.DeclareChain(c)
		}
	}
	local := iptbatch.Rule{"-m", "addrtype", "--dst-type", "LOCAL", "-j", HostPortsChain}
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		if !saved.HasRule(chain, local) {
			b.Append(chain, local)
		}
	}
	// First in POSTROUTING: a rule before it that accepts (bridge's ipMasq
	// accepts traffic within the pod subnet) would end the nat table's
	// walk before a hairpin connection is masqueraded.
	if snat := (iptbatch.Rule{"-j", SNATChain}); !saved.HasRule("POSTROUTING", snat) {
		b.Insert("POSTROUTING", snat)
	}
	return b
}

func first(targets []Target, fam iptbatch.Family) (Target, bool) {
	for _, t := range targets {
		if familyOf(t.IP) == fam {
			return t, true
		}
	}
	return Target{}, false
}

func familyOf(ip netip.Addr) iptbatch.Family {
	if ip.Is4() {
		return iptbatch.IPv4
	}
	return iptbatch.IPv6
}

func hostPrefix(ip netip.Addr) string { return netip.PrefixFrom(ip, ip.BitLen()).String() }

// trimComment keeps a comment within iptables' 256 bytes.
func trimComment(s string) string {
	if len(s) > 255 {
		return s[:255]
	}
	return s
}
