package pcs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
)

// The times the samples verify at.
var (
	oasisTime = time.Date(2022, 12, 20, 0, 0, 0, 0, time.UTC)
	qvlTime   = time.Date(2025, 6, 20, 0, 0, 0, 0, time.UTC)
)

// sample reads a file of the real samples; missing is a failure.
func sample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../testdata/tee-samples/" + name)
	if err != nil {
		t.Fatalf("sample missing: %v", err)
	}
	return b
}

// pcsBody splits a PCS response ({"tcbInfo": ..., "signature": "hex"}) into
// the signed body, byte for byte, and the signature.
func pcsBody(t testing.TB, name, field string) (body, sig []byte) {
	t.Helper()
	var r map[string]json.RawMessage
	if err := json.Unmarshal(sample(t, name), &r); err != nil {
		t.Fatal(err)
	}
	var hexSig string
	if err := json.Unmarshal(r["signature"], &hexSig); err != nil {
		t.Fatal(err)
	}
	sig, err := hex.DecodeString(hexSig)
	if err != nil {
		t.Fatal(err)
	}
	return r[field], sig
}

// quoteChain is the PEM chain at the end of a sample quote.
func quoteChain(t testing.TB, name string) []byte {
	t.Helper()
	q := sample(t, name)
	i := bytes.Index(q, []byte("-----BEGIN CERTIFICATE-----"))
	if i < 0 {
		t.Fatalf("%s: no PEM chain", name)
	}
	return q[i:]
}

