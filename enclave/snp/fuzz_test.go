package snp_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/snp/snptest"
)

// seeds are the samples' evidence, with and without their certificates.
func seeds(f *testing.F) [][]byte {
	var out [][]byte
	for _, s := range []sample{trusteeVCEK(f), trusteeVLEK(f), goSevGuest()} {
		out = append(out, s.evidence(f), evidence(f, s.report, nil))
	}
	return out
}

// FuzzParseEvidence: ParseEvidence never panics, refuses with
// enclave.ErrInvalidEvidence, and what it accepts is the one encoding of
// what it returns.
func FuzzParseEvidence(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := snp.ParseEvidence(b)
		if err != nil {
			if !errors.Is(err, enclave.ErrInvalidEvidence) {
				t.Fatalf("refusal %v does not wrap ErrInvalidEvidence", err)
			}
			return
		}
		again, err := e.Marshal()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted evidence does not re-encode to itself: %v", err)
		}
	})
}

// FuzzVerify: Verify never panics, refuses with enclave.ErrInvalidEvidence,
// and accepts only evidence whose claims are its report's. It runs at
// 2025-06-01 (when every sample's certificate is valid) against AMD's roots
// and the fake's together, seeded with the samples and the fake's evidence.
func FuzzVerify(f *testing.F) {
	fake, err := snptest.New(snptest.Options{})
	if err != nil {
		f.Fatal(err)
	}
	roots := snp.DefaultRoots()
	for p, r := range fake.Roots() {
		roots[p] = append(roots[p], r...)
	}
	v, err := snp.New(snp.Config{Roots: roots, Now: fixed(vlekTime)})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Add(mustAttest(f, fake.Attester(), [64]byte{1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := v.Verify(t.Context(), b)
		if err != nil {
			if !errors.Is(err, enclave.ErrInvalidEvidence) {
				t.Fatalf("refusal %v does not wrap ErrInvalidEvidence", err)
			}
			return
		}
		e, err := snp.ParseEvidence(b)
		if err != nil {
			t.Fatalf("verified evidence does not parse: %v", err)
		}
		if c.Backend != enclave.PlatformSNP || c.SNP == nil || !bytes.Equal(c.UniqueID, e.Report[0x90:0xC0]) ||
			!bytes.Equal(c.ReportData[:], e.Report[0x50:0x90]) {
			t.Fatalf("claims are not the report's")
		}
	})
}
