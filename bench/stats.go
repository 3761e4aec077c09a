// Package bench is `make bench`: our plugins and the reference ones timed
// side by side, interleaved in one run, inside the namespace sandbox.
package bench

import (
	"fmt"
	"slices"
	"time"
)

// series is the durations of one case.
type series struct {
	name string
	d    []time.Duration
}

func (s *series) quantile(q float64) time.Duration {
	if len(s.d) == 0 {
		return 0
	}
	d := slices.Clone(s.d)
	slices.Sort(d)
	return d[int(q*float64(len(d)-1)+0.5)]
}

func (s *series) median() time.Duration { return s.quantile(0.5) }
func (s *series) p90() time.Duration    { return s.quantile(0.9) }

// timed runs fn and returns how long it took; an error fails the bench.
func timed(fn func() error) (time.Duration, error) {
	start := time.Now()
	err := fn()
	return time.Since(start), err
}

// row compares our series with the reference's.
type row struct {
	section, name string
	ours, ref     *series
	oursLabel     string // e.g. "portmap-lite"; default "ours"
	refLabel      string
}

func (r row) ratio() float64 {
	if r.ref == nil || r.ref.median() == 0 {
		return 0
	}
	return float64(r.ours.median()) / float64(r.ref.median())
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }
