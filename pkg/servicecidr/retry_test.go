package servicecidr

import (
	"log/slog"
	"slices"
	"testing"
	"time"
)

func TestRetryWaits(t *testing.T) {
	r := newRetry(0, 0, slog.New(slog.DiscardHandler))
	var got []time.Duration
	for range 7 {
		got = append(got, r.next())
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	if !slices.Equal(got, want) {
		t.Errorf("waits %v, want %v", got, want)
	}
	r.succeeded()
	if d := r.next(); d != time.Second {
		t.Errorf("after a success the wait is %v, want 1s", d)
	}
}
