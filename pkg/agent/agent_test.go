package agent

import (
	"testing"
	"time"
)

// TestBackoff: three restores in a row run at once, then each waits twice
// as long as the one before, up to the bound; a quiet window starts afresh.
func TestBackoff(t *testing.T) {
	b := backoff{window: 10 * time.Second}
	now := time.Unix(1000, 0)
	var waits []time.Duration
	for range 8 {
		w := b.next(now, 10*time.Second)
		waits = append(waits, w)
		now = now.Add(w + time.Second) // deleted again a second after each restore
		b.ran(now)
	}
	want := []time.Duration{0, 0, 0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
	if w := b.next(now.Add(11*time.Second), 10*time.Second); w != 0 {
		t.Fatalf("after a quiet window: wait %v, want none", w)
	}
}

func TestSummarize(t *testing.T) {
	if got := summarize([]trigger{{reason: "a"}, {reason: "b"}, {reason: "c"}, {reason: "d"}, {reason: "e"}}); got != "a; b; c; and 2 more events" {
		t.Fatalf("summarize = %q", got)
	}
}
