package dcap

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
)

// A test world: a PKI shaped like Intel's under a test root, a platform
// with its PCK certificate, a QE, and collateral for it, all made here, so
// that what the real samples cannot show (revocation, every status) can be
// tested end to end.

// worldNow is when the world's collateral is current.
var worldNow = time.Date(2025, 1, 15, 0, 0, 0, 0, time.UTC)

type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCert(t testing.TB, serial int64, cn string, ca bool, parent *testCert, from, until time.Time, ext ...pkix.Extension) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: []string{"Test"}},
		NotBefore: from, NotAfter: until, BasicConstraintsValid: true, IsCA: ca,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, ExtraExtensions: ext,
	}
	if ca {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCert{cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func sign(t testing.TB, key *ecdsa.PrivateKey, msg []byte) []byte {
	t.Helper()
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	return append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
}

type world struct {
	root, ca, leaf, signer *testCert
	ext                    pcs.PCKExtensions
	attKey                 *ecdsa.PrivateKey
	qeSigner               [32]byte
}

var (
	worldFMSPC = []byte{0x00, 0x90, 0x6e, 0xa1, 0x00, 0x00}
	worldComps = [16]uint8{5, 5, 2, 2, 255, 1}
)

func newWorld(t testing.TB) *world {
	t.Helper()
	y2020, y2040 := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)
	w := &world{}
	w.root = newCert(t, 1, "Test SGX Root CA", true, nil, y2020, y2040)
	w.ca = newCert(t, 2, pcs.CNPCKPlatformCA, true, w.root, y2020, y2040)
	w.signer = newCert(t, 4, pcs.CNTCBSigning, false, w.root, y2020, y2040)
	w.ext = pcs.PCKExtensions{
		PPID: bytes.Repeat([]byte{7}, 16), Components: worldComps, PCESVN: 11, CPUSVN: worldComps,
		PCEID: []byte{0, 0}, FMSPC: worldFMSPC, SGXType: pcs.SGXTypeScalable,
	}
	der, err := w.ext.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	w.leaf = newCert(t, 3, pcs.CNPCKCertificate, false, w.ca, time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC),
		pkix.Extension{Id: asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}, Value: der})
	if w.attKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	w.qeSigner = sha256.Sum256([]byte("test QE signer"))
	return w
}

// quoteOpts are what a world's quote may vary.
type quoteOpts struct {
	qeSVN      uint16
	attributes [16]byte // the ISV enclave's
	reportData [64]byte
}

// quote makes a quote v3 of the world's platform, signed as a QE signs.
func (w *world) quote(t testing.TB, o quoteOpts) []byte {
	t.Helper()
	var hdr [headerSize]byte
	binary.LittleEndian.PutUint16(hdr[0:], quoteVersion)
	binary.LittleEndian.PutUint16(hdr[2:], attKeyECDSA)
	binary.LittleEndian.PutUint16(hdr[8:], o.qeSVN)
	binary.LittleEndian.PutUint16(hdr[10:], w.ext.PCESVN)
	copy(hdr[12:28], intelQEVendorID)
	var body [reportSize]byte
	copy(body[0:16], w.ext.CPUSVN[:])
	copy(body[48:64], o.attributes[:])
	copy(body[64:96], bytes.Repeat([]byte{0xe1}, 32))   // MRENCLAVE
	copy(body[128:160], bytes.Repeat([]byte{0x51}, 32)) // MRSIGNER
	binary.LittleEndian.PutUint16(body[256:], 7)        // ISVPRODID
	binary.LittleEndian.PutUint16(body[258:], 3)        // ISVSVN
	copy(body[320:], o.reportData[:])
	signed := append(hdr[:], body[:]...)

	attPub, err := w.attKey.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	attPub = attPub[1:] // the quote holds X || Y, without the 0x04
	auth := bytes.Repeat([]byte{0xa5}, 32)
	var qe [reportSize]byte
	copy(qe[48:64], []byte{0x15, 0, 0, 0, 0, 0, 0, 0, 0xe7})
	copy(qe[128:160], w.qeSigner[:])
	binary.LittleEndian.PutUint16(qe[256:], 1)
	binary.LittleEndian.PutUint16(qe[258:], o.qeSVN)
	binding := sha256.Sum256(append(bytes.Clone(attPub), auth...))
	copy(qe[320:352], binding[:])

	chain := slices.Concat(w.leaf.pem, w.ca.pem, w.root.pem, []byte{0})
	var sd []byte
	sd = append(sd, sign(t, w.attKey, signed)...)
	sd = append(sd, attPub...)
	sd = append(sd, qe[:]...)
	sd = append(sd, sign(t, w.leaf.key, qe[:])...)
	sd = binary.LittleEndian.AppendUint16(sd, uint16(len(auth)))
	sd = append(sd, auth...)
	sd = binary.LittleEndian.AppendUint16(sd, certPCKChain)
	sd = binary.LittleEndian.AppendUint32(sd, uint32(len(chain)))
	sd = append(sd, chain...)
	out := binary.LittleEndian.AppendUint32(signed, uint32(len(sd)))
	return append(out, sd...)
}

