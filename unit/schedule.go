package unit

import (
	"crypto/x509"
	"time"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/issuerclient"
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

// PairRenewalDelay is the wait before renewing a pair: the least
// RenewalDelay of its task certificate and its group certificates, which the
// issuer reissues each on its own schedule and may give other lifetimes.
func PairRenewalDelay(now time.Time, p *issuerclient.Pair) time.Duration {
	d := RenewalDelay(now, p.Leaf)
	for _, g := range p.Groups {
		d = min(d, RenewalDelay(now, g.Leaf))
	}
	return d
}

// retryIn is the wait before a unit's try number failures+1 of anything
// it retries: doubling from Config.RetryMin to RetryMax, jittered (package
// backoff), so that the units of a deployment do not retry in step.
func (u *Unit) retryIn(failures int) time.Duration {
	return backoff.Policy{Min: u.cfg.RetryMin, Max: u.cfg.RetryMax}.Delay(failures)
}
