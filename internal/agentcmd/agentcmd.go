// Package agentcmd is the node agent's command line, shared by the
// cnichain-agent binary and the installer image's -agent mode: flags, logs,
// and the restores of our plugins that the agent runs.
package agentcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/signal"
	"syscall"
	"time"

	"github.com/cnichain/plugins/pkg/agent"
	"github.com/cnichain/plugins/pkg/iptbatch"
	"github.com/cnichain/plugins/plugins/macvlan-host-route/hostroute"
	"github.com/cnichain/plugins/plugins/portmap-lite/portmap"
)

// Flags are the agent's options.
type Flags struct {
	portmapDir, hostrouteDir, flavour string
	iptablesRoot                      string
	settle, canaryEvery               time.Duration
	backoffWindow, backoffMax         time.Duration
	noCanary                          bool
	eventBuffer                       int
}

// Register adds the agent's flags to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.portmapDir, "portmap-state-dir", portmap.DefaultStateDir, "portmap-lite's stateDir")
	fs.StringVar(&f.hostrouteDir, "hostroute-state-dir", hostroute.DefaultStateDir, "macvlan-host-route's stateDir")
	fs.StringVar(&f.iptablesRoot, "iptables-root", "", "run the iptables binaries of the node's root file system mounted here, chrooted into it (a container without iptables of its own)")
	fs.StringVar(&f.flavour, "iptables-flavour", "", `"legacy" or "nft": the iptablesFlavour of records of releases that did not keep theirs`)
	fs.DurationVar(&f.settle, "settle", 100*time.Millisecond, "how long a burst of events must be quiet before a restore")
	fs.DurationVar(&f.canaryEvery, "canary-every", 5*time.Second, "how often the iptables-legacy canary is looked at")
	fs.BoolVar(&f.noCanary, "no-canary", false, "no iptables-legacy canary")
	fs.DurationVar(&f.backoffWindow, "backoff-window", 10*time.Second, "how soon after a restore another counts as in a row: from the fourth in a row, each waits twice as long")
	fs.DurationVar(&f.backoffMax, "backoff-max", 5*time.Minute, "the longest wait between restores that keep being undone")
	fs.IntVar(&f.eventBuffer, "event-buffer", 64<<20, "each event socket's receive buffer, in bytes")
}

// Run runs the agent until SIGTERM or SIGINT, logging to logs.
func (f *Flags) Run(logs io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return f.RunContext(ctx, logs)
}

// RunContext runs the agent until ctx ends: the installer's, which a
// signal ends for all it runs beside the agent.
func (f *Flags) RunContext(ctx context.Context, logs io.Writer) error {
	log := slog.New(slog.NewTextHandler(logs, nil))
	if f.iptablesRoot != "" {
		iptbatch.SetRoot(f.iptablesRoot)
	}
	return agent.Run(ctx, agent.Config{
		Restore:       f.restore,
		Settle:        f.settle,
		CanaryEvery:   f.canaryEvery,
		NoCanary:      f.noCanary,
		BackoffWindow: f.backoffWindow,
		BackoffMax:    f.backoffMax,
		OwnsLink:      hostroute.OwnsLink,
		Claimed:       func(pods []netip.Addr) bool { return hostroute.Claimed(f.hostrouteDir, pods) },
		EventBuffer:   f.eventBuffer,
		Log:           log,
	})
}

// restore runs macvlan-host-route's restore, then portmap-lite's: the
// routes first, for route_localnet goes on the link towards a pod.
func (f *Flags) restore(out io.Writer) error {
	return errors.Join(
		hostroute.Restore(f.hostrouteDir, out),
		portmap.Restore(f.portmapDir, f.flavour, out))
}

// Main is `cnichain-agent [flags]`; it returns the exit status.
func Main(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("cnichain-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f Flags
	f.Register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := f.Run(stderr); err != nil {
		fmt.Fprintln(stderr, "cnichain-agent:", err)
		return 1
	}
	return 0
}
