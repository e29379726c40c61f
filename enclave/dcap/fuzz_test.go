package dcap

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
)

func FuzzParseQuote(f *testing.F) {
	f.Add(sample(f, oasisQuote))
	f.Add(sample(f, qvlQuote))
	f.Add(sample(f, "dcap-qvl/tdx_quote"))
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := parseQuote(b)
		if err != nil {
			if !errors.Is(err, enclave.ErrInvalidEvidence) {
				t.Fatalf("refusal %v does not wrap ErrInvalidEvidence", err)
			}
			return
		}
		if len(q.Signed) != signedSize || len(q.Signature) != 64 || len(q.AttestationKey) != 64 || len(q.QEReportRaw) != reportSize ||
			sigDataOffset+sigFixed+len(q.QEAuthData)+6+len(q.CertData) != len(b) {
			t.Fatalf("parsed inconsistent lengths from %d bytes", len(b))
		}
	})
}

func FuzzUnwrap(f *testing.F) {
	quote := sample(f, oasisQuote)
	f.Add(quote)
	f.Add(oeReport(oeRemoteReport, uint64(len(quote)), quote))
	f.Add(oeReport(oeLocalReport, 3, []byte{1, 2, 3}))
	f.Add(oeReport(oeRemoteReport, 0, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := unwrap(b)
		if err != nil {
			return
		}
		if !bytes.Equal(q, b) && !bytes.Equal(q, b[oeHeaderSize:]) {
			t.Fatal("unwrap returned bytes that are neither the evidence nor its report")
		}
	})
}

// FuzzVerify runs the whole verification on changed quotes, with the
// oasis collateral: nothing may panic, and nothing but the sample verifies.
func FuzzVerify(f *testing.F) {
	quote := sample(f, oasisQuote)
	f.Add(quote)
	f.Add(oeReport(oeRemoteReport, uint64(len(quote)), quote))
	v := verifierAt(f, oasisTime, true)
	c := oasisCollateral(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		cl, err := v.VerifyWith(t.Context(), b, c)
		if err != nil {
			if !errors.Is(err, enclave.ErrInvalidEvidence) {
				t.Fatalf("refusal %v does not wrap ErrInvalidEvidence", err)
			}
			return
		}
		// Only the sample's signed bytes verify.
		if cl.ReportData != [64]byte(quote[headerSize+320:headerSize+384]) {
			t.Fatalf("verified other report data %x", cl.ReportData)
		}
	})
}
