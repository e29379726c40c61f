package tdx

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
	"github.com/cohort-dev/cohort/enclave/tdx/tdxtest"
)

// sampleTime is when the samples' PCK chains are checked without
// collateral. The samples' README says "now"; a fixed time keeps the test
// from failing when the first PCK certificate expires (2029-09-20).
const sampleTime = "2026-06-01T00:00:00Z"

type sampleWant struct {
	version       uint16
	mrtd, fmspc   string
	teeTCBSVN     string
	tdAttributes  string
	xfam          string
	debug         bool
	pcesvn, qesvn uint16
}

var samples = []struct {
	name  string
	quote func(testing.TB) []byte
	want  sampleWant
}{
	{"trustee v4", func(t testing.TB) []byte { return readSample(t, trusteeV4) }, sampleWant{
		version: 4, mrtd: "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031",
		fmspc: "50806f000000", teeTCBSVN: "03000500000000000000000000000000", tdAttributes: "0100001000000000", xfam: "e742060000000000",
		debug: true, pcesvn: 11, qesvn: 4,
	}},
	{"trustee v5", func(t testing.TB) []byte { return readSample(t, trusteeV5) }, sampleWant{
		version: 5, mrtd: "dfba221b48a22af8511542ee796603f37382800840dcd978703909bf8e64d4c8a1e9de86e7c9638bfcba422f3886400a",
		fmspc: "90c06f000000", teeTCBSVN: "05010200000000000000000000000000", tdAttributes: "0000001000000000", xfam: "e742060000000000",
		pcesvn: 13, qesvn: 6,
	}},
	{"dcap-qvl", func(t testing.TB) []byte { return readSample(t, dcapQuote) }, sampleWant{
		version: 4, mrtd: "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7",
		fmspc: "b0c06f000000", teeTCBSVN: "06010300000000000000000000000000", tdAttributes: "0000001000000000", xfam: "e702060000000000",
		pcesvn: 11, qesvn: 6,
	}},
	{"go-tdx-guest SPR E4", sprE4, sampleWant{
		version: 4, mrtd: "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb",
		fmspc: "50806f000000", teeTCBSVN: "03000400000000000000000000000000", tdAttributes: "0000004000000000", xfam: "e71a060000000000",
		pcesvn: 11, qesvn: 4,
	}},
	{"go-tdx-guest v5", func(testing.TB) []byte { return bytes.Clone(testdata.RawQuoteV5) }, sampleWant{
		version: 5, mrtd: "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876",
		fmspc: "90c06f000000", teeTCBSVN: "0b010400000000000000000000000000", tdAttributes: "0000001000000000", xfam: "e702060000000000",
		pcesvn: 13, qesvn: 7,
	}},
}

// checkClaims compares claims with a sample's expected values, field by
// field.
func checkClaims(t *testing.T, q []byte, c enclave.Claims, w sampleWant, status string) {
	t.Helper()
	hexOf := hex.EncodeToString
	for _, f := range []struct{ name, got, want string }{
		{"Backend", c.Backend, enclave.PlatformTDX},
		{"MRTD", hexOf(c.UniqueID), w.mrtd},
		{"FMSPC", hexOf(c.TDX.FMSPC), w.fmspc},
		{"TEE_TCB_SVN", hexOf(c.TDX.TEETCBSVN), w.teeTCBSVN},
		{"TD_ATTRIBUTES", hexOf(c.TDX.TDAttributes), w.tdAttributes},
		{"XFAM", hexOf(c.TDX.XFAM), w.xfam},
		{"TCBStatus", c.TCBStatus, status},
		{"quote version", fmt.Sprint(c.TDX.QuoteVersion), fmt.Sprint(w.version)},
		{"debug", fmt.Sprint(c.Debug), fmt.Sprint(w.debug)},
		{"PCESVN", fmt.Sprint(c.TDX.PCESVN), fmt.Sprint(w.pcesvn)},
		{"QESVN", fmt.Sprint(c.TDX.QESVN), fmt.Sprint(w.qesvn)},
	} {
		if f.got != f.want {
			t.Errorf("%s %s, want %s", f.name, f.got, f.want)
		}
	}
	raw, err := decodeQuote(q)
	if err != nil {
		t.Fatal(err)
	}
	rdOff := headerSize + offReportData
	if raw.version == 5 {
		rdOff += 6 // the body descriptor's type and size
	}
	if !bytes.Equal(c.ReportData[:], q[rdOff:rdOff+64]) {
		t.Errorf("report data %x is not the quote's", c.ReportData)
	}
	for name, f := range map[string][]byte{"MRSEAM": c.TDX.MRSEAM, "MRSIGNERSEAM": c.TDX.MRSignerSEAM, "MRCONFIGID": c.TDX.MRConfigID,
		"MROWNER": c.TDX.MROwner, "MROWNERCONFIG": c.TDX.MROwnerConfig, "RTMR0": c.TDX.RTMRs[0], "RTMR3": c.TDX.RTMRs[3]} {
		if len(f) != 48 {
			t.Errorf("%s is %d bytes", name, len(f))
		}
	}
	if len(c.TDX.SEAMAttributes) != 8 || c.Simulated || c.Collateral[0].Kind != "PCK chain" {
		t.Errorf("claims %+v", c)
	}
}

