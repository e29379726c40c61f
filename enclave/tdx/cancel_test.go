package tdx

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
	"github.com/cohort-dev/cohort/enclave/tdx/tdxtest"
)

// TestAttestCancelled: a quote configfs-tsm does not return is given up on
// once the caller's context is done, with an error wrapping its Err; the
// one quote outstanding holds configfs-tsm, so the next caller waits for it
// only as long as its context lets it and asks for no second; once
// configfs-tsm answers, the attester serves again.
func TestAttestCancelled(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	entered, release := make(chan struct{}, 4), make(chan struct{})
	a, err := NewAttester(AttesterConfig{Client: fakeTSM(provider, func(in []byte) ([]byte, error) {
		entered <- struct{}{}
		<-release
		var rd [enclave.ReportDataSize]byte
		copy(rd[:], in)
		return s.Quote(tdxtest.DefaultTD(), rd)
	})})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-entered; cancel() }()
	if _, err := a.Attest(ctx, [64]byte{1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Attest, cancelled while configfs-tsm is wedged: %v", err)
	}
	short, stop := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer stop()
	if _, err := a.Attest(short, [64]byte{2}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Attest behind the wedged quote: %v, want context.DeadlineExceeded", err)
	}
	if len(entered) != 0 {
		t.Fatal("a second quote was asked for beside the wedged one")
	}
	close(release)
	q, err := a.Attest(t.Context(), [64]byte{3})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := newVerifier(t, Config{Root: s.Root()}).Verify(t.Context(), q); err != nil || c.ReportData[0] != 3 {
		t.Fatalf("once configfs-tsm answered: %v", err)
	}
}

// TestVerifyCancelled: Verify with a done context refuses nothing: its
// error wraps the context's Err, not enclave.ErrInvalidEvidence; collateral
// that does not come is given up on the same way.
func TestVerifyCancelled(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	q := fakeQuote(t, s, tdxtest.DefaultTD(), [64]byte{1})
	done, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := newVerifier(t, Config{Root: s.Root()}).Verify(done, q); !errors.Is(err, context.Canceled) || errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Fatalf("Verify, cancelled: %v", err)
	}

	entered, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	v := newVerifier(t, Config{Root: s.Root(), Collateral: func([]byte) (*pcs.Collateral, error) {
		entered <- struct{}{}
		<-release
		return nil, errors.New("released")
	}})
	ctx, cancelLookup := context.WithCancel(t.Context())
	go func() { <-entered; cancelLookup() }()
	_, err := v.Verify(ctx, q)
	if !errors.Is(err, context.Canceled) || errors.Is(err, enclave.ErrInvalidEvidence) || errors.Is(err, enclave.ErrCollateral) {
		t.Fatalf("Verify, cancelled while the collateral is wedged: %v", err)
	}
}
