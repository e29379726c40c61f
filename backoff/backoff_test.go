package backoff

import (
	"context"
	"math"
	"testing"
	"time"
)

func fixed(r float64) func() float64 { return func() float64 { return r } }

func TestCeilingDoublesToMax(t *testing.T) {
	p := Policy{Min: 500 * time.Millisecond, Max: 30 * time.Second}
	for failures, want := range []time.Duration{
		500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, p.Max, p.Max, p.Max,
	} {
		if got := p.Ceiling(failures); got != want {
			t.Errorf("Ceiling(%d) = %v, want %v", failures, got, want)
		}
	}
	for _, failures := range []int{-1, math.MinInt} {
		if got := p.Ceiling(failures); got != p.Min {
			t.Errorf("Ceiling(%d) = %v, want %v", failures, got, p.Min)
		}
	}
}

func TestCeilingNeverExceedsMax(t *testing.T) {
	for _, c := range []Policy{
		{Min: time.Nanosecond, Max: time.Duration(math.MaxInt64)},
		{Min: time.Millisecond, Max: time.Hour},
		{Min: 3 * time.Second, Max: 7 * time.Second},
		{Min: time.Second, Max: time.Second},
		{Min: time.Minute, Max: time.Second}, // Min above Max: Max wins
	} {
		prev := time.Duration(0)
		for _, failures := range []int{0, 1, 2, 3, 10, 62, 63, 64, 100, 1 << 20, math.MaxInt} {
			got := c.Ceiling(failures)
			if got <= 0 || got > c.Max {
				t.Fatalf("%+v: Ceiling(%d) = %v, want in (0, Max]", c, failures, got)
			}
			if got < prev {
				t.Fatalf("%+v: Ceiling(%d) = %v, less than for fewer failures (%v)", c, failures, got, prev)
			}
			prev = got
		}
		if got := c.Ceiling(math.MaxInt); got != c.Max {
			t.Fatalf("%+v: Ceiling(MaxInt) = %v, want Max", c, got)
		}
	}
	if got := (Policy{}).Ceiling(5); got != time.Millisecond {
		t.Fatalf("zero Policy: Ceiling = %v, want a millisecond (never a busy loop)", got)
	}
}

// TestDelayIsJittered: each wait lies in the upper half of its ceiling, as
// the draw puts it, and a bad draw waits the ceiling.
func TestDelayIsJittered(t *testing.T) {
	p := Policy{Min: time.Second, Max: time.Minute}
	for _, c := range []struct {
		r    float64
		want time.Duration
	}{
		{0, 4 * time.Second}, {0.5, 6 * time.Second}, {0.999999, 8*time.Second - 4*time.Microsecond},
		{-1, 8 * time.Second}, {1, 8 * time.Second}, {math.NaN(), 8 * time.Second},
	} {
		p.Rand = fixed(c.r)
		if got := p.Delay(3); got != c.want {
			t.Errorf("Delay(3) with draw %v = %v, want %v", c.r, got, c.want)
		}
	}
}

// TestManyRetriersSpread: a thousand units that failed together, each
// drawing from the default source, do not retry in step.
func TestManyRetriersSpread(t *testing.T) {
	p := Policy{Min: 100 * time.Millisecond, Max: 30 * time.Second}
	c := p.Ceiling(4)
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := p.Delay(4)
		if d < c/2 || d > c {
			t.Fatalf("Delay(4) = %v, want in [%v, %v]", d, c/2, c)
		}
		lo, hi = min(lo, d), max(hi, d)
		seen[d] = true
	}
	if hi-lo < c/4 || len(seen) < 900 {
		t.Fatalf("1000 delays span %v to %v, %d distinct: retries would come in step", lo, hi, len(seen))
	}
}

func TestWait(t *testing.T) {
	if !Wait(context.Background(), time.Millisecond) {
		t.Fatal("Wait without cancellation did not wait")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Wait(ctx, time.Hour) {
		t.Fatal("Wait on a done context waited")
	}
}
