package nat

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/iptbatch"
)

// The nftables backend speaks netlink: an ADD or DEL is one transaction in
// our own table per family, and no process at all. The layout mirrors the
// iptables backend: base chains jump to "hostports" (locally-destined
// traffic) and "masq"; these jump to each attachment's DNAT and SNAT chains.
const (
	nftTable     = "cnichain-portmap"
	nftHostPorts = "hostports"
	nftMasq      = "masq"
)

type nftBackend struct{ stateDir string }

func nftFamily(f iptbatch.Family) nftables.TableFamily {
	if f == iptbatch.IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

func nftTableOf(f iptbatch.Family) *nftables.Table {
	return &nftables.Table{Name: nftTable, Family: nftFamily(f)}
}

func chainOf(t *nftables.Table, name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: t}
}

// ensureShared creates the table, its base chains and their jumps when the
// table's postrouting chain is missing, under the same lock as the iptables
// backend's bootstrap so concurrent first ADDs never duplicate a jump.
func (b nftBackend) ensureShared(c *nftables.Conn, fam iptbatch.Family) error {
	t := nftTableOf(fam)
	if _, err := c.ListChain(t, "postrouting"); err == nil {
		return nil
	}
	unlock, err := attachstate.Store{Dir: b.stateDir}.Lock(sharedLock(BackendNFTables, fam), true)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := c.ListChain(t, "postrouting"); err == nil {
		return nil
	}
	c.AddTable(t)
	hostports := c.AddChain(chainOf(t, nftHostPorts))
	masq := c.AddChain(chainOf(t, nftMasq))
	local := []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
	for _, base := range []struct {
		name  string
		hook  *nftables.ChainHook
		prio  *nftables.ChainPriority
		exprs []expr.Any
	}{
		{"prerouting", nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest, append(slices.Clone(local), jump(hostports.Name))},
		{"output", nftables.ChainHookOutput, nftables.ChainPriorityNATDest, append(slices.Clone(local), jump(hostports.Name))},
		{"postrouting", nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, []expr.Any{jump(masq.Name)}},
	} {
		ch := c.AddChain(&nftables.Chain{Name: base.name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: base.hook, Priority: base.prio})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: base.exprs})
	}
	return c.Flush()
}

// Install adds fp's chains, rules and jumps in one transaction.
func (b nftBackend) Install(fp *FamilyPlan) error {
	c, err := newConn()
	if err != nil {
		return err
	}
	if err := b.ensureShared(c, fp.Family); err != nil {
		return fmt.Errorf("nftables table %s: %w", nftTable, err)
	}
	queueInstall(c, fp, nftState{})
	return c.Flush()
}

// nftState is what a family's table holds: the rule count of each chain,
// and the chains the shared ones jump to. The zero value is an empty table.
type nftState struct {
	rules  map[string]int
	jumped map[string]bool
}

// readNFTState reads fam's table in a few dumps, whatever the number of
// attachments: the chains, then the rules of each.
func readNFTState(c *nftables.Conn, fam iptbatch.Family) (nftState, error) {
	st := nftState{rules: map[string]int{}, jumped: map[string]bool{}}
	t := nftTableOf(fam)
	chains, err := c.ListChainsOfTableFamily(nftFamily(fam))
	if err != nil {
		return st, err
	}
	for _, ch := range chains {
		if ch.Table.Name != nftTable {
			continue
		}
		rules, err := c.GetRules(t, chainOf(t, ch.Name))
		if err != nil {
			return st, err
		}
		st.rules[ch.Name] = len(rules)
		if ch.Name == nftHostPorts || ch.Name == nftMasq {
			for _, r := range rules {
				st.jumped[jumpTarget(r)] = true
			}
		}
	}
	return st, nil
}

// queueInstall queues what of fp the table (as st says) lacks: a chain
// whose rules are all there is left alone, one with a part missing is
// refilled, a missing jump is added.
func queueInstall(c *nftables.Conn, fp *FamilyPlan, st nftState) {
	t := nftTableOf(fp.Family)
	comment := userdata.AppendString(nil, userdata.TypeComment, fp.Comment)
	fill := func(name string, exprs [][]expr.Any) *nftables.Chain {
		ch := c.AddChain(chainOf(t, name))
		if n, ok := st.rules[name]; ok && n == len(exprs) {
			return ch
		} else if ok {
			c.FlushChain(ch)
		}
		for _, e := range exprs {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e, UserData: comment})
		}
		return ch
	}
	dn := fill(fp.DNATChain, dnatExprs(fp))
	if !st.jumped[dn.Name] {
		c.AddRule(&nftables.Rule{Table: t, Chain: chainOf(t, nftHostPorts), Exprs: []expr.Any{jump(dn.Name)}, UserData: comment})
	}
	if fp.SNATChain != "" {
		sn := fill(fp.SNATChain, snatExprs(fp))
		if !st.jumped[sn.Name] {
			c.AddRule(&nftables.Rule{Table: t, Chain: chainOf(t, nftMasq),
				Exprs: append(matchAddr(false, fp.PodIP), jump(sn.Name)), UserData: comment})
		}
	}
}

// dnatExprs are fp's DNAT rules: hostIP:hostPort/protocol to the pod.
func dnatExprs(fp *FamilyPlan) [][]expr.Any {
	var out [][]expr.Any
	for _, m := range fp.Maps {
		var e []expr.Any
		if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
			e = append(e, matchAddr(false, m.HostIP)...)
		}
		e = append(e, matchPort(m.Protocol, m.HostPort)...)
		e = append(e,
			&expr.Immediate{Register: 1, Data: fp.PodIP.AsSlice()},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(m.ContainerPort)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto(fp.PodIP), RegAddrMin: 1, RegProtoMin: 2, Specified: true})
		out = append(out, e)
	}
	return out
}

