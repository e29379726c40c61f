package dcap

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
)

var (
	oasisTime = time.Date(2022, 12, 20, 0, 0, 0, 0, time.UTC)
	qvlTime   = time.Date(2025, 6, 20, 0, 0, 0, 0, time.UTC)
)

const (
	oasisQuote = "oasis/quote_v3_ecdsa_p256_pck_chain.bin"
	oasisCerts = "oasis/tcb_info_v3_fmspc_00606A000000_certs.pem"
	oasisBad   = "oasis/tcb_info_v3_fmspc_00606A000000_certs_bad.pem"
	qvlQuote   = "dcap-qvl/sgx_quote"
	qvlColl    = "dcap-qvl/sgx_quote_collateral.json"
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

// pcsBody splits a PCS response into its signed body, byte for byte, and
// its signature.
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

// oasisCollateral is the oasis-core sample's collateral: TCB info and QE
// identity, both signed by the TCB signing key of the one chain; no CRLs.
func oasisCollateral(t testing.TB) *pcs.Collateral {
	tcb, tcbSig := pcsBody(t, "oasis/tcb_info_v3_fmspc_00606A000000.json", "tcbInfo")
	qe, qeSig := pcsBody(t, "oasis/qe_identity_v2.json", "enclaveIdentity")
	chain := sample(t, oasisCerts)
	return &pcs.Collateral{
		TCBInfo: tcb, TCBInfoSignature: tcbSig, TCBInfoIssuerChain: chain,
		QEIdentity: qe, QEIdentitySignature: qeSig, QEIdentityIssuerChain: chain,
	}
}

func qvlCollateral(t testing.TB) *pcs.Collateral {
	c, err := pcs.ParseQVL(sample(t, qvlColl))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// verifierAt is a verifier under Intel's root at a fixed time; crlsOptional
// for the oasis sample only.
func verifierAt(t testing.TB, now time.Time, crlsOptional bool) *Verifier {
	t.Helper()
	v, err := New(Config{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	v.crlsOptional = crlsOptional
	return v
}

// wantRefusal fails unless err wraps ErrInvalidEvidence, wraps
// ErrCollateral exactly when collateral, and says every part.
func wantRefusal(t *testing.T, name string, err error, collateral bool, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: accepted, want a refusal saying %q", name, parts)
		return
	}
	if !errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Errorf("%s: %q does not wrap ErrInvalidEvidence", name, err)
	}
	if errors.Is(err, enclave.ErrCollateral) != collateral {
		t.Errorf("%s: %q wraps ErrCollateral: %v, want %v", name, err, !collateral, collateral)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %q does not say %q", name, err, p)
		}
	}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// oeReport wraps a quote as Open Enclave's remote report.
func oeReport(typ uint32, size uint64, quote []byte) []byte {
	h := binary.LittleEndian.AppendUint32(nil, oeHeaderVersion)
	h = binary.LittleEndian.AppendUint32(h, typ)
	h = binary.LittleEndian.AppendUint64(h, size)
	return append(h, quote...)
}

func TestOasis(t *testing.T) {
	quote := sample(t, oasisQuote)
	v := verifierAt(t, oasisTime, true)
	cl, err := v.VerifyWith(t.Context(), quote, oasisCollateral(t))
	if err != nil {
		t.Fatal(err)
	}
	rd := unhex(t, "026a69ced96c3e0295d16d6b388e057a137a14319671662a5844c7472f3c62ae0e3d3f99b77dd89b0fc1436c4fe96828391a52588a0f883455a18b8f5872e3f0")
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"Backend", cl.Backend, enclave.PlatformSGX},
		{"Simulated", cl.Simulated, false},
		{"UniqueID", hex.EncodeToString(cl.UniqueID), "68823bc62f409ee33a32ea270cfe45d4b19a6fb3c8570d7bc186cbe062398e8f"},
		{"SignerID", hex.EncodeToString(cl.SignerID), "9affcfae47b848ec2caf1c49b4b283531e1cc425f93582b36806e52a43d78d1a"},
		{"ProductID", cl.ProductID, uint16(0)},
		{"SecurityVersion", cl.SecurityVersion, uint16(0)},
		{"Debug", cl.Debug, false},
		{"TCBStatus", cl.TCBStatus, pcs.StatusSWHardeningNeeded},
		{"Advisories", strings.Join(cl.Advisories, ","), "INTEL-SA-00615,INTEL-SA-00657"},
		{"ReportData", cl.ReportData[:], rd},
		{"QuoteVersion", cl.SGX.QuoteVersion, uint16(3)},
		{"CPUSVN", hex.EncodeToString(cl.SGX.CPUSVN), "08090e0dffff01000000000000000000"},
		{"PCESVN", cl.SGX.PCESVN, uint16(13)},
		{"QESVN", cl.SGX.QESVN, uint16(9)},
		{"FMSPC", hex.EncodeToString(cl.SGX.FMSPC), "00606a000000"},
		{"Attributes", hex.EncodeToString(cl.SGX.Attributes), "05000000000000000300000000000000"},
		{"MiscSelect", cl.SGX.MiscSelect, uint32(0)},
		{"ConfigSVN", cl.SGX.ConfigSVN, uint16(0)},
		{"ISVFamilyID", cl.SGX.ISVFamilyID, make([]byte, 16)},
		{"ISVExtProdID", cl.SGX.ISVExtProdID, make([]byte, 16)},
		{"ConfigID", cl.SGX.ConfigID, make([]byte, 64)},
		{"SNP, TDX", cl.SNP == nil && cl.TDX == nil, true},
	} {
		if b, ok := c.want.([]byte); ok {
			if !bytes.Equal(c.got.([]byte), b) {
				t.Errorf("%s = %x, want %x", c.name, c.got, b)
			}
		} else if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// What was used, with its dates; the sample has no CRLs, and says so.
	want := []enclave.CollateralUse{
		{Kind: "PCK chain", ID: "B0CDFF18DBBEE0FD606C60DB369899BEE40D3C7", Issued: time.Date(2022, 12, 5, 11, 12, 1, 0, time.UTC), NextUpdate: time.Date(2029, 12, 5, 11, 12, 1, 0, time.UTC)},
		{Kind: "TCB info", ID: "00606A000000", Issued: time.Date(2022, 12, 19, 9, 40, 10, 0, time.UTC), NextUpdate: time.Date(2023, 1, 18, 9, 40, 10, 0, time.UTC)},
		{Kind: "QE identity", ID: "QE", Issued: time.Date(2022, 12, 16, 12, 45, 36, 0, time.UTC), NextUpdate: time.Date(2023, 1, 15, 12, 45, 36, 0, time.UTC)},
	}
	if !slices.EqualFunc(cl.Collateral, want, func(a, b enclave.CollateralUse) bool {
		return a.Kind == b.Kind && a.ID == b.ID && a.Issued.Equal(b.Issued) && a.NextUpdate.Equal(b.NextUpdate)
	}) {
		t.Errorf("collateral used %+v, want %+v", cl.Collateral, want)
	}

	// As EGo's remote report, and through a collateral source.
	var asked []string
	v2, err := New(Config{Now: func() time.Time { return oasisTime }, Collateral: func(fmspc []byte, ca string) (*pcs.Collateral, error) {
		asked = append(asked, hex.EncodeToString(fmspc)+" "+ca)
		return oasisCollateral(t), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	v2.crlsOptional = true
	cl2, err := v2.Verify(t.Context(), oeReport(oeRemoteReport, uint64(len(quote)), quote))
	if err != nil || !bytes.Equal(cl2.UniqueID, cl.UniqueID) || cl2.ReportData != cl.ReportData || cl2.TCBStatus != cl.TCBStatus {
		t.Errorf("the OE report: %+v, %v", cl2, err)
	}
	if !slices.Equal(asked, []string{"00606a000000 platform"}) {
		t.Errorf("collateral asked for %q", asked)
	}

	// Production verification requires the CRLs.
	_, err = verifierAt(t, oasisTime, false).VerifyWith(t.Context(), quote, oasisCollateral(t))
	wantRefusal(t, "no CRLs", err, true, "no root CA CRL")
	// Now, the TCB signing certificate has expired.
	live, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	live.crlsOptional = true
	_, err = live.VerifyWith(t.Context(), quote, oasisCollateral(t))
	wantRefusal(t, "now", err, true, "TCB info", `"Intel SGX TCB Signing"`, "expired 2025-05-21T10:50:10Z")
	// The bad chain.
	bad := oasisCollateral(t)
	bad.TCBInfoIssuerChain = sample(t, oasisBad)
	_, err = v.VerifyWith(t.Context(), quote, bad)
	wantRefusal(t, "bad chain", err, false, "TCB info", "signing chain", pcs.CNPCKPlatformCA)
}

func TestQVL(t *testing.T) {
	quote := sample(t, qvlQuote)
	cl, err := verifierAt(t, qvlTime, false).VerifyWith(t.Context(), quote, qvlCollateral(t))
	if err != nil {
		t.Fatal(err)
	}
	if cl.TCBStatus != pcs.StatusConfigurationAndSWHardeningNeeded || !slices.Equal(cl.Advisories, []string{"INTEL-SA-00289", "INTEL-SA-00615"}) {
		t.Errorf("status %s, advisories %q", cl.TCBStatus, cl.Advisories)
	}
	if hex.EncodeToString(cl.UniqueID) != "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb" ||
		hex.EncodeToString(cl.SignerID) != "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6" ||
		!bytes.HasPrefix(cl.ReportData[:], []byte("Hello, world!\x00")) || hex.EncodeToString(cl.SGX.FMSPC) != "00a067110000" ||
		cl.SGX.QESVN != 10 || cl.SGX.PCESVN != 15 || cl.Debug {
		t.Errorf("claims %+v %+v", cl, cl.SGX)
	}
	var kinds []string
	for _, u := range cl.Collateral {
		kinds = append(kinds, u.Kind+"="+u.ID)
	}
	if want := []string{"PCK chain=81B77732B761E98EB9B963A4ABD1E5B9BF5DD8D6", "TCB info=00A067110000", "QE identity=QE", "PCK CRL=processor", "root CA CRL=Intel SGX Root CA"}; !slices.Equal(kinds, want) {
		t.Errorf("collateral used %q, want %q", kinds, want)
	}
	// Now: the collateral has expired; its TCB info is named first.
	_, err = verifierAt(t, time.Now(), false).VerifyWith(t.Context(), quote, qvlCollateral(t))
	wantRefusal(t, "now", err, true, "TCB info of FMSPC 00A067110000 expired 2025-07-19T10:56:11Z")
	// Its PCK CRL alone out of date.
	_, err = verifierAt(t, time.Date(2025, 6, 19, 10, 10, 0, 0, time.UTC), false).VerifyWith(t.Context(), quote, qvlCollateral(t))
	wantRefusal(t, "before the TCB info", err, true, "TCB info", "not valid before 2025-06-19T10:56:11Z")
}

func TestMutations(t *testing.T) {
	quote := sample(t, oasisQuote)
	v := verifierAt(t, oasisTime, true)
	const sd = sigDataOffset // offsets in the signature data: ISV signature 0, attestation key 64, QE report 128, QE signature 512, auth 576
	certData := sd + sigFixed + 32 + 6
	for _, tc := range []struct {
		name string
		mut  func(q []byte) []byte
		want string
	}{
		{"report data", flip(headerSize + 320), "ISV enclave report signature does not verify"},
		{"MRENCLAVE", flip(headerSize + 64), "ISV enclave report signature does not verify"},
		{"MRSIGNER", flip(headerSize + 128), "ISV enclave report signature does not verify"},
		{"ATTRIBUTES", flip(headerSize + 48), "ISV enclave report signature does not verify"},
		{"header user data", flip(40), "ISV enclave report signature does not verify"},
		{"ISV report signature", flip(sd + 10), "ISV enclave report signature does not verify"},
		{"ISV report signature s", flip(sd + 63), "ISV enclave report signature does not verify"},
		{"attestation key", flip(sd + 64 + 5), "QE report data is not SHA-256(attestation key"},
		{"QE auth data", flip(sd + 578), "QE report data is not SHA-256"},
		{"QE report MRSIGNER", flip(sd + 128 + 130), "QE report signature does not verify"},
		{"QE report data", flip(sd + 128 + 320), "QE report signature does not verify"},
		{"QE report signature", flip(sd + 512 + 3), "QE report signature does not verify"},
		{"version 4", set(0, 4), "quote version 4, only 3"},
		{"version 2", set(0, 2), "quote version 2, only 3"},
		{"attestation key type 3", set(2, 3), "attestation key type 3"},
		{"TEE type TDX", set(4, 0x81), "TEE type 0x81, not SGX"},
		{"QE vendor", flip(12), "QE vendor ID"},
		{"signature data length", flip(headerSize + reportSize), "signature data of"},
		{"auth data length", set(sd+577, 0xff), "QE auth data of"},
		{"certification data type 6", set(sd+578+32, 6), "certification data type 6"},
		{"certification data length", flip(sd + 578 + 32 + 2), "certification data of"},
		{"a byte appended", func(q []byte) []byte { return append(q, 0) }, "signature data of 4294 bytes, the quote has 4295"},
		{"PCK certificate", func(q []byte) []byte { q[certData+300] ^= 'A' ^ 'B'; return q }, "PCK chain"},
		{"PCK chain without the root", func(q []byte) []byte {
			i := bytes.LastIndex(q, []byte("-----BEGIN"))
			return fixCertLen(append(q[:i:i], 0))
		}, "2 certificates in the chain, want 3"},
		{"PCK chain of junk", func(q []byte) []byte { return fixCertLen(append(q[:certData:certData], "junk"...)) }, "PCK chain"},
		{"OE local report", func(q []byte) []byte { return oeReport(oeLocalReport, uint64(len(q)), q) }, "local report"},
		{"OE report of type 3", func(q []byte) []byte { return oeReport(3, uint64(len(q)), q) }, "type 3"},
		{"OE report size", func(q []byte) []byte { return oeReport(oeRemoteReport, uint64(len(q))+1, q) }, "follow its header"},
		{"OE header cut", func(q []byte) []byte { return oeReport(oeRemoteReport, 0, nil)[:12] }, "shorter than its header"},
		{"huge", func(q []byte) []byte { return make([]byte, MaxEvidence+1) }, "at most"},
	} {
		_, err := v.VerifyWith(t.Context(), tc.mut(bytes.Clone(quote)), oasisCollateral(t))
		wantRefusal(t, tc.name, err, false, tc.want)
	}
	for _, n := range []int{0, 1, 3, 4, 47, 48, 431, 432, 435, 436, 500, sd + sigFixed - 1, sd + sigFixed, sd + sigFixed + 5, certData, 2000, len(quote) - 1} {
		_, err := v.VerifyWith(t.Context(), quote[:n], oasisCollateral(t))
		wantRefusal(t, "truncated", err, false)
	}

	// The collateral's mutations.
	for _, tc := range []struct {
		name string
		mut  func(c *pcs.Collateral)
		want []string
	}{
		{"TCB info signature", func(c *pcs.Collateral) { c.TCBInfoSignature[7] ^= 1 }, []string{"TCB info", "signature", "does not verify"}},
		{"TCB info", func(c *pcs.Collateral) { c.TCBInfo[30] ^= 1 }, []string{"TCB info", "signature", "does not verify"}},
		{"QE identity signature", func(c *pcs.Collateral) { c.QEIdentitySignature[40] ^= 1 }, []string{"QE identity", "signature", "does not verify"}},
		{"QE identity chain", func(c *pcs.Collateral) { c.QEIdentityIssuerChain = sample(t, oasisBad) }, []string{"QE identity", pcs.CNPCKPlatformCA}},
		{"QE identity for TCB info", func(c *pcs.Collateral) { c.TCBInfo, c.TCBInfoSignature = c.QEIdentity, c.QEIdentitySignature }, []string{"TCB info", `id "QE"`}},
		{"short signature", func(c *pcs.Collateral) { c.TCBInfoSignature = c.TCBInfoSignature[:63] }, []string{"signature (63 bytes)"}},
	} {
		c := oasisCollateral(t)
		tc.mut(c)
		_, err := v.VerifyWith(t.Context(), quote, c)
		wantRefusal(t, tc.name, err, false, tc.want...)
	}
	// TCB info of another FMSPC: dcap-qvl's collateral, current, for the oasis quote.
	_, err := verifierAt(t, qvlTime, false).VerifyWith(t.Context(), quote, qvlCollateral(t))
	wantRefusal(t, "another FMSPC", err, false, "TCB info is for FMSPC 00A067110000, the PCK certificate's is 00606A000000")
}

func flip(i int) func([]byte) []byte { return func(q []byte) []byte { q[i] ^= 1; return q } }
func set(i int, b byte) func([]byte) []byte {
	return func(q []byte) []byte { q[i] = b; return q }
}

// fixCertLen makes the quote's lengths fit its (changed) certification data.
func fixCertLen(q []byte) []byte {
	at := sigDataOffset + sigFixed + 32 + 2
	binary.LittleEndian.PutUint32(q[at:], uint32(len(q)-at-4))
	binary.LittleEndian.PutUint32(q[signedSize:], uint32(len(q)-sigDataOffset))
	return q
}

// TestCacheKeepsTime: cached collateral is used only inside its window;
// outside it verification runs again and refuses what expired.
func TestCacheKeepsTime(t *testing.T) {
	quote := sample(t, oasisQuote)
	now := oasisTime
	v, err := New(Config{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	v.crlsOptional = true
	c := oasisCollateral(t)
	if _, err := v.VerifyWith(t.Context(), quote, c); err != nil {
		t.Fatal(err)
	}
	if len(v.colls) != 1 || len(v.chains) != 1 {
		t.Fatalf("cached %d collateral, %d chains", len(v.colls), len(v.chains))
	}
	var cached *collateral
	for _, e := range v.colls {
		cached = e
	}
	if _, err := v.VerifyWith(t.Context(), quote, c); err != nil {
		t.Fatal(err)
	}
	for _, e := range v.colls {
		if e != cached {
			t.Error("the second verification did not use the cache")
		}
	}
	now = time.Date(2023, 1, 16, 0, 0, 0, 0, time.UTC) // after the QE identity's nextUpdate
	_, err = v.VerifyWith(t.Context(), quote, c)
	wantRefusal(t, "after nextUpdate", err, true, "QE identity expired 2023-01-15T12:45:36Z")
	now = time.Date(2022, 12, 1, 0, 0, 0, 0, time.UTC) // before the TCB info's issueDate
	_, err = v.VerifyWith(t.Context(), quote, c)
	wantRefusal(t, "before issueDate", err, true, "PCK chain", "not valid before 2022-12-05")
	now = oasisTime
	if _, err := v.VerifyWith(t.Context(), quote, c); err != nil {
		t.Errorf("back inside the window: %v", err)
	}
	// Changed collateral is not the cached one.
	c.TCBInfoSignature[0] ^= 1
	_, err = v.VerifyWith(t.Context(), quote, c)
	wantRefusal(t, "changed after caching", err, false, "TCB info", "signature")
}

func TestConcurrent(t *testing.T) {
	oasis, qvl := sample(t, oasisQuote), sample(t, qvlQuote)
	oc, qc := oasisCollateral(t), qvlCollateral(t)
	now := time.Date(2025, 6, 20, 0, 0, 0, 0, time.UTC)
	v, err := New(Config{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16*20)
	for g := range 16 {
		wg.Go(func() {
			for range 20 {
				if g%2 == 0 {
					_, err := v.VerifyWith(t.Context(), qvl, qc)
					if err != nil {
						errs <- err
					}
				} else if _, err := v.VerifyWith(t.Context(), oasis, oc); err == nil || !errors.Is(err, enclave.ErrCollateral) {
					errs <- errors.New("the expired oasis collateral was not refused")
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// BenchmarkVerify is one verification with the collateral cached: the two
// quote signatures, the checks against collateral, the claims.
func BenchmarkVerify(b *testing.B) {
	quote := sample(b, qvlQuote)
	c := qvlCollateral(b)
	v := verifierAt(b, qvlTime, false)
	if _, err := v.VerifyWith(b.Context(), quote, c); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.VerifyWith(b.Context(), quote, c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyUncached verifies the collateral every time.
func BenchmarkVerifyUncached(b *testing.B) {
	quote := sample(b, qvlQuote)
	c := qvlCollateral(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := verifierAt(b, qvlTime, false).VerifyWith(b.Context(), quote, c); err != nil {
			b.Fatal(err)
		}
	}
}