// TestSamplesWithoutCollateral: each real quote's signature, QE report and
// PCK chain verify to Intel's root (the default Config), and its claims are
// read field by field; without collateral its TCB is NotEvaluated.
func TestSamplesWithoutCollateral(t *testing.T) {
	v := newVerifier(t, Config{Now: at(sampleTime)})
	for _, s := range samples {
		t.Run(s.name, func(t *testing.T) {
			q := s.quote(t)
			c, err := v.Verify(t.Context(), q)
			if err != nil {
				t.Fatal(err)
			}
			checkClaims(t, q, c, s.want, TCBNotEvaluated)
			if len(c.Collateral) != 1 || c.TDX.TDXModuleTCB != "" || c.Advisories != nil {
				t.Errorf("collateral %+v, module %q, advisories %v: want the PCK chain only", c.Collateral, c.TDX.TDXModuleTCB, c.Advisories)
			}
		})
	}
}

// TestDCAPQVLCollateral: dcap-qvl's quote with its collateral at 2025-06-20:
// the TDX TCB (platform and TDX module) is UpToDate and so is the QE.
func TestDCAPQVLCollateral(t *testing.T) {
	q := readSample(t, dcapQuote)
	v := newVerifier(t, Config{Now: at("2025-06-20T00:00:00Z"), Collateral: fixed(dcapQVLCollateral(t))})
	c, res, err := v.verify(t.Context(), q)
	if err != nil {
		t.Fatal(err)
	}
	checkClaims(t, q, c, samples[2].want, enclave.TCBUpToDate)
	if c.TDX.TDXModuleTCB != "UpToDate" || res.qe.TcbStatus != "UpToDate" || res.module.TcbStatus != "UpToDate" || !res.moduleIdentity {
		t.Errorf("TDX module %q, QE %q: want UpToDate", c.TDX.TDXModuleTCB, res.qe.TcbStatus)
	}
	var kinds []string
	for _, u := range c.Collateral {
		kinds = append(kinds, u.Kind+" "+u.ID)
	}
	if got := strings.Join(kinds, ", "); got != "PCK chain Intel SGX PCK Certificate, serial "+fmt.Sprintf("%x", mustChain(t, q).SerialNumber)+", TCB info b0c06f000000, QE identity TD_QE, PCK CRL platform, root CA CRL Intel SGX Root CA" {
		t.Errorf("collateral used: %s", got)
	}
	if c.Collateral[1].NextUpdate != time.Date(2025, 7, 19, 10, 16, 3, 0, time.UTC) {
		t.Errorf("TCB info's next update %v", c.Collateral[1].NextUpdate)
	}
	if err := (Requirements{Measurements: [][]byte{c.UniqueID}}).Check(c); err != nil {
		t.Errorf("a policy of its MRTD and UpToDate refuses it: %v", err)
	}
}

