package snp_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/snp/snptest"
)

func fakeClaims(t *testing.T, o snptest.Options) enclave.Claims {
	t.Helper()
	f, err := snptest.New(o)
	if err != nil {
		t.Fatal(err)
	}
	v, err := snp.New(f.Config())
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(t.Context(), mustAttest(t, f.Attester(), [64]byte{}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustFail(t *testing.T, err error, kind error, words ...string) {
	t.Helper()
	var re *snp.RequirementsError
	if !errors.As(err, &re) || !errors.Is(err, kind) {
		t.Fatalf("Check = %v, want a *RequirementsError wrapping %v", err, kind)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("refusal %q does not name %q", err, w)
		}
	}
}

// TestRequirements: each per-task choice refuses, naming its reason, and
// accepts once allowed; on real samples where they have the property, else
// on the fake's claims.
func TestRequirements(t *testing.T) {
	m := snptest.DefaultMeasurement
	ok := snp.Requirements{Measurements: [][]byte{m}}
	base := fakeClaims(t, snptest.Options{})
	if err := ok.Check(base); err != nil {
		t.Fatalf("the fake's claims: %v", err)
	}

	other := bytes.Repeat([]byte{0xaa}, 48)
	mustFail(t, snp.Requirements{Measurements: [][]byte{other}}.Check(base), snp.ErrMeasurement, "measurement", "not one of")
	mustFail(t, snp.Requirements{}.Check(base), snp.ErrMeasurement, "accept none")

	debug := fakeClaims(t, snptest.Options{Debug: true})
	if !debug.Debug || debug.SNP.GuestPolicy&(1<<19) == 0 {
		t.Fatalf("debug fake: %+v", debug.SNP)
	}
	mustFail(t, ok.Check(debug), snp.ErrDebug, "debug")
	if err := (snp.Requirements{Measurements: [][]byte{m}, AllowDebug: true}).Check(debug); err != nil {
		t.Error(err)
	}

	smt := fakeClaims(t, snptest.Options{SMT: true})
	mustFail(t, ok.Check(smt), snp.ErrSMT, "SMT")
	if err := (snp.Requirements{Measurements: [][]byte{m}, AllowSMT: true}).Check(smt); err != nil {
		t.Error(err)
	}

	vmpl := fakeClaims(t, snptest.Options{VMPL: 2})
	mustFail(t, ok.Check(vmpl), snp.ErrVMPL, "VMPL 2")
	if err := (snp.Requirements{Measurements: [][]byte{m}, MaxVMPL: 2}).Check(vmpl); err != nil {
		t.Error(err)
	}

	hd := bytes.Repeat([]byte{5}, 32)
	host := fakeClaims(t, snptest.Options{HostData: hd})
	mustFail(t, snp.Requirements{Measurements: [][]byte{m}, HostData: make([]byte, 32)}.Check(host), snp.ErrHostData, "HOST_DATA")
	if err := (snp.Requirements{Measurements: [][]byte{m}, HostData: hd}).Check(host); err != nil {
		t.Error(err)
	}
	mustFail(t, snp.Requirements{Measurements: [][]byte{m}, HostData: hd[:31]}.Check(host), snp.ErrBadRequirements, "32")

	// Every failing reason is named, not only the first.
	err := snp.Requirements{Measurements: [][]byte{other}}.Check(debug)
	if !errors.Is(err, snp.ErrMeasurement) || !errors.Is(err, snp.ErrDebug) {
		t.Errorf("two reasons: %v", err)
	}

	// Claims of another platform.
	mustFail(t, ok.Check(enclave.Claims{Backend: enclave.PlatformSim, Simulated: true, UniqueID: m}), snp.ErrNotSNP, "sim")
}

// TestRequirementsMinTCB: on the trustee sample, a measurement not listed is
// refused naming it, and a REPORTED_TCB below MinTCB in any component is
// refused naming the component (its microcode is 0x73).
func TestRequirementsMinTCB(t *testing.T) {
	s := trusteeVCEK(t)
	c, err := s.verifier(t).Verify(t.Context(), s.evidence(t))
	if err != nil {
		t.Fatal(err)
	}
	other := snp.Requirements{Measurements: [][]byte{bytes.Repeat([]byte{1}, 48)}, AllowSMT: true, AllowProvisional: true}
	mustFail(t, other.Check(c), snp.ErrMeasurement, "measurement "+s.measurement+" is not one of the 1 accepted")

	r := snp.Requirements{Measurements: [][]byte{c.UniqueID}, AllowSMT: true, AllowProvisional: true}
	r.MinTCB = enclave.SNPTCB{BootLoader: 3, SNP: 8, Microcode: 0x73}
	if err := r.Check(c); err != nil {
		t.Errorf("at the minimum: %v", err)
	}
	r.MinTCB.Microcode = 0xd0
	mustFail(t, r.Check(c), snp.ErrTCB, "microcode 115 < 208")
	r.MinTCB = enclave.SNPTCB{SNP: 9, BootLoader: 4}
	mustFail(t, r.Check(c), snp.ErrTCB, "SNP 8 < 9", "boot loader 3 < 4")
	// FMC exists on Turin only: a minimum FMC does not refuse Milan.
	r.MinTCB = enclave.SNPTCB{FMC: 9}
	if err := r.Check(c); err != nil {
		t.Errorf("FMC minimum on Milan: %v", err)
	}
}

// TestTurinTCB: the fake Turin guest's TCB is decoded in Turin's layout,
// FMC included, and a minimum FMC is enforced there.
func TestTurinTCB(t *testing.T) {
	c := fakeClaims(t, snptest.Options{ProductLine: snp.ProductTurin})
	want := enclave.SNPTCB{FMC: 1, BootLoader: 4, TEE: 1, SNP: 22, Microcode: 0xd5, Raw: snptest.DefaultTCB(snp.ProductTurin)}
	if c.SNP.ProductLine != snp.ProductTurin || c.SNP.ReportedTCB != want || c.SNP.CurrentTCB != want {
		t.Fatalf("Turin claims: %+v", c.SNP)
	}
	r := snp.Requirements{Measurements: [][]byte{c.UniqueID}, MinTCB: enclave.SNPTCB{FMC: 1, SNP: 22}}
	if err := r.Check(c); err != nil {
		t.Error(err)
	}
	r.MinTCB.FMC = 2
	mustFail(t, r.Check(c), snp.ErrTCB, "FMC 1 < 2")
}
