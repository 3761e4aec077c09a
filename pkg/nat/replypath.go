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
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/iptbatch"
)

// A reply path makes the node translate the source of a pod's connections
// that the node itself has translated the destination of (a Service's
// ClusterIP to a backend, conntrack status DNAT) and forwards: the backend
// then answers the node, which undoes both translations towards the pod.
// Without it, a backend on the lan would answer the pod straight, from an
// address the pod never spoke to, and the pod would drop the answer. The
// source becomes the node's address the pod routed through (SNAT, not
// MASQUERADE: the interface towards a macvlan pod on this node may have no
// address of the family). Connections the node answers itself never reach
// POSTROUTING and keep the pod's address; one that kube-proxy masquerades
// already is translated once, by whichever rule comes first.
//
// iptables: a rule per pod address in the shared chain CNI-LITE-VIANODE,
// jumped to from POSTROUTING, each commented with its network and container.
// nftables: the table cnichain-vianode, whose postrouting chain looks the
// packet's source up in a map of pod address -> node address: ADD and DEL
// add and delete their element by key.
const (
	ReplyChain    = "CNI-LITE-VIANODE"
	replyTable    = "cnichain-vianode"
	replyMap      = "reply-via-node"
	ipsDstNATMask = 1 << 5 // IPS_DST_NAT: conntrack status "DNAT"
)

// ReplyPath is one pod address whose translated connections leave with
// the node's address Node, commented with its network and container.
type ReplyPath struct {
	Pod     netip.Addr `json:"pod"`
	Node    netip.Addr `json:"node"`
	Comment string     `json:"comment"`
}

func (r ReplyPath) family() iptbatch.Family { return FamilyOf(r.Pod) }

// rule is r as an iptables rule of ReplyChain.
func (r ReplyPath) rule() iptbatch.Rule {
	return iptbatch.Rule{"-s", hostPrefix(r.Pod), "-m", "conntrack", "--ctstate", "DNAT",
		"-m", "comment", "--comment", r.Comment, "-j", "SNAT", "--to-source", r.Node.String()}
}

// ReplyBackend installs, removes and lists reply paths, one backend's way.
type ReplyBackend interface {
	// Install adds the paths, and what leads packets to them where it is
	// missing (a flush takes that too).
	Install(paths []ReplyPath) error
	Uninstall(paths []ReplyPath) error
	// All lists the reply paths in the kernel, both families.
	All() ([]ReplyPath, error)
	// MissingEntry describes what is missing of what leads fam's packets
	// to its paths (POSTROUTING's jump, the table's rule), "" when none.
	MissingEntry(fam iptbatch.Family) (string, error)
	// ensureEntry puts back what MissingEntry names.
	ensureEntry(fam iptbatch.Family) error
}

// MissingReply describes the first of paths b lacks, or of what leads to
// them, "" when none, for CHECK.
func MissingReply(b ReplyBackend, paths []ReplyPath) (string, error) {
	for fam := range byFamily(paths) {
		if what, err := b.MissingEntry(fam); err != nil || what != "" {
			return what, err
		}
	}
	have, err := b.All()
	if err != nil {
		return "", err
	}
	for _, p := range paths {
		if !slices.Contains(have, p) {
			return fmt.Sprintf("reply path: connections from %s translated by the node leave with %s", p.Pod, p.Node), nil
		}
	}
	return "", nil
}