func mustChain(t *testing.T, q []byte) *x509.Certificate {
	t.Helper()
	raw, err := decodeQuote(q)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(raw.chain)
	if blk == nil {
		t.Fatal("no PEM in the PCK chain")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDCAPQVLCollateralExpiredNow: at the real time, the same collateral
// has expired, and the quote is refused as lacking collateral, naming each
// piece that expired.
func TestDCAPQVLCollateralExpiredNow(t *testing.T) {
	q := readSample(t, dcapQuote)
	v := newVerifier(t, Config{Collateral: fixed(dcapQVLCollateral(t))}) // Now: time.Now
	_, err := v.Verify(t.Context(), q)
	refused(t, err, true, "TCB info for FMSPC b0c06f000000 expired at 2025-07-19T10:16:03Z", "QE identity expired", "PCK CRL expired")
}

// TestGoTDXGuestSampleCollateral: go-tdx-guest's sample TCB info, QE
// identity and CRLs (FMSPC 50806f000000) are valid from 2023-06-18 (the TCB
// info's issue date) to 2023-07-08 (the QE identity's and the PCK CRL's
// next update). At 2023-07-01 they verify, but no TCB level of theirs
// matches their SPR E4 quote (its CPUSVN is below every level's, as
// go-tdx-guest's own test expects); the trustee v4 quote, of the same
// FMSPC, is UpToDate by them. After 2023-07-08 and before 2023-06-18 the
// collateral is refused, naming the pieces.
func TestGoTDXGuestSampleCollateral(t *testing.T) {
	col := sprE4Collateral(t)
	v := newVerifier(t, Config{Now: at("2023-07-01T00:00:00Z"), Collateral: fixed(col)})
	_, err := v.Verify(t.Context(), sprE4(t))
	refused(t, err, false, "does not verify", "no matching TCB level found")

	q := readSample(t, trusteeV4)
	c, res, err := v.verify(t.Context(), q)
	if err != nil {
		t.Fatal(err)
	}
	checkClaims(t, q, c, samples[0].want, enclave.TCBUpToDate)
	if res.moduleIdentity || c.TDX.TDXModuleTCB != "" || res.qe.TcbStatus != "UpToDate" {
		t.Errorf("a TDX 1.0 module: module %q (identity %v), QE %q", c.TDX.TDXModuleTCB, res.moduleIdentity, res.qe.TcbStatus)
	}

	v = newVerifier(t, Config{Now: at("2023-07-09T00:00:00Z"), Collateral: fixed(col)})
	_, err = v.Verify(t.Context(), q)
	refused(t, err, true, "QE identity expired at 2023-07-08T07:24:59Z", "PCK CRL expired")
	v = newVerifier(t, Config{Now: at("2023-06-10T00:00:00Z"), Collateral: fixed(col)})
	_, err = v.Verify(t.Context(), q)
	refused(t, err, true, "TCB info for FMSPC 50806f000000 is not valid before 2023-06-18T08:42:58Z")
}

// TestTrailingBytes: zero padding after a quote is accepted (dcap-qvl's
// sample has 70 bytes of it); anything else is refused, such as the text
// go-tdx-guest's authors appended to their SPR E4 sample.
func TestTrailingBytes(t *testing.T) {
	v := newVerifier(t, Config{Now: at(sampleTime)})
	_, err := v.Verify(t.Context(), testdata.RawQuote)
	refused(t, err, false, "39 bytes after the quote that are not zero padding")
	if _, err := v.Verify(t.Context(), append(sprE4(t), make([]byte, 100)...)); err != nil {
		t.Errorf("zero padding refused: %v", err)
	}
	big := append(sprE4(t), make([]byte, MaxEvidence)...)
	_, err = v.Verify(t.Context(), big)
	refused(t, err, false, "at most 16384")
}

// offsets in a version 4 quote
const (
	v4ReportData = headerSize + offReportData
	v4MRTD       = headerSize + offMRTD
	v4TDAttrs    = headerSize + offTDAttributes
	v4Signature  = headerSize + bodySizeTDX10 + 4
	v4QEReport   = v4Signature + 64 + 64 + 6
	v4QEAuth     = v4QEReport + qeReportSize + 64 + 2
)

// TestMutations: a changed byte anywhere that is signed, a truncated quote
// and a quote of another version are each refused, naming the reason.
func TestMutations(t *testing.T) {
	v := newVerifier(t, Config{Now: at(sampleTime)})
	good := readSample(t, dcapQuote)
	v5 := readSample(t, trusteeV5)
	flip := func(q []byte, off int, x byte) []byte { q = bytes.Clone(q); q[off] ^= x; return q }
	set16 := func(q []byte, off int, x uint16) []byte {
		q = bytes.Clone(q)
		binary.LittleEndian.PutUint16(q[off:], x)
		return q
	}
	for _, c := range []struct {
		name  string
		quote []byte
		words []string
	}{
		{"report data", flip(good, v4ReportData+7, 1), []string{"does not verify", "quote's signature"}},
		{"MRTD", flip(good, v4MRTD, 0x80), []string{"does not verify", "quote's signature"}},
		{"debug bit", flip(good, v4TDAttrs, 1), []string{"does not verify", "quote's signature"}},
		{"v5 MRTD", flip(v5, headerSize+6+offMRTD, 1), []string{"does not verify", "quote's signature"}},
		{"signature", flip(good, v4Signature+40, 1), []string{"does not verify", "quote's signature"}},
		{"QE report", flip(good, v4QEReport+0x41, 1), []string{"QE report's signature"}},
		{"QE report's signature", flip(good, v4QEReport+qeReportSize+3, 1), []string{"QE report's signature"}},
		{"QE authentication data", flip(good, v4QEAuth, 1), []string{"QE Report Data does not match"}},
		{"attestation key", flip(good, v4Signature+64+5, 1), []string{"does not verify"}},
		{"version 3", set16(good, 0, 3), []string{"quote version 3, want 4 or 5"}},
		{"version 6", set16(good, 0, 6), []string{"quote version 6, want 4 or 5"}},
		{"attestation key type", set16(good, 2, 3), []string{"attestation key type 3"}},
		{"TEE type SGX", set16(good, 4, 0), []string{"TEE type 0x0"}},
		{"v5 body type", set16(v5, headerSize, 4), []string{"TD quote body type 4"}},
		{"v5 body size", set16(v5, headerSize+2, 600), []string{"is 600 bytes, want 648"}},
		{"QE vendor", flip(good, 12, 1), []string{"does not verify"}},
		{"PCK chain", flip(good, len(good)-70-200, 1), []string{"PCK"}},
		{"PCK chain not PEM", func() []byte {
			q := bytes.Clone(good)
			copy(q[len(q)-70-len(mustDecode(t, good).chain):], "not a PEM chain")
			return q
		}(), []string{"not a TDX quote", "PCK chain"}},
		{"empty", nil, []string{"truncated"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := v.Verify(t.Context(), c.quote)
			refused(t, err, false, c.words...)
		})
	}
	t.Run("truncated", func(t *testing.T) {
		q := good[:len(good)-70] // without its zero padding
		for _, n := range []int{0, 1, 47, 48, 100, 631, 632, 635, 636, 700, v4QEReport + 100, len(q) - 1000, len(q) - 1} {
			_, err := v.Verify(t.Context(), q[:n])
			refused(t, err, false, "not a TDX quote")
		}
	})
}

func mustDecode(t *testing.T, b []byte) *rawQuote {
	t.Helper()
	q, err := decodeQuote(b)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// TestSafely: a panic in go-tdx-guest becomes a refusal.
func TestSafely(t *testing.T) {
	err := safely(func() error { var b []byte; _ = b[3]; return nil })
	if !errors.Is(err, errParserPanic) || !errors.Is(wrapParse(err), enclave.ErrInvalidEvidence) || !errors.Is(wrapParse(err), errParserPanic) {
		t.Fatalf("safely = %v", err)
	}
}

// TestDebugQuote: a debug TD's quote verifies, says Debug, and
// Requirements refuse it unless they allow debug; the trustee v4 sample
// is one.
func TestDebugQuote(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	td := tdxtest.DefaultTD()
	td.TDAttributes[0] |= 1
	v := newVerifier(t, Config{Root: s.Root(), Collateral: fixed(fakeCollateral(t, s, tdxtest.CollateralConfig{}))})
	for name, q := range map[string][]byte{"fake": fakeQuote(t, s, td, [64]byte{}), "trustee v4": readSample(t, trusteeV4)} {
		vv := v
		if name != "fake" {
			vv = newVerifier(t, Config{Now: at(sampleTime)})
		}
		c, err := vv.Verify(t.Context(), q)
		if err != nil {
			t.Fatal(name, err)
		}
		if !c.Debug {
			t.Fatalf("%s: Debug false", name)
		}
		r := Requirements{Measurements: [][]byte{c.UniqueID}, TCBStatuses: []string{TCBNotEvaluated}}
		if err := r.Check(c); !errors.Is(err, ErrDebug) || !strings.Contains(err.Error(), "DEBUG") {
			t.Errorf("%s: Check %v, want ErrDebug", name, err)
		}
		r.AllowDebug = true
		if err := r.Check(c); err != nil {
			t.Errorf("%s: AllowDebug: %v", name, err)
		}
	}
}

// TestFakeRefusedByIntelRoot: a quote of the test fake is refused by a
// verifier with the real root (the default Config), naming the PCK chain
// and the roots; it verifies only with the fake's root.
func TestFakeRefusedByIntelRoot(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	q := fakeQuote(t, s, tdxtest.DefaultTD(), [64]byte{7})
	_, err := newVerifier(t, Config{}).Verify(t.Context(), q)
	refused(t, err, false, "PCK chain", tdxtest.RootOrganization, "is not the trusted root", intelRootSubject)
	if _, err := newVerifier(t, Config{Root: s.Root()}).Verify(t.Context(), q); err != nil {
		t.Fatalf("with the test root: %v", err)
	}
	// Nor does another fake's root do.
	_, err = newVerifier(t, Config{Root: newSigner(t, tdxtest.Config{}).Root()}).Verify(t.Context(), q)
	refused(t, err, false, "PCK chain", "is not the trusted root")
}

// TestFakeEndToEnd: the fake's quotes of each layout (version 4, version 5
// of TDX 1.0 and of TDX 1.5) verify with its root, with and without its
// collateral, and the claims are the TD's.
func TestFakeEndToEnd(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	col := fakeCollateral(t, s, tdxtest.CollateralConfig{})
	withCol := newVerifier(t, Config{Root: s.Root(), Collateral: fixed(col), Now: at("2030-01-01T00:00:00Z")})
	without := newVerifier(t, Config{Root: s.Root(), Now: at("2030-01-01T00:00:00Z")})
	rd := enclave.Bind("test", []byte("tdx"))
	for _, l := range []struct {
		name    string
		version int
		tdx15   bool
	}{{"v4", 4, false}, {"v5 TDX 1.0", 5, false}, {"v5 TDX 1.5", 5, true}} {
		t.Run(l.name, func(t *testing.T) {
			td := tdxtest.DefaultTD()
			td.Version, td.TDX15 = l.version, l.tdx15
			td.MROwner[0], td.RTMRs[2][47] = 0xaa, 0xbb
			q := fakeQuote(t, s, td, rd)
			c, err := withCol.Verify(t.Context(), q)
			if err != nil {
				t.Fatal(err)
			}
			want := sampleWant{version: uint16(l.version), mrtd: hex.EncodeToString(tdxtest.DefaultMRTD[:]), fmspc: hex.EncodeToString(s.FMSPC()),
				teeTCBSVN: hex.EncodeToString(td.TEETCBSVN[:]), tdAttributes: "0000001000000000", xfam: "e742060000000000", pcesvn: 13, qesvn: 7}
			checkClaims(t, q, c, want, enclave.TCBUpToDate)
			if c.ReportData != rd || c.TDX.MROwner[0] != 0xaa || c.TDX.RTMRs[2][47] != 0xbb || !bytes.Equal(c.TDX.MRSEAM, td.MRSEAM[:]) {
				t.Errorf("claims %+v", c.TDX)
			}
			if c.TDX.TDXModuleTCB != "UpToDate" || len(c.Collateral) != 5 {
				t.Errorf("module %q, collateral %+v", c.TDX.TDXModuleTCB, c.Collateral)
			}
			c, err = without.Verify(t.Context(), q)
			if err != nil || c.TCBStatus != TCBNotEvaluated {
				t.Fatalf("without collateral: %q, %v", c.TCBStatus, err)
			}
			if err := (Requirements{Measurements: [][]byte{c.UniqueID}}).Check(c); !errors.Is(err, ErrTCBStatus) {
				t.Errorf("a policy of UpToDate only accepts NotEvaluated: %v", err)
			}
		})
	}
}

// TestFakeTCBStatuses: how the collateral's levels reach the claims. The
// platform's level of a TDX 1.5 module is the claims' TCB status, for the
// policy; go-tdx-guest refuses any other level that is not UpToDate.
func TestFakeTCBStatuses(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	td := tdxtest.DefaultTD()
	q := fakeQuote(t, s, td, [64]byte{})
	verifyWith := func(cc tdxtest.CollateralConfig, q []byte) (enclave.Claims, error) {
		return newVerifier(t, Config{Root: s.Root(), Collateral: fixed(fakeCollateral(t, s, cc))}).Verify(t.Context(), q)
	}

	c, err := verifyWith(tdxtest.CollateralConfig{Platform: "SWHardeningNeeded", Advisories: []string{"INTEL-SA-00615", "INTEL-SA-00001"}}, q)
	if err != nil {
		t.Fatal(err)
	}
	if c.TCBStatus != "SWHardeningNeeded" || c.TDX.TDXModuleTCB != "UpToDate" || fmt.Sprint(c.Advisories) != "[INTEL-SA-00001 INTEL-SA-00615]" {
		t.Errorf("status %q, module %q, advisories %v", c.TCBStatus, c.TDX.TDXModuleTCB, c.Advisories)
	}
	r := Requirements{Measurements: [][]byte{c.UniqueID}}
	if err := r.Check(c); !errors.Is(err, ErrTCBStatus) || !strings.Contains(err.Error(), "SWHardeningNeeded") {
		t.Errorf("UpToDate only: %v", err)
	}
	r.TCBStatuses = []string{"SWHardeningNeeded"}
	if err := r.Check(c); err != nil {
		t.Errorf("SWHardeningNeeded accepted: %v", err)
	}

	// Below the best level: the lower one, OutOfDate.
	low := td
	low.TEETCBSVN[2] = 1
	c, err = verifyWith(tdxtest.CollateralConfig{}, fakeQuote(t, s, low, [64]byte{}))
	if err != nil || c.TCBStatus != "OutOfDate" {
		t.Errorf("TEE_TCB_SVN below the best level: %q, %v", c.TCBStatus, err)
	}

	_, err = verifyWith(tdxtest.CollateralConfig{Platform: "Revoked"}, q)
	refused(t, err, false, "platform's TCB level is Revoked")
	_, err = verifyWith(tdxtest.CollateralConfig{Module: "OutOfDate"}, q)
	refused(t, err, false, "does not verify", "TDX TCB info reported by Intel PCS failed TCB status check", "TCB levels found: TDX OutOfDate, QE UpToDate")
	_, err = verifyWith(tdxtest.CollateralConfig{QE: "OutOfDate"}, q)
	refused(t, err, false, "does not verify", "QE Identity", "TCB levels found: TDX UpToDate, QE OutOfDate")

	// A TDX 1.0 module (TEE_TCB_SVN[1] 0) has no module identity:
	// go-tdx-guest judges the platform's level, and refuses it unless
	// UpToDate.
	td10 := td
	td10.TEETCBSVN = [16]byte{3, 0, 4}
	q10 := fakeQuote(t, s, td10, [64]byte{})
	c, err = verifyWith(tdxtest.CollateralConfig{TEETCBSVN: td10.TEETCBSVN}, q10)
	if err != nil || c.TCBStatus != "UpToDate" || c.TDX.TDXModuleTCB != "" {
		t.Errorf("TDX 1.0: %q, module %q, %v", c.TCBStatus, c.TDX.TDXModuleTCB, err)
	}
	_, err = verifyWith(tdxtest.CollateralConfig{TEETCBSVN: td10.TEETCBSVN, Platform: "SWHardeningNeeded"}, q10)
	refused(t, err, false, "does not verify", "TCB levels found: TDX SWHardeningNeeded")
}

// TestRevokedPCK: a PCK certificate on the PCK CRL is refused.
func TestRevokedPCK(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	v := newVerifier(t, Config{Root: s.Root(), Collateral: fixed(fakeCollateral(t, s, tdxtest.CollateralConfig{RevokePCK: true}))})
	_, err := v.Verify(t.Context(), fakeQuote(t, s, tdxtest.DefaultTD(), [64]byte{}))
	refused(t, err, false, "PCK Leaf certificate in PCK certificate chain was revoked")
}

// TestCollateralRefusals: collateral that is missing, of another platform,
// malformed, not under the root, expired or not yet valid is refused as
// lacking collateral (ErrCollateral), naming why.
func TestCollateralRefusals(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	q := fakeQuote(t, s, tdxtest.DefaultTD(), [64]byte{})
	good := fakeCollateral(t, s, tdxtest.CollateralConfig{Issued: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), NextUpdate: time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)})
	cacheErr := errors.New("the cache has nothing for it")
	otherRoot := newSigner(t, tdxtest.Config{})
	mod := func(f func(c *pcs.Collateral)) *pcs.Collateral { c := *good; f(&c); return &c }
	for _, c := range []struct {
		name  string
		now   string
		col   func([]byte) (*pcs.Collateral, error)
		words []string
	}{
		{"cache error", "2025-01-15T00:00:00Z", func([]byte) (*pcs.Collateral, error) { return nil, cacheErr }, []string{"collateral for FMSPC 00c0ffee0000", cacheErr.Error()}},
		{"none", "2025-01-15T00:00:00Z", fixed(nil), []string{"no collateral for FMSPC 00c0ffee0000"}},
		{"other FMSPC", "2025-01-15T00:00:00Z", fixed(fakeCollateral(t, s, tdxtest.CollateralConfig{FMSPC: [6]byte{1, 2, 3, 4, 5, 6}})), []string{"TCB info is for FMSPC 010203040506"}},
		{"other root", "2025-01-15T00:00:00Z", fixed(fakeCollateral(t, otherRoot, tdxtest.CollateralConfig{})), []string{"issuer chain ends in", "not the trusted root"}},
		{"expired", "2025-03-01T00:00:00Z", fixed(good), []string{"TCB info for FMSPC 00c0ffee0000 expired at 2025-02-01T00:00:00Z", "QE identity expired", "PCK CRL expired", "root CA CRL expired"}},
		{"not yet valid", "2024-12-31T00:00:00Z", fixed(good), []string{"is not valid before 2025-01-01T00:00:00Z"}},
		{"TCB info not JSON", "2025-01-15T00:00:00Z", fixed(mod(func(c *pcs.Collateral) { c.TCBInfo = []byte(`{"id":"TDX"},"signature":"00"`) })), []string{"TCB info is not one JSON object"}},
		{"SGX TCB info", "2025-01-15T00:00:00Z", fixed(mod(func(c *pcs.Collateral) {
			c.TCBInfo = bytes.Replace(c.TCBInfo, []byte(`"id":"TDX"`), []byte(`"id":"SGX"`), 1)
		})), []string{`TCB info of "SGX"`}},
		{"short signature", "2025-01-15T00:00:00Z", fixed(mod(func(c *pcs.Collateral) { c.QEIdentitySignature = c.QEIdentitySignature[:63] })), []string{"signatures of 64 and 63 bytes"}},
		{"no root CRL", "2025-01-15T00:00:00Z", fixed(mod(func(c *pcs.Collateral) { c.RootCACRL = nil })), []string{"root CA CRL is 0 bytes"}},
		{"chain of three", "2025-01-15T00:00:00Z", fixed(mod(func(c *pcs.Collateral) {
			c.PCKCRLIssuerChain = append(bytes.Clone(c.PCKCRLIssuerChain), c.TCBInfoIssuerChain...)
		})), []string{"more than two certificates"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := newVerifier(t, Config{Root: s.Root(), Now: at(c.now), Collateral: c.col})
			_, err := v.Verify(t.Context(), q)
			refused(t, err, true, c.words...)
			if c.name == "cache error" && !errors.Is(err, cacheErr) {
				t.Errorf("%v does not wrap the cache's error", err)
			}
		})
	}
	// Collateral whose signature does not verify is refused by
	// go-tdx-guest.
	bad := mod(func(c *pcs.Collateral) {
		c.TCBInfoSignature = bytes.Clone(c.TCBInfoSignature)
		c.TCBInfoSignature[5] ^= 1
	})
	_, err := newVerifier(t, Config{Root: s.Root(), Now: at("2025-01-15T00:00:00Z"), Collateral: fixed(bad)}).Verify(t.Context(), q)
	refused(t, err, false, "tcbInfo response verification failed")
}

// TestOfflineGetter: the getter answers the PCS URLs go-tdx-guest asks for
// from the collateral's bytes and fails every other.
func TestOfflineGetter(t *testing.T) {
	p, err := prepare(dcapQVLCollateral(t), pcs.IntelRoot())
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for u := range p.getter {
		urls = append(urls, u)
	}
	want := []string{
		"https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=b0c06f000000",
		"https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity",
		"https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
		"https://certificates.trustedservices.intel.com/IntelSGXRootCA.der",
	}
	if len(urls) != len(want) {
		t.Fatalf("serves %q", urls)
	}
	for _, u := range want {
		h, b, err := p.getter.Get(u)
		if err != nil || len(b) == 0 {
			t.Errorf("%s: %v", u, err)
		}
		b[0] ^= 1 // the caller's copy
		if _, b2, _ := p.getter.Get(u); b2[0] == b[0] {
			t.Errorf("%s: the getter hands out its own bytes", u)
		}
		_ = h
	}
	for _, u := range []string{"https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806f000000", "http://example.com/", ""} {
		if _, _, err := p.getter.Get(u); err == nil || !strings.Contains(err.Error(), "offline") {
			t.Errorf("%q answered: %v", u, err)
		}
	}
	if _, _, err := offlineGetter(nil).Get(want[0]); err == nil {
		t.Error("the empty getter answers")
	}
}

// TestCollateralCache: collateral is prepared once per content and kept
// until it expires, at most maxCachedCollateral.
func TestCollateralCache(t *testing.T) {
	col := dcapQVLCollateral(t)
	q := readSample(t, dcapQuote)
	now := time.Date(2025, 6, 20, 0, 0, 0, 0, time.UTC)
	v := newVerifier(t, Config{Now: func() time.Time { return now }, Collateral: func([]byte) (*pcs.Collateral, error) {
		c := *col // a fresh value of the same bytes each time
		return &c, nil
	}})
	for range 3 {
		if _, err := v.Verify(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	if v.cache.prepares != 1 || len(v.cache.m) != 1 {
		t.Fatalf("prepared %d times, %d cached", v.cache.prepares, len(v.cache.m))
	}
	now = time.Date(2025, 8, 1, 0, 0, 0, 0, time.UTC) // past the next update
	_, err := v.Verify(t.Context(), q)
	refused(t, err, true, "expired")
	if len(v.cache.m) != 0 || v.cache.prepares != 2 {
		t.Fatalf("expired collateral still cached: %d entries, %d prepares", len(v.cache.m), v.cache.prepares)
	}

	s := newSigner(t, tdxtest.Config{})
	cc := newCollateralCache()
	for i := range maxCachedCollateral + 6 {
		c := fakeCollateral(t, s, tdxtest.CollateralConfig{NextUpdate: time.Date(2040, 1, 1+i, 0, 0, 0, 0, time.UTC)})
		if _, err := cc.get(c, s.Root(), now); err != nil {
			t.Fatal(err)
		}
	}
	if len(cc.m) != maxCachedCollateral {
		t.Fatalf("%d cached", len(cc.m))
	}
}

// TestNewRoot: a root must be a self-signed CA certificate named as Intel's
// (go-tdx-guest checks every chain's root by that name).
func TestNewRoot(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	if _, err := New(Config{Root: s.PCKCertificate()}); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("a leaf as root: %v", err)
	}
	q := mustChain(t, readSample(t, dcapQuote)) // Intel's PCK leaf
	if _, err := New(Config{Root: q}); err == nil {
		t.Error("Intel's PCK leaf accepted as root")
	}
	v := newVerifier(t, Config{})
	if !v.root.Equal(pcs.IntelRoot()) {
		t.Error("the default root is not Intel's")
	}
}

// TestConcurrentVerify: one Verifier verifies from many goroutines, with
// and without collateral (go test -race).
func TestConcurrentVerify(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	v := newVerifier(t, Config{Root: s.Root(), Collateral: fixed(fakeCollateral(t, s, tdxtest.CollateralConfig{}))})
	real := newVerifier(t, Config{Now: at("2025-06-20T00:00:00Z"), Collateral: fixed(dcapQVLCollateral(t))})
	dq := readSample(t, dcapQuote)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Go(func() {
			for i := range 8 {
				rd := [64]byte{byte(g), byte(i)}
				c, err := v.Verify(t.Context(), fakeQuote(t, s, tdxtest.DefaultTD(), rd))
				if err == nil && c.ReportData != rd {
					err = fmt.Errorf("report data %x, want %x", c.ReportData[:2], rd[:2])
				}
				if err == nil {
					_, err = real.Verify(t.Context(), dq)
				}
				if err != nil {
					errs <- err
					return
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

// BenchmarkVerify is the cost of one verification, collateral cached.
func BenchmarkVerify(b *testing.B) {
	s := newSigner(b, tdxtest.Config{})
	for _, c := range []struct {
		name  string
		v     *Verifier
		quote []byte
	}{
		{"dcap-qvl/collateral", newVerifier(b, Config{Now: at("2025-06-20T00:00:00Z"), Collateral: fixed(dcapQVLCollateral(b))}), readSample(b, dcapQuote)},
		{"dcap-qvl/no-collateral", newVerifier(b, Config{Now: at(sampleTime)}), readSample(b, dcapQuote)},
		{"fake/collateral", newVerifier(b, Config{Root: s.Root(), Collateral: fixed(fakeCollateral(b, s, tdxtest.CollateralConfig{}))}), fakeQuote(b, s, tdxtest.DefaultTD(), [64]byte{})},
	} {
		b.Run(c.name, func(b *testing.B) {
			if _, err := c.v.Verify(b.Context(), c.quote); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.v.Verify(b.Context(), c.quote); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
