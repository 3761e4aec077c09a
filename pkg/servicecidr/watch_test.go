package servicecidr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Wire forms, as the API server writes them.
const (
	kubernetesJSON = `{"kind":"ServiceCIDR","apiVersion":"networking.k8s.io/v1","metadata":{"name":"kubernetes","resourceVersion":"5"},"spec":{"cidrs":["10.96.0.0/12","fd00:10:96::/112"]},"status":{"conditions":[{"type":"Ready","status":"True"}]}}`
	gone410        = `{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 100 (150)","reason":"Expired","code":410}}`
)

func listJSON(rv string, items ...string) string {
	return fmt.Sprintf(`{"kind":"ServiceCIDRList","apiVersion":"networking.k8s.io/v1","metadata":{"resourceVersion":%q},"items":[%s]}`, rv, strings.Join(items, ","))
}

func objectJSON(name, rv, extraMeta string, cidrs ...string) string {
	return fmt.Sprintf(`{"metadata":{"name":%q,"resourceVersion":%q%s},"spec":{"cidrs":["%s"]}}`, name, rv, extraMeta, strings.Join(cidrs, `","`))
}

// unions collects what a Watcher hands on.
type unions struct {
	mu  sync.Mutex
	got [][]netip.Prefix
}

func (u *unions) onChange(p []netip.Prefix) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.got = append(u.got, p)
	return nil
}

// runWatcher runs w until stop is closed by the stand-in (or the test
// times out), then returns its log.
func runWatcher(t *testing.T, w *Watcher, stop <-chan struct{}) string {
	t.Helper()
	var logs bytes.Buffer
	w.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		w.Run(ctx)
		close(done)
	}()
	select {
	case <-stop:
	case <-time.After(10 * time.Second):
		t.Error("the stand-in's script did not run to its end")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not end with its context")
	}
	return logs.String()
}

