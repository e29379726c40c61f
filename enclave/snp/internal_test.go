package snp

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify"

	"github.com/cohort-dev/cohort/enclave"
)

func readTrustee(t *testing.T) (report, vcek []byte) {
	t.Helper()
	var err error
	if report, err = os.ReadFile("../testdata/tee-samples/trustee/snp_test-report.bin"); err != nil {
		t.Fatalf("sample missing: %v", err)
	}
	if vcek, err = os.ReadFile("../testdata/tee-samples/trustee/snp_test-vcek.der"); err != nil {
		t.Fatalf("sample missing: %v", err)
	}
	return report, vcek
}

// TestChainInAttestationIgnored (go-sev-guest #185): an attestation that
// brings its own forged ARK, ASK and VCEK (AMD's names, go-sev-guest's test
// keys; the real trustee report re-signed) fails go-sev-guest's verification
// with the options this package gives it, and, since v0.15.0, even with no
// trusted roots given at all.
func TestChainInAttestationIgnored(t *testing.T) {
	raw, _ := readTrustee(t)
	report, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	created := time.Now().Add(-24 * time.Hour)
	parts := kds.DecomposeTCBVersion(kds.TCBVersion(report.GetReportedTcb()))
	b := &sevtest.AmdSignerBuilder{
		Keys:             sevtest.DefaultAmdKeys(),
		ProductName:      "Milan-B0",
		ArkCreationTime:  created,
		AskCreationTime:  created,
		AsvkCreationTime: created,
		VcekCreationTime: created,
		VlekCreationTime: created,
		VcekCustom:       sevtest.CertOverride{Extensions: sevtest.CustomExtensions(parts, report.GetChipId(), "", "Milan-B0")},
	}
	chain, err := b.TestOnlyCertChain()
	if err != nil {
		t.Fatal(err)
	}
	forged := append([]byte(nil), raw...)
	d := sha512.Sum384(abi.SignedComponent(forged))
	r, s, err := ecdsa.Sign(rand.Reader, chain.Keys.Vcek, d[:])
	if err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(r, s, forged); err != nil {
		t.Fatal(err)
	}
	proto, err := abi.ReportToProto(forged)
	if err != nil {
		t.Fatal(err)
	}
	att := func() *spb.Attestation {
		return &spb.Attestation{Report: proto, CertificateChain: &spb.CertificateChain{
			ArkCert: chain.Ark.Raw, AskCert: chain.Ask.Raw, VcekCert: chain.Vcek.Raw,
		}}
	}
	v, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.SnpAttestationContext(context.Background(), att(), v.verifyOptions(time.Now())); err == nil {
		t.Error("go-sev-guest verified a forged chain with this package's options")
	}
	noRoots := v.verifyOptions(time.Now())
	noRoots.TrustedRoots = nil
	if err := verify.SnpAttestationContext(context.Background(), att(), noRoots); err == nil {
		t.Error("go-sev-guest verified a forged chain given no roots: the #185 bug (v0.14.x) is back")
	}
	// And through Verify, with the forged VCEK as the endorsement.
	_, err = v.verify(t.Context(), forged, chain.Vcek.Raw)
	if !errors.Is(err, enclave.ErrInvalidEvidence) || !strings.Contains(err.Error(), "does not chain to the trusted AMD Milan roots") {
		t.Errorf("Verify of the forgery: %v", err)
	}
}

// TestNoFetching: the options never let go-sev-guest fetch, and the getter
// it is given refuses every URL.
func TestNoFetching(t *testing.T) {
	v, _ := New(Config{})
	o := v.verifyOptions(time.Now())
	if !o.DisableCertFetching || o.CheckRevocations || o.Getter == nil || len(o.TrustedRoots) != 3 || o.Product != nil {
		t.Errorf("options %+v", o)
	}
	for _, u := range []string{"https://kdsintf.amd.com/vcek/v1/Milan/cert_chain", "https://kdsintf.amd.com/vcek/v1/Milan/crl"} {
		if b, err := o.Getter.Get(u); err == nil || b != nil {
			t.Errorf("getter fetched %s", u)
		}
		if b, err := (refuseGetter{}).GetContext(context.Background(), u); err == nil || b != nil {
			t.Errorf("getter fetched %s", u)
		}
	}
}

// TestEndorsementCache: a verified VCEK is kept, keyed by its DER; the
// cached verification is not used outside the VCEK's validity, and the cache
// stays bounded.
func TestEndorsementCache(t *testing.T) {
	raw, vcek := readTrustee(t)
	now := time.Now()
	v, _ := New(Config{Now: func() time.Time { return now }})
	if _, err := v.verify(t.Context(), raw, vcek); err != nil {
		t.Fatal(err)
	}
	if len(v.cache) != 1 {
		t.Fatalf("%d cached, want 1", len(v.cache))
	}
	var end *endorsement
	for _, e := range v.cache {
		end = e
	}
	if !end.notAfter.Equal(end.cert.NotAfter) || end.notBefore.Before(end.cert.NotBefore) {
		t.Errorf("cached window %v to %v, certificate %v to %v", end.notBefore, end.notAfter, end.cert.NotBefore, end.cert.NotAfter)
	}
	if _, err := v.verify(t.Context(), raw, vcek); err != nil {
		t.Fatalf("cached: %v", err)
	}
	// A changed report is refused on the cached path too.
	bad := append([]byte(nil), raw...)
	bad[0x90] ^= 1
	if _, err := v.verify(t.Context(), bad, vcek); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Errorf("changed report on the cached path: %v", err)
	}
	// Past the VCEK's validity the cache does not answer.
	now = end.cert.NotAfter.Add(time.Second)
	_, err := v.verify(t.Context(), raw, vcek)
	if !errors.Is(err, enclave.ErrCollateral) {
		t.Errorf("past the VCEK's validity: %v", err)
	}
	// Bounded.
	for i := range maxCached + 10 {
		var k cacheKey
		k.sum[0], k.sum[1] = byte(i), byte(i>>8)
		v.store(k, &endorsement{notBefore: time.Time{}, notAfter: now.Add(time.Hour)}, now)
	}
	if len(v.cache) > maxCached {
		t.Errorf("%d cached, at most %d", len(v.cache), maxCached)
	}
}

// TestDecodeTCB: Milan and Genoa put SNP in byte 6; Turin has FMC in byte 0
// and shifts the boot loader, TEE and SNP up by one.
func TestDecodeTCB(t *testing.T) {
	raw := uint64(0xd5_00_00_00_16_01_04_01)
	if got := DecodeTCB(ProductTurin, raw); got != (enclave.SNPTCB{FMC: 1, BootLoader: 4, TEE: 1, SNP: 0x16, Microcode: 0xd5, Raw: raw}) {
		t.Errorf("Turin: %+v", got)
	}
	raw = 0xd5_16_00_00_00_00_01_04
	for _, p := range []string{ProductMilan, ProductGenoa} {
		if got := DecodeTCB(p, raw); got != (enclave.SNPTCB{BootLoader: 4, TEE: 1, SNP: 0x16, Microcode: 0xd5, Raw: raw}) {
			t.Errorf("%s: %+v", p, got)
		}
	}
}