// snatExprs mirror snatRules: hairpin, 127.0.0.1 for IPv4, or everything
// with masqAll, per container port.
func snatExprs(fp *FamilyPlan) [][]expr.Any {
	type target struct {
		proto string
		port  uint16
	}
	var done []target
	var out [][]expr.Any
	loopback := netip.MustParseAddr("127.0.0.1")
	for _, m := range fp.Maps {
		t := target{m.Protocol, m.ContainerPort}
		if slices.Contains(done, t) {
			continue
		}
		done = append(done, t)
		// fully-random, as --random-fully with iptables: every kernel with
		// nftables NAT has it.
		tail := append(append(matchAddr(false, fp.PodIP), matchPort(m.Protocol, m.ContainerPort)...), &expr.Masq{FullyRandom: true})
		if fp.MasqAll {
			out = append(out, tail)
			continue
		}
		if ViaLoopback(m, fp.PodIP) {
			out = append(out, append(matchAddr(true, loopback), tail...))
		}
		out = append(out, append(matchAddr(true, fp.PodIP), slices.Clone(tail)...))
	}
	return out
}

// Uninstall removes the jumps to fp's chains and the chains, in one
// transaction; whatever is already gone is skipped.
func (b nftBackend) Uninstall(fp *FamilyPlan) error {
	return removeNFTChainsNow(fp.Family, fp.Chains())
}

// removeNFTChains queues the removal of chains and the rules jumping to them.
func removeNFTChains(c *nftables.Conn, fam iptbatch.Family, chains []string) error {
	t := nftTableOf(fam)
	existing, err := c.ListChainsOfTableFamily(nftFamily(fam))
	if err != nil {
		return err
	}
	present := map[string]bool{}
	for _, ch := range existing {
		if ch.Table.Name == nftTable {
			present[ch.Name] = true
		}
	}
	for _, parent := range []string{nftHostPorts, nftMasq} {
		if !present[parent] {
			continue
		}
		rules, err := c.GetRules(t, chainOf(t, parent))
		if err != nil {
			return err
		}
		for _, r := range rules {
			if slices.Contains(chains, jumpTarget(r)) {
				if err := c.DelRule(r); err != nil {
					return err
				}
			}
		}
	}
	for _, name := range chains {
		if present[name] {
			c.FlushChain(chainOf(t, name))
			c.DelChain(chainOf(t, name))
		}
	}
	return nil
}

// Missing reports the first part of fp that is not in the kernel, for CHECK.
func (b nftBackend) Missing(fp *FamilyPlan) (string, bool, error) {
	c, err := newConn()
	if err != nil {
		return "", false, err
	}
	t := nftTableOf(fp.Family)
	for _, want := range []struct {
		parent, chain string
		rules         int
	}{{nftHostPorts, fp.DNATChain, len(fp.Maps)}, {nftMasq, fp.SNATChain, len(snatExprs(fp))}} {
		if want.chain == "" {
			continue
		}
		rules, err := c.GetRules(t, chainOf(t, want.chain))
		if err != nil || len(rules) != want.rules {
			return fmt.Sprintf("chain %s of table %s %s has %d rules, want %d", want.chain, fp.Family, nftTable, len(rules), want.rules), true, nil
		}
		parents, err := c.GetRules(t, chainOf(t, want.parent))
		if err != nil || !slices.ContainsFunc(parents, func(r *nftables.Rule) bool { return jumpTarget(r) == want.chain }) {
			return fmt.Sprintf("jump from %s to %s", want.parent, want.chain), true, nil
		}
	}
	return "", false, nil
}

// nftAttachmentChains lists our attachment chains in fam's table.
func nftAttachmentChains(fam iptbatch.Family) ([]string, error) {
	c, err := newConn()
	if err != nil {
		return nil, err
	}
	chains, err := c.ListChainsOfTableFamily(nftFamily(fam))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ch := range chains {
		if _, ok := IsAttachmentChain(ch.Name); ok && ch.Table.Name == nftTable {
			out = append(out, ch.Name)
		}
	}
	return out, nil
}

// removeNFTChainsNow removes chains and the rules jumping to them in one transaction.
func removeNFTChainsNow(fam iptbatch.Family, chains []string) error {
	if len(chains) == 0 {
		return nil
	}
	c, err := newConn()
	if err != nil {
		return err
	}
	if err := removeNFTChains(c, fam, chains); err != nil {
		return err
	}
	return c.Flush()
}

// newConn opens a netlink connection to nftables with a receive buffer for
// the kernel's replies to a whole transaction: every rule added is echoed
// back, and 50 mappings' worth of echoes overflow the default buffer
// (ENOBUFS). Forcing the size needs CAP_NET_ADMIN, which a CNI plugin has.
func newConn() (*nftables.Conn, error) {
	return nftables.New(nftables.WithSockOptions(func(c *netlink.Conn) error {
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		})
		if err != nil {
			return err
		}
		return serr
	}))
}

func jump(chain string) *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }

func jumpTarget(r *nftables.Rule) string {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictJump {
			return v.Chain
		}
	}
	return ""
}

// matchAddr matches the source (src) or destination address of the packet.
func matchAddr(src bool, ip netip.Addr) []expr.Any {
	offset, size := uint32(16), uint32(4)
	switch {
	case ip.Is4() && src:
		offset = 12
	case ip.Is6() && src:
		offset, size = 8, 16
	case ip.Is6():
		offset, size = 24, 16
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip.AsSlice()},
	}
}

// matchPort matches the transport protocol and destination port.
func matchPort(proto string, port uint16) []expr.Any {
	num := map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}[proto]
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{num}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func nfproto(ip netip.Addr) uint32 {
	if ip.Is6() {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}
