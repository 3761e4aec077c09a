package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/iptbatch"
)

// The nftables backend speaks netlink: an ADD or DEL is one transaction in
// our own table per family, and no process at all. The layout mirrors the
// iptables backend: base chains jump to "hostports" (locally-destined
// traffic) and "masq"; these dispatch into each attachment's DNAT and SNAT
// chains through verdict maps (nftmaps.go).
const (
	nftTable     = "cnichain-portmap"
	nftHostPorts = "hostports"
	nftMasq      = "masq"
)

// nftBackend opens its connection at its first request and keeps it until
// Close (nftConn says why).
type nftBackend struct{ conn *nftConn }

func (b *nftBackend) open() (*nftConn, error) {
	if b.conn == nil {
		c, err := openNFT()
		if err != nil {
			return nil, err
		}
		b.conn = c
	}
	return b.conn, nil
}

// Close closes the connection, if one was opened.
func (b *nftBackend) Close() error {
	if b.conn == nil {
		return nil
	}
	err := b.conn.Close()
	b.conn = nil
	return err
}

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

// ensureShared creates what is missing of the table, its base chains and
// their jumps, and the dispatch maps with the rules that look them up, under
// the node-wide lock of the shared chains (lockShared) so concurrent first
// ADDs never duplicate a rule. The pod map is created last of all: when it
// is there, so is the rest, and an ADD checks no more than that.
func (b *nftBackend) ensureShared(c *nftConn, fam iptbatch.Family) error {
	t := nftTableOf(fam)
	if _, err := c.GetSetByName(t, podMap); err == nil {
		return nil
	}
	unlock, err := lockShared(BackendNFTables, fam)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := c.GetSetByName(t, podMap); err == nil {
		return nil
	}
	hostports, masq := chainOf(t, nftHostPorts), chainOf(t, nftMasq)
	if _, err := c.ListChain(t, "postrouting"); err != nil {
		c.AddTable(t)
		c.AddChain(hostports)
		c.AddChain(masq)
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
	}
	// The lookups go first in their chains: on a table an older release
	// set up, its per-pod jumps stay behind them until their pods go.
	maps := dispatchMaps(fam)
	for _, m := range maps {
		if err := c.AddSet(m, nil); err != nil {
			return err
		}
	}
	lookups, masqLookup := dispatchLookups(fam, maps)
	for _, e := range slices.Backward(lookups) {
		c.InsertRule(&nftables.Rule{Table: t, Chain: hostports, Exprs: e})
	}
	c.InsertRule(&nftables.Rule{Table: t, Chain: masq, Exprs: masqLookup})
	return c.commit()
}

// Install adds fp's chains, rules and dispatch elements in one
// transaction, asking nothing first: the table is there on all but a
// node's first ADD (or one after a flush), when the transaction fails
// whole and is made again once the table is. An element whose key another
// attachment holds (the same hostPort, protocol and hostIP) fails it, and
// nothing is installed; but the pod's address is this attachment's now: an
// element another left for it (a container whose DEL never came, its
// address handed on) is taken over, and that one's DEL leaves it alone
// (Uninstall).
func (b *nftBackend) Install(fp *FamilyPlan) error {
	c, err := b.open()
	if err != nil {
		return err
	}
	if _, err := queueInstall(c, fp, nftState{}); err != nil {
		return err
	}
	if c.commit() == nil {
		return nil
	}
	if err := b.ensureShared(c, fp.Family); err != nil {
		return fmt.Errorf("nftables table %s: %w", nftTable, err)
	}
	if _, err := queueInstall(c, fp, nftState{}); err != nil {
		return err
	}
	err = c.commit()
	if err == nil {
		return nil
	}
	st, rerr := c.leadsTo(fp.Family, dispatchElems(fp))
	if rerr != nil {
		return err
	}
	var pods []nftables.SetElement
	for _, e := range dispatchElems(fp) {
		if holder, held := st[e.Map][string(e.Key)]; held && holder != e.Chain && e.Map == podMap {
			pods = append(pods, nftables.SetElement{Key: e.Key})
			delete(st[e.Map], string(e.Key))
		}
	}
	if taken := takenElems(fp, st); len(taken) > 0 || len(pods) == 0 {
		if len(taken) > 0 {
			return fmt.Errorf("hostPort taken: %s (%w)", strings.Join(taken, "; "), err)
		}
		return err
	}
	if err := c.SetDeleteElements(mapRef(fp.Family, podMap), pods); err != nil {
		return errors.Join(err, c.reopen())
	}
	if _, err := queueInstall(c, fp, nftState{}); err != nil {
		return err
	}
	return c.commit()
}

