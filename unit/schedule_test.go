package unit

import (
	"crypto/x509"
	"math"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/issuerclient"
)

func TestRenewalDelay(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(3 * time.Hour)}
	for _, tc := range []struct {
		now  time.Time
		want time.Duration
	}{
		{nb.Add(-time.Hour), 3 * time.Hour}, // clock behind the certificate
		{nb, 2 * time.Hour},
		{nb.Add(time.Hour), time.Hour},
		{nb.Add(2*time.Hour - time.Nanosecond), time.Nanosecond},
		{nb.Add(2 * time.Hour), 0},
		{nb.Add(150 * time.Minute), 0},
		{nb.Add(3 * time.Hour), 0},
		{nb.Add(1000 * time.Hour), 0},
	} {
		if got := RenewalDelay(tc.now, leaf); got != tc.want {
			t.Errorf("at %v: RenewalDelay = %v, want %v", tc.now.Sub(nb), got, tc.want)
		}
	}
	// A long lifetime: at two thirds, within float rounding.
	leaf = &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(30 * 24 * time.Hour)}
	if got, want := RenewalDelay(nb, leaf), 20*24*time.Hour; got < want-time.Microsecond || got > want+time.Microsecond {
		t.Errorf("30-day certificate: RenewalDelay = %v, want %v", got, want)
	}
	// A certificate whose NotAfter precedes its NotBefore is due at once.
	leaf = &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(-time.Hour)}
	if got := RenewalDelay(nb, leaf); got != 0 {
		t.Errorf("inverted certificate: RenewalDelay = %v, want 0", got)
	}
}

func TestBackoff(t *testing.T) {
	const lo, hi = 500 * time.Millisecond, 30 * time.Second
	for failures, want := range []time.Duration{
		500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, hi, hi, hi,
	} {
		if got := Backoff(failures, lo, hi); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", failures, got, want)
		}
	}
	for _, failures := range []int{-1, math.MinInt} {
		if got := Backoff(failures, lo, hi); got != lo {
			t.Errorf("Backoff(%d) = %v, want %v", failures, got, lo)
		}
	}
}

func TestBackoffNeverExceedsHi(t *testing.T) {
	for _, c := range []struct{ lo, hi time.Duration }{
		{time.Nanosecond, time.Duration(math.MaxInt64)},
		{time.Millisecond, time.Hour},
		{3 * time.Second, 7 * time.Second},
		{time.Second, time.Second},
		{time.Minute, time.Second}, // lo above hi: hi wins
	} {
		prev := time.Duration(0)
		for _, failures := range []int{0, 1, 2, 3, 10, 62, 63, 64, 100, 1 << 20, math.MaxInt} {
			got := Backoff(failures, c.lo, c.hi)
			if got <= 0 || got > c.hi {
				t.Fatalf("Backoff(%d, %v, %v) = %v, want in (0, hi]", failures, c.lo, c.hi, got)
			}
			if got < prev {
				t.Fatalf("Backoff(%d, %v, %v) = %v, less than for fewer failures (%v)", failures, c.lo, c.hi, got, prev)
			}
			prev = got
		}
		if got := Backoff(math.MaxInt, c.lo, c.hi); got != c.hi {
			t.Fatalf("Backoff(MaxInt, %v, %v) = %v, want hi", c.lo, c.hi, got)
		}
	}
}

func TestPairRenewalDelay(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	task := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(30 * time.Hour)}
	p := &issuerclient.Pair{Leaf: task}
	if got := PairRenewalDelay(nb, p); got != 20*time.Hour {
		t.Fatalf("task only: %v, want 20h", got)
	}
	// A group certificate that lives shorter, or was issued earlier, is due
	// first: the pair renews for it.
	p.Groups = map[string]*issuerclient.GroupPair{
		"long":  {Leaf: &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(300 * time.Hour)}},
		"short": {Leaf: &x509.Certificate{NotBefore: nb.Add(-2 * time.Hour), NotAfter: nb.Add(4 * time.Hour)}},
	}
	if got := PairRenewalDelay(nb, p); got != 2*time.Hour {
		t.Fatalf("with groups: %v, want 2h (the short group's two thirds)", got)
	}
}
