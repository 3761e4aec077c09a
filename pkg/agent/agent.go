// Package agent keeps the plugins' state on a node against what takes it
// away while pods run: a firewall reload flushing the nat table, an admin's
// `nft flush ruleset` or `ip link del eno1.host`, a network manager deleting
// routes. It watches for those and runs the plugins' own restores, in
// process, once per burst of events.
//
// Where the kernel tells, it listens: nftables events (iptables-nft writes
// nftables too) and link, address and route events (vishvananda/netlink).
// Where it cannot, it polls a canary, as kube-proxy does: an empty chain of
// ours in iptables-legacy's nat table, looked at every few seconds.
//
// It reacts to what is ours only, taken by others: our tables and chains
// and the base chains' jumps into them, our sub-devices and their
// addresses, our host routes. What others own (kube-proxy's chains,
// firewalld's tables, the links the reference macvlan moves into pods) and
// what our own verbs delete (a pod's chains and rules, the host route its
// DEL removes with its record) are no reason for a restore, nor for the
// back-off; a restore that finds everything there changes nothing.
package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// Restorer puts back what is missing of the plugins' state; out receives
// what it says it did.
type Restorer func(out io.Writer) error

// Config is what the agent watches and how it restores.
type Config struct {
	// Restore runs every plugin's restore.
	Restore Restorer
	// Settle is how long a burst of events must be quiet before the
	// restore runs (default 100ms): a flush deletes hundreds of rules.
	Settle time.Duration
	// CanaryEvery is how often the iptables-legacy canary is looked at
	// (default 5s); NoCanary turns the canary off.
	CanaryEvery time.Duration
	NoCanary    bool
	// BackoffWindow is how soon after a restore another one counts as
	// "in a row" (default 10s); BackoffMax bounds the wait between restores
	// while an admin keeps deleting what they put back (default 5 minutes).
	BackoffWindow, BackoffMax time.Duration
	// OwnsLink tells a link of ours (a sub-device) by its alias, as the
	// event of its deletion carries it: nil counts every link as ours.
	OwnsLink func(alias string) bool
	// Claimed tells whether a record still claims the host route (and the
	// pinned neighbour) of any of the pod addresses, once no verb is under
	// way: nil counts every one as claimed.
	Claimed func(pods []netip.Addr) bool
	// EventBuffer is each event socket's receive buffer in bytes (default
	// 64 MiB).
	EventBuffer int
	Log         *slog.Logger
}

// ownsLink tells whether the deleted link with alias was ours.
func (c Config) ownsLink(alias string) bool { return c.OwnsLink == nil || c.OwnsLink(alias) }

// ownsLinkIndex tells whether the link with index is ours; a link gone
// meanwhile is not (its own deletion is the event that counts).
func (c Config) ownsLinkIndex(index int) bool {
	link, err := netlink.LinkByIndex(index)
	return err == nil && c.ownsLink(link.Attrs().Alias)
}

// mastersOwnedLink tells whether the link with index is the master of one
// of ours.
func (c Config) mastersOwnedLink(index int) bool {
	links, err := netlink.LinkList()
	if err != nil {
		return true // cannot tell: a restore that finds all there is cheap
	}
	for _, l := range links {
		if l.Attrs().ParentIndex == index && c.ownsLink(l.Attrs().Alias) {
			return true
		}
	}
	return false
}

