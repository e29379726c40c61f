package snptest_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/snp/snptest"
)

// TestNeverTrustedByDefault: a production verifier (AMD's real roots)
// refuses the fake's evidence, naming the chain; one given the fake's roots
// accepts it.
func TestNeverTrustedByDefault(t *testing.T) {
	f, err := snptest.New(snptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := f.Attester().Attest(t.Context(), [64]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	prod, _ := snp.New(snp.Config{})
	_, err = prod.Verify(t.Context(), ev)
	if !errors.Is(err, enclave.ErrInvalidEvidence) || !strings.Contains(err.Error(), "does not chain to the trusted AMD Milan roots") {
		t.Errorf("production verifier: %v", err)
	}
	test, _ := snp.New(f.Config())
	if _, err := test.Verify(t.Context(), ev); err != nil {
		t.Errorf("verifier with the fake's roots: %v", err)
	}
}

// TestOptionsChecked: options the fake cannot honour are refused.
func TestOptionsChecked(t *testing.T) {
	for name, o := range map[string]snptest.Options{
		"product":     {ProductLine: "Naples"},
		"signer":      {Signer: "ARK"},
		"measurement": {Measurement: make([]byte, 32)},
		"host data":   {HostData: make([]byte, 48)},
		"TCB":         {TCB: 0x80}, // boot loader 128
	} {
		if _, err := snptest.New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestSign: a report changed and re-signed verifies; changed and not
// re-signed, it does not.
func TestSign(t *testing.T) {
	f, _ := snptest.New(snptest.Options{})
	v, _ := snp.New(f.Config())
	r, err := f.Report([64]byte{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r[0x04] = 7 // GUEST_SVN
	ev := func() []byte {
		b, err := snp.Evidence{Report: r, Endorsement: f.Endorsement()}.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if _, err := v.Verify(t.Context(), ev()); err == nil {
		t.Error("changed report verified")
	}
	if err := f.Sign(r); err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(t.Context(), ev())
	if err != nil || c.SNP.GuestSVN != 7 {
		t.Errorf("re-signed: %v", err)
	}
	if err := f.Sign(r[:10]); err == nil {
		t.Error("signed a short report")
	}
}

// TestConcurrent: fakes are made and used from many goroutines (run with
// -race).
func TestConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			f, err := snptest.New(snptest.Options{VMPL: uint32(i % 4)})
			if err != nil {
				errs <- err
				return
			}
			v, _ := snp.New(f.Config())
			a := f.Attester()
			for range 4 {
				ev, err := a.Attest(t.Context(), [64]byte{byte(i)})
				if err == nil {
					_, err = v.Verify(t.Context(), ev)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