// TestWatcher: a list, then a watch from its resourceVersion whose events
// change the union (a ServiceCIDR being deleted still counts, a bookmark
// changes nothing, one without a resourceVersion is ignored), then a 410
// ERROR event: a relist, whose new object
// joins the union, and a watch from the new list's resourceVersion. Each
// request carries the token of the moment.
func TestWatcher(t *testing.T) {
	var (
		mu       sync.Mutex
		requests []string
		lists    int
		watches  int
	)
	done := make(chan struct{})
	var api *standIn
	api = newStandIn(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests = append(requests, r.URL.Path+"?"+r.URL.RawQuery+" "+r.Header.Get("Authorization"))
		q := r.URL.Query()
		if r.URL.Path != Path || r.Method != http.MethodGet {
			mu.Unlock()
			t.Errorf("%s %s: not the ServiceCIDRs' GET", r.Method, r.URL)
			http.NotFound(w, r)
			return
		}
		if q.Get("watch") == "" {
			lists++
			n := lists
			mu.Unlock()
			if n == 1 {
				io.WriteString(w, listJSON("100", kubernetesJSON))
			} else {
				io.WriteString(w, listJSON("200", kubernetesJSON, objectJSON("late", "190", "", "10.200.0.0/16")))
			}
			return
		}
		watches++
		n := watches
		mu.Unlock()
		if timeout, err := strconv.Atoi(q.Get("timeoutSeconds")); err != nil || timeout < 300 || timeout >= 600 {
			t.Errorf("watch timeoutSeconds %q, want 5 to 10 minutes", q.Get("timeoutSeconds"))
		}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		if n > 1 {
			close(done)
			<-r.Context().Done()
			return
		}
		writeEvent(w, `{"type":"ADDED","object":`+objectJSON("extra", "101", "", "10.100.0.0/16", "not-a-cidr")+`}`)
		writeEvent(w, `{"type":"MODIFIED","object":`+objectJSON("extra", "102", `,"deletionTimestamp":"2026-01-01T00:00:00Z"`, "10.100.0.0/16", "not-a-cidr")+`}`)
		writeEvent(w, `{"type":"BOOKMARK","object":{"kind":"ServiceCIDR","metadata":{"resourceVersion":"103"}}}`)
		writeEvent(w, `{"type":"BOOKMARK","object":{"kind":"ServiceCIDR","metadata":{}}}`)
		writeEvent(w, `{"type":"DELETED","object":`+objectJSON("extra", "104", "", "10.100.0.0/16", "not-a-cidr")+`}`)
		// The kubelet rotates the token: the relist must send the new one.
		if err := os.WriteFile(api.cfg.TokenFile, []byte("token-2"), 0o600); err != nil {
			t.Error(err)
		}
		writeEvent(w, gone410)
	})
	var u unions
	logs := runWatcher(t, &Watcher{Client: api.client(t), OnChange: u.onChange, MinBackoff: time.Millisecond}, done)

	want := [][]netip.Prefix{
		prefixes("10.96.0.0/12", "fd00:10:96::/112"),                  // the first list
		prefixes("10.96.0.0/12", "10.100.0.0/16", "fd00:10:96::/112"), // ADDED, its bad CIDR left out
		prefixes("10.96.0.0/12", "fd00:10:96::/112"),                  // DELETED, not before
		prefixes("10.96.0.0/12", "10.200.0.0/16", "fd00:10:96::/112"), // the relist
	}
	if !reflect.DeepEqual(u.got, want) {
		t.Errorf("unions handed on:\n%v\nwant\n%v", u.got, want)
	}
	watchQuery := func(rv string) string {
		return "allowWatchBookmarks=true&resourceVersion=" + rv + "&timeoutSeconds="
	}
	wantRequests := []string{Path + "? Bearer token-1", Path + "?" + watchQuery("100"), Path + "? Bearer token-2", Path + "?" + watchQuery("200")}
	mu.Lock()
	defer mu.Unlock()
	if len(requests) != len(wantRequests) {
		t.Fatalf("requests %q, want %q", requests, wantRequests)
	}
	for i, r := range requests {
		if !strings.HasPrefix(r, wantRequests[i]) {
			t.Errorf("request %d: %q, want %q...", i, r, wantRequests[i])
		}
	}
	for i, token := range []string{"token-1", "token-1", "token-2", "token-2"} {
		if !strings.HasSuffix(requests[i], "&watch=1 Bearer "+token) && !strings.HasSuffix(requests[i], "? Bearer "+token) {
			t.Errorf("request %d: %q, want it to carry %s", i, requests[i], token)
		}
	}
	warnings := linesWith(logs, "level=WARN")
	if len(warnings) != 1 || !strings.Contains(warnings[0], `ServiceCIDR \"extra\" spec.cidrs[1] \"not-a-cidr\"`) {
		t.Errorf("warnings %q, want one naming extra's not-a-cidr: a 410 is routine", warnings)
	}
	if relist := linesWith(logs, "listing the ServiceCIDRs again"); len(relist) != 1 || !strings.Contains(relist[0], "ERROR event: 410 Expired: too old resource version") {
		t.Errorf("relists logged %q, want one for the 410", relist)
	}
	if ignored := linesWith(logs, "a BOOKMARK event without metadata.resourceVersion, ignored"); len(ignored) != 1 || !strings.Contains(ignored[0], "level=DEBUG") {
		t.Errorf("ignored bookmarks logged %q, want one, at debug", ignored)
	}
}