// takenElems describes fp's dispatch elements whose keys lead, in st, to
// another attachment's chain.
func takenElems(fp *FamilyPlan, st dispatchState) []string {
	var taken []string
	for _, e := range dispatchElems(fp) {
		if holder, held := st[e.Map][string(e.Key)]; held && holder != e.Chain {
			taken = append(taken, fmt.Sprintf("%q in map %s leads to %s, another attachment's chain, not %s", describeKey(e, fp.Family), e.Map, holder, e.Chain))
		}
	}
	return taken
}

// describeKey renders a dispatch key as nft would: address . protocol . port.
func describeKey(e dispatchElem, fam iptbatch.Family) string {
	k := e.Key
	var parts []string
	if e.Map != anyAddrMap {
		n := 4
		if fam == iptbatch.IPv6 {
			n = 16
		}
		addr, _ := netip.AddrFromSlice(k[:n])
		parts, k = append(parts, addr.String()), k[n:]
	}
	if len(k) == 8 {
		proto := map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_SCTP: "sctp"}[k[0]]
		parts = append(parts, proto, fmt.Sprint(binaryutil.BigEndian.Uint16(k[4:6])))
	}
	return strings.Join(parts, " . ")
}

// nftState is what a family's table holds: the rule count of each chain,
// the chains the shared ones jump to (an older release's layout), and the
// dispatch maps' elements. The zero value is an empty table.
type nftState struct {
	rules    map[string]int
	jumped   map[string]bool
	dispatch dispatchState
}

// dispatchState maps each dispatch map's keys to the chains they lead to.
type dispatchState map[string]map[string]string

// readDispatch reads the elements of fam's dispatch maps; a missing map
// has none.
func readDispatch(c *nftConn, fam iptbatch.Family) (dispatchState, error) {
	st := dispatchState{}
	sets, err := c.GetSets(nftTableOf(fam))
	if err != nil {
		return st, nil // no table
	}
	for _, s := range sets {
		if s.Name != anyAddrMap && s.Name != oneAddrMap && s.Name != podMap {
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return st, err
		}
		st[s.Name] = map[string]string{}
		for _, e := range elems {
			st[s.Name][string(e.Key)] = verdictChain(e.Val)
		}
	}
	return st, nil
}

// readNFTState reads fam's table in a few dumps, whatever the number of
// attachments: its chains, the rules of all of them at once, the shared
// chains' jumps and the dispatch maps.
func readNFTState(c *nftConn, fam iptbatch.Family) (nftState, error) {
	st := nftState{rules: map[string]int{}}
	chains, err := c.ListChainsOfTableFamily(nftFamily(fam))
	if err != nil {
		return st, err
	}
	counts, err := c.ruleCounts(fam)
	if err != nil {
		return st, err
	}
	for _, ch := range chains {
		if ch.Table.Name == nftTable {
			st.rules[ch.Name] = counts[ch.Name]
		}
	}
	if st.jumped, err = readJumps(c, fam); err != nil {
		return st, err
	}
	st.dispatch, err = readDispatch(c, fam)
	return st, err
}

