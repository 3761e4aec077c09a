package portmap

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/hostnet"
	"github.com/cnichain/plugins/pkg/iptbatch"
	"github.com/cnichain/plugins/pkg/nat"
)

// Restore reinstalls, from the records in stateDir, whatever of every
// attachment's rules is missing, as after a firewall reload flushed the nat
// table. It touches nothing that is there and removes nothing. Attachments
// whose pod is gone (its netns no longer exists) are skipped, and said so
// on out: GC is what removes them. Runtimes may ADD and DEL meanwhile: they
// wait for it (Store.HoldAgainstRestore). It writes with one iptables-restore per
// family for all attachments, or nftables transactions of 250 attachments.
// A hostPort that another attachment took while an attachment's rules were
// gone (nftables refuses two on one key) is left to it, and said on out.
func Restore(stateDir, flavour string, out io.Writer) error {
	store := attachstate.Store{Dir: stateDir}
	names, unlock, err := store.Restoring()
	if err != nil {
		return err
	}
	defer unlock()
	plans := map[string]map[iptbatch.Family][]*nat.FamilyPlan{BackendIPTables: {}, BackendNFTables: {}}
	records := map[*nat.FamilyPlan]*record{} // the record of each nftables plan, to mark taken keys in
	var localnet []*nat.FamilyPlan
	count := 0
	for _, name := range names {
		if !attachstate.IsKeyID(name) {
			continue
		}
		rec := &record{}
		if found, err := store.Load(name, rec); err != nil || !found {
			continue // deleted meanwhile, or unreadable: nothing to restore from
		}
		if attachstate.NetnsGone(rec.Netns) {
			fmt.Fprintf(out, "skipped %s (network %q, container %s): its netns %s is gone; GC removes it\n",
				name[:nat.HashLen], rec.Network, rec.ContainerID, rec.Netns)
			continue
		}
		backend := rec.Backend
		if backend == "" {
			backend = BackendIPTables
		}
		for i := range rec.Families {
			fp := &rec.Families[i]
			plans[backend][fp.Family] = append(plans[backend][fp.Family], fp)
			records[fp] = rec
			if fp.Localnet {
				localnet = append(localnet, fp)
			}
		}
		count++
	}
	var errs []error
	for fam, list := range plans[BackendIPTables] {
		errs = append(errs, nat.RepairIPTables(iptbatch.Runner{Flavour: flavour}, stateDir, fam, list))
	}
	for fam, list := range plans[BackendNFTables] {
		taken, err := nat.RepairNFTables(stateDir, fam, list)
		for _, t := range taken {
			fmt.Fprintf(out, "not restored, another attachment holds the hostPort: %s\n", t)
		}
		errs = append(errs, err)
		for _, fp := range list {
			if rec := records[fp]; fp.KeysTaken {
				errs = append(errs, store.Save(rec.Key.ID(), rec))
			}
		}
	}
	for _, fp := range localnet {
		if err := hostnet.EnableRouteLocalnet(fp.PodIP); err != nil && !errors.Is(err, hostnet.ErrNoRoute) {
			errs = append(errs, err)
		}
	}
	fmt.Fprintf(out, "restored what was missing of %d attachments from %s\n", count, stateDir)
	return errors.Join(errs...)
}

// RestoreMain is `portmap-lite restore [-state-dir DIR] [-iptables-flavour F]`,
// run by hand or by the systemd unit after a firewall reload; it returns
// the exit status.
func RestoreMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("portmap-lite restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", DefaultStateDir, "the stateDir of the networks to restore")
	flavour := fs.String("iptables-flavour", "", `"legacy" or "nft" to pick those iptables binaries, as the iptablesFlavour key`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *flavour != "" && *flavour != "legacy" && *flavour != "nft" {
		fmt.Fprintf(stderr, "portmap-lite restore: -iptables-flavour %q: must be legacy or nft\n", *flavour)
		return 2
	}
	if err := Restore(*stateDir, *flavour, stdout); err != nil {
		fmt.Fprintf(stderr, "portmap-lite restore: %v\n", err)
		return 1
	}
	return 0
}
