package snp_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/verify/testdata"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
)

// The real samples: enclave/testdata/tee-samples (see its README.md).
const samples = "../testdata/tee-samples/trustee"

// vlekTime is when the trustee VLEK sample's certificate is valid
// (2024-12-10 to 2025-12-10).
var vlekTime = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// sampleTime is when the samples' README says the VCEK samples verify
// ("now" when they were taken in): a fixed time, so that the tests do not
// begin to fail when the VCEKs expire (2029-09-24 and 2030-01-24).
var sampleTime = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

type sample struct {
	name          string
	report, cert  []byte
	now           time.Time // zero: the wall clock
	measurement   string
	reportVersion uint32
}

// readSample reads a file of the samples, failing (not skipping) when it is
// missing.
func readSample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(samples, name))
	if err != nil {
		t.Fatalf("sample %s missing (copy tee-samples into enclave/testdata): %v", name, err)
	}
	return b
}

func trusteeVCEK(t testing.TB) sample {
	return sample{
		name:          "trustee VCEK",
		report:        readSample(t, "snp_test-report.bin"),
		cert:          readSample(t, "snp_test-vcek.der"),
		now:           sampleTime,
		measurement:   "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
		reportVersion: 2,
	}
}

func trusteeVLEK(t testing.TB) sample {
	return sample{
		name:          "trustee VLEK",
		report:        readSample(t, "snp_test-vlek-report.bin"),
		cert:          readSample(t, "snp_test-vlek.der"),
		now:           vlekTime,
		measurement:   "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0",
		reportVersion: 3,
	}
}

// goSevGuest is go-sev-guest's own sample (verify/testdata): a Milan debug
// guest's report and its VCEK, valid to 2029-09-24.
func goSevGuest() sample {
	return sample{
		name:          "go-sev-guest",
		report:        testdata.AttestationBytes,
		cert:          testdata.VcekBytes,
		now:           sampleTime,
		measurement:   "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
		reportVersion: 2,
	}
}

func evidence(t testing.TB, report, cert []byte) []byte {
	t.Helper()
	b, err := snp.Evidence{Report: report, Endorsement: cert}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (s sample) evidence(t testing.TB) []byte { return evidence(t, s.report, s.cert) }

func (s sample) verifier(t testing.TB) *snp.Verifier {
	t.Helper()
	cfg := snp.Config{}
	if !s.now.IsZero() {
		cfg.Now = fixed(s.now)
	}
	v, err := snp.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

// mustRefuse checks that err is a refusal of evidence (wrapping
// enclave.ErrInvalidEvidence, and enclave.ErrCollateral when collateral is
// true) whose text names every one of words.
func mustRefuse(t testing.TB, err error, collateral bool, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("verified; want a refusal naming %q", words)
	}
	if !errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Errorf("refusal %q does not wrap enclave.ErrInvalidEvidence", err)
	}
	if got := errors.Is(err, enclave.ErrCollateral); got != collateral {
		t.Errorf("refusal %q: wraps enclave.ErrCollateral = %v, want %v", err, got, collateral)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("refusal %q does not name %q", err, w)
		}
	}
}

func copyOf(b []byte) []byte { return append([]byte(nil), b...) }
