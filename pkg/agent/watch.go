package agent

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/hostnet"
)

// send hands a reason to the restore loop without ever blocking a
// watcher: a full channel means a restore is coming anyway.
func send(triggers chan<- string, reason string) {
	select {
	case triggers <- reason:
	default:
	}
}

// watchNetlink triggers on a link deleted, an address deleted, or one of
// our host routes (proto 197) deleted.
func watchNetlink(ctx context.Context, triggers chan<- string) error {
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	failed := func(err error) { send(triggers, "netlink: "+err.Error()) }
	if err := netlink.LinkSubscribeWithOptions(links, ctx.Done(), netlink.LinkSubscribeOptions{ErrorCallback: failed}); err != nil {
		return err
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, ctx.Done(), netlink.AddrSubscribeOptions{ErrorCallback: failed}); err != nil {
		return err
	}
	if err := netlink.RouteSubscribeWithOptions(routes, ctx.Done(), netlink.RouteSubscribeOptions{ErrorCallback: failed}); err != nil {
		return err
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case u, ok := <-links:
				if !ok {
					return
				}
				if u.Header.Type == unix.RTM_DELLINK {
					send(triggers, "link "+u.Attrs().Name+" deleted")
				}
			case u, ok := <-addrs:
				if !ok {
					return
				}
				if !u.NewAddr {
					send(triggers, fmt.Sprintf("address %s deleted (link %d)", u.LinkAddress.String(), u.LinkIndex))
				}
			case u, ok := <-routes:
				if !ok {
					return
				}
				if u.Type == unix.RTM_DELROUTE && u.Protocol == hostnet.RouteProtocol && u.Dst != nil {
					send(triggers, "host route to "+u.Dst.String()+" deleted")
				}
			}
		}
	}()
	return nil
}

// watchNFTables triggers on what a reload or an admin deletes in
// nftables (which iptables-nft writes too): a table, a chain that is not a
// pod's own, a rule of a nat base chain or of our shared chains.
func watchNFTables(ctx context.Context, triggers chan<- string, activity chan<- struct{}) error {
	events, stop, err := monitorNFTables()
	if err != nil {
		return err
	}
	// One goroutine owns the monitor: it reads the events, closes the
	// monitor when ctx ends, and starts a new one when it ends by itself.
	go func() {
		for {
			select {
			case <-ctx.Done():
				stop()
				return
			case e, ok := <-events:
				if ok {
					if reason := nftReason(e); reason != "" {
						send(triggers, reason)
					} else if isDeletion(e) {
						select {
						case activity <- struct{}{}:
						default:
						}
					}
					continue
				}
			}
			// The monitor ended (an error it cannot go on after): events
			// may have been lost meanwhile, so a restore, and a new monitor.
			stop()
			send(triggers, "the nftables monitor ended; started anew")
			for {
				if events, stop, err = monitorNFTables(); err == nil {
					break
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
		}
	}()
	return nil
}

// monitorNFTables subscribes to every nftables event, on a socket whose
// receive buffer holds a flush of thousands of rules (a node's worth of
// pods): the kernel drops what does not fit, and google/nftables ends a
// monitor on that error. Every event, for google/nftables hands a batch out
// when the generation message that ends it arrives, which its narrower
// filters drop; nftReason keeps the deletions.
func monitorNFTables() (<-chan *nftables.MonitorEvent, func(), error) {
	c, err := nftables.New(nftables.WithSockOptions(func(conn *mdnetlink.Conn) error {
		raw, err := conn.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
		}); err != nil {
			return err
		}
		return serr
	}))
	if err != nil {
		return nil, nil, err
	}
	mon := nftables.NewMonitor(nftables.WithMonitorAction(nftables.MonitorActionAny), nftables.WithMonitorObject(nftables.MonitorObjectAny))
	events, err := c.AddMonitor(mon)
	if err != nil {
		return nil, nil, err
	}
	var once sync.Once
	return events, func() { once.Do(func() { mon.Close() }) }, nil
}

