package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
)

var (
	counters = regexp.MustCompile(`\[\d+:\d+\]`)
	linkNum  = regexp.MustCompile(`^\d+: `)
	// A bridge's carrier follows its ports asynchronously: not our state.
	carrier = regexp.MustCompile(`NO-CARRIER,|,LOWER_UP| state [A-Z]+| linkdown`)
)

// Snapshot is the node's network state as text, for "nothing changed"
// assertions: links, routes, addresses, permanent neighbour entries, the
// iptables and nftables rules of every table in both families, and the
// files under the sandbox's directory (records, host-local's leases, the
// runtime's cache). Counters and comments of iptables-save are dropped.
func (sb *Sandbox) Snapshot(t testing.TB) string {
	t.Helper()
	// A new link's link-local address is "tentative" for a while: wait it out.
	WaitDAD(t, sb.Node)
	var b strings.Builder
	for _, cmd := range [][]string{
		{"ip", "-o", "link"}, {"ip", "-o", "addr"}, {"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
		{"ip", "neigh", "show", "nud", "permanent"},
		{"iptables-save"}, {"ip6tables-save"},
	} {
		fmt.Fprintf(&b, "$ %s\n", strings.Join(cmd, " "))
		for _, line := range strings.Split(MustRun(t, sb.Node, cmd[0], cmd[1:]...), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			line = carrier.ReplaceAllString(counters.ReplaceAllString(line, ""), "")
			if cmd[0] == "ip" && cmd[1] == "-o" && cmd[2] == "link" {
				// Drop the index and the volatile link-layer details.
				line = linkNum.ReplaceAllString(line, "")
				line, _, _ = strings.Cut(line, "\\")
			}
			b.WriteString(line + "\n")
		}
	}
	b.WriteString("$ nft\n" + sb.nftRules(t))
	b.WriteString("$ state files\n")
	_ = filepath.Walk(sb.Dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && !strings.Contains(path, "/.") {
			rel, _ := filepath.Rel(sb.Dir, path)
			b.WriteString(rel + "\n")
		}
		return nil
	})
	return b.String()
}

// NFTChain is one nftables chain of the node and how many rules it holds.
type NFTChain struct {
	Family byte
	Table  string
	Name   string
	Base   bool // hooked into the stack (prerouting, output, ...)
	Rules  int
}

// NFTChains lists every nftables chain of the node (iptables-nft's
// included), sorted by family, table and name.
func (sb *Sandbox) NFTChains(t testing.TB) []NFTChain {
	t.Helper()
	var out []NFTChain
	err := sb.Node.Do(func(ns.NetNS) error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		chains, err := c.ListChains()
		if err != nil {
			return err
		}
		for _, ch := range chains {
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return err
			}
			out = append(out, NFTChain{byte(ch.Table.Family), ch.Table.Name, ch.Name, ch.Hooknum != nil, len(rules)})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("nftables: %v", err)
	}
	slices.SortFunc(out, func(a, b NFTChain) int {
		return strings.Compare(fmt.Sprint(a.Family, a.Table, a.Name), fmt.Sprint(b.Family, b.Table, b.Name))
	})
	return out
}

func (sb *Sandbox) nftRules(t testing.TB) string {
	var b strings.Builder
	for _, c := range sb.NFTChains(t) {
		fmt.Fprintf(&b, "%d %s %s: %d rules\n", c.Family, c.Table, c.Name, c.Rules)
	}
	for _, s := range sb.NFTSets(t) {
		fmt.Fprintf(&b, "%d %s set %s: %d elements\n", s.Family, s.Table, s.Name, s.Elements)
	}
	return b.String()
}

// NFTSet is one nftables set or map of the node and how many elements it holds.
type NFTSet struct {
	Family   byte
	Table    string
	Name     string
	Elements int
}

// NFTSets lists every named nftables set and map of the node, sorted by
// family, table and name.
func (sb *Sandbox) NFTSets(t testing.TB) []NFTSet {
	t.Helper()
	var out []NFTSet
	err := sb.Node.Do(func(ns.NetNS) error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tables, err := c.ListTables()
		if err != nil {
			return err
		}
		for _, table := range tables {
			sets, err := c.GetSets(table)
			if err != nil {
				return err
			}
			for _, set := range sets {
				if set.Anonymous {
					continue
				}
				elems, err := c.GetSetElements(set)
				if err != nil {
					return err
				}
				out = append(out, NFTSet{byte(table.Family), table.Name, set.Name, len(elems)})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("nftables: %v", err)
	}
	slices.SortFunc(out, func(a, b NFTSet) int {
		return strings.Compare(fmt.Sprint(a.Family, a.Table, a.Name), fmt.Sprint(b.Family, b.Table, b.Name))
	})
	return out
}
