package servicecidr

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/cnichain/plugins/pkg/install"
)

// conflistMode is an installed conflist's, as the installer writes it.
const conflistMode = 0o644

// Keeper keeps an installed conflist's viaNode in step with the cluster's
// ServiceCIDRs.
type Keeper struct {
	// Source is the conflist as given (a ConfigMap's): its own viaNode is
	// kept.
	Source []byte
	// Target is the installed file, rewritten on every change.
	Target string
	Client *Client
	Log    *slog.Logger
	// MinBackoff, MaxBackoff and IdleTimeout are the Watcher's.
	MinBackoff, MaxBackoff, IdleTimeout time.Duration
}

// NewKeeper checks that source has a macvlan-host-route plugin whose own
// viaNode the plugin takes (else the request cannot be met, or every pod's
// ADD would fail: an error now, naming the plugin and the value, rather
// than a log line later) and reaches the API server as a pod does.
func NewKeeper(source []byte, target string, log *slog.Logger) (*Keeper, error) {
	if _, err := Rewrite(source, nil); err != nil {
		return nil, err
	}
	cfg, err := InCluster(os.Getenv)
	if err != nil {
		return nil, err
	}
	client, err := NewClient(cfg)
	if err != nil {
		return nil, err
	}
	return &Keeper{Source: source, Target: target, Client: client, Log: log}, nil
}

// Initial is what to install before the API server answers, which it may
// do only once the node's kube-proxy runs: the installed file when it is
// Source rewritten with ServiceCIDRs (a restarted installer keeps the
// last it knew, so the pods started meanwhile reach the Services), else
// Source.
func (k *Keeper) Initial() []byte {
	installed, err := os.ReadFile(k.Target)
	if err == nil && IsRewriteOf(installed, k.Source) {
		return installed
	}
	return k.Source
}

// Run follows the ServiceCIDRs until ctx ends, writing Target (atomically,
// only when it differs) on every change of their union.
func (k *Keeper) Run(ctx context.Context) {
	if k.Log == nil {
		k.Log = slog.New(slog.DiscardHandler)
	}
	w := Watcher{Client: k.Client, OnChange: k.write, Log: k.Log, MinBackoff: k.MinBackoff, MaxBackoff: k.MaxBackoff, IdleTimeout: k.IdleTimeout}
	w.Run(ctx)
}

// write installs Source rewritten with prefixes, then warns of each prefix
// left out: once per change of the union, as the Watcher calls it. The
// log names the cluster's prefixes written, in any plugin's viaNode: not
// those left out, each warned of.
func (k *Keeper) write(prefixes []netip.Prefix) error {
	r, err := rewrite(k.Source, prefixes)
	if err != nil {
		return err
	}
	outcome, err := install.File(k.Target, r.out, conflistMode)
	if err != nil {
		return fmt.Errorf("install %s: %w", k.Target, err)
	}
	for _, err := range r.leftOut {
		k.Log.Warn("a ServiceCIDR's CIDR is left out of viaNode", "error", err)
	}
	strs := make([]string, len(r.added))
	for i, p := range r.added {
		strs[i] = p.String()
	}
	k.Log.Info("viaNode follows the cluster's ServiceCIDRs", "cidrs", strings.Join(strs, ","), "conflist", k.Target, "outcome", outcome)
	return nil
}
