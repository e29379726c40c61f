package tdxtest

import (
	"strings"
	"testing"

	"github.com/google/go-tdx-guest/abi"
	gpcs "github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify"

	"github.com/cohort-dev/cohort/enclave/pcs"
)

// TestChainShape: the fake's chain has the shape go-tdx-guest requires of
// Intel's (names, six PCK extensions, the SGX extension's values), and its
// root says it is not Intel's.
func TestChainShape(t *testing.T) {
	s, err := New(Config{PCESVN: 9, QESVN: 3})
	if err != nil {
		t.Fatal(err)
	}
	root := s.Root()
	if !strings.Contains(root.Subject.String(), "O=cohort TEST Intel root — not Intel") || root.Subject.CommonName != "Intel SGX Root CA" {
		t.Errorf("root subject %q", root.Subject)
	}
	if root.Equal(pcs.IntelRoot()) {
		t.Fatal("the fake's root is Intel's")
	}
	if n := len(s.PCKCertificate().Extensions); n != 6 {
		t.Errorf("PCK certificate has %d extensions, want 6", n)
	}
	ext, err := gpcs.PckCertificateExtensions(s.PCKCertificate())
	if err != nil {
		t.Fatal(err)
	}
	if ext.FMSPC != "00c0ffee0000" || ext.TCB.PCESvn != 9 || ext.PCEID != "0000" || ext.TCB.CPUSvnComponents[0] != DefaultCPUSVN[0] {
		t.Errorf("SGX extensions %+v", ext)
	}
	td := DefaultTD()
	td.Version = 5
	q, err := s.Quote(td, [64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := abi.QuoteToProto(q)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := verify.ExtractChainFromQuote(p)
	if err != nil || !chain.RootCertificate.Equal(root) || !chain.PCKCertificate.Equal(s.PCKCertificate()) {
		t.Fatalf("the quote's chain: %v", err)
	}
	if _, err := s.Quote(TD{Version: 6}, [64]byte{}); err == nil {
		t.Error("a version 6 quote")
	}
}

// TestCollateralLayout: the fake's collateral survives cohort's QVL layout
// (what collateral.Dir stores).
func TestCollateralLayout(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Collateral(CollateralConfig{Platform: "SWHardeningNeeded", Advisories: []string{"INTEL-SA-00001"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.MarshalQVL()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := pcs.ParseQVL(b)
	if err != nil || string(c2.TCBInfo) != string(c.TCBInfo) || string(c2.PCKCRL) != string(c.PCKCRL) {
		t.Fatalf("round trip: %v", err)
	}
	if !strings.Contains(string(c.TCBInfo), `"fmspc":"00C0FFEE0000"`) || !strings.Contains(string(c.TCBInfo), `"tcbStatus":"SWHardeningNeeded"`) {
		t.Errorf("TCB info %s", c.TCBInfo)
	}
}