// nftReason is why an nftables event calls for a restore, "" when it does
// not: what a pod's own DEL deletes (its chains, its per-pod rules, its map
// elements), and other tables' churn, does not.
func nftReason(e *nftables.MonitorEvent) string {
	if e.Error != nil {
		return "nftables monitor: " + e.Error.Error()
	}
	if !isDeletion(e) {
		return ""
	}
	switch d := e.Data.(type) {
	case *nftables.Table:
		return "nftables table " + d.Name + " deleted"
	case *nftables.Chain:
		if podOwned(d.Name) {
			return ""
		}
		return "nftables chain " + tableName(d.Table) + " " + d.Name + " deleted"
	case *nftables.Rule:
		if d.Chain == nil || !watchedChain(d.Chain.Name) {
			return ""
		}
		return "a rule of " + tableName(d.Table) + " " + d.Chain.Name + " deleted"
	}
	return ""
}

// isDeletion tells a deletion of a table, chain or rule.
func isDeletion(e *nftables.MonitorEvent) bool {
	switch e.Type {
	case nftables.MonitorEventTypeDelTable, nftables.MonitorEventTypeDelChain, nftables.MonitorEventTypeDelRule:
		return true
	}
	return false
}

func tableName(t *nftables.Table) string {
	if t == nil {
		return "?"
	}
	return t.Name
}

// podOwned tells the chains a pod's DEL deletes: its DNAT and SNAT chains.
func podOwned(chain string) bool {
	return strings.HasPrefix(chain, "CNI-LITE-DN-") || strings.HasPrefix(chain, "CNI-LITE-SN-")
}

// watchedChain tells the chains whose rules no pod's DEL deletes: the nat
// base chains (the jumps into ours) and our shared chains' jumps into
// their buckets; a flush takes those.
func watchedChain(chain string) bool {
	switch chain {
	case "PREROUTING", "OUTPUT", "POSTROUTING", "prerouting", "output", "postrouting",
		"CNI-LITE-HOSTPORTS", "CNI-LITE-SNAT", "hostports", "masq":
		return true
	}
	return false
}

// canaryChain is an empty chain of ours in iptables-legacy's nat table: a
// flush of it (-F -X) takes the canary too, which tells what no event does.
const canaryChain = "CNI-LITE-CANARY"

// watchCanary looks at the canary in both families every CanaryEvery,
// where iptables-legacy holds our shared chain (a node whose pods use the
// legacy flavour; elsewhere the agent writes nothing there, for tools such
// as kube-proxy's iptables wrapper pick legacy or nft by which has rules):
// the canary is put in then, and a missing one is put back and triggers a
// restore.
func watchCanary(ctx context.Context, cfg Config, triggers chan<- string) {
	type family struct {
		ipt    *iptables.IPTables
		placed bool
	}
	var families []*family
	for _, fam := range []struct {
		proto iptables.Protocol
		bin   string
	}{{iptables.ProtocolIPv4, "iptables-legacy"}, {iptables.ProtocolIPv6, "ip6tables-legacy"}} {
		path, err := exec.LookPath(fam.bin)
		if err != nil {
			continue
		}
		ipt, err := iptables.New(iptables.IPFamily(fam.proto), iptables.Path(path))
		if err != nil {
			cfg.Log.Warn("canary", "binary", fam.bin, "error", err)
			continue
		}
		families = append(families, &family{ipt: ipt})
	}
	if len(families) == 0 {
		return
	}
	tick := time.NewTicker(cfg.CanaryEvery)
	defer tick.Stop()
	for {
		for _, f := range families {
			if !f.placed {
				if ok, err := f.ipt.ChainExists("nat", "CNI-LITE-HOSTPORTS"); err == nil && ok {
					f.placed = f.ipt.ClearChain("nat", canaryChain) == nil // creates it
				}
				continue
			}
			if ok, err := f.ipt.ChainExists("nat", canaryChain); err == nil && !ok {
				_ = f.ipt.NewChain("nat", canaryChain)
				send(triggers, "iptables-legacy canary "+canaryChain+" gone")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