// RepairReplies installs, of paths, those whose pod address has no reply
// path at all, and what leads to them where a flush took it: what a
// restore does. It never takes an address's path from the attachment that
// holds it (a container's whose address was handed on holds it, and the
// old one's record may still be there until its DEL); of paths of one
// address, the last is installed: the caller lists them oldest first.
// Each family is repaired on its own.
func RepairReplies(b ReplyBackend, paths []ReplyPath) error {
	have, err := b.All()
	if err != nil {
		return err
	}
	var errs []error
	for fam, list := range byFamily(paths) {
		if err := b.ensureEntry(fam); err != nil {
			errs = append(errs, err)
			continue
		}
		var missing []ReplyPath
		for _, p := range slices.Backward(list) {
			held := func(h ReplyPath) bool { return h.Pod == p.Pod }
			if !slices.ContainsFunc(have, held) && !slices.ContainsFunc(missing, held) {
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 {
			errs = append(errs, b.Install(missing))
		}
	}
	return errors.Join(errs...)
}

// NetworkReplies lists the reply paths in b whose comment names network.
func NetworkReplies(b ReplyBackend, network string) ([]ReplyPath, error) {
	have, err := b.All()
	var out []ReplyPath
	for _, p := range have {
		if n, ok := CommentNetwork(p.Comment); ok && n == network {
			out = append(out, p)
		}
	}
	return out, err
}

// ReplyBackendFor is the reply-path backend called name ("iptables", the
// default, or "nftables"); flavour picks the iptables binaries.
func ReplyBackendFor(name, flavour string) ReplyBackend {
	if name == BackendNFTables {
		return nftReplies{}
	}
	return iptReplies{iptbatch.Runner{Flavour: flavour}}
}

// byFamily groups paths by address family.
func byFamily(paths []ReplyPath) map[iptbatch.Family][]ReplyPath {
	out := map[iptbatch.Family][]ReplyPath{}
	for _, p := range paths {
		out[p.family()] = append(out[p.family()], p)
	}
	return out
}

type iptReplies struct{ r iptbatch.Runner }

// replyJump is POSTROUTING's jump to ReplyChain.
var replyJump = iptbatch.Rule{"-j", ReplyChain}

// Install adds the paths' rules in one iptables-restore per family, which
// fails whole where POSTROUTING's jump to the shared chain is missing (the
// first pod, or a flush of the nat table, which leaves the chain but not
// the jump): then the shared chain and jump are set up and it is tried
// once more.
func (b iptReplies) Install(paths []ReplyPath) error {
	for fam, list := range byFamily(paths) {
		batch := iptbatch.NewBatch("nat")
		batch.Check("POSTROUTING", replyJump)
		for _, p := range list {
			batch.Append(ReplyChain, p.rule())
		}
		if err := b.r.Restore(fam, batch.Text()); err == nil {
			continue
		}
		if err := b.ensureShared(fam); err != nil {
			return err
		}
		if err := b.r.Restore(fam, batch.Text()); err != nil {
			return err
		}
	}
	return nil
}

// ensureShared creates ReplyChain and POSTROUTING's jump to it where
// missing, under the node-wide lock.
func (b iptReplies) ensureShared(fam iptbatch.Family) error {
	unlock, err := lockShared("vianode-iptables", fam)
	if err != nil {
		return err
	}
	defer unlock()
	text, err := b.r.Save(fam, "nat")
	if err != nil {
		return err
	}
	saved := iptbatch.ParseSave(text)
	batch := iptbatch.NewBatch("nat")
	if !saved.HasChain(ReplyChain) {
		batch.DeclareChain(ReplyChain)
	}
	// First in POSTROUTING, before a MASQUERADE of kube-proxy's: towards a
	// macvlan pod of this node, the interface out (the sub-device) may have
	// no address of the family, and MASQUERADE would take any other.
	if !saved.HasRule("POSTROUTING", replyJump) {
		batch.Insert("POSTROUTING", replyJump)
	}
	if batch.Empty() {
		return nil
	}
	return b.r.Restore(fam, batch.Text())
}

func (b iptReplies) ensureEntry(fam iptbatch.Family) error { return b.ensureShared(fam) }

// MissingEntry names the shared chain or POSTROUTING's jump to it when
// either is missing in fam.
func (b iptReplies) MissingEntry(fam iptbatch.Family) (string, error) {
	text, err := b.r.Save(fam, "nat")
	if err != nil {
		return "", err
	}
	saved := iptbatch.ParseSave(text)
	switch {
	case !saved.HasChain(ReplyChain):
		return fmt.Sprintf("reply paths (%s): the chain %s", fam, ReplyChain), nil
	case !saved.HasRule("POSTROUTING", replyJump):
		return fmt.Sprintf("reply paths (%s): POSTROUTING's jump to %s", fam, ReplyChain), nil
	}
	return "", nil
}

// Uninstall deletes the paths' rules in one iptables-restore per family;
// when some are gone already, those left are found by their comment.
func (b iptReplies) Uninstall(paths []ReplyPath) error {
	for fam, list := range byFamily(paths) {
		batch := iptbatch.NewBatch("nat")
		for _, p := range list {
			batch.Delete(ReplyChain, p.rule())
		}
		if err := b.r.Restore(fam, batch.Text()); err == nil {
			continue
		}
		text, err := b.r.Save(fam, "nat")
		if err != nil {
			return err
		}
		left := iptbatch.NewBatch("nat")
		for _, line := range iptbatch.ParseSave(text).Rules {
			if strings.HasPrefix(line, "-A "+ReplyChain+" ") && slices.ContainsFunc(list, func(p ReplyPath) bool { return savedPath(line) == p }) {
				left.Raw("-D" + strings.TrimPrefix(line, "-A"))
			}
		}
		if !left.Empty() {
			if err := b.r.Restore(fam, left.Text()); err != nil {
				return err
			}
		}
	}
	return nil
}

// savedPath reads a reply path back from its rule as iptables-save printed
// it; the zero ReplyPath for any other rule.
func savedPath(line string) ReplyPath {
	args := iptbatch.Split(line)
	var p ReplyPath
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-s":
			if pfx, err := netip.ParsePrefix(args[i+1]); err == nil && pfx.IsSingleIP() {
				p.Pod = pfx.Addr()
			}
		case "--to-source":
			p.Node, _ = netip.ParseAddr(args[i+1])
		case "--comment":
			p.Comment = args[i+1]
		}
	}
	if !p.Pod.IsValid() || !p.Node.IsValid() {
		return ReplyPath{}
	}
	return p
}