// TestWatcherRetries: an API server out of reach (503 three times), then
// a watch stream cut within an event, then a failing OnChange, then a
// watch ended at once with no event: each streak is one warning and one
// line once a watch delivers again, the waits double from the least and
// start anew only then, and the union missed is handed on again.
func TestWatcherRetries(t *testing.T) {
	var (
		mu    sync.Mutex
		times []time.Time
		end   sync.Once
	)
	done := make(chan struct{})
	bookmark := `{"type":"BOOKMARK","object":{"kind":"ServiceCIDR","metadata":{"resourceVersion":"1000"}}}`
	api := newStandIn(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		n := len(times)
		mu.Unlock()
		switch n {
		case 1, 2, 3: // out of reach
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"kind":"Status","status":"Failure","message":"the server is currently unable to handle the request","reason":"ServiceUnavailable","code":503}`)
		case 4, 6: // lists
			io.WriteString(w, listJSON(strconv.Itoa(n), kubernetesJSON))
		case 5: // a watch that delivers, then is cut within an event
			writeEvent(w, bookmark)
			io.WriteString(w, `{"type":"ADDED","object":{"metadata":{"na`)
		case 7: // a watch whose event OnChange fails on
			writeEvent(w, `{"type":"ADDED","object":`+objectJSON("extra", "300", "", "10.100.0.0/16")+`}`)
			<-r.Context().Done()
		case 8, 10: // lists
			io.WriteString(w, listJSON(strconv.Itoa(n), kubernetesJSON, objectJSON("extra", "300", "", "10.100.0.0/16")))
		case 9: // a watch ended at once, with no event: a failure, not a success
			w.WriteHeader(http.StatusOK)
		case 11: // a watch that delivers, then ends: routine
			writeEvent(w, bookmark)
		default:
			end.Do(func() { close(done) })
			<-r.Context().Done()
		}
	})
	var u unions
	failOnce := true
	onChange := func(p []netip.Prefix) error {
		if len(p) == 3 && failOnce {
			failOnce = false
			return errors.New("disk full")
		}
		return u.onChange(p)
	}
	const least = 20 * time.Millisecond
	logs := runWatcher(t, &Watcher{Client: api.client(t), OnChange: onChange, MinBackoff: least, MaxBackoff: 2 * least}, done)

	warnings := linesWith(logs, "level=WARN")
	wantWarnings := []string{
		"GET " + api.server.URL + Path + ": 503 ServiceUnavailable: the server is currently unable",
		"watch " + api.server.URL + Path + "?allowWatchBookmarks=true&resourceVersion=4&timeoutSeconds=",
		"10.100.0.0/16 fd00:10:96::/112]: disk full",
	}
	if len(warnings) != len(wantWarnings) {
		t.Fatalf("warnings %q, want one per streak: %q", warnings, wantWarnings)
	}
	for i, w := range warnings {
		if !strings.Contains(w, wantWarnings[i]) || !strings.Contains(w, "cannot follow the cluster's ServiceCIDRs yet") {
			t.Errorf("warning %q, want it to contain %q", w, wantWarnings[i])
		}
	}
	if !strings.Contains(warnings[1], "unexpected EOF") {
		t.Errorf("warning %q does not say the stream was cut", warnings[1])
	}
	if still := linesWith(logs, "still cannot follow"); len(still) != 3 || !strings.Contains(still[2], "the watch ended within 30s, with no event") {
		t.Errorf("failures after the first of a streak %q, want 3, the last the watch with no event", still)
	}
	again := linesWith(logs, "followed again")
	if len(again) != 3 || !strings.Contains(again[0], "failedAttempts=3") || !strings.Contains(again[1], "failedAttempts=1") || !strings.Contains(again[2], "failedAttempts=2") {
		t.Errorf("recoveries logged %q, want 3, after 3 failed attempts, then 1, then 2", again)
	}
	mu.Lock()
	defer mu.Unlock()
	// times[i] is request i+1: the waits before the 2nd, 3rd and 4th, and
	// before the list after the empty watch, which did not reset them.
	for i, least := range map[int]time.Duration{1: least, 2: 2 * least, 3: 2 * least, 9: 2 * least} {
		if gap := times[i].Sub(times[i-1]); gap < least {
			t.Errorf("request %d came %v after the one before, want at least %v", i+1, gap, least)
		}
	}
	full := prefixes("10.96.0.0/12", "10.100.0.0/16", "fd00:10:96::/112")
	if n := len(u.got); n < 2 || !reflect.DeepEqual(u.got[n-1], full) {
		t.Errorf("unions handed on %v, want the one OnChange failed on handed on again", u.got)
	}
}

// TestWatcherBacksOffFailingWatches: a watch that fails right after its
// headers, here with an ERROR 504 event every time, never resets the
// back-off: the waits between relists double, with one warning.
func TestWatcherBacksOffFailingWatches(t *testing.T) {
	const wantLists = 6
	var (
		mu    sync.Mutex
		lists []time.Time
		end   sync.Once
	)
	done := make(chan struct{})
	api := newStandIn(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("watch") != "" {
			writeEvent(w, `{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Timeout: request did not complete within the allotted timeout","reason":"Timeout","code":504}}`)
			return
		}
		mu.Lock()
		lists = append(lists, time.Now())
		n := len(lists)
		mu.Unlock()
		if n > wantLists {
			end.Do(func() { close(done) })
			<-r.Context().Done()
			return
		}
		io.WriteString(w, listJSON(strconv.Itoa(n), kubernetesJSON))
	})
	const least = 10 * time.Millisecond
	logs := runWatcher(t, &Watcher{Client: api.client(t), OnChange: new(unions).onChange, MinBackoff: least, MaxBackoff: time.Second}, done)

	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < wantLists; i++ {
		if gap, want := lists[i].Sub(lists[i-1]), least<<(i-1); gap < want {
			t.Errorf("list %d came %v after the one before, want at least %v: the waits grow", i+1, gap, want)
		}
	}
	if warnings := linesWith(logs, "level=WARN"); len(warnings) != 1 || !strings.Contains(warnings[0], "ERROR event: 504 Timeout") {
		t.Errorf("warnings %q, want one, of the 504", warnings)
	}
	if again := linesWith(logs, "followed again"); len(again) != 0 {
		t.Errorf("recoveries logged %q, want none", again)
	}
}

