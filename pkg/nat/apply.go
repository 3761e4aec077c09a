package nat

import (
	"fmt"

	"github.com/cnichain/plugins/pkg/iptbatch"
	"github.com/cnichain/plugins/pkg/netnslock"
)

// Backend installs, removes and checks an attachment's rules in one family.
type Backend interface {
	Install(fp *FamilyPlan) error
	Uninstall(fp *FamilyPlan) error
	Missing(fp *FamilyPlan) (what string, missing bool, err error)
	// Close releases what the backend keeps open between calls.
	Close() error
}

// BackendFor is the backend called name ("iptables", the default, or
// "nftables"); flavour picks the iptables binaries.
func BackendFor(name, flavour string) Backend {
	if name == BackendNFTables {
		return &nftBackend{}
	}
	return iptablesBackend{r: iptbatch.Runner{Flavour: flavour}}
}

// iptablesBackend writes with one iptables-restore per family and change.
type iptablesBackend struct {
	r iptbatch.Runner
}

// Install applies fp in one iptables-restore. On a node where the shared
// chains are missing (the first pod, or after a firewall reload) that
// batch fails atomically; then the shared chains are set up and it is
// tried once more.
func (b iptablesBackend) Install(fp *FamilyPlan) error {
	if err := b.r.Restore(fp.Family, fp.AddBatch().Text()); err == nil {
		return nil
	}
	if err := ensureShared(b.r, fp.Family); err != nil {
		return err
	}
	return b.r.Restore(fp.Family, fp.AddBatch().Text())
}

// Uninstall removes fp in one iptables-restore. When part of it is gone
// already (a second DEL, a crash, a reboot) that batch fails atomically;
// then what is left is found with iptables-save and removed.
func (b iptablesBackend) Uninstall(fp *FamilyPlan) error {
	if err := b.r.Restore(fp.Family, fp.DelBatch().Text()); err == nil {
		return nil
	}
	return removeChains(b.r, fp.Family, fp.Chains())
}

func (iptablesBackend) Close() error { return nil }

func (b iptablesBackend) Missing(fp *FamilyPlan) (string, bool, error) {
	text, err := b.r.Save(fp.Family, "nat")
	if err != nil {
		return "", false, err
	}
	what, missing := fp.Missing(iptbatch.ParseSave(text))
	return what, missing, nil
}

// ensureShared creates what is missing of the shared chains and their entry
// jumps, under a lock so that concurrent first ADDs never duplicate a jump:
// a restore with no attachment to repair.
func ensureShared(r iptbatch.Runner, fam iptbatch.Family) error {
	return RepairIPTables(r, fam, nil)
}

// removeChains removes chains and every rule jumping to them, as found.
func removeChains(r iptbatch.Runner, fam iptbatch.Family, chains []string) error {
	text, err := r.Save(fam, "nat")
	if err != nil {
		return err
	}
	b := iptbatch.ParseSave(text).Removal("nat", chains)
	if b.Empty() {
		return nil
	}
	return r.Restore(fam, b.Text())
}

// lockShared takes the lock that serializes the setting up of the shared
// chains or tables called what (a backend's, the reply path's) in one
// family: node-wide (netnslock), for the networks of every state directory
// and runtime on the node share them.
func lockShared(what string, fam iptbatch.Family) (release func(), err error) {
	return netnslock.Acquire("nat-shared-" + what + "-" + fam.String())
}

// RepairIPTables repairs a family's attachments in one iptables-restore,
// the shared chains included, after one iptables-save.
func RepairIPTables(r iptbatch.Runner, fam iptbatch.Family, plans []*FamilyPlan) error {
	unlock, err := lockShared(BackendIPTables, fam)
	if err != nil {
		return err
	}
	defer unlock()
	text, err := r.Save(fam, "nat")
	if err != nil {
		return err
	}
	saved := iptbatch.ParseSave(text)
	b := SharedBatch(saved)
	for _, fp := range plans {
		fp.Repair(b, saved)
	}
	if b.Empty() {
		return nil
	}
	return r.Restore(fam, b.Text())
}

// repairBatch is how many attachments one nftables repair transaction holds.
const repairBatch = 250

// RepairNFTables repairs a family's attachments in transactions of
// repairBatch attachments. A dispatch key that another attachment took
// while an attachment's was gone is left to it, and said in taken (its DEL
// finds its elements by the chains they lead to, so it leaves that key).
func RepairNFTables(fam iptbatch.Family, plans []*FamilyPlan) (taken []string, err error) {
	b := &nftBackend{}
	c, err := b.open()
	if err != nil {
		return nil, err
	}
	defer b.Close()
	if err := b.ensureShared(c, fam); err != nil {
		return nil, fmt.Errorf("nftables table %s (%s): %w", nftTable, fam, err)
	}
	st, err := readNFTState(c, fam)
	if err != nil {
		return nil, fmt.Errorf("nftables table %s (%s): reading it: %w", nftTable, fam, err)
	}
	for i, fp := range plans {
		t, err := queueInstall(c, fp, st)
		taken = append(taken, t...)
		if err != nil {
			return taken, err
		}
		// Transactions of repairBatch attachments keep each message well
		// under the socket's buffer however many attachments a node has.
		if (i+1)%repairBatch == 0 {
			if err := c.commit(); err != nil {
				return taken, fmt.Errorf("nftables table %s (%s): repairing: %w", nftTable, fam, err)
			}
		}
	}
	if err := c.commit(); err != nil {
		return taken, fmt.Errorf("nftables table %s (%s): repairing: %w", nftTable, fam, err)
	}
	return taken, nil
}

// AttachmentChain is an attachment chain of ours found on the node, and
// the network its rules' comment names ("" when it names none).
type AttachmentChain struct {
	Name, Network string
}

// AttachmentChains lists the attachment chains of backend in fam.
func AttachmentChains(backend, flavour string, fam iptbatch.Family) ([]AttachmentChain, error) {
	if backend == BackendNFTables {
		return nftAttachmentChains(fam)
	}
	text, err := iptbatch.Runner{Flavour: flavour}.Save(fam, "nat")
	if err != nil {
		return nil, err
	}
	saved := iptbatch.ParseSave(text)
	var out []AttachmentChain
	for _, c := range saved.Chains {
		if _, ok := IsAttachmentChain(c); ok {
			out = append(out, AttachmentChain{Name: c, Network: commentsNetwork(saved.Comments(c))})
		}
	}
	return out, nil
}

// commentsNetwork is the network the first of comments names, if any.
func commentsNetwork(comments []string) string {
	for _, c := range comments {
		if network, ok := CommentNetwork(c); ok {
			return network
		}
	}
	return ""
}

// RemoveChains removes chains of backend in fam and the jumps into them.
func RemoveChains(backend, flavour string, fam iptbatch.Family, chains []string) error {
	if len(chains) == 0 {
		return nil
	}
	if backend == BackendNFTables {
		return removeNFTChainsNow(fam, chains)
	}
	return removeChains(iptbatch.Runner{Flavour: flavour}, fam, chains)
}