// All lists the reply paths of ReplyChain in both families.
func (b iptReplies) All() ([]ReplyPath, error) {
	var out []ReplyPath
	for _, fam := range []iptbatch.Family{iptbatch.IPv4, iptbatch.IPv6} {
		text, err := b.r.Save(fam, "nat")
		if err != nil {
			return nil, err
		}
		for _, line := range iptbatch.ParseSave(text).Rules {
			if p := savedPath(line); strings.HasPrefix(line, "-A "+ReplyChain+" ") && p.Pod.IsValid() {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

type nftReplies struct{}

func replyTableOf(fam iptbatch.Family) *nftables.Table {
	return &nftables.Table{Name: replyTable, Family: nftFamily(fam)}
}

// replyMapOf is fam's map of pod address -> node address.
func replyMapOf(fam iptbatch.Family) *nftables.Set {
	addr := nftables.TypeIPAddr
	if fam == iptbatch.IPv6 {
		addr = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: replyTableOf(fam), Name: replyMap, IsMap: true, KeyType: addr, DataType: addr}
}

// replyChainOf is fam's base chain, whose one rule looks the map up.
func replyChainOf(fam iptbatch.Family) *nftables.Chain {
	// Just before iptables' nat table (srcnat), for the reason
	// iptReplies.ensureShared puts its jump first.
	return &nftables.Chain{Name: "postrouting", Table: replyTableOf(fam), Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource - 1)}
}

// missingShared names what is missing of fam's table, map and rule, ""
// when none: the map is made last of the three when the table is made,
// the rule is what a flush of the chain takes.
func (nftReplies) missingShared(c *nftConn, fam iptbatch.Family) string {
	if _, err := c.GetSetByName(replyTableOf(fam), replyMap); err != nil {
		return fmt.Sprintf("reply paths (%s): the map %s of table %s", fam, replyMap, replyTable)
	}
	if rules, err := c.GetRules(replyTableOf(fam), replyChainOf(fam)); err != nil || len(rules) == 0 {
		return fmt.Sprintf("reply paths (%s): the rule of chain postrouting of table %s", fam, replyTable)
	}
	return ""
}

func (b nftReplies) ensureEntry(fam iptbatch.Family) error {
	c, err := openNFT()
	if err != nil {
		return err
	}
	defer c.Close()
	return b.ensureShared(c, fam)
}

// MissingEntry names fam's table, map or rule when one is missing.
func (b nftReplies) MissingEntry(fam iptbatch.Family) (string, error) {
	c, err := openNFT()
	if err != nil {
		return "", err
	}
	defer c.Close()
	return b.missingShared(c, fam), nil
}

// ensureShared creates fam's table, map and rule where missing, under the
// node-wide lock.
func (b nftReplies) ensureShared(c *nftConn, fam iptbatch.Family) error {
	if b.missingShared(c, fam) == "" {
		return nil
	}
	unlock, err := lockShared("vianode-nftables", fam)
	if err != nil {
		return err
	}
	defer unlock()
	if b.missingShared(c, fam) == "" {
		return nil
	}
	t := replyTableOf(fam)
	existing, lookErr := c.GetSetByName(t, replyMap)
	c.AddTable(t)
	post := c.AddChain(replyChainOf(fam))
	// Made anew whole but for the map, which keeps its elements when only
	// the chain was flushed.
	c.FlushChain(post)
	m := replyMapOf(fam)
	if lookErr == nil {
		m = existing
	} else if err := c.AddSet(m, nil); err != nil {
		return err
	}
	offset, size := uint32(12), uint32(4)
	if fam == iptbatch.IPv6 {
		offset, size = 8, 16
	}
	// ct status dnat snat to ip saddr map @reply-via-node
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNATMask), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: nfprotoOf(fam), RegAddrMin: 1}, // no port range: ports kept
	}})
	return c.commit()
}

