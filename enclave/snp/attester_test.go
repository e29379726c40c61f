package snp_test

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/snp/snptest"
)

// TestAttesterUnsupported: where the machine is no SEV-SNP guest (no
// configfs-tsm, no /dev/sev-guest), NewAttester and NewPlatform fail with
// enclave.ErrUnsupported.
func TestAttesterUnsupported(t *testing.T) {
	for _, p := range []string{"/sys/kernel/config/tsm/report", "/dev/sev-guest"} {
		if _, err := os.Stat(p); err == nil {
			t.Skipf("%s exists: this may be an SEV-SNP guest", p)
		}
	}
	_, err := snp.NewAttester(snp.AttesterConfig{})
	if !errors.Is(err, enclave.ErrUnsupported) {
		t.Errorf("NewAttester = %v, want enclave.ErrUnsupported", err)
	}
	_, err = snp.NewPlatform(t.Context(), snp.AttesterConfig{}, snp.Config{})
	if !errors.Is(err, enclave.ErrUnsupported) {
		t.Errorf("NewPlatform = %v, want enclave.ErrUnsupported", err)
	}
}

// TestAttester: evidence from the fake source carries the report binding
// the report data and the VCEK or VLEK from the host's certificate table,
// and verifies; without a table it carries none.
func TestAttester(t *testing.T) {
	for _, signer := range []string{snp.SignerVCEK, snp.SignerVLEK} {
		f, err := snptest.New(snptest.Options{Signer: signer})
		if err != nil {
			t.Fatal(err)
		}
		rd := [64]byte{1, 2, 3}
		e, err := snp.ParseEvidence(mustAttest(t, f.Attester(), rd))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(e.Report[0x50:0x90], rd[:]) || !bytes.Equal(e.Endorsement, f.Endorsement()) {
			t.Errorf("%s: evidence does not hold the report data and the endorsement", signer)
		}
	}

	f, _ := snptest.New(snptest.Options{OmitEndorsement: true})
	e, err := snp.ParseEvidence(mustAttest(t, f.Attester(), [64]byte{}))
	if err != nil || e.Endorsement != nil {
		t.Fatalf("no table: %v, endorsement %d bytes", err, len(e.Endorsement))
	}
	v, _ := snp.New(snp.Config{Roots: f.Roots(), Endorsements: func(_, _ string, _ []byte, _ uint64) ([]byte, error) { return f.Endorsement(), nil }})
	if _, err := v.Verify(t.Context(), mustAttest(t, f.Attester(), [64]byte{})); err != nil {
		t.Errorf("with the endorsement from the cache: %v", err)
	}
}

// TestAttesterVMPL: the VMPL asked for reaches the source and the claims.
func TestAttesterVMPL(t *testing.T) {
	f, _ := snptest.New(snptest.Options{})
	two := uint(2)
	a, err := snp.NewAttester(snp.AttesterConfig{Source: f, VMPL: &two})
	if err != nil {
		t.Fatal(err)
	}
	v, _ := snp.New(f.Config())
	c, err := v.Verify(t.Context(), mustAttest(t, a, [64]byte{}))
	if err != nil || c.SNP.VMPL != 2 {
		t.Errorf("VMPL: %v %+v", err, c.SNP)
	}
	four := uint(4)
	if _, err := snp.NewAttester(snp.AttesterConfig{Source: f, VMPL: &four}); err == nil {
		t.Error("VMPL 4 accepted")
	}
}

// source is a ReportSource returning what it is told.
type source struct {
	report, table []byte
	err           error
}

func (s source) GetReport([64]byte, *uint) ([]byte, []byte, error) { return s.report, s.table, s.err }

// TestAttesterChecks: the attester refuses what a source must not return,
// and takes a padded report or certificate entry.
func TestAttesterChecks(t *testing.T) {
	f, _ := snptest.New(snptest.Options{})
	rd := [64]byte{4}
	report, table, err := f.GetReport(rd, nil)
	if err != nil {
		t.Fatal(err)
	}
	attest := func(s source) ([]byte, error) {
		a, err := snp.NewAttester(snp.AttesterConfig{Source: s})
		if err != nil {
			t.Fatal(err)
		}
		return a.Attest(t.Context(), rd)
	}
	padded := func(cert []byte) []byte {
		return abi.CertsFromProto(&spb.CertificateChain{VcekCert: append(append([]byte(nil), cert...), make([]byte, 100)...)}).Marshal()
	}
	for name, s := range map[string]source{
		"error":             {err: errors.New("device busy")},
		"short report":      {report: report[:100]},
		"other report data": {report: mustReport(t, f, [64]byte{5})},
		"garbage table":     {report: report, table: []byte{1, 2, 3}},
		"not a certificate": {report: report, table: abi.CertsFromProto(&spb.CertificateChain{VcekCert: []byte{0x30, 0x03, 1, 2, 3}}).Marshal()},
		"trailing garbage":  {report: report, table: abi.CertsFromProto(&spb.CertificateChain{VcekCert: append(append([]byte(nil), f.Endorsement()...), 1)}).Marshal()},
	} {
		if _, err := attest(s); err == nil {
			t.Errorf("%s: attested", name)
		}
	}
	for name, s := range map[string]source{
		"padded report": {report: append(append([]byte(nil), report...), make([]byte, 64)...), table: table},
		"padded entry":  {report: report, table: padded(f.Endorsement())},
		"no entry":      {report: report, table: abi.CertsFromProto(&spb.CertificateChain{ArkCert: f.Certificates().ARK.Raw}).Marshal()},
	} {
		ev, err := attest(s)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		e, _ := snp.ParseEvidence(ev)
		if want := name != "no entry"; (e.Endorsement != nil) != want || (want && !bytes.Equal(e.Endorsement, f.Endorsement())) {
			t.Errorf("%s: endorsement %d bytes", name, len(e.Endorsement))
		}
	}
}

func mustReport(t *testing.T, f *snptest.Fake, rd [64]byte) []byte {
	t.Helper()
	r, err := f.Report(rd, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPlatform: the platform attests and verifies, knows its measurement,
// and does not seal.
func TestPlatform(t *testing.T) {
	f, _ := snptest.New(snptest.Options{})
	p, err := f.Platform(t.Context(), f.Config())
	if err != nil {
		t.Fatal(err)
	}
	var _ enclave.Platform = p
	if p.Name() != "snp" || p.Simulated() || !bytes.Equal(p.Measurement(), snptest.DefaultMeasurement) {
		t.Errorf("name %q simulated %v measurement %x", p.Name(), p.Simulated(), p.Measurement())
	}
	c, err := p.Verify(t.Context(), mustAttest(t, p, [64]byte{8}))
	if err != nil || c.ReportData[0] != 8 {
		t.Errorf("attest and verify: %v", err)
	}
	if _, err := p.Seal([]byte("x"), nil); !errors.Is(err, enclave.ErrNoSealKey) {
		t.Errorf("Seal = %v", err)
	}
	if _, err := p.Unseal([]byte("x"), nil); !errors.Is(err, enclave.ErrNoSealKey) {
		t.Errorf("Unseal = %v", err)
	}
}
