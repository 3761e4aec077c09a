package portmap

import "github.com/cnichain/plugins/pkg/iptbatch"

// backend installs, removes and checks an attachment's rules in one family.
type backend interface {
	install(fp *FamilyPlan) error
	uninstall(fp *FamilyPlan) error
	missing(fp *FamilyPlan) (what string, missing bool, err error)
}

func backendFor(name, flavour, stateDir string) backend {
	if name == BackendNFTables {
		return nftBackend{stateDir: stateDir}
	}
	return iptablesBackend{r: iptbatch.Runner{Flavour: flavour}, stateDir: stateDir}
}

// iptablesBackend writes with one iptables-restore per family and change.
type iptablesBackend struct {
	r        iptbatch.Runner
	stateDir string
}

// install applies fp in one iptables-restore. On a node where the shared
// chains are missing (the first pod, or after a firewall reload) that
// batch fails atomically; then the shared chains are set up and it is
// tried once more.
func (b iptablesBackend) install(fp *FamilyPlan) error {
	if err := b.r.Restore(fp.Family, fp.AddBatch().Text()); err == nil {
		return nil
	}
	if err := ensureShared(b.r, b.stateDir, fp.Family); err != nil {
		return err
	}
	return b.r.Restore(fp.Family, fp.AddBatch().Text())
}

// uninstall removes fp in one iptables-restore. When part of it is gone
// already (a second DEL, a crash, a reboot) that batch fails atomically;
// then what is left is found with iptables-save and removed.
func (b iptablesBackend) uninstall(fp *FamilyPlan) error {
	if err := b.r.Restore(fp.Family, fp.DelBatch().Text()); err == nil {
		return nil
	}
	return removeChains(b.r, fp.Family, fp.Chains())
}

func (b iptablesBackend) missing(fp *FamilyPlan) (string, bool, error) {
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
func ensureShared(r iptbatch.Runner, stateDir string, fam iptbatch.Family) error {
	return restoreIPTables(r, stateDir, fam, nil)
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

// sharedLock names the lock that serializes the setting up of a
// backend's shared chains in one family.
func sharedLock(backend string, fam iptbatch.Family) string {
	return "shared-" + backend + "-" + fam.String()
}