func nfprotoOf(fam iptbatch.Family) uint32 {
	if fam == iptbatch.IPv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

func replyElems(list []ReplyPath) []nftables.SetElement {
	out := make([]nftables.SetElement, len(list))
	for i, p := range list {
		out[i] = nftables.SetElement{Key: p.Pod.AsSlice(), Val: p.Node.AsSlice(), Comment: p.Comment}
	}
	return out
}

// Install adds the paths' elements, one transaction per family. The map
// is keyed by pod address: an element another attachment left for the
// address (a container whose DEL never came, its address handed on) is
// replaced, for the address is this attachment's now.
func (b nftReplies) Install(paths []ReplyPath) error {
	c, err := openNFT()
	if err != nil {
		return err
	}
	defer c.Close()
	for fam, list := range byFamily(paths) {
		if err := b.ensureShared(c, fam); err != nil {
			return fmt.Errorf("nftables table %s: %w", replyTable, err)
		}
		if err := b.installLocked(c, fam, list); err != nil {
			return err
		}
	}
	return nil
}

// lockElements serializes, node-wide, what reads fam's map and changes it
// by what it read: the kernel deletes an element by its key alone, and one
// another attachment put there between the read and the change would go.
func (nftReplies) lockElements(fam iptbatch.Family) (func(), error) {
	return lockShared("vianode-nftables-elements", fam)
}

// installLocked is Install's part for one family, under lockElements.
func (b nftReplies) installLocked(c *nftConn, fam iptbatch.Family, list []ReplyPath) error {
	unlock, err := b.lockElements(fam)
	if err != nil {
		return err
	}
	defer unlock()
	have, err := b.inFamily(c, fam)
	if err != nil {
		return err
	}
	var stale []ReplyPath
	for _, h := range have {
		if slices.ContainsFunc(list, func(p ReplyPath) bool { return p.Pod == h.Pod && p != h }) {
			stale = append(stale, h)
		}
	}
	if len(stale) > 0 {
		if err := c.SetDeleteElements(replyMapOf(fam), replyElems(stale)); err != nil {
			return err
		}
	}
	if err := c.SetAddElements(replyMapOf(fam), replyElems(list)); err != nil {
		return err
	}
	return c.commit()
}

// Uninstall deletes the paths' elements that are still theirs: an element
// of the same address that another attachment put there since is left to
// it.
func (b nftReplies) Uninstall(paths []ReplyPath) error {
	c, err := openNFT()
	if err != nil {
		return err
	}
	defer c.Close()
	for fam, list := range byFamily(paths) {
		unlock, err := b.lockElements(fam)
		if err != nil {
			return err
		}
		err = b.uninstallLocked(c, fam, list)
		unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// uninstallLocked is Uninstall's part for one family, under lockElements.
func (b nftReplies) uninstallLocked(c *nftConn, fam iptbatch.Family, list []ReplyPath) error {
	have, err := b.inFamily(c, fam)
	if err != nil {
		return nil // no table or map: nothing left
	}
	var own []ReplyPath
	for _, p := range list {
		if slices.Contains(have, p) {
			own = append(own, p)
		}
	}
	if len(own) == 0 {
		return nil
	}
	if err := c.SetDeleteElements(replyMapOf(fam), replyElems(own)); err != nil {
		return err
	}
	return c.commit()
}

// inFamily lists the elements of fam's map as reply paths.
func (nftReplies) inFamily(c *nftConn, fam iptbatch.Family) ([]ReplyPath, error) {
	elems, err := c.GetSetElements(replyMapOf(fam))
	if err != nil {
		return nil, err
	}
	var out []ReplyPath
	for _, e := range elems {
		pod, ok1 := netip.AddrFromSlice(e.Key)
		node, ok2 := netip.AddrFromSlice(e.Val)
		if ok1 && ok2 {
			out = append(out, ReplyPath{Pod: pod, Node: node, Comment: e.Comment})
		}
	}
	return out, nil
}

// All lists the elements of both families' maps.
func (b nftReplies) All() ([]ReplyPath, error) {
	c, err := openNFT()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var out []ReplyPath
	for _, fam := range []iptbatch.Family{iptbatch.IPv4, iptbatch.IPv6} {
		if _, err := c.GetSetByName(replyTableOf(fam), replyMap); err != nil {
			continue // not set up: none
		}
		list, err := b.inFamily(c, fam)
		if err != nil {
			return nil, err
		}
		out = append(out, list...)
	}
	return out, nil
}
