package unit

import (
	"crypto/x509"
	"time"
)

// renewShare is the share of a certificate's lifetime after which a unit
// renews it.
const renewShare = 2.0 / 3.0

// RenewalDelay is how long after now a unit renews a certificate: at two
// thirds of its lifetime, or at once if that is past.
func RenewalDelay(now time.Time, leaf *x509.Certificate) time.Duration {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	at := leaf.NotBefore.Add(time.Duration(float64(life) * renewShare))
	return max(at.Sub(now), 0)
}

// Backoff is the wait before retry number failures+1: doubling from lo,
// capped at hi.
func Backoff(failures int, lo, hi time.Duration) time.Duration {
	d := max(lo, time.Millisecond)
	for range failures {
		if d >= hi/2 {
			return hi
		}
		d *= 2
	}
	return min(d, hi)
}
