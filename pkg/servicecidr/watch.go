package servicecidr

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
)

// Path is the ServiceCIDRs' collection (cluster-scoped).
const Path = "/apis/networking.k8s.io/v1/servicecidrs"

// How long a list may take, and how long a watch runs before the server
// ends it (random, as client-go's, so the nodes' watches do not all end at
// once); grace is how much later the client gives up on one the server
// keeps open past it.
const (
	listTimeout     = 30 * time.Second
	minWatchTimeout = 5 * time.Minute
	watchGrace      = 30 * time.Second
)

// DefaultIdleTimeout ends a watch that sent nothing for so long: the API
// server sends a bookmark about once a minute, so a watch that silent is
// most likely on a connection gone without a reset, which would stall
// until the watch's own deadline (up to 10.5 minutes).
const DefaultIdleTimeout = 3 * time.Minute

// steadyWatch is how long a watch lives, with no event, before it counts
// as followed (the back-off starts anew): one ending sooner without an
// event is a failure, not a routine end, or a server that fails each
// watch right after its headers would be asked again at the least wait.
const steadyWatch = 30 * time.Second

// errWatchEnded is a watch the server ended (or the client, past its
// timeout or idle for IdleTimeout): routine, the watcher lists again.
var errWatchEnded = errors.New("the watch ended")

// errWatchEmpty is a watch that ended before it was steady, having sent
// no event: a failure, paced by the back-off.
var errWatchEmpty = fmt.Errorf("the watch ended within %v, with no event", steadyWatch)

// Watcher keeps the union of the cluster's ServiceCIDRs and hands it on at
// every change.
type Watcher struct {
	Client *Client
	// OnChange gets the union after the first list and whenever it
	// changes. Its error ends the watch; the relist that follows hands
	// the union on again.
	OnChange func([]netip.Prefix) error
	Log      *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before a relist
	// (DefaultMinBackoff and DefaultMaxBackoff where zero).
	MinBackoff, MaxBackoff time.Duration
	// IdleTimeout ends a watch that sends nothing, not even a bookmark,
	// for so long (DefaultIdleTimeout where zero).
	IdleTimeout time.Duration
	// steadyAfter is steadyWatch where zero; tests shorten it.
	steadyAfter time.Duration
}

// known is what the watcher knows of the cluster's ServiceCIDRs, and what
// it last handed on.
type known struct {
	byName map[string][]netip.Prefix
	// cidrs are each object's spec.cidrs as last read: an object whose
	// CIDRs did not change (a status update, a relist) is not parsed, nor
	// warned of, again.
	cidrs    map[string][]string
	told     []netip.Prefix
	toldOnce bool
}

// Run lists and watches until ctx ends. Whatever ends a watch (an ERROR
// event such as 410 Expired, the stream cut short, ended or idle, an HTTP
// error, a failed OnChange) leads to a relist, after a wait that doubles
// until a watch delivers an event or stays open for steadyWatch.
func (w *Watcher) Run(ctx context.Context) {
	log := w.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &known{byName: map[string][]netip.Prefix{}, cidrs: map[string][]string{}}
	r := newRetry(w.MinBackoff, w.MaxBackoff, log)
	for {
		err := w.listAndWatch(ctx, k, r, log)
		if ctx.Err() != nil {
			return
		}
		var status *StatusError
		if errors.Is(err, errWatchEnded) || errors.As(err, &status) && status.Code == http.StatusGone {
			log.Debug("listing the ServiceCIDRs again", "error", err)
		} else {
			r.failed(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(r.next()):
		}
	}
}

// listAndWatch lists the ServiceCIDRs, hands their union on, then follows
// a watch from the list's resourceVersion until it ends, which it returns
// the reason of. It tells r of success once the watch is steady: it
// delivered an event, or stayed open for steadyWatch.
func (w *Watcher) listAndWatch(ctx context.Context, k *known, r *retry, log *slog.Logger) error {
	rv, err := w.list(ctx, k, log)
	if err != nil {
		return err
	}
	if err := w.tell(k); err != nil {
		return err
	}
	timeout := minWatchTimeout + rand.N(minWatchTimeout)
	watchCtx, cancel := context.WithTimeout(ctx, timeout+watchGrace)
	defer cancel()
	path := watchPath(rv, timeout)
	body, err := w.Client.get(watchCtx, path)
	if err != nil {
		return err
	}
	defer body.Close()
	// Cancelling watchCtx ends a read the body is blocked in.
	idle := cmp.Or(w.IdleTimeout, DefaultIdleTimeout)
	var idled atomic.Bool
	idleTimer := time.AfterFunc(idle, func() {
		idled.Store(true)
		cancel()
	})
	defer idleTimer.Stop()
	started, steady := time.Now(), false
	err = w.follow(body, k, log, func(valid bool) {
		idleTimer.Reset(idle)
		if valid && !steady {
			steady = true
			r.succeeded()
		}
	})
	if !steady && time.Since(started) >= cmp.Or(w.steadyAfter, steadyWatch) {
		steady = true
		r.succeeded()
	}
	switch {
	case ctx.Err() != nil:
		// Stopping: the reason is of no interest.
	case idled.Load():
		err = fmt.Errorf("%w: nothing came for %v, not even a bookmark", errWatchEnded, idle)
	case watchCtx.Err() != nil:
		err = errWatchEnded // our own deadline: the server kept it open past its timeout
	case errors.Is(err, errWatchEnded) && !steady:
		err = errWatchEmpty
	}
	return fmt.Errorf("watch %s%s: %w", w.Client.base, path, err)
}

// list replaces what k knows with the cluster's ServiceCIDRs and returns
// the list's resourceVersion.
func (w *Watcher) list(ctx context.Context, k *known, log *slog.Logger) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	body, err := w.Client.get(ctx, Path)
	if err != nil {
		return "", err
	}
	defer body.Close()
	list, err := DecodeList(body)
	if err != nil {
		return "", fmt.Errorf("GET %s%s: %w", w.Client.base, Path, err)
	}
	listed := map[string]bool{}
	for _, obj := range list.Items {
		k.set(obj, log)
		listed[obj.Metadata.Name] = true
	}
	for name := range k.byName {
		if !listed[name] {
			k.delete(name)
		}
	}
	return list.Metadata.ResourceVersion, nil
}

