package snp_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/snp/snptest"
)

// TestTurinFMCExtensionRefused: a Turin VCEK that carries the FMC SPL
// extension (OID 1.3.6.1.4.1.3704.1.3.9), as real ones do, is refused:
// go-sev-guest v0.15.0 does not know it, and the verifier fails closed
// rather than skip the certificate's TCB.
func TestTurinFMCExtensionRefused(t *testing.T) {
	f, err := snptest.New(snptest.Options{ProductLine: snp.ProductTurin})
	if err != nil {
		t.Fatal(err)
	}
	report, err := f.Report([64]byte{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	created := time.Now().Add(-24 * time.Hour)
	parts := kds.DecomposeTCBVersion(kds.TCBVersion(snptest.DefaultTCB(snp.ProductTurin)))
	fmc, _ := asn1.Marshal(1)
	exts := append(sevtest.CustomExtensions(parts, f.ChipID(), "", "Turin-B0"),
		pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 9}, Value: fmc})
	b := &sevtest.AmdSignerBuilder{
		Keys: sevtest.DefaultAmdKeys(), ProductName: "Turin-B0",
		ArkCreationTime: created, AskCreationTime: created, AsvkCreationTime: created, VcekCreationTime: created, VlekCreationTime: created,
		VcekCustom: sevtest.CertOverride{Extensions: exts},
	}
	chain, err := b.TestOnlyCertChain()
	if err != nil {
		t.Fatal(err)
	}
	roots := map[string][]*trust.AMDRootCerts{snp.ProductTurin: {{ProductLine: snp.ProductTurin, ProductCerts: &trust.ProductCerts{Ark: chain.Ark, Ask: chain.Ask}}}}
	v, err := snp.New(snp.Config{Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	// Without the extension (the fake's VCEK, same test keys) it verifies.
	if _, err := v.Verify(t.Context(), evidence(t, report, f.Endorsement())); err != nil {
		t.Fatalf("the VCEK without FMC: %v", err)
	}
	_, err = v.Verify(t.Context(), evidence(t, report, chain.Vcek.Raw))
	mustRefuse(t, err, false, "VCEK certificate's AMD extensions", "not an AMD KDS OID")
}

// forgery is a Milan chain (ARK, ASK, VCEK) with AMD's names and
// go-sev-guest's published test keys.
type forgery struct {
	roots    map[string][]*trust.AMDRootCerts
	ark, ask []byte
	vcek     []byte
	key      *ecdsa.PrivateKey
}

// forgeChain makes a forgery whose ARK and ASK carry the given subjects and
// whose VCEK certifies reportedTCB for chipID.
func forgeChain(t *testing.T, arkSubject, askSubject pkix.Name, reportedTCB uint64, chipID []byte) forgery {
	t.Helper()
	created := time.Now().Add(-24 * time.Hour)
	parts := kds.DecomposeTCBVersion(kds.TCBVersion(reportedTCB))
	b := &sevtest.AmdSignerBuilder{
		Keys:             sevtest.DefaultAmdKeys(),
		ProductName:      "Milan-B0",
		ArkCreationTime:  created,
		AskCreationTime:  created,
		AsvkCreationTime: created,
		VcekCreationTime: created,
		VlekCreationTime: created,
		ArkCustom:        sevtest.CertOverride{Subject: &arkSubject, Issuer: &arkSubject},
		AskCustom:        sevtest.CertOverride{Subject: &askSubject},
		VcekCustom:       sevtest.CertOverride{Extensions: sevtest.CustomExtensions(parts, chipID, "", "Milan-B0")},
	}
	chain, err := b.TestOnlyCertChain()
	if err != nil {
		t.Fatal(err)
	}
	return forgery{
		roots: map[string][]*trust.AMDRootCerts{"Milan": {{
			ProductLine:  "Milan",
			ProductCerts: &trust.ProductCerts{Ark: chain.Ark, Ask: chain.Ask},
		}}},
		ark:  chain.Ark.Raw,
		ask:  chain.Ask.Raw,
		vcek: chain.Vcek.Raw,
		key:  chain.Keys.Vcek,
	}
}

// sign re-signs report in place with the forged VCEK's key.
func (f forgery) sign(report []byte) error {
	d := sha512.Sum384(abi.SignedComponent(report))
	r, s, err := ecdsa.Sign(rand.Reader, f.key, d[:])
	if err != nil {
		return err
	}
	return abi.SetSignature(r, s, report)
}
