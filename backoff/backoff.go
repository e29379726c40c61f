// Package backoff is cohort's one schedule for trying again: waits that
// double from a floor to a ceiling, each drawn at random from the upper half
// of its step ("equal jitter"), so that a thousand units that lost the same
// server at the same instant do not come back to it in step.
//
// Guarantees: Delay(n) lies in [c/2, c], where c = Ceiling(n) = Min·2ⁿ
// capped at Max (c = Max for every n past the cap, and Min is at least a
// millisecond); the ceilings never decrease with n; the draw is the
// Policy's Rand, injected, or math/rand/v2's. Wait returns at ctx's end.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is a backoff: the first wait's ceiling, the ceiling of every wait,
// and the draw of the jitter.
type Policy struct {
	Min time.Duration // the ceiling of the first wait; below a millisecond counts as one
	Max time.Duration // the ceiling of every wait, at least a millisecond; below Min, it wins
	// Rand returns a number in [0, 1) for each wait; default
	// math/rand/v2's Float64. Tests fix it.
	Rand func() float64
}

// Ceiling is the longest wait before try number failures+1: Min doubled
// failures times, capped at Max.
func (p Policy) Ceiling(failures int) time.Duration {
	hi := max(p.Max, time.Millisecond)
	d := max(p.Min, time.Millisecond)
	for range failures {
		if d >= hi/2 {
			return hi
		}
		d *= 2
	}
	return min(d, hi)
}

// Delay is the wait before try number failures+1: at random between half
// of Ceiling(failures) and all of it.
func (p Policy) Delay(failures int) time.Duration {
	c := p.Ceiling(failures)
	draw := rand.Float64
	if p.Rand != nil {
		draw = p.Rand
	}
	r := draw()
	if !(r >= 0 && r < 1) { // a bad draw (NaN included) waits the ceiling
		r = 1
	}
	half := c / 2
	return half + time.Duration(r*float64(c-half))
}

// Wait waits d, or until ctx is done; it reports whether it waited d.
func Wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
