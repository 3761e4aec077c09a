package agent

import (
	"context"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cnichain/plugins/pkg/iptbatch"
	"github.com/cnichain/plugins/pkg/nat"
)

// canaryChain is a chain of ours in iptables-legacy's nat table, holding
// one rule that leads nowhere (canaryRule): a flush (-F, with -X or not)
// takes it too, which tells what no event does.
const (
	canaryChain = "CNI-LITE-CANARY"
	canaryRule  = "-A " + canaryChain + " -j RETURN"
)

// placeCanary puts the canary chain and its rule in legacy's nat table.
func placeCanary(legacy iptbatch.Runner, f iptbatch.Family) error {
	b := iptbatch.NewBatch("nat")
	b.DeclareChain(canaryChain)
	b.Append(canaryChain, iptbatch.Rule{"-j", "RETURN"})
	return legacy.Restore(f, b.Text())
}

// legacyTables is where the kernel lists iptables-legacy's tables of the
// reader's network namespace, per family: a table is there once someone
// used it. Looking at it creates nothing, where any iptables-legacy
// command would create the table it names (and every iptables-nft command
// on the node would warn of legacy tables present from then on).
var legacyTables = map[iptbatch.Family]string{
	iptbatch.IPv4: "/proc/net/ip_tables_names",
	iptbatch.IPv6: "/proc/net/ip6_tables_names",
}

// legacyNATInUse tells whether iptables-legacy's nat table of family f
// exists.
func legacyNATInUse(f iptbatch.Family) bool {
	data, err := os.ReadFile(legacyTables[f])
	if err != nil {
		return false // no ip_tables module: no legacy table at all
	}
	for _, name := range strings.Fields(string(data)) {
		if name == "nat" {
			return true
		}
	}
	return false
}

// watchCanary looks at the canary in both families every CanaryEvery,
// where iptables-legacy holds our shared chain (a node whose pods use the
// legacy flavour; elsewhere the agent writes nothing there, for tools such
// as kube-proxy's iptables wrapper pick legacy or nft by which has rules,
// and runs nothing there either while legacy's nat table does not exist):
// the canary is put in then, and a missing one is put back and triggers a
// restore. The binaries are the node's (iptbatch's root, if set).
func watchCanary(ctx context.Context, cfg Config, q *queue) {
	legacy := iptbatch.Runner{Flavour: "legacy"}
	placed := map[iptbatch.Family]bool{}
	tick := time.NewTicker(cfg.CanaryEvery)
	defer tick.Stop()
	for {
		for _, f := range []iptbatch.Family{iptbatch.IPv4, iptbatch.IPv6} {
			if !legacyNATInUse(f) {
				// Gone with the module, or never there: nothing of ours
				// in it to lose, or everything lost at once (a restore
				// of a legacy record puts the table back, then the
				// canary).
				if placed[f] {
					placed[f] = false
					q.send(trigger{reason: "iptables-legacy's " + f.String() + " nat table gone"})
				}
				continue
			}
			if !placed[f] {
				if _, ok, err := legacy.ListChain(f, "nat", nat.HostPortsChain); err == nil && ok {
					placed[f] = placeCanary(legacy, f) == nil
				}
				continue
			}
			if rules, _, err := legacy.ListChain(f, "nat", canaryChain); err != nil {
				cfg.Log.Warn("canary", "family", f, "error", err)
			} else if !slices.Contains(rules, canaryRule) {
				_ = placeCanary(legacy, f)
				q.send(trigger{reason: "iptables-legacy canary " + canaryChain + " gone"})
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
