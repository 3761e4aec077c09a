package portmap

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"

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
// wait for it (attachstate.Restoring). Each record is restored by the
// backend and iptables flavour that installed it (flavour for records of
// releases that did not keep theirs), in the order the attachments were
// added, with one iptables-restore per family and flavour for all of them,
// or nftables transactions of 250 attachments.
// A hostPort that another attachment took while an attachment's rules were
// gone (nftables refuses two on one key) is left to it, and said on out.
func Restore(stateDir, flavour string, out io.Writer) error {
	store := attachstate.Store{Dir: stateDir}
	loaded, unlock, err := attachstate.Restoring[record](store, out, attachstate.IsKeyID)
	if err != nil {
		return err
	}
	defer unlock()
	// Each record is restored by the backend and iptables flavour that
	// installed it.
	type installer struct {
		backend, flavour string
		fam              iptbatch.Family
	}
	plans := map[installer][]*nat.FamilyPlan{}
	var localnet []netip.Addr
	recs := make([]*record, len(loaded))
	for i, l := range loaded {
		recs[i] = l.Rec
	}
	// In the order they were added: of two pods on one port, the first
	// gets its jump back first and keeps the port.
	slices.SortStableFunc(recs, func(a, b *record) int { return a.Added.Compare(b.Added) })
	for _, rec := range recs {
		for i := range rec.Families {
			fp := &rec.Families[i]
			by := installer{rec.backendName(), rec.flavour(flavour), fp.Family}
			if by.backend == BackendNFTables {
				by.flavour = ""
			}
			plans[by] = append(plans[by], fp)
			if fp.Localnet {
				localnet = append(localnet, fp.PodIP)
			}
		}
	}
	var errs []error
	for by, list := range plans {
		if by.backend == BackendIPTables {
			errs = append(errs, nat.RepairIPTables(iptbatch.Runner{Flavour: by.flavour}, by.fam, list))
			continue
		}
		taken, err := nat.RepairNFTables(by.fam, list)
		for _, t := range taken {
			fmt.Fprintf(out, "not restored, another attachment holds the hostPort: %s\n", t)
		}
		errs = append(errs, err)
	}
	errs = append(errs, hostnet.EnableRouteLocalnetFor(localnet))
	fmt.Fprintf(out, "restored what was missing of %d attachments from %s\n", len(recs), stateDir)
	return errors.Join(errs...)
}

// RestoreMain is `portmap-lite restore [-state-dir DIR] [-iptables-flavour F]`
// (the flavour of records of releases that did not keep theirs),
// run by hand or by the systemd unit after a firewall reload; it returns
// the exit status.
func RestoreMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("portmap-lite restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", DefaultStateDir, "the stateDir of the networks to restore")
	flavour := fs.String("iptables-flavour", "", `"legacy" or "nft": the iptablesFlavour of records of earlier releases, which did not keep it`)
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