func qvl(t testing.TB, name string) *Collateral {
	t.Helper()
	c, err := ParseQVL(sample(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// wantErr fails unless err is a refusal whose text has every part; a
// refusal for time must also wrap ErrCollateral.
func wantErr(t *testing.T, err error, collateral bool, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted, want a refusal with %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
	if errors.Is(err, enclave.ErrCollateral) != collateral {
		t.Errorf("error %q: wraps ErrCollateral %v, want %v", err, !collateral, collateral)
	}
}

func TestOasisCollateral(t *testing.T) {
	body, sig := pcsBody(t, "oasis/tcb_info_v3_fmspc_00606A000000.json", "tcbInfo")
	chain := sample(t, "oasis/tcb_info_v3_fmspc_00606A000000_certs.pem")
	info, s, err := VerifyTCBInfo(body, sig, chain, IntelRoot(), oasisTime)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != "SGX" || info.Version != 3 || hex.EncodeToString(info.FMSPC) != "00606a000000" || !bytes.Equal(info.PCEID, []byte{0, 0}) ||
		info.TCBEvaluationDataNumber != 13 || s.Signer.Subject.CommonName != CNTCBSigning {
		t.Errorf("TCB info %+v, signer %q", info, s.Signer.Subject.CommonName)
	}
	if want := (Window{info.IssueDate, info.NextUpdate}); s.Valid != want {
		t.Errorf("window %v, want the TCB info's %v", s.Valid, want)
	}
	qeBody, qeSig := pcsBody(t, "oasis/qe_identity_v2.json", "enclaveIdentity")
	qe, qs, err := VerifyQEIdentity(qeBody, qeSig, chain, IntelRoot(), oasisTime)
	if err != nil {
		t.Fatalf("QE identity under the TCB signing chain: %v", err)
	}
	if qe.ID != "QE" || qe.ISVProdID != 1 || qe.MRSigner[0] != 0x8c || len(qe.Levels) != 5 || qs.Signer.SerialNumber.Cmp(s.Signer.SerialNumber) != 0 {
		t.Errorf("QE identity %+v", qe)
	}

	// Now: the TCB signing certificate expired on 2025-05-21, named first.
	_, _, err = VerifyTCBInfo(body, sig, chain, IntelRoot(), time.Now())
	wantErr(t, err, true, "TCB info", CNTCBSigning, "expired 2025-05-21T10:50:10Z")
	_, _, err = VerifyQEIdentity(qeBody, qeSig, chain, IntelRoot(), time.Now())
	wantErr(t, err, true, "QE identity", CNTCBSigning, "expired 2025-05-21")
	// After the body's nextUpdate, with the chain still valid.
	_, _, err = VerifyTCBInfo(body, sig, chain, IntelRoot(), time.Date(2023, 2, 1, 0, 0, 0, 0, time.UTC))
	wantErr(t, err, true, "TCB info of FMSPC 00606A000000 expired 2023-01-18T09:40:10Z")
	_, _, err = VerifyTCBInfo(body, sig, chain, IntelRoot(), time.Date(2022, 12, 19, 0, 0, 0, 0, time.UTC))
	wantErr(t, err, true, "not valid before 2022-12-19T09:40:10Z")

	// The bad chain: the PCK Platform CA where the TCB signing certificate belongs.
	_, _, err = VerifyTCBInfo(body, sig, sample(t, "oasis/tcb_info_v3_fmspc_00606A000000_certs_bad.pem"), IntelRoot(), oasisTime)
	wantErr(t, err, false, "TCB info", CNPCKPlatformCA)
	// A changed signature, a changed body.
	bad := bytes.Clone(sig)
	bad[10] ^= 1
	_, _, err = VerifyTCBInfo(body, bad, chain, IntelRoot(), oasisTime)
	wantErr(t, err, false, "TCB info", "signature", "does not verify")
	badBody := bytes.Replace(body, []byte(`"pcesvn":13`), []byte(`"pcesvn":12`), 1)
	_, _, err = VerifyTCBInfo(badBody, sig, chain, IntelRoot(), oasisTime)
	wantErr(t, err, false, "signature", "does not verify")
	// A chain that ends elsewhere, or is the root alone.
	_, _, err = VerifyTCBInfo(body, sig, chain[:bytes.Index(chain, []byte("-----END"))+26], IntelRoot(), oasisTime)
	wantErr(t, err, false, "1 certificates in the chain, want 2")
	_, _, err = VerifyTCBInfo(body, sig, chain, otherRoot(t), oasisTime)
	wantErr(t, err, false, "not the root")
}

func TestQVLCollateral(t *testing.T) {
	for _, tc := range []struct {
		file, tcbID, qeID, ca string
		expired               string
	}{
		{"dcap-qvl/sgx_quote_collateral.json", "SGX", "QE", CAProcessor, "SGX TCB info of FMSPC 00A067110000 expired 2025-07-19T10:56:11Z"},
		{"dcap-qvl/tdx_quote_collateral.json", "TDX", "TD_QE", CAPlatform, "TDX TCB info of FMSPC B0C06F000000 expired 2025-07-19T10:16:03Z"},
	} {
		c := qvl(t, tc.file)
		info, _, err := VerifyTCBInfo(c.TCBInfo, c.TCBInfoSignature, c.TCBInfoIssuerChain, IntelRoot(), qvlTime)
		if err != nil || info.ID != tc.tcbID {
			t.Fatalf("%s: TCB info %v %v", tc.file, info, err)
		}
		qe, _, err := VerifyQEIdentity(c.QEIdentity, c.QEIdentitySignature, c.QEIdentityIssuerChain, IntelRoot(), qvlTime)
		if err != nil || qe.ID != tc.qeID {
			t.Fatalf("%s: QE identity %v %v", tc.file, qe, err)
		}
		root, err := VerifyRootCRL(c.RootCACRL, IntelRoot(), qvlTime)
		if err != nil || root.Kind != "root" {
			t.Fatalf("%s: root CA CRL: %v", tc.file, err)
		}
		pck, err := VerifyPCKCRL(c.PCKCRL, c.PCKCRLIssuerChain, IntelRoot(), qvlTime)
		if err != nil || pck.Kind != tc.ca {
			t.Fatalf("%s: PCK CRL %v: %v", tc.file, pck, err)
		}
		if root.Revokes(pck.Issuer) {
			t.Errorf("%s: the PCK CA is revoked", tc.file)
		}
		_, _, err = VerifyTCBInfo(c.TCBInfo, c.TCBInfoSignature, c.TCBInfoIssuerChain, IntelRoot(), time.Now())
		wantErr(t, err, true, tc.expired)
		_, err = VerifyPCKCRL(c.PCKCRL, c.PCKCRLIssuerChain, IntelRoot(), time.Now())
		wantErr(t, err, true, "PCK CRL", "expired 2025-07-19")
		// The root's CRL is no PCK CRL, nor the other way round.
		_, err = VerifyRootCRL(c.PCKCRL, IntelRoot(), qvlTime)
		wantErr(t, err, false, "root CA CRL", "issued by")
		bad := bytes.Clone(c.RootCACRL)
		bad[len(bad)-5] ^= 1
		_, err = VerifyRootCRL(bad, IntelRoot(), qvlTime)
		wantErr(t, err, false, "root CA CRL")
		_, err = VerifyRootCRL(nil, IntelRoot(), qvlTime)
		wantErr(t, err, false, "root CA CRL", "empty")
	}
	// The TDX TCB info's levels carry TDX components and module identities.
	c := qvl(t, "dcap-qvl/tdx_quote_collateral.json")
	info, err := ParseTCBInfo(c.TCBInfo)
	if err != nil {
		t.Fatal(err)
	}
	if info.TDXModule == nil || len(info.TDXModule.MRSigner) != 48 || len(info.TDXModuleIdentities) != 2 || info.TDXModuleIdentities[1].ID != "TDX_01" ||
		info.Levels[0].TDXComponents[0] != 5 || info.Levels[0].TDXComponents[2] != 2 {
		t.Errorf("TDX TCB info %+v", info)
	}
	sgx := info.Levels[0].SGXComponents
	tee := [16]uint8{5, 0, 2}
	if l, err := info.MatchTDX(sgx, 11, tee); err != nil || l.Status != StatusUpToDate {
		t.Errorf("TDX match: %v %v", l, err)
	}
	if l, err := info.MatchTDX(sgx, 10, tee); err != nil || l.Status != StatusOutOfDate {
		t.Errorf("TDX match at PCESVN 10: %v %v", l, err)
	}
	tee[0] = 4 // below every level's TDX module SVN
	if _, err := info.MatchTDX(sgx, 11, tee); err == nil {
		t.Error("TDX module SVN 4 matched")
	}
	tee[1] = 1 // with a minor version, indexes 0 and 1 are not compared
	if l, err := info.MatchTDX(sgx, 11, tee); err != nil || l.Status != StatusUpToDate {
		t.Errorf("TDX match with a minor version: %v %v", l, err)
	}
	if _, err := info.MatchSGX(sgx, 11); err == nil {
		t.Error("a TDX TCB info matched an SGX platform")
	}
}

func TestPCKExtensions(t *testing.T) {
	for _, tc := range []struct {
		quote, fmspc string
		comps        [16]uint8
		pcesvn       uint16
		typ          int
		ca           string
	}{
		{"oasis/quote_v3_ecdsa_p256_pck_chain.bin", "00606a000000", [16]uint8{7, 9, 3, 3, 255, 255, 1}, 13, SGXTypeScalable, CAPlatform},
		{"dcap-qvl/sgx_quote", "00a067110000", [16]uint8{11, 11, 2, 2, 255, 1}, 13, SGXTypeStandard, CAProcessor},
	} {
		at := oasisTime
		if tc.ca == CAProcessor {
			at = qvlTime
		}
		p, err := VerifyPCKChain(quoteChain(t, tc.quote), IntelRoot(), at)
		if err != nil {
			t.Fatalf("%s: %v", tc.quote, err)
		}
		x := p.Ext
		if hex.EncodeToString(x.FMSPC) != tc.fmspc || x.Components != tc.comps || x.PCESVN != tc.pcesvn || x.SGXType != tc.typ ||
			!bytes.Equal(x.PCEID, []byte{0, 0}) || len(x.PPID) != 16 || x.CPUSVN != [16]byte(tc.comps) || p.CAKind != tc.ca {
			t.Errorf("%s: extensions %+v, CA %s", tc.quote, x, p.CAKind)
		}
		if tc.ca == CAPlatform && (len(x.PlatformInstanceID) != 16 || x.Config == nil || x.Config.DynamicPlatform == nil || !*x.Config.DynamicPlatform || *x.Config.SMTEnabled) {
			t.Errorf("%s: platform facts %+v", tc.quote, x)
		}
		// Marshal gives back Intel's DER byte for byte.
		var raw []byte
		for _, e := range p.Leaf.Extensions {
			if e.Id.Equal(sgxOID()) {
				raw = e.Value
			}
		}
		if again, err := x.Marshal(); err != nil || !bytes.Equal(again, raw) {
			t.Errorf("%s: Marshal differs from the certificate's extension: %v", tc.quote, err)
		}
	}

	good := PCKExtensions{PPID: make([]byte, 16), PCEID: []byte{0, 0}, FMSPC: make([]byte, 6), SGXType: SGXTypeStandard}
	der, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSGXExtension(der); err != nil {
		t.Fatalf("minimal extension: %v", err)
	}
	for name, mutate := range map[string]func(x *PCKExtensions){
		"short FMSPC":    func(x *PCKExtensions) { x.FMSPC = x.FMSPC[:5] },
		"long PCE-ID":    func(x *PCKExtensions) { x.PCEID = []byte{0, 0, 0} },
		"no PPID":        func(x *PCKExtensions) { x.PPID = nil },
		"SGX type 3":     func(x *PCKExtensions) { x.SGXType = 3 },
		"short instance": func(x *PCKExtensions) { x.PlatformInstanceID = []byte{1} },
	} {
		x := good
		mutate(&x)
		der, err := x.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseSGXExtension(der); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	for name, der := range map[string][]byte{
		"trailing byte":  append(bytes.Clone(der), 0),
		"empty":          nil,
		"not a SEQUENCE": {0x04, 0x00},
		"truncated":      der[:len(der)-3],
		"huge":           make([]byte, maxSGXExtension+1),
		"no entries":     {0x30, 0x00},
	} {
		if _, err := ParseSGXExtension(der); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	// A duplicated entry, a TCB component out of range.
	dup := append([]byte{0x30, 0x82, 0, 0}, der[4:]...)
	dup = append(dup, der[4:4+2+int(der[5])]...)
	dup[2], dup[3] = byte((len(dup)-4)>>8), byte(len(dup)-4)
	if _, err := ParseSGXExtension(dup); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicated PPID: %v", err)
	}
}

func TestMatch(t *testing.T) {
	body, _ := pcsBody(t, "oasis/tcb_info_v3_fmspc_00606A000000.json", "tcbInfo")
	info, err := ParseTCBInfo(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		comps  [16]uint8
		pcesvn uint16
		want   string
		advs   []string
	}{
		{[16]uint8{7, 9, 3, 3, 255, 255, 1}, 13, StatusSWHardeningNeeded, []string{"INTEL-SA-00615", "INTEL-SA-00657"}},
		{[16]uint8{9, 9, 9, 9, 255, 255, 1, 1, 1}, 20, StatusSWHardeningNeeded, nil},
		{[16]uint8{7, 9, 3, 3, 255, 255, 0}, 13, StatusConfigurationAndSWHardeningNeeded, nil},
		{[16]uint8{7, 9, 3, 3, 255, 255, 1}, 12, StatusOutOfDate, nil}, // the first level needs PCESVN 13
	} {
		l, err := info.MatchSGX(tc.comps, tc.pcesvn)
		if err != nil || l.Status != tc.want || (tc.advs != nil && !slices.Equal(l.AdvisoryIDs, tc.advs)) {
			t.Errorf("%v/%d: %s %v %v, want %s", tc.comps, tc.pcesvn, l.Status, l.AdvisoryIDs, err, tc.want)
		}
	}
	if _, err := info.MatchSGX([16]uint8{}, 0); err == nil || !strings.Contains(err.Error(), "TCB not supported") {
		t.Errorf("a TCB below every level: %v", err)
	}
	odd := bytes.Replace(body, []byte(`"tcbStatus":"SWHardeningNeeded"`), []byte(`"tcbStatus":"Fine"`), 1)
	if i, err := ParseTCBInfo(odd); err != nil {
		t.Fatal(err)
	} else if _, err := i.MatchSGX([16]uint8{7, 9, 3, 3, 255, 255, 1}, 13); err == nil || !strings.Contains(err.Error(), "not known") {
		t.Errorf("an unknown status: %v", err)
	}

	qeBody, _ := pcsBody(t, "oasis/qe_identity_v2.json", "enclaveIdentity")
	qe, err := ParseQEIdentity(qeBody)
	if err != nil {
		t.Fatal(err)
	}
	r := QEReport{Attributes: [16]byte{0x15, 0, 0, 0, 0, 0, 0, 0, 0xe7}, MRSigner: qe.MRSigner, ISVProdID: 1, ISVSVN: 9}
	if l, err := qe.Match(r); err != nil || l.Status != StatusUpToDate {
		t.Errorf("QE: %v %v", l, err)
	}
	r.ISVSVN = 5
	if l, err := qe.Match(r); err != nil || l.Status != StatusOutOfDate || !slices.Equal(l.AdvisoryIDs, []string{"INTEL-SA-00477"}) {
		t.Errorf("QE at ISVSVN 5: %v %v", l, err)
	}
	r.ISVSVN = 0
	if _, err := qe.Match(r); err == nil {
		t.Error("a QE below every level matched")
	}
	r.ISVSVN = 9
	for name, m := range map[string]func(r *QEReport){
		"MRSIGNER":   func(r *QEReport) { r.MRSigner[3] ^= 1 },
		"ISVPRODID":  func(r *QEReport) { r.ISVProdID = 2 },
		"ATTRIBUTES": func(r *QEReport) { r.Attributes[0] |= 0x02 }, // a debug QE
		"MISCSELECT": func(r *QEReport) { r.MiscSelect[0] = 1 },
	} {
		bad := r
		m(&bad)
		if _, err := qe.Match(bad); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s changed: %v", name, err)
		}
	}
	bad := r
	bad.Attributes[10] = 0xff // outside the mask
	if _, err := qe.Match(bad); err != nil {
		t.Errorf("a change outside the attributes mask: %v", err)
	}
}

func TestCombineStatus(t *testing.T) {
	for _, tc := range []struct{ platform, qe, want string }{
		{StatusUpToDate, StatusUpToDate, StatusUpToDate},
		{StatusSWHardeningNeeded, StatusUpToDate, StatusSWHardeningNeeded},
		{StatusUpToDate, StatusOutOfDate, StatusOutOfDate},
		{StatusSWHardeningNeeded, StatusOutOfDate, StatusOutOfDate},
		{StatusConfigurationNeeded, StatusOutOfDate, StatusOutOfDateConfigurationNeeded},
		{StatusConfigurationAndSWHardeningNeeded, StatusOutOfDate, StatusOutOfDateConfigurationNeeded},
		{StatusOutOfDateConfigurationNeeded, StatusOutOfDate, StatusOutOfDateConfigurationNeeded},
		{StatusRevoked, StatusOutOfDate, StatusRevoked},
		{StatusUpToDate, StatusRevoked, StatusRevoked},
		{StatusRevoked, StatusUpToDate, StatusRevoked},
	} {
		if got, err := CombineStatus(tc.platform, tc.qe); err != nil || got != tc.want {
			t.Errorf("%s + QE %s = %s %v, want %s", tc.platform, tc.qe, got, err, tc.want)
		}
	}
	for _, bad := range [][2]string{{"Fine", StatusUpToDate}, {StatusUpToDate, "SWHardeningNeeded"}, {StatusUpToDate, ""}} {
		if _, err := CombineStatus(bad[0], bad[1]); err == nil {
			t.Errorf("%q + QE %q combined", bad[0], bad[1])
		}
	}
	if got := CombineAdvisories([]string{"A", "B"}, []string{"B", "C"}); !slices.Equal(got, []string{"A", "B", "C"}) {
		t.Errorf("advisories %v", got)
	}
}

func TestParseBodies(t *testing.T) {
	body, _ := pcsBody(t, "oasis/tcb_info_v3_fmspc_00606A000000.json", "tcbInfo")
	for name, b := range map[string]string{
		"another id":       strings.Replace(string(body), `"id":"SGX"`, `"id":"SEV"`, 1),
		"version 2":        strings.Replace(string(body), `"version":3`, `"version":2`, 1),
		"short FMSPC":      strings.Replace(string(body), `"fmspc":"00606A000000"`, `"fmspc":"00606A0000"`, 1),
		"tcbType 1":        strings.Replace(string(body), `"tcbType":0`, `"tcbType":1`, 1),
		"svn 256":          strings.Replace(string(body), `{"svn":255}`, `{"svn":256}`, 1),
		"bad date":         strings.Replace(string(body), `"issueDate":"2022-12-19T09:40:10Z"`, `"issueDate":"yesterday"`, 1),
		"dates reversed":   strings.Replace(string(body), `"issueDate":"2022-12-19`, `"issueDate":"2023-12-19`, 1),
		"15 components":    strings.Replace(string(body), `{"svn":255},`, ``, 1),
		"trailing garbage": string(body) + "x",
		"not an object":    "[]",
		"no levels":        `{"id":"SGX","version":3,"issueDate":"2022-12-19T09:40:10Z","nextUpdate":"2023-01-18T09:40:10Z","fmspc":"00606A000000","pceId":"0000","tcbType":0,"tcbEvaluationDataNumber":13,"tcbLevels":[]}`,
	} {
		if _, err := ParseTCBInfo([]byte(b)); err == nil {
			t.Errorf("TCB info with %s parsed", name)
		}
	}
	qeBody, _ := pcsBody(t, "oasis/qe_identity_v2.json", "enclaveIdentity")
	for name, b := range map[string]string{
		"id QVE":       strings.Replace(string(qeBody), `"id":"QE"`, `"id":"QVE"`, 1),
		"short signer": strings.Replace(string(qeBody), `"mrsigner":"8C4F`, `"mrsigner":"`, 1),
		"no prodid":    strings.Replace(string(qeBody), `"isvprodid":1,`, ``, 1),
		"isvsvn -1":    strings.Replace(string(qeBody), `"isvsvn":6`, `"isvsvn":-1`, 1),
	} {
		if _, err := ParseQEIdentity([]byte(b)); err == nil {
			t.Errorf("QE identity with %s parsed", name)
		}
	}
}

// testCA is a certificate and its key, for CRLs of a test PKI.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, cn string, parent *testCA) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(int64(len(cn)) + 100), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) crl(t testing.TB, this, next time.Time, serials ...int64) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: this})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: this, NextUpdate: next, RevokedCertificateEntries: entries,
	}, ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func otherRoot(t testing.TB) *x509.Certificate { return newTestCA(t, "Other Root", nil).cert }

func TestCRL(t *testing.T) {
	root := newTestCA(t, "Test Root", nil)
	ca := newTestCA(t, CNPCKPlatformCA, root)
	now := time.Date(2025, 1, 10, 0, 0, 0, 0, time.UTC)
	this, next := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)
	chain := append(bytes.Clone(ca.pem), root.pem...)

	l, err := VerifyPCKCRL(ca.crl(t, this, next, 7, 9), chain, root.cert, now)
	if err != nil {
		t.Fatal(err)
	}
	if l.Kind != CAPlatform || l.Valid != (Window{this, next}) {
		t.Errorf("CRL kind %s, window %v", l.Kind, l.Valid)
	}
	revoked := &x509.Certificate{SerialNumber: big.NewInt(9), RawIssuer: ca.cert.RawSubject}
	if !l.Revokes(revoked) {
		t.Error("serial 9 not revoked")
	}
	if l.Revokes(&x509.Certificate{SerialNumber: big.NewInt(8), RawIssuer: ca.cert.RawSubject}) {
		t.Error("serial 8 revoked")
	}
	if l.Revokes(&x509.Certificate{SerialNumber: big.NewInt(9), RawIssuer: root.cert.RawSubject}) {
		t.Error("serial 9 of another issuer revoked")
	}
	_, err = VerifyPCKCRL(ca.crl(t, this, next), chain, root.cert, next)
	wantErr(t, err, true, "PCK CRL", "expired 2025-02-01T00:00:00Z")
	_, err = VerifyPCKCRL(ca.crl(t, this, next), chain, root.cert, this.Add(-time.Hour))
	wantErr(t, err, true, "PCK CRL", "not valid before 2025-01-01T00:00:00Z")
	// Signed by the root, not by the CA of its chain.
	_, err = VerifyPCKCRL(root.crl(t, this, next), chain, root.cert, now)
	wantErr(t, err, false, "PCK CRL", "issued by")
	// A CA of another name is no PCK CA.
	other := newTestCA(t, "Some CA", root)
	_, err = VerifyPCKCRL(other.crl(t, this, next), append(bytes.Clone(other.pem), root.pem...), root.cert, now)
	wantErr(t, err, false, "PCK CRL", "Some CA")
	// The root's own list.
	if _, err := VerifyRootCRL(root.crl(t, this, next, 123), root.cert, now); err != nil {
		t.Errorf("root CRL: %v", err)
	}
	// A chain not ending in the root.
	_, err = VerifyPCKCRL(ca.crl(t, this, next), append(bytes.Clone(ca.pem), other.pem...), root.cert, now)
	wantErr(t, err, false, "not the root")
}

func TestWindow(t *testing.T) {
	a, b, c := time.Unix(10, 0), time.Unix(20, 0), time.Unix(30, 0)
	w := Window{a, c}.Intersect(Window{b, c.Add(time.Hour)})
	if w != (Window{b, c}) || !w.Contains(b) || w.Contains(c) || w.Contains(a) {
		t.Errorf("window %v", w)
	}
}
