package unit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
)

// Following the issuer's root. A unit asks the issuer every
// Config.RootCheck whether it still serves the root the unit holds; one
// it serves in its stead, which the held root vouches for (a rotation the
// administrators signed: issuerclient.VerifyVouchers), makes the unit renew
// at once, under the new root, and join its cluster again with the new
// chain. A unit whose certificate expires before it could renew serves
// neither HTTPS nor its cluster's channel under it, says so, and leaves its
// cluster until it has renewed.

// ErrExpired: the unit's certificate has expired and it has not renewed.
var ErrExpired = errors.New("unit: the certificate expired and is not renewed yet")

// checkRoot asks the issuer whether the root held is the one it serves. It
// reports whether the issuer serves a later root the held one vouches for.
func (u *Unit) checkRoot(ctx context.Context) bool {
	held := u.pair.Load().Root()
	trust, err := issuerclient.VerifyIssuer(ctx, u.issuerConfig(held))
	if err != nil {
		u.log.Debug("checking the issuer's root", "err", err)
		return false
	}
	if trust.Previous == nil {
		return false
	}
	u.log.Warn("the issuer's root was rotated: renewing under the new root", "root", fmt.Sprintf("%x", fingerprint(trust.Root.Raw)), "previous", fmt.Sprintf("%x", fingerprint(held.Raw)))
	return true
}

// adopted records a pair just obtained in place of old: a new root, or a
// pair after the last expired, has the unit join its cluster again.
func (u *Unit) adopted(old, pair *issuerclient.Pair) {
	rotated := old != nil && !bytes.Equal(old.Root().Raw, pair.Root().Raw)
	if u.expired.CompareAndSwap(true, false) {
		u.log.Info("renewed after the certificate expired: serving again", "not_after", pair.Leaf.NotAfter)
		rotated = true
	}
	if rotated {
		select {
		case u.rejoin <- struct{}{}:
		default:
		}
	}
}

// expire marks the pair expired, once: the unit stops serving under it
// and leaves its cluster until it renews.
func (u *Unit) expire(pair *issuerclient.Pair) {
	if !u.expired.CompareAndSwap(false, true) {
		return
	}
	u.log.Error("the certificate expired before it could be renewed: serving neither HTTPS nor the cluster's channel, and leaving the cluster, until it is renewed",
		"not_after", pair.Leaf.NotAfter)
	select {
	case u.rejoin <- struct{}{}:
	default:
	}
}

// notServing refuses a channel request while the certificate is expired.
func (u *Unit) notServing() *messages.Error {
	if !u.expired.Load() {
		return nil
	}
	return messages.Refusal(messages.CodeNotReady, "this unit's certificate expired at %s and is not renewed yet: another unit of the cluster serves you",
		u.pair.Load().Leaf.NotAfter.UTC().Format(time.RFC3339))
}

// untilExpiry is how long the pair's certificate remains valid.
func (u *Unit) untilExpiry() time.Duration {
	return u.pair.Load().Leaf.NotAfter.Sub(u.cfg.Now())
}

// fingerprint is the SHA-256 of a certificate.
func fingerprint(der []byte) []byte {
	h := sha256.Sum256(der)
	return h[:]
}