func (c *Config) defaults() {
	if c.Settle == 0 {
		c.Settle = 100 * time.Millisecond
	}
	if c.CanaryEvery == 0 {
		c.CanaryEvery = 5 * time.Second
	}
	if c.BackoffWindow == 0 {
		c.BackoffWindow = 10 * time.Second
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 5 * time.Minute
	}
	if c.EventBuffer == 0 {
		c.EventBuffer = defaultEventBuffer
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// Run watches until ctx ends, restoring once at the start (whatever went
// while no agent ran) and after every burst of events. It returns nil when
// ctx ends, or the error that kept a watcher from starting.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	q := newQueue()
	activity := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := watchNetlink(ctx, cfg, q); err != nil {
		return fmt.Errorf("netlink events: %w", err)
	}
	if err := watchNFTables(ctx, cfg, q, activity); err != nil {
		return fmt.Errorf("nftables events: %w", err)
	}
	if !cfg.NoCanary {
		go watchCanary(ctx, cfg, q)
	}
	cfg.Log.Info("watching", "settle", cfg.Settle, "canary", !cfg.NoCanary)
	q.send(trigger{reason: "start"})
	loop(ctx, cfg, q, activity)
	cfg.Log.Info("stopped")
	return nil
}

// loop runs the restore once per burst of triggers, with a back-off that
// doubles while bursts keep coming soon after a restore (someone deleting
// the same thing again and again) and resets after a quiet while.
//
// activity tells of deletions that are no reason for a restore by
// themselves (a pod's chains and rules) but show that a flush is still
// going on: iptables-nft flushes a large table in several transactions,
// the shared chains' first. A burst settles only when they stop too, and
// when they went on while a restore ran, that restore may have been undone
// by them: another runs.
func loop(ctx context.Context, cfg Config, q *queue, activity <-chan struct{}) {
	b := backoff{window: cfg.BackoffWindow}
	var pending []trigger
	racedFailures := 0 // restores in a row that failed while deletions went on
	// secondLook fires a second after a restore that events called for:
	// one more restore then, cheap when nothing is missing, finds what a
	// flush still going on took after the first.
	secondLook := time.NewTimer(time.Hour)
	secondLook.Stop()
	for {
		reasons := pending
		pending = nil
		looking := false
		if len(reasons) == 0 {
			select {
			case <-ctx.Done():
				return
			case r := <-q.ch:
				reasons = append(reasons, r)
			case <-secondLook.C:
				reasons, looking = append(reasons, trigger{reason: "a second look"}), true
			}
		}
		// A burst: wait until it has been quiet for Settle.
		quiet := time.NewTimer(cfg.Settle)
	burst:
		for {
			select {
			case <-ctx.Done():
				quiet.Stop()
				return
			case r := <-q.ch:
				reasons = append(reasons, r)
				quiet.Reset(cfg.Settle)
			case <-activity:
				quiet.Reset(cfg.Settle)
			case <-quiet.C:
				break burst
			}
		}
		// What its own DEL or GC deleted is no reason for a restore, nor
		// for the back-off.
		reasons = stillClaimed(reasons, cfg.Claimed)
		if q.dropped.Swap(false) {
			reasons = append(reasons, trigger{reason: "more events than the queue holds"})
		}
		if len(reasons) == 0 {
			continue
		}
		if wait := b.next(time.Now(), cfg.BackoffMax); wait > 0 && !looking {
			cfg.Log.Warn("restores keep being undone: backing off", "wait", wait, "restoresInARow", b.count)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			reasons = append(reasons, drain(q.ch)...)
		}
		drainActivity(activity)
		var out bytes.Buffer
		start := time.Now()
		err := cfg.Restore(&out)
		if !looking {
			b.ran(time.Now())
			secondLook.Reset(secondLookAfter)
		}
		deletedMeanwhile := drainActivity(activity)
		if deletedMeanwhile {
			pending = append(pending, trigger{reason: "deletions went on during the restore"})
		}
		// A restore that failed while more was being deleted (a reload
		// still going on) is followed by another: only that one's failure
		// is an error.
		raced := deletedMeanwhile || len(q.ch) > 0
		if err != nil && raced {
			racedFailures++
		} else {
			racedFailures = 0
		}
		attrs := []any{"after", summarize(reasons), "took", time.Since(start).Round(time.Millisecond)}
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if line != "" {
				attrs = append(attrs, "said", line)
			}
		}
		switch {
		case err != nil && raced && racedFailures < racedFailuresTold:
			cfg.Log.Warn("restore raced with deletions; another follows", append(attrs, "error", err)...)
		case err != nil:
			cfg.Log.Error("restore", append(attrs, "error", err)...)
		default:
			cfg.Log.Info("restore", attrs...)
		}
	}
}

// racedFailuresTold is how many restores in a row may fail while deletions
// go on before the failure is an error: one that fails whatever happens
// meanwhile (on a node where pods come and go all the time) must be said.
const racedFailuresTold = 3

// stillClaimed keeps the triggers that call for a restore: all but those
// of pod addresses, which only while a record still claims one of them
// (asked once, for all of them: the question waits for the verbs under
// way).
func stillClaimed(ts []trigger, claimed func([]netip.Addr) bool) []trigger {
	var pods []netip.Addr
	for _, t := range ts {
		if t.pod.IsValid() {
			pods = append(pods, t.pod)
		}
	}
	if len(pods) == 0 || claimed == nil || claimed(pods) {
		return ts
	}
	kept := ts[:0]
	for _, t := range ts {
		if !t.pod.IsValid() {
			kept = append(kept, t)
		}
	}
	return kept
}

// drainActivity empties activity and tells whether it held any.
func drainActivity(activity <-chan struct{}) bool {
	select {
	case <-activity:
		return true
	default:
		return false
	}
}

// secondLookAfter is when the second look follows an event's restore.
const secondLookAfter = time.Second

func drain(triggers <-chan trigger) []trigger {
	var out []trigger
	for {
		select {
		case r := <-triggers:
			out = append(out, r)
		default:
			return out
		}
	}
}

// summarize names the first few reasons of a burst and counts the rest.
func summarize(triggers []trigger) string {
	const most = 3
	reasons := make([]string, 0, most)
	for _, t := range triggers[:min(most, len(triggers))] {
		reasons = append(reasons, t.reason)
	}
	if len(triggers) <= most {
		return strings.Join(reasons, "; ")
	}
	return fmt.Sprintf("%s; and %d more events", strings.Join(reasons, "; "), len(triggers)-most)
}

// backoff spaces out restores that follow each other closely: each one
// within window of the last doubles the wait before the next, from
// backoffStart; a restore after a quiet window starts afresh.
type backoff struct {
	window time.Duration
	last   time.Time
	count  int // restores in a row, each within window of the last
}

const (
	backoffStart = time.Second
	// backoffFree is how many restores in a row run at once: a reload
	// takes things in a few steps, each an event.
	backoffFree = 3
)

// next is how long to wait before the restore about to run.
func (b *backoff) next(now time.Time, max time.Duration) time.Duration {
	if b.last.IsZero() || now.Sub(b.last) > b.window || b.count < backoffFree {
		return 0
	}
	wait := backoffStart << (b.count - backoffFree)
	if wait > max || wait <= 0 {
		wait = max
	}
	return wait
}

// ran records a restore at now.
func (b *backoff) ran(now time.Time) {
	if !b.last.IsZero() && now.Sub(b.last) <= b.window {
		b.count++
	} else {
		b.count = 1
	}
	b.last = now
}
