package pcs

import (
	"crypto/x509"
	"encoding/pem"
	"reflect"
	"testing"
)

func FuzzParseSGXExtension(f *testing.F) {
	for _, q := range []string{"oasis/quote_v3_ecdsa_p256_pck_chain.bin", "dcap-qvl/sgx_quote", "dcap-qvl/tdx_quote"} {
		b, _ := pem.Decode(quoteChain(f, q))
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range cert.Extensions {
			if e.Id.Equal(sgxOID()) {
				f.Add(e.Value)
			}
		}
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		x, err := ParseSGXExtension(der)
		if err != nil {
			return
		}
		again, err := x.Marshal()
		if err != nil {
			t.Fatalf("parsed, but does not marshal: %v", err)
		}
		y, err := ParseSGXExtension(again)
		if err != nil || !reflect.DeepEqual(x, y) {
			t.Fatalf("round trip: %+v, then %+v, %v", x, y, err)
		}
	})
}

func FuzzParseTCBInfo(f *testing.F) {
	body, _ := pcsBody(f, "oasis/tcb_info_v3_fmspc_00606A000000.json", "tcbInfo")
	f.Add(body)
	f.Add(qvl(f, "dcap-qvl/sgx_quote_collateral.json").TCBInfo)
	f.Add(qvl(f, "dcap-qvl/tdx_quote_collateral.json").TCBInfo)
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := ParseTCBInfo(b)
		if err != nil {
			return
		}
		if len(info.Levels) == 0 || len(info.FMSPC) != 6 || !info.IssueDate.Before(info.NextUpdate) {
			t.Fatalf("parsed an invalid TCB info: %+v", info)
		}
		var comps [16]uint8
		if len(b) > 16 {
			copy(comps[:], b[len(b)-16:])
		}
		_, _ = info.MatchSGX(comps, uint16(len(b)))
		_, _ = info.MatchTDX(comps, uint16(len(b)), comps)
	})
}

func FuzzParseQEIdentity(f *testing.F) {
	body, _ := pcsBody(f, "oasis/qe_identity_v2.json", "enclaveIdentity")
	f.Add(body)
	f.Add(qvl(f, "dcap-qvl/sgx_quote_collateral.json").QEIdentity)
	f.Add(qvl(f, "dcap-qvl/tdx_quote_collateral.json").QEIdentity)
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQEIdentity(b)
		if err != nil {
			return
		}
		if len(q.Levels) == 0 || !q.IssueDate.Before(q.NextUpdate) {
			t.Fatalf("parsed an invalid QE identity: %+v", q)
		}
		r := QEReport{MRSigner: q.MRSigner, ISVProdID: q.ISVProdID, ISVSVN: uint16(len(b))}
		copy(r.Attributes[:], q.Attributes[:])
		copy(r.MiscSelect[:], q.MiscSelect[:])
		_, _ = q.Match(r) // refused below every level, or for an unknown status
	})
}