// level is a TCB info level, as JSON.
func level(comps [16]uint8, pcesvn int, status string, advisories ...string) map[string]any {
	var c []map[string]int
	for _, s := range comps {
		c = append(c, map[string]int{"svn": int(s)})
	}
	l := map[string]any{"tcb": map[string]any{"sgxtcbcomponents": c, "pcesvn": pcesvn}, "tcbDate": "2024-11-13T00:00:00Z", "tcbStatus": status}
	if advisories != nil {
		l["advisoryIDs"] = advisories
	}
	return l
}

func qeLevel(isvsvn int, status string, advisories ...string) map[string]any {
	l := map[string]any{"tcb": map[string]int{"isvsvn": isvsvn}, "tcbDate": "2024-11-13T00:00:00Z", "tcbStatus": status}
	if advisories != nil {
		l["advisoryIDs"] = advisories
	}
	return l
}

// collOpts are what a world's collateral may vary.
type collOpts struct {
	tcbLevels, qeLevels []map[string]any
	fmspc, pceID, qeID  string
	rootRevokes         []int64 // serials the root CA CRL lists
	pckRevokes          []int64 // serials the PCK CRL lists
	pckCRLBy            *testCert
	crlNext             time.Time
}

func (w *world) collateral(t testing.TB, o collOpts) *pcs.Collateral {
	t.Helper()
	if o.tcbLevels == nil {
		o.tcbLevels = []map[string]any{level(worldComps, 11, "UpToDate")}
	}
	if o.qeLevels == nil {
		o.qeLevels = []map[string]any{qeLevel(8, "UpToDate")}
	}
	if o.fmspc == "" {
		o.fmspc = fmt.Sprintf("%X", worldFMSPC)
	}
	if o.pceID == "" {
		o.pceID = "0000"
	}
	if o.qeID == "" {
		o.qeID = "QE"
	}
	if o.pckCRLBy == nil {
		o.pckCRLBy = w.ca
	}
	if o.crlNext.IsZero() {
		o.crlNext = time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)
	}
	tcb, err := json.Marshal(map[string]any{
		"id": "SGX", "version": 3, "issueDate": "2025-01-01T00:00:00Z", "nextUpdate": "2025-02-01T00:00:00Z",
		"fmspc": o.fmspc, "pceId": o.pceID, "tcbType": 0, "tcbEvaluationDataNumber": 17, "tcbLevels": o.tcbLevels,
	})
	if err != nil {
		t.Fatal(err)
	}
	qe, err := json.Marshal(map[string]any{
		"id": o.qeID, "version": 2, "issueDate": "2025-01-01T00:00:00Z", "nextUpdate": "2025-02-01T00:00:00Z",
		"tcbEvaluationDataNumber": 17, "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
		"attributes": "11000000000000000000000000000000", "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
		"mrsigner": hex.EncodeToString(w.qeSigner[:]), "isvprodid": 1, "tcbLevels": o.qeLevels,
	})
	if err != nil {
		t.Fatal(err)
	}
	signing := slices.Concat(w.signer.pem, w.root.pem)
	return &pcs.Collateral{
		TCBInfo: tcb, TCBInfoSignature: sign(t, w.signer.key, tcb), TCBInfoIssuerChain: signing,
		QEIdentity: qe, QEIdentitySignature: sign(t, w.signer.key, qe), QEIdentityIssuerChain: signing,
		PCKCRL: crl(t, o.pckCRLBy, o.crlNext, o.pckRevokes...), PCKCRLIssuerChain: slices.Concat(o.pckCRLBy.pem, w.root.pem),
		RootCACRL: crl(t, w.root, o.crlNext, o.rootRevokes...),
	}
}

