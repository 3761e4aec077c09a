package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/hostnet"
)

// trigger is an event that may call for a restore.
type trigger struct {
	reason string
	// pod, when valid, is the pod address whose host route or pinned
	// neighbour was deleted: a reason for a restore only if a record still
	// claims it once the burst has settled. One whose record went too was
	// deleted by its own DEL or GC.
	pod netip.Addr
}

// queue hands triggers from the watchers to the restore loop.
type queue struct {
	ch chan trigger
	// dropped tells of triggers that did not fit: not knowing whether
	// they were claimed, the loop restores unconditionally.
	dropped atomic.Bool
}

func newQueue() *queue { return &queue{ch: make(chan trigger, 1024)} }

// send hands t on without ever blocking a watcher.
func (q *queue) send(t trigger) {
	select {
	case q.ch <- t:
	default:
		q.dropped.Store(true)
	}
}

// defaultEventBuffer is the receive buffer of every event socket: the
// kernel drops what does not fit (and vishvananda/netlink then ends the
// subscription), and a flush of a node's worth of pods' routes or rules
// comes at once. Set with SO_RCVBUFFORCE, past the system's rmem_max (the
// agent has CAP_NET_ADMIN).
const defaultEventBuffer = 64 << 20

// watchNetlink triggers on one of our sub-devices deleted, an address
// deleted from one of them, or a host route of ours (proto 197) deleted.
// A subscription that ends (its socket overflowed: events were lost) is
// logged and started anew, with a restore for what the lost events said.
func watchNetlink(ctx context.Context, cfg Config, q *queue) error {
	sub, err := subscribeNetlink(ctx, cfg.EventBuffer)
	if err != nil {
		return err
	}
	go func() {
		for {
			lost := sub.read(ctx, cfg, q)
			sub.end()
			if ctx.Err() != nil {
				return
			}
			cfg.Log.Warn("netlink events lost; subscribing anew", "error", lost)
			for {
				if sub, err = subscribeNetlink(ctx, cfg.EventBuffer); err == nil {
					break
				}
				cfg.Log.Error("netlink events", "error", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
			q.send(trigger{reason: "netlink events were lost: " + lost})
		}
	}()
	return nil
}

// netlinkSub is one generation of the link, address and route
// subscriptions; stop ends all three.
type netlinkSub struct {
	links  chan netlink.LinkUpdate
	addrs  chan netlink.AddrUpdate
	routes chan netlink.RouteUpdate
	neighs chan netlink.NeighUpdate
	errs   chan string
	stop   context.CancelFunc
}

// end stops s and drains what its subscriptions still hand on:
// vishvananda/netlink blocks on a full channel, and a sender left blocked
// would never see its socket closed.
func (s *netlinkSub) end() {
	s.stop()
	go discard(s.links)
	go discard(s.addrs)
	go discard(s.routes)
	go discard(s.neighs)
}

// discard reads ch until it is closed.
func discard[T any](ch <-chan T) {
	for range ch {
	}
}

func subscribeNetlink(ctx context.Context, buffer int) (*netlinkSub, error) {
	ctx, stop := context.WithCancel(ctx)
	s := &netlinkSub{
		links:  make(chan netlink.LinkUpdate, 256),
		addrs:  make(chan netlink.AddrUpdate, 256),
		routes: make(chan netlink.RouteUpdate, 256),
		neighs: make(chan netlink.NeighUpdate, 256),
		errs:   make(chan string, 1),
		stop:   stop,
	}
	failed := func(err error) {
		select {
		case s.errs <- err.Error():
		default:
		}
	}
	err := netlink.LinkSubscribeWithOptions(s.links, ctx.Done(), netlink.LinkSubscribeOptions{
		ErrorCallback: failed, ReceiveBufferSize: buffer, ReceiveBufferForceSize: true})
	if err == nil {
		err = netlink.AddrSubscribeWithOptions(s.addrs, ctx.Done(), netlink.AddrSubscribeOptions{
			ErrorCallback: failed, ReceiveBufferSize: buffer, ReceiveBufferForceSize: true})
	}
	if err == nil {
		err = netlink.RouteSubscribeWithOptions(s.routes, ctx.Done(), netlink.RouteSubscribeOptions{
			ErrorCallback: failed, ReceiveBufferSize: buffer, ReceiveBufferForceSize: true})
	}
	if err == nil {
		err = netlink.NeighSubscribeWithOptions(s.neighs, ctx.Done(), netlink.NeighSubscribeOptions{
			ErrorCallback: failed, ReceiveBufferSize: buffer, ReceiveBufferForceSize: true})
	}
	if err != nil {
		stop()
		return nil, err
	}
	return s, nil
}

// read hands on what s's events say until ctx ends or a subscription
// ends, and returns why it ended.
func (s *netlinkSub) read(ctx context.Context, cfg Config, q *queue) (lost string) {
	ended := func(what string) string {
		select {
		case err := <-s.errs:
			return what + ": " + err
		default:
			return what + " ended"
		}
	}
	for {
		select {
		case <-ctx.Done():
			return ""
		case u, ok := <-s.links:
			if !ok {
				return ended("link events")
			}
			if t, ok := linkTrigger(cfg, u); ok {
				q.send(t)
			}
		case u, ok := <-s.addrs:
			if !ok {
				return ended("address events")
			}
			if t, ok := addrTrigger(cfg, u); ok {
				q.send(t)
			}
		case u, ok := <-s.routes:
			if !ok {
				return ended("route events")
			}
			if t, ok := routeTrigger(u); ok {
				q.send(t)
			}
		case u, ok := <-s.neighs:
			if !ok {
				return ended("neighbour events")
			}
			if t, ok := neighTrigger(cfg, u); ok {
				q.send(t)
			}
		}
	}
}

// linkTrigger is the trigger of one of our sub-devices deleted, or set
// down (which takes its routes and neighbour entries with no event of
// their own).
func linkTrigger(cfg Config, u netlink.LinkUpdate) (trigger, bool) {
	if !cfg.ownsLink(u.Attrs().Alias) {
		return trigger{}, false
	}
	switch {
	case u.Header.Type == unix.RTM_DELLINK:
		return trigger{reason: "link " + u.Attrs().Name + " deleted"}, true
	case u.Header.Type == unix.RTM_NEWLINK && u.IfInfomsg.Flags&unix.IFF_UP == 0:
		return trigger{reason: "link " + u.Attrs().Name + " down"}, true
	}
	return trigger{}, false
}

// addrTrigger is the trigger of a node address deleted from one of our
// sub-devices or from the master of one: the routes whose source it was
// go with it (some kernels say nothing of them). Addresses the kernel
// configures and expires by itself (IPv6 autoconfiguration, link-local
// ones) are not ours to keep.
func addrTrigger(cfg Config, u netlink.AddrUpdate) (trigger, bool) {
	if u.NewAddr || u.Scope != int(netlink.SCOPE_UNIVERSE) || u.Flags&unix.IFA_F_PERMANENT == 0 {
		return trigger{}, false
	}
	if !cfg.ownsLinkIndex(u.LinkIndex) && !cfg.mastersOwnedLink(u.LinkIndex) {
		return trigger{}, false
	}
	return trigger{reason: fmt.Sprintf("address %s deleted (link %d)", u.LinkAddress.String(), u.LinkIndex)}, true
}

// routeTrigger is the trigger of a deleted host route of ours: one a
// record still claims once the burst settles.
func routeTrigger(u netlink.RouteUpdate) (trigger, bool) {
	if u.Type != unix.RTM_DELROUTE || u.Protocol != hostnet.RouteProtocol || u.Dst == nil {
		return trigger{}, false
	}
	ip, ok := netip.AddrFromSlice(u.Dst.IP)
	if !ok {
		return trigger{}, false
	}
	ip = ip.Unmap()
	return trigger{reason: "host route to " + ip.String() + " deleted", pod: ip}, true
}

// neighTrigger is the trigger of a pod address's pinned (permanent)
// neighbour entry deleted from one of our sub-devices: one a record still
// claims once the burst settles.
func neighTrigger(cfg Config, u netlink.NeighUpdate) (trigger, bool) {
	if u.Type != unix.RTM_DELNEIGH || u.State&netlink.NUD_PERMANENT == 0 || !cfg.ownsLinkIndex(u.LinkIndex) {
		return trigger{}, false
	}
	ip, ok := netip.AddrFromSlice(u.IP)
	if !ok {
		return trigger{}, false
	}
	ip = ip.Unmap()
	return trigger{reason: "pinned neighbour " + ip.String() + " deleted", pod: ip}, true
}

// watchNFTables triggers on what a reload or an admin deletes of ours in
// nftables (which iptables-nft writes too); see nftReason.
func watchNFTables(ctx context.Context, cfg Config, q *queue, activity chan<- struct{}) error {
	log, buffer := cfg.Log, cfg.EventBuffer
	events, stop, err := monitorNFTables(buffer)
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
						q.send(trigger{reason: reason})
					} else if isDeletion(e) && inOurTables(e) {
						select {
						case activity <- struct{}{}:
						default:
						}
					}
					continue
				}
			}
			// The monitor ended (an error it cannot go on after): events
			// may have been lost meanwhile, so a new monitor, then a
			// restore for what they said.
			stop()
			log.Warn("nftables events lost; monitoring anew")
			for {
				if events, stop, err = monitorNFTables(buffer); err == nil {
					break
				}
				log.Error("nftables events", "error", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
			q.send(trigger{reason: "the nftables monitor ended; started anew"})
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
func monitorNFTables(buffer int) (<-chan *nftables.MonitorEvent, func(), error) {
	// The monitor's own socket, closed by stop: google/nftables does not
	// close it when the monitor ends by itself (an overflow), and a socket
	// left open stays subscribed, its buffer filling with every event.
	var sock *mdnetlink.Conn
	c, err := nftables.New(nftables.WithSockOptions(func(conn *mdnetlink.Conn) error {
		sock = conn
		raw, err := conn.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, buffer)
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
		if sock != nil {
			sock.Close()
		}
		return nil, nil, err
	}
	var once sync.Once
	return events, func() {
		once.Do(func() {
			mon.Close()
			sock.Close() // a second close (after mon's) only errs
		})
	}, nil
}

// Our nftables tables (portmap-lite's nftables backend, viaNode's reply
// paths) and iptables-nft's nat table, which holds our iptables chains and
// the base chains' jumps into them.
const (
	portmapTable  = "cnichain-portmap"
	viaNodeTable  = "cnichain-vianode"
	iptablesNAT   = "nat"
	ourChainStart = "CNI-LITE-"
)

// nftReason is why an nftables event calls for a restore, "" when it does
// not. Only what is ours counts: our tables, our chains (but a pod's own,
// which its DEL deletes), and the rules that lead into them: the base
// chains' jumps into ours, our dispatch chains' rules. Other owners'
// tables, chains and rules (kube-proxy's, firewalld's) come and go as they
// please.
func nftReason(e *nftables.MonitorEvent) string {
	if e.Type == nftables.MonitorEventTypeOOB && e.Error != nil {
		return "nftables monitor: " + e.Error.Error()
	}
	if !isDeletion(e) {
		return ""
	}
	switch d := e.Data.(type) {
	case *nftables.Table:
		if d != nil && (isOurTable(d.Name) || isIPTablesNAT(d)) {
			return "nftables table " + d.Name + " deleted"
		}
	case *nftables.Chain:
		if d != nil && ourChain(tableName(d.Table), d.Name) && !podOwned(d.Name) {
			return "nftables chain " + tableName(d.Table) + " " + d.Name + " deleted"
		}
	case *nftables.Rule:
		if d != nil && d.Chain != nil && ourRule(tableName(d.Table), d.Chain.Name, d.Exprs, e.Error != nil) {
			return "a rule of " + tableName(d.Table) + " " + d.Chain.Name + " deleted"
		}
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

// inOurTables tells a deletion in a table that holds ours: a pod's chains
// and rules going there show that a flush may still be under way.
func inOurTables(e *nftables.MonitorEvent) bool {
	var table, chain string
	switch d := e.Data.(type) {
	case *nftables.Chain:
		if d == nil {
			return false
		}
		table, chain = tableName(d.Table), d.Name
	case *nftables.Rule:
		if d == nil || d.Chain == nil {
			return false
		}
		table, chain = tableName(d.Table), d.Chain.Name
	default:
		return false
	}
	return isOurTable(table) || (table == iptablesNAT && strings.HasPrefix(chain, ourChainStart))
}

func isOurTable(name string) bool { return name == portmapTable || name == viaNodeTable }

// isIPTablesNAT tells iptables-nft's nat table of either family (others
// may call a table of theirs "nat" in the inet or bridge family).
func isIPTablesNAT(t *nftables.Table) bool {
	return t.Name == iptablesNAT && (t.Family == nftables.TableFamilyIPv4 || t.Family == nftables.TableFamilyIPv6)
}

func tableName(t *nftables.Table) string {
	if t == nil {
		return "?"
	}
	return t.Name
}

// ourChain tells the chains that are ours: every chain of our tables, and
// our chains (CNI-LITE-) and the base chains in iptables-nft's nat table.
func ourChain(table, chain string) bool {
	if isOurTable(table) {
		return true
	}
	return table == iptablesNAT && (strings.HasPrefix(chain, ourChainStart) || natBaseChain(chain))
}

// podOwned tells the chains a pod's DEL deletes: its DNAT and SNAT chains.
func podOwned(chain string) bool {
	return strings.HasPrefix(chain, "CNI-LITE-DN-") || strings.HasPrefix(chain, "CNI-LITE-SN-")
}

func natBaseChain(chain string) bool {
	switch chain {
	case "PREROUTING", "OUTPUT", "POSTROUTING":
		return true
	}
	return false
}

// ourRule tells a deleted rule that no pod's DEL deletes: in our tables,
// one of the base chains' or of our dispatch chains' (the rules that lead
// to every pod's); in iptables-nft's nat table, one of our shared chains'
// (their jumps into their buckets), or a base chain's jump into ours.
// A jump into a pod's own chain is its DEL's to delete, wherever it is
// (pods of earlier releases jumped from the dispatch chains directly).
// A base chain's rule whose expressions could not be read is counted as
// ours: a restore that finds all there changes nothing.
func ourRule(table, chain string, exprs []expr.Any, unreadable bool) bool {
	switch {
	case jumpsTo(exprs, podOwned):
		return false
	case isOurTable(table):
		switch chain {
		case "prerouting", "output", "postrouting", "hostports", "masq":
			return true
		}
		return false
	case table != iptablesNAT:
		return false
	case chain == "CNI-LITE-HOSTPORTS" || chain == "CNI-LITE-SNAT":
		return true
	case natBaseChain(chain):
		return unreadable || jumpsTo(exprs, func(c string) bool { return strings.HasPrefix(c, ourChainStart) })
	}
	return false
}

// jumpsTo tells whether a rule jumps (or goes) to a chain that is.
func jumpsTo(exprs []expr.Any, is func(chain string) bool) bool {
	for _, e := range exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) && is(v.Chain) {
			return true
		}
	}
	return false
}