// watchPath asks for the changes after resourceVersion rv, with bookmarks
// (they keep a quiet connection busy), ended by the server after timeout.
func watchPath(rv string, timeout time.Duration) string {
	return Path + "?" + url.Values{
		"watch":               {"1"},
		"allowWatchBookmarks": {"true"},
		"resourceVersion":     {rv},
		"timeoutSeconds":      {strconv.Itoa(int(timeout.Seconds()))},
	}.Encode()
}

// follow applies the events of a watch stream to k, handing the union on
// after each, until the stream ends (errWatchEnded) or fails. It calls
// seen at every event, valid unless it is an ERROR or a bookmark ignored.
func (w *Watcher) follow(stream io.Reader, k *known, log *slog.Logger, seen func(valid bool)) error {
	events := NewEventReader(stream)
	for {
		ev, err := events.Next()
		if errors.Is(err, io.EOF) {
			return errWatchEnded
		}
		if err != nil {
			return err
		}
		if ev.Type == Bookmark && ev.Object.Metadata.ResourceVersion == "" {
			// Nothing to resume from, which the watcher never does anyway:
			// no reason to end a watch that works.
			log.Debug("a BOOKMARK event without metadata.resourceVersion, ignored")
			seen(false)
			continue
		}
		seen(ev.Type != Error)
		switch ev.Type {
		case Error:
			return fmt.Errorf("ERROR event: %w", ev.Status)
		case Added, Modified:
			k.set(ev.Object, log)
		case Deleted:
			k.delete(ev.Object.Metadata.Name)
		}
		if err := w.tell(k); err != nil {
			return err
		}
	}
}

// set records obj's prefixes, warning of each CIDR left out.
func (k *known) set(obj ServiceCIDR, log *slog.Logger) {
	name := obj.Metadata.Name
	if old, ok := k.cidrs[name]; ok && slices.Equal(old, obj.Spec.CIDRs) {
		return
	}
	prefixes, errs := Prefixes(obj)
	for _, err := range errs {
		log.Warn("a ServiceCIDR's CIDR is left out of viaNode", "error", err)
	}
	k.byName[name], k.cidrs[name] = prefixes, obj.Spec.CIDRs
}

// delete forgets the ServiceCIDR name: it is gone.
func (k *known) delete(name string) {
	delete(k.byName, name)
	delete(k.cidrs, name)
}

// tell hands the union on when it differs from what was handed on last.
func (w *Watcher) tell(k *known) error {
	union := Union(k.byName)
	if k.toldOnce && slices.Equal(union, k.told) {
		return nil
	}
	if err := w.OnChange(union); err != nil {
		return fmt.Errorf("ServiceCIDRs %v: %w", union, err)
	}
	k.told, k.toldOnce = union, true
	return nil
}
