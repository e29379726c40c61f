package snp_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/snp/snptest"
)

// wedgedSource is a guest interface that does not answer until released,
// as a wedged configfs-tsm or /dev/sev-guest would not.
type wedgedSource struct {
	f                *snptest.Fake
	entered, release chan struct{}
}

func (w wedgedSource) GetReport(rd [enclave.ReportDataSize]byte, vmpl *uint) ([]byte, []byte, error) {
	w.entered <- struct{}{}
	<-w.release
	return w.f.GetReport(rd, vmpl)
}

// TestAttestCancelled: a report the interface does not return is given up
// on once the caller's context is done, with an error wrapping its Err; the
// one report outstanding holds the interface, so the next caller waits for
// it only as long as its context lets it and asks for no second; once the
// interface answers, the attester serves again.
func TestAttestCancelled(t *testing.T) {
	f, err := snptest.New(snptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	src := wedgedSource{f: f, entered: make(chan struct{}, 4), release: make(chan struct{})}
	a, err := snp.NewAttester(snp.AttesterConfig{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-src.entered; cancel() }()
	if _, err := a.Attest(ctx, [64]byte{1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Attest, cancelled while the interface is wedged: %v", err)
	}
	short, stop := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer stop()
	if _, err := a.Attest(short, [64]byte{2}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Attest behind the wedged report: %v, want context.DeadlineExceeded", err)
	}
	if len(src.entered) != 0 {
		t.Fatal("a second report was asked for beside the wedged one")
	}
	close(src.release)
	ev, err := a.Attest(t.Context(), [64]byte{3})
	if err != nil {
		t.Fatal(err)
	}
	v, err := snp.New(f.Config())
	if err != nil {
		t.Fatal(err)
	}
	if c, err := v.Verify(t.Context(), ev); err != nil || c.ReportData[0] != 3 {
		t.Fatalf("once the interface answered: %v", err)
	}
}

// TestVerifyCancelled: Verify with a done context refuses nothing: its
// error wraps the context's Err, not enclave.ErrInvalidEvidence; an
// endorsement cache that does not answer is given up on the same way.
func TestVerifyCancelled(t *testing.T) {
	f, err := snptest.New(snptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := f.Attester().Attest(t.Context(), [64]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	v, err := snp.New(f.Config())
	if err != nil {
		t.Fatal(err)
	}
	done, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := v.Verify(done, ev); !errors.Is(err, context.Canceled) || errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Fatalf("Verify, cancelled: %v", err)
	}

	e, err := snp.ParseEvidence(ev)
	if err != nil {
		t.Fatal(err)
	}
	bare, err := snp.Evidence{Report: e.Report}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	cfg := f.Config()
	cfg.Endorsements = func(string, string, []byte, uint64) ([]byte, error) {
		entered <- struct{}{}
		<-release
		return f.Endorsement(), nil
	}
	if v, err = snp.New(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancelLookup := context.WithCancel(t.Context())
	go func() { <-entered; cancelLookup() }()
	_, err = v.Verify(ctx, bare)
	if !errors.Is(err, context.Canceled) || errors.Is(err, enclave.ErrInvalidEvidence) || errors.Is(err, enclave.ErrCollateral) {
		t.Fatalf("Verify, cancelled while the endorsement cache is wedged: %v", err)
	}
}