// queueInstall queues what of fp the table (as st says) lacks: a chain
// whose rules are all there is left alone, one with a part missing is
// refilled, a missing element is added; one whose key leads to another
// attachment's chain is left to it, and said in taken. One that fails
// drops what it queued (reopen), so that no later commit sends half of it.
func queueInstall(c *nftConn, fp *FamilyPlan, st nftState) (taken []string, err error) {
	t := nftTableOf(fp.Family)
	comment := userdata.AppendString(nil, userdata.TypeComment, fp.Comment)
	fill := func(name string, exprs [][]expr.Any) {
		n, ok := st.rules[name]
		if ok && n == len(exprs) {
			return
		}
		ch := chainOf(t, name)
		if ok {
			c.FlushChain(ch)
		} else {
			c.AddChain(ch)
		}
		for _, e := range exprs {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e, UserData: comment})
		}
	}
	fill(fp.DNATChain, dnatExprs(fp))
	if fp.SNATChain != "" {
		fill(fp.SNATChain, snatExprs(fp))
	}
	for name, elems := range groupByMap(dispatchElems(fp)) {
		var add []nftables.SetElement
		for _, e := range elems {
			if _, held := st.dispatch[name][string(e.Key)]; !held && !st.jumped[e.Chain] {
				add = append(add, nftables.SetElement{Key: e.Key, VerdictData: jump(e.Chain), Comment: fp.Comment})
			}
		}
		if len(add) > 0 {
			if err := c.SetAddElements(mapRef(fp.Family, name), add); err != nil {
				return nil, errors.Join(err, c.reopen())
			}
		}
	}
	return takenElems(fp, st.dispatch), nil
}

