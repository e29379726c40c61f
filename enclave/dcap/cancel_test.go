package dcap

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
)

// TestVerifyCancelled: Verify with a done context refuses nothing: its
// error wraps the context's Err, not enclave.ErrInvalidEvidence; collateral
// that does not come is given up on the same way.
func TestVerifyCancelled(t *testing.T) {
	w := newWorld(t)
	q := w.quote(t, quoteOpts{})
	done, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := w.verifier(t, worldNow).VerifyWith(done, q, w.collateral(t, collOpts{})); !errors.Is(err, context.Canceled) || errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Fatalf("VerifyWith, cancelled: %v", err)
	}

	entered, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	v, err := New(Config{Root: w.root.cert, Now: func() time.Time { return worldNow }, Collateral: func([]byte, string) (*pcs.Collateral, error) {
		entered <- struct{}{}
		<-release
		return nil, errors.New("released")
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancelLookup := context.WithCancel(t.Context())
	go func() { <-entered; cancelLookup() }()
	_, err = v.Verify(ctx, q)
	if !errors.Is(err, context.Canceled) || errors.Is(err, enclave.ErrInvalidEvidence) || errors.Is(err, enclave.ErrCollateral) {
		t.Fatalf("Verify, cancelled while the collateral is wedged: %v", err)
	}
}
