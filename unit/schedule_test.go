package unit

import (
	"crypto/x509"
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