// groupByMap groups elements by the map they belong to.
func groupByMap(elems []dispatchElem) map[string][]dispatchElem {
	out := map[string][]dispatchElem{}
	for _, e := range elems {
		out[e.Map] = append(out[e.Map], e)
	}
	return out
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

// Uninstall removes fp's chains and what leads to them, found by what it
// leads to, never by key alone: a key of ours may lead to another
// attachment's chain now (its hostPort taken while ours was gone, its pod
// address handed on). It asks for fp's own keys alone and removes them with
// the chains in one transaction, which the kernel refuses whole where the
// record and the table disagree (a chain gone, or still jumped to by an
// older release's rule); then what is left is found in the whole table.
// What is gone already (a second DEL, a flushed ruleset) is no error.
func (b *nftBackend) Uninstall(fp *FamilyPlan) error {
	c, err := b.open()
	if err != nil {
		return err
	}
	chains := fp.Chains()
	if st, err := c.leadsTo(fp.Family, dispatchElems(fp)); err == nil {
		queueRemoval(c, fp.Family, chains, st)
		if c.commit() == nil {
			return nil
		}
	}
	return removeNFTChainsOn(c, fp.Family, chains)
}

// queueRemoval queues the removal of chains and of the elements of
// dispatch that lead to them.
func queueRemoval(c *nftConn, fam iptbatch.Family, chains []string, dispatch dispatchState) {
	for name, elems := range dispatch {
		var del []nftables.SetElement
		for key, chain := range elems {
			if slices.Contains(chains, chain) {
				del = append(del, nftables.SetElement{Key: []byte(key)})
			}
		}
		if len(del) > 0 {
			// Only a bad set reference errs, and the map is ours by name.
			_ = c.SetDeleteElements(mapRef(fam, name), del)
		}
	}
	t := nftTableOf(fam)
	for _, name := range chains {
		c.FlushChain(chainOf(t, name))
		c.DelChain(chainOf(t, name))
	}
}

// removeNFTChains queues the removal of chains and of whatever leads to
// them, as found in the whole table: dispatch elements, and an older
// release's jump rules.
func removeNFTChains(c *nftConn, fam iptbatch.Family, chains []string) error {
	t := nftTableOf(fam)
	existing, err := c.ListChainsOfTableFamily(nftFamily(fam))
	if err != nil {
		return err
	}
	var present []string
	for _, ch := range existing {
		if ch.Table.Name == nftTable {
			present = append(present, ch.Name)
		}
	}
	dispatch, err := readDispatch(c, fam)
	if err != nil {
		return err
	}
	for _, parent := range []string{nftHostPorts, nftMasq} {
		if !slices.Contains(present, parent) {
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
	queueRemoval(c, fam, slices.DeleteFunc(slices.Clone(chains), func(name string) bool { return !slices.Contains(present, name) }), dispatch)
	return nil
}

// Missing reports the first part of fp that is not in the kernel, for CHECK.
func (b *nftBackend) Missing(fp *FamilyPlan) (string, bool, error) {
	c, err := b.open()
	if err != nil {
		return "", false, err
	}
	t := nftTableOf(fp.Family)
	for _, want := range []struct {
		chain string
		rules int
	}{{fp.DNATChain, len(fp.Maps)}, {fp.SNATChain, len(snatExprs(fp))}} {
		if want.chain == "" {
			continue
		}
		rules, err := c.GetRules(t, chainOf(t, want.chain))
		if err != nil || len(rules) != want.rules {
			return fmt.Sprintf("chain %s of table %s %s has %d rules, want %d", want.chain, fp.Family, nftTable, len(rules), want.rules), true, nil
		}
	}
	dispatch, err := c.leadsTo(fp.Family, dispatchElems(fp))
	if err != nil {
		return "", false, err
	}
	var jumped map[string]bool
	for _, e := range dispatchElems(fp) {
		if dispatch[e.Map][string(e.Key)] == e.Chain {
			continue
		}
		if jumped == nil { // an older release's attachment: jump rules instead
			st, err := readJumps(c, fp.Family)
			if err != nil {
				return "", false, err
			}
			jumped = st
		}
		if !jumped[e.Chain] {
			return fmt.Sprintf("element %s of map %s leading to %s", describeKey(e, fp.Family), e.Map, e.Chain), true, nil
		}
	}
	return "", false, nil
}

// readJumps lists the chains that the shared chains jump to by rule, as an
// older release dispatched.
func readJumps(c *nftConn, fam iptbatch.Family) (map[string]bool, error) {
	t := nftTableOf(fam)
	out := map[string]bool{}
	for _, parent := range []string{nftHostPorts, nftMasq} {
		rules, err := c.GetRules(t, chainOf(t, parent))
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			out[jumpTarget(r)] = true
		}
	}
	return out, nil
}

// nftAttachmentChains lists our attachment chains in fam's table, with
// the network their rules' comments name.
func nftAttachmentChains(fam iptbatch.Family) ([]AttachmentChain, error) {
	c, err := openNFT()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	chains, err := c.ListChainsOfTableFamily(nftFamily(fam))
	if err != nil {
		return nil, err
	}
	var out []AttachmentChain
	for _, ch := range chains {
		if _, ok := IsAttachmentChain(ch.Name); !ok || ch.Table.Name != nftTable {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, err
		}
		var comments []string
		for _, r := range rules {
			if text, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
				comments = append(comments, text)
			}
		}
		out = append(out, AttachmentChain{Name: ch.Name, Network: commentsNetwork(comments)})
	}
	return out, nil
}

// removeNFTChainsNow removes chains and what leads to them in one
// transaction, on a connection of its own.
func removeNFTChainsNow(fam iptbatch.Family, chains []string) error {
	if len(chains) == 0 {
		return nil
	}
	c, err := openNFT()
	if err != nil {
		return err
	}
	defer c.Close()
	return removeNFTChainsOn(c, fam, chains)
}

// removeNFTChainsOn removes chains and what leads to them, as found in the
// whole table, in one transaction. One that fails because another verb
// removed part of it meanwhile (two DELs or GCs of one attachment at once)
// is made again from what is left, a few times.
func removeNFTChainsOn(c *nftConn, fam iptbatch.Family, chains []string) error {
	var err error
	for range 3 {
		if err = removeNFTChains(c, fam, chains); err != nil {
			// Drop what was queued before the read that failed.
			err = errors.Join(err, c.reopen())
			continue
		}
		if err = c.commit(); err == nil {
			return nil
		}
	}
	return err
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
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoNumber(proto)}},
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