func crl(t testing.TB, by *testCert, next time.Time, serials ...int64) []byte {
	t.Helper()
	this := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: this})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: this, NextUpdate: next, RevokedCertificateEntries: entries,
	}, by.cert, by.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (w *world) verifier(t testing.TB, now time.Time) *Verifier {
	t.Helper()
	v, err := New(Config{Root: w.root.cert, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestWorld(t *testing.T) {
	w := newWorld(t)
	v := w.verifier(t, worldNow)
	rd := enclave.Bind("test", []byte("hello"))
	cl, err := v.VerifyWith(t.Context(), w.quote(t, quoteOpts{qeSVN: 8, reportData: rd}), w.collateral(t, collOpts{}))
	if err != nil {
		t.Fatal(err)
	}
	if cl.TCBStatus != enclave.TCBUpToDate || cl.Debug || cl.ReportData != rd || cl.ProductID != 7 || cl.SecurityVersion != 3 ||
		cl.SGX.QESVN != 8 || cl.SGX.PCESVN != 11 || !bytes.Equal(cl.SGX.FMSPC, worldFMSPC) || len(cl.Advisories) != 0 {
		t.Errorf("claims %+v %+v", cl, cl.SGX)
	}
	var kinds []string
	for _, u := range cl.Collateral {
		kinds = append(kinds, u.Kind+"="+u.ID)
	}
	if want := []string{"PCK chain=3", "TCB info=00906EA10000", "QE identity=QE", "PCK CRL=platform", "root CA CRL=Test SGX Root CA"}; !slices.Equal(kinds, want) {
		t.Errorf("collateral used %q, want %q", kinds, want)
	}

	debug := w.quote(t, quoteOpts{qeSVN: 8, attributes: [16]byte{0x07}})
	if cl, err := v.VerifyWith(t.Context(), debug, w.collateral(t, collOpts{})); err != nil || !cl.Debug {
		t.Errorf("debug enclave: debug %v, %v", cl.Debug, err)
	}
}

func TestWorldStatus(t *testing.T) {
	w := newWorld(t)
	v := w.verifier(t, worldNow)
	up, low := worldComps, worldComps
	up[0]++ // a level above the platform's
	low[0]--
	for _, tc := range []struct {
		name   string
		qeSVN  uint16
		o      collOpts
		status string
		advs   []string
		refuse string
	}{
		{name: "up to date", qeSVN: 8, status: "UpToDate"},
		{name: "QE out of date", qeSVN: 6, o: collOpts{
			tcbLevels: []map[string]any{level(worldComps, 11, "SWHardeningNeeded", "INTEL-SA-1")},
			qeLevels:  []map[string]any{qeLevel(8, "UpToDate"), qeLevel(5, "OutOfDate", "INTEL-SA-1", "INTEL-SA-2")},
		}, status: "OutOfDate", advs: []string{"INTEL-SA-1", "INTEL-SA-2"}},
		{name: "configuration and QE out of date", qeSVN: 6, o: collOpts{
			tcbLevels: []map[string]any{level(up, 11, "UpToDate"), level(worldComps, 11, "ConfigurationNeeded")},
			qeLevels:  []map[string]any{qeLevel(8, "UpToDate"), qeLevel(5, "OutOfDate")},
		}, status: "OutOfDateConfigurationNeeded"},
		{name: "PCESVN below the first level", qeSVN: 8, o: collOpts{
			tcbLevels: []map[string]any{level(worldComps, 12, "UpToDate"), level(low, 10, "OutOfDate", "INTEL-SA-9")},
		}, status: "OutOfDate", advs: []string{"INTEL-SA-9"}},
		{name: "revoked level", qeSVN: 8, o: collOpts{tcbLevels: []map[string]any{level(worldComps, 11, "Revoked")}}, refuse: "TCB status Revoked"},
		{name: "revoked QE", qeSVN: 6, o: collOpts{qeLevels: []map[string]any{qeLevel(8, "UpToDate"), qeLevel(5, "Revoked")}}, refuse: "TCB status Revoked"},
		{name: "no level", qeSVN: 8, o: collOpts{tcbLevels: []map[string]any{level(up, 11, "UpToDate")}}, refuse: "TCB not supported"},
		{name: "QE below every level", qeSVN: 4, o: collOpts{qeLevels: []map[string]any{qeLevel(5, "UpToDate")}}, refuse: "below every level"},
		{name: "unknown status", qeSVN: 8, o: collOpts{tcbLevels: []map[string]any{level(worldComps, 11, "Splendid")}}, refuse: "not known"},
		{name: "another FMSPC", qeSVN: 8, o: collOpts{fmspc: "00906EA10001"}, refuse: "TCB info is for FMSPC 00906EA10001, the PCK certificate's is 00906EA10000"},
		{name: "another PCE-ID", qeSVN: 8, o: collOpts{pceID: "0001"}, refuse: "PCE-ID"},
		{name: "a TD QE's identity", qeSVN: 8, o: collOpts{qeID: "TD_QE"}, refuse: "not QE"},
	} {
		cl, err := v.VerifyWith(t.Context(), w.quote(t, quoteOpts{qeSVN: tc.qeSVN}), w.collateral(t, tc.o))
		if tc.refuse != "" {
			wantRefusal(t, tc.name, err, false, tc.refuse)
			continue
		}
		if err != nil || cl.TCBStatus != tc.status || !slices.Equal(cl.Advisories, tc.advs) {
			t.Errorf("%s: status %s, advisories %q, %v; want %s %q", tc.name, cl.TCBStatus, cl.Advisories, err, tc.status, tc.advs)
		}
	}
}

func TestWorldRevocation(t *testing.T) {
	w := newWorld(t)
	v := w.verifier(t, worldNow)
	q := w.quote(t, quoteOpts{qeSVN: 8})
	processor := newCert(t, 5, pcs.CNPCKProcessorCA, true, w.root, w.root.cert.NotBefore, w.root.cert.NotAfter)
	for _, tc := range []struct {
		name, want string
		o          collOpts
	}{
		{"PCK certificate revoked", "the PCK certificate (serial 3) is revoked by the PCK CRL", collOpts{pckRevokes: []int64{9, 3}}},
		{"PCK CA revoked, its CRL's issuer", "the PCK CRL's issuer (serial 2) is revoked by the root CA CRL", collOpts{rootRevokes: []int64{2}}},
		{"PCK CA revoked", "the PCK CA platform certificate (serial 2) is revoked by the root CA CRL", collOpts{rootRevokes: []int64{2}, pckCRLBy: processor}},
		{"TCB signing certificate revoked", "the TCB info signing certificate (serial 4) is revoked by the root CA CRL", collOpts{rootRevokes: []int64{4}}},
		{"PCK CRL of the other CA", "the PCK CRL is the processor CA's, the PCK certificate was issued by the platform CA", collOpts{pckCRLBy: processor}},
		{"PCK CRL issuer revoked", "the PCK CRL's issuer (serial 5) is revoked", collOpts{pckCRLBy: processor, rootRevokes: []int64{5}}},
	} {
		_, err := v.VerifyWith(t.Context(), q, w.collateral(t, tc.o))
		wantRefusal(t, tc.name, err, false, tc.want)
	}
	// Serials listed for another issuer revoke nothing here.
	if _, err := v.VerifyWith(t.Context(), q, w.collateral(t, collOpts{rootRevokes: []int64{3}, pckRevokes: []int64{2, 4}})); err != nil {
		t.Errorf("serials of other issuers: %v", err)
	}
}

func TestWorldCollateralRequired(t *testing.T) {
	w := newWorld(t)
	v := w.verifier(t, worldNow)
	q := w.quote(t, quoteOpts{qeSVN: 8})
	c := w.collateral(t, collOpts{})
	noRoot, noPCK := *c, *c
	noRoot.RootCACRL = nil
	noPCK.PCKCRL = nil
	_, err := v.VerifyWith(t.Context(), q, &noRoot)
	wantRefusal(t, "no root CA CRL", err, true, "no root CA CRL")
	_, err = v.VerifyWith(t.Context(), q, &noPCK)
	wantRefusal(t, "no PCK CRL", err, true, "no PCK CRL")
	_, err = v.VerifyWith(t.Context(), q, nil)
	wantRefusal(t, "no collateral", err, true, "no collateral given")
	_, err = v.Verify(t.Context(), q)
	wantRefusal(t, "no collateral source", err, true, "no collateral source configured")

	// A CRL past its nextUpdate, the rest current.
	_, err = v.VerifyWith(t.Context(), q, w.collateral(t, collOpts{crlNext: time.Date(2025, 1, 10, 0, 0, 0, 0, time.UTC)}))
	wantRefusal(t, "expired CRL", err, true, "root CA CRL", "expired 2025-01-10T00:00:00Z")
	// The PCK certificate out of date.
	_, err = w.verifier(t, time.Date(2031, 1, 2, 0, 0, 0, 0, time.UTC)).VerifyWith(t.Context(), q, c)
	wantRefusal(t, "PCK certificate expired", err, true, "PCK chain", pcs.CNPCKCertificate, "expired 2031-01-01")

	// From a source: asked for the PCK certificate's FMSPC and CA.
	var asked string
	v2, err := New(Config{Root: w.root.cert, Now: func() time.Time { return worldNow }, Collateral: func(fmspc []byte, ca string) (*pcs.Collateral, error) {
		asked = fmt.Sprintf("%X %s", fmspc, ca)
		return c, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v2.Verify(t.Context(), q); err != nil || asked != "00906EA10000 platform" {
		t.Errorf("from a source: asked %q, %v", asked, err)
	}
	v3, _ := New(Config{Root: w.root.cert, Now: func() time.Time { return worldNow }, Collateral: func([]byte, string) (*pcs.Collateral, error) {
		return nil, fmt.Errorf("cache miss")
	}})
	_, err = v3.Verify(t.Context(), q)
	wantRefusal(t, "source fails", err, true, "collateral of FMSPC 00906EA10000 (platform CA): cache miss")

	// The Intel root does not know the world.
	vi, _ := New(Config{Now: func() time.Time { return worldNow }})
	_, err = vi.VerifyWith(t.Context(), q, c)
	wantRefusal(t, "test PKI under the Intel root", err, false, "PCK chain", "not the root")
	if _, err := New(Config{Root: w.ca.cert}); err == nil {
		t.Error("New took a root that is not self-signed")
	}
}
