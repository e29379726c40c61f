package sim

import (
	"context"
	"errors"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
)

// wedged is the simulated platform behind a device that does not answer
// until released, called as the hardware backends call theirs: through an
// enclave.Gate.
type wedged struct {
	*Platform
	gate             *enclave.Gate
	entered, release chan struct{}
}

func (w *wedged) Attest(ctx context.Context, rd [enclave.ReportDataSize]byte) ([]byte, error) {
	return enclave.Call(ctx, w.gate, "wedged sim", func() ([]byte, error) {
		w.entered <- struct{}{}
		<-w.release
		return w.Platform.Attest(context.WithoutCancel(ctx), rd)
	})
}

// TestCancelled: a done context stops Attest and Verify before they work,
// with an error wrapping its Err (and not ErrInvalidEvidence); behind a
// device that does not answer, Attest returns once its context is done.
func TestCancelled(t *testing.T) {
	p, err := New(Config{Identity: IssuerIdentity})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Attest(t.Context(), enclave.Bind("test"))
	if err != nil {
		t.Fatal(err)
	}
	done, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.Attest(done, enclave.Bind("test")); !errors.Is(err, context.Canceled) {
		t.Errorf("Attest, cancelled: %v", err)
	}
	for name, v := range map[string]enclave.Verifier{"platform": p, "verifier": Verifier()} {
		if _, err := v.Verify(done, ev); !errors.Is(err, context.Canceled) || errors.Is(err, enclave.ErrInvalidEvidence) {
			t.Errorf("%s: Verify, cancelled: %v", name, err)
		}
	}

	w := &wedged{Platform: p, gate: enclave.NewGate(1), entered: make(chan struct{}, 1), release: make(chan struct{})}
	ctx, cancelWedged := context.WithCancel(t.Context())
	go func() { <-w.entered; cancelWedged() }()
	if _, err := w.Attest(ctx, enclave.Bind("test")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Attest on a wedged device, cancelled: %v", err)
	}
	close(w.release)
	ev, err = w.Attest(t.Context(), enclave.Bind("again"))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := p.Verify(t.Context(), ev); err != nil || c.ReportData != enclave.Bind("again") {
		t.Fatalf("after the device answered: %v", err)
	}
}
