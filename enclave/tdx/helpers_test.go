package tdx

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	gpcs "github.com/google/go-tdx-guest/pcs"
	gtesting "github.com/google/go-tdx-guest/testing"
	"github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
	"github.com/cohort-dev/cohort/enclave/tdx/tdxtest"
)

// The real samples, relative to the package directory (see
// ../testdata/tee-samples/README.md). Tests fail when they are missing.
const (
	sampleDir        = "../testdata/tee-samples/"
	trusteeV4        = sampleDir + "trustee/tdx_quote_4.dat"
	trusteeV5        = sampleDir + "trustee/tdx_quote_5.dat"
	dcapQuote        = sampleDir + "dcap-qvl/tdx_quote"
	dcapCollateral   = sampleDir + "dcap-qvl/tdx_quote_collateral.json"
	intelRootSubject = "CN=Intel SGX Root CA,O=Intel Corporation,L=Santa Clara,ST=CA,C=US"
)

func readSample(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("sample missing: %v", err)
	}
	return b
}

func dcapQVLCollateral(t testing.TB) *pcs.Collateral {
	t.Helper()
	c, err := pcs.ParseQVL(readSample(t, dcapCollateral))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sprE4 is go-tdx-guest's SPR E4 sample quote without the 39 bytes of text
// its authors appended to it (which Verify refuses: they are not padding).
func sprE4(t testing.TB) []byte {
	t.Helper()
	q, err := decodeQuote(testdata.RawQuote[:len(testdata.RawQuote)-39])
	if err != nil || q.length != len(testdata.RawQuote)-39 {
		t.Fatalf("the SPR E4 sample is not as expected: %v", err)
	}
	return bytes.Clone(testdata.RawQuote[:q.length])
}

// sprE4Collateral is go-tdx-guest's sample collateral of the SPR E4 quote
// (FMSPC 50806f000000), in cohort's form. It is valid from 2023-06-18
// (the TCB info's issue date) to 2023-07-08 (the QE identity's and the PCK
// CRL's next update).
func sprE4Collateral(t testing.TB) *pcs.Collateral {
	t.Helper()
	body := func(b []byte, field string) (raw []byte, sig []byte) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		var s string
		if err := json.Unmarshal(m["signature"], &s); err != nil {
			t.Fatal(err)
		}
		sig, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return m[field], sig
	}
	chain := func(h map[string][]string, phrase string) []byte {
		s, err := url.QueryUnescape(h[phrase][0])
		if err != nil {
			t.Fatal(err)
		}
		return []byte(s)
	}
	c := &pcs.Collateral{
		TCBInfoIssuerChain:    chain(gtesting.TcbInfoHeader, gpcs.TcbInfoIssuerChainPhrase),
		QEIdentityIssuerChain: chain(gtesting.QeIdentityHeader, gpcs.SgxQeIdentityIssuerChainPhrase),
		PCKCRL:                testdata.PckCrlBody,
		PCKCRLIssuerChain:     chain(gtesting.PckCrlHeader, gpcs.SgxPckCrlIssuerChainPhrase),
		RootCACRL:             testdata.RootCrlBody,
	}
	c.TCBInfo, c.TCBInfoSignature = body(testdata.TcbInfoBody, "tcbInfo")
	c.QEIdentity, c.QEIdentitySignature = body(testdata.QeIdentityBody, "enclaveIdentity")
	return c
}

func at(s string) func() time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return func() time.Time { return t }
}

func newVerifier(t testing.TB, cfg Config) *Verifier {
	t.Helper()
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func fixed(c *pcs.Collateral) func([]byte) (*pcs.Collateral, error) {
	return func([]byte) (*pcs.Collateral, error) { return c, nil }
}

func newSigner(t testing.TB, cfg tdxtest.Config) *tdxtest.Signer {
	t.Helper()
	s, err := tdxtest.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fakeQuote(t testing.TB, s *tdxtest.Signer, td tdxtest.TD, rd [enclave.ReportDataSize]byte) []byte {
	t.Helper()
	q, err := s.Quote(td, rd)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func fakeCollateral(t testing.TB, s *tdxtest.Signer, cc tdxtest.CollateralConfig) *pcs.Collateral {
	t.Helper()
	c, err := s.Collateral(cc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// refused checks that err refuses evidence, wrapping
// enclave.ErrInvalidEvidence (and enclave.ErrCollateral when collateral
// says so), and names each of words.
func refused(t testing.TB, err error, collateral bool, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want a refusal naming %q", words)
	}
	if !errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Errorf("%v: does not wrap ErrInvalidEvidence", err)
	}
	if errors.Is(err, enclave.ErrCollateral) != collateral {
		t.Errorf("%v: wraps ErrCollateral %v, want %v", err, !collateral, collateral)
	}
	if errors.Is(err, errParserPanic) {
		t.Errorf("%v: go-tdx-guest panicked", err)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%v: does not name %q", err, w)
		}
	}
}
