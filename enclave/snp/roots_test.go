package snp_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cohort-dev/cohort/enclave/snp"
)

// TestRootsMatchGoSevGuest: the PEM embedded here is go-sev-guest's, byte
// for byte.
func TestRootsMatchGoSevGuest(t *testing.T) {
	for file, want := range map[string][]byte{
		"amd/ask_ark_milan.pem":      trust.AskArkMilanVcekBytes,
		"amd/ask_ark_milan_vlek.pem": trust.AskArkMilanVlekBytes,
		"amd/ask_ark_genoa.pem":      trust.AskArkGenoaVcekBytes,
		"amd/ask_ark_genoa_vlek.pem": trust.AskArkGenoaVlekBytes,
		"amd/ask_ark_turin_vcek.pem": trust.AskArkTurinVcekBytes,
		"amd/ask_ark_turin_vlek.pem": trust.AskArkTurinVlekBytes,
	} {
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from go-sev-guest's embedded copy", file)
		}
	}
}

// TestDefaultRoots: ARK, ASK and ASVK for each product line, with AMD's
// names, the ASK and ASVK signed by the ARK; each call returns fresh values.
func TestDefaultRoots(t *testing.T) {
	roots := snp.DefaultRoots()
	if len(roots) != 3 {
		t.Fatalf("%d product lines, want 3", len(roots))
	}
	for _, p := range []string{snp.ProductMilan, snp.ProductGenoa, snp.ProductTurin} {
		rs := roots[p]
		if len(rs) != 1 || rs[0].ProductLine != p || rs[0].ProductCerts == nil {
			t.Fatalf("%s: roots %+v", p, rs)
		}
		pc := rs[0].ProductCerts
		if pc.Ark.Subject.CommonName != "ARK-"+p || pc.Ask.Subject.CommonName != "SEV-"+p || pc.Asvk.Subject.CommonName != "SEV-VLEK-"+p {
			t.Errorf("%s: names %q %q %q", p, pc.Ark.Subject.CommonName, pc.Ask.Subject.CommonName, pc.Asvk.Subject.CommonName)
		}
		if err := pc.Ask.CheckSignatureFrom(pc.Ark); err != nil {
			t.Errorf("%s ASK: %v", p, err)
		}
		if err := pc.Asvk.CheckSignatureFrom(pc.Ark); err != nil {
			t.Errorf("%s ASVK: %v", p, err)
		}
	}
	roots[snp.ProductMilan] = nil
	if again := snp.DefaultRoots(); len(again[snp.ProductMilan]) != 1 {
		t.Error("changing DefaultRoots' result changed the next one")
	}
}

// TestNewRefusesBadRoots: roots without an ARK or an intermediate, or filed
// under another product line, are refused when the Verifier is made.
func TestNewRefusesBadRoots(t *testing.T) {
	good := snp.DefaultRoots()[snp.ProductMilan][0].ProductCerts
	for name, roots := range map[string]map[string][]*trust.AMDRootCerts{
		"empty":        {},
		"no ARK":       {snp.ProductMilan: {{ProductCerts: &trust.ProductCerts{Ask: good.Ask}}}},
		"no ASK":       {snp.ProductMilan: {{ProductCerts: &trust.ProductCerts{Ark: good.Ark}}}},
		"nil":          {snp.ProductMilan: {nil}},
		"misfiled":     {snp.ProductGenoa: {{ProductLine: snp.ProductMilan, ProductCerts: good}}},
		"no line":      {"": {{ProductCerts: good}}},
		"none in line": {snp.ProductMilan: {}},
	} {
		if _, err := snp.New(snp.Config{Roots: roots}); err == nil {
			t.Errorf("%s: New accepted the roots", name)
		}
	}
}
