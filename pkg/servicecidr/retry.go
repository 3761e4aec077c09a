package servicecidr

import (
	"log/slog"
	"time"
)

// Default waits before a relist: doubling from a second, up to half a
// minute, as the API server may be out of reach for a while (the node's
// kube-proxy not running yet).
const (
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 30 * time.Second
)

// retry paces the relists and keeps the log short: one warning when the
// API server stops answering, one line when it answers again, however
// many attempts lie between.
type retry struct {
	min, max, wait time.Duration
	failures       int
	log            *slog.Logger
}

// newRetry waits from lo to hi (the defaults where zero).
func newRetry(lo, hi time.Duration, log *slog.Logger) *retry {
	if lo <= 0 {
		lo = DefaultMinBackoff
	}
	if hi <= 0 {
		hi = DefaultMaxBackoff
	}
	hi = max(hi, lo)
	return &retry{min: lo, max: hi, wait: lo, log: log}
}

// succeeded resets the wait: a watch is steady, the cluster followed.
func (r *retry) succeeded() {
	r.wait = r.min
	if r.failures > 0 {
		r.log.Info("the cluster's ServiceCIDRs are followed again", "failedAttempts", r.failures)
		r.failures = 0
	}
}

// failed counts an attempt that got no answer to follow, warning at the
// first of a streak only.
func (r *retry) failed(err error) {
	r.failures++
	if r.failures == 1 {
		r.log.Warn("cannot follow the cluster's ServiceCIDRs yet; retrying quietly until it can", "error", err)
	} else {
		r.log.Debug("still cannot follow the cluster's ServiceCIDRs", "error", err, "failedAttempts", r.failures)
	}
}

// next is how long to wait before the next relist; each call doubles
// the one after, up to max.
func (r *retry) next() time.Duration {
	d := r.wait
	r.wait = min(2*r.wait, r.max)
	return d
}