// TestWatcherIdle: a watch whose server sends its headers, then nothing
// (a connection gone without a reset), ends after IdleTimeout, and one
// whose events stop does so that long after the last: a relist follows
// each, without a warning. The bookmarks come idle/5 apart: a bookmark
// late by most of a second (a busy machine, -race) does not end the
// watch early.
func TestWatcherIdle(t *testing.T) {
	const idle = time.Second
	const apart = idle / 5
	var (
		mu      sync.Mutex
		lists   []time.Time
		watches []time.Time
	)
	done := make(chan struct{})
	api := newStandIn(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if r.URL.Query().Get("watch") == "" {
			lists = append(lists, time.Now())
			n := len(lists)
			mu.Unlock()
			if n > 2 {
				close(done)
				<-r.Context().Done()
				return
			}
			io.WriteString(w, listJSON(strconv.Itoa(n), kubernetesJSON))
			return
		}
		watches = append(watches, time.Now())
		n := len(watches)
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for range 3 * (n - 1) { // the second: three bookmarks, apart
			time.Sleep(apart)
			writeEvent(w, `{"type":"BOOKMARK","object":{"kind":"ServiceCIDR","metadata":{"resourceVersion":"7"}}}`)
		}
		<-r.Context().Done()
	})
	logs := runWatcher(t, &Watcher{Client: api.client(t), OnChange: new(unions).onChange, MinBackoff: time.Millisecond, IdleTimeout: idle}, done)

	mu.Lock()
	defer mu.Unlock()
	if len(lists) != 3 || len(watches) != 2 {
		t.Fatalf("%d lists and %d watches, want 3 and 2", len(lists), len(watches))
	}
	// Lower bounds alone: the client's idle timer starts after the server
	// began the watch, and is reset after each bookmark is sent.
	for i, want := range []time.Duration{idle, 3*apart + idle} {
		if gap := lists[i+1].Sub(watches[i]); gap < want {
			t.Errorf("watch %d ended %v after it began, want at least %v", i+1, gap, want)
		}
	}
	if ended := linesWith(logs, "nothing came for 1s"); len(ended) != 2 {
		t.Errorf("idle watches logged %q, want 2", ended)
	}
	if warnings := linesWith(logs, "level=WARN"); len(warnings) != 0 {
		t.Errorf("warnings %q, want none: an idle watch is relisted as a routine end", warnings)
	}
}

// TestWatcherSteadyByTime: a watch that sends nothing but stays open past
// steadyAfter is followed (the back-off starts anew), though it then ends.
// It stays open a second longer than steadyAfter: the client, starting its
// clock once it has the headers, may do so late on a busy machine.
func TestWatcherSteadyByTime(t *testing.T) {
	const steady = 100 * time.Millisecond
	var (
		mu  sync.Mutex
		n   int
		end sync.Once
	)
	done := make(chan struct{})
	api := newStandIn(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		req := n
		mu.Unlock()
		switch req {
		case 1:
			w.WriteHeader(http.StatusServiceUnavailable)
		case 2, 4:
			io.WriteString(w, listJSON(strconv.Itoa(req), kubernetesJSON))
		case 3:
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			time.Sleep(steady + time.Second)
		default:
			end.Do(func() { close(done) })
			<-r.Context().Done()
		}
	})
	logs := runWatcher(t, &Watcher{Client: api.client(t), OnChange: new(unions).onChange, MinBackoff: time.Millisecond, steadyAfter: steady}, done)
	if again := linesWith(logs, "followed again"); len(again) != 1 || !strings.Contains(again[0], "failedAttempts=1") {
		t.Errorf("recoveries logged %q, want one after the 503", again)
	}
	if warnings := linesWith(logs, "level=WARN"); len(warnings) != 1 {
		t.Errorf("warnings %q, want the 503's alone", warnings)
	}
}

func linesWith(logs, s string) []string {
	var out []string
	for line := range strings.Lines(logs) {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}
