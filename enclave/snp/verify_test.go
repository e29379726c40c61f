package snp_test

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/snp/snptest"
)

func tcb(bl, tee, snpSPL, ucode uint8, raw uint64) enclave.SNPTCB {
	return enclave.SNPTCB{BootLoader: bl, TEE: tee, SNP: snpSPL, Microcode: ucode, Raw: raw}
}

// TestTrusteeVCEK: trustee's Milan report verifies now against AMD's real
// Milan ARK and ASK; its claims, field by field; its committed TCB is below
// the current one, so only a task that allows provisional firmware takes it.
func TestTrusteeVCEK(t *testing.T) {
	s := trusteeVCEK(t)
	c, err := s.verifier(t).Verify(t.Context(), s.evidence(t))
	if err != nil {
		t.Fatal(err)
	}
	if c.Backend != enclave.PlatformSNP || c.Simulated || c.Debug || c.SignerID != nil {
		t.Errorf("backend %q simulated %v debug %v signer %x", c.Backend, c.Simulated, c.Debug, c.SignerID)
	}
	if got := hex.EncodeToString(c.UniqueID); got != s.measurement {
		t.Errorf("measurement %s, want %s", got, s.measurement)
	}
	if got, want := hex.EncodeToString(c.ReportData[:32]), "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2"; got != want {
		t.Errorf("report data %s, want %s", got, want)
	}
	if c.TCBStatus != snp.TCBProvisional {
		t.Errorf("TCB status %q, want %q", c.TCBStatus, snp.TCBProvisional)
	}
	n := c.SNP
	if n == nil {
		t.Fatal("no SNP claims")
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"report version", n.ReportVersion, uint32(2)},
		{"guest policy", n.GuestPolicy, uint64(0x3001f)},
		{"VMPL", n.VMPL, uint32(0)},
		{"signer", n.Signer, snp.SignerVCEK},
		{"product line", n.ProductLine, snp.ProductMilan},
		{"current TCB", n.CurrentTCB, tcb(3, 0, 8, 0xce, 0xce08000000000003)},
		{"reported TCB", n.ReportedTCB, tcb(3, 0, 8, 0x73, 0x7308000000000003)},
		{"committed TCB", n.CommittedTCB, tcb(3, 0, 8, 0x73, 0x7308000000000003)},
		{"launch TCB", n.LaunchTCB, tcb(3, 0, 8, 0x73, 0x7308000000000003)},
		{"provisional", n.Provisional, true},
		{"SMT", n.SMT, true},
		{"platform info", n.PlatformInfo, uint64(1)},
		{"guest SVN", n.GuestSVN, uint32(4)},
		{"host data", hex.EncodeToString(n.HostData), strings.Repeat("00", 32)},
		{"chip id", hex.EncodeToString(n.ChipID), "c38427a30d4c7af9d96f7a15b97269825a64cb76a2352ffd5d18115d89ad473f8e8c0bcd9a5d9286612bad4aadfb4426205a3b9e4fea82301135a170e477524e"},
		{"report id", hex.EncodeToString(n.ReportID), "385eba81216de4776548fcb86f8ead03c1ebc92b6207f3210d9ccebb89c99005"},
		{"id key digest", hex.EncodeToString(n.IDKeyDigest[:4]), "03562158"},
		{"author key", hex.EncodeToString(n.AuthorKey), strings.Repeat("00", 48)},
		{"family id size", len(n.FamilyID), 16},
		{"image id size", len(n.ImageID), 16},
	}
	for _, ch := range checks {
		if fmt.Sprint(ch.got) != fmt.Sprint(ch.want) {
			t.Errorf("%s: %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	if len(c.Collateral) != 1 {
		t.Fatalf("collateral %+v", c.Collateral)
	}
	col := c.Collateral[0]
	if col.Kind != "VCEK" || !strings.HasPrefix(col.ID, "Milan serial 0") || !strings.Contains(col.ID, "0x7308000000000003") ||
		!col.NextUpdate.Equal(time.Date(2030, 1, 24, 17, 58, 26, 0, time.UTC)) || !col.Issued.Equal(time.Date(2023, 1, 24, 17, 58, 26, 0, time.UTC)) {
		t.Errorf("collateral %+v", col)
	}

	m, _ := hex.DecodeString(s.measurement)
	strict := snp.Requirements{Measurements: [][]byte{m}, AllowSMT: true}
	err = strict.Check(c)
	if !errors.Is(err, snp.ErrProvisional) || !strings.Contains(err.Error(), "provisional") {
		t.Errorf("AllowProvisional false: %v, want a refusal naming provisional firmware", err)
	}
	strict.AllowProvisional = true
	if err := strict.Check(c); err != nil {
		t.Errorf("AllowProvisional true: %v", err)
	}
}

// TestTrusteeVLEK: trustee's VLEK-signed report verifies at 2025-06-01
// against AMD's Milan ASVK; now its VLEK certificate has expired, and the
// refusal says so (collateral).
func TestTrusteeVLEK(t *testing.T) {
	s := trusteeVLEK(t)
	c, err := s.verifier(t).Verify(t.Context(), s.evidence(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(c.UniqueID); got != s.measurement {
		t.Errorf("measurement %s, want %s", got, s.measurement)
	}
	n := c.SNP
	if c.Debug || n.ReportVersion != 3 || n.GuestPolicy != 0x30000 || n.VMPL != 1 || n.Signer != snp.SignerVLEK ||
		n.ProductLine != snp.ProductMilan || !n.Provisional || c.TCBStatus != snp.TCBProvisional {
		t.Errorf("claims: debug %v %+v status %s", c.Debug, *n, c.TCBStatus)
	}
	if n.CurrentTCB != tcb(4, 0, 24, 220, 0xdc18000000000004) || n.ReportedTCB != tcb(4, 0, 24, 217, 0xd918000000000004) ||
		n.CommittedTCB != tcb(4, 0, 24, 219, 0xdb18000000000004) {
		t.Errorf("TCBs current %+v reported %+v committed %+v", n.CurrentTCB, n.ReportedTCB, n.CommittedTCB)
	}
	if c.Collateral[0].Kind != "VLEK" || !c.Collateral[0].NextUpdate.Equal(time.Date(2025, 12, 10, 22, 14, 21, 0, time.UTC)) {
		t.Errorf("collateral %+v", c.Collateral)
	}
	m, _ := hex.DecodeString(s.measurement)
	if err := (snp.Requirements{Measurements: [][]byte{m}, AllowSMT: true, AllowProvisional: true, MaxVMPL: 1}).Check(c); err != nil {
		t.Errorf("requirements: %v", err)
	}

	now, err := snp.New(snp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = now.Verify(t.Context(), s.evidence(t))
	mustRefuse(t, err, true, "VLEK certificate", "2025-12-10", "not at")
}

// TestGoSevGuestSample: go-sev-guest's own verify/testdata report verifies
// now with AMD's real Milan roots; it is a debug guest (policy 0xb0000) with
// its TCB up to date, so a task that does not allow debug refuses it.
func TestGoSevGuestSample(t *testing.T) {
	s := goSevGuest()
	c, err := s.verifier(t).Verify(t.Context(), s.evidence(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(c.UniqueID); got != s.measurement {
		t.Errorf("measurement %s, want %s", got, s.measurement)
	}
	n := c.SNP
	if !c.Debug || c.TCBStatus != enclave.TCBUpToDate || n.GuestPolicy != 0xb0000 || n.ReportVersion != 2 ||
		n.ProductLine != snp.ProductMilan || n.Signer != snp.SignerVCEK || n.Provisional ||
		n.ReportedTCB != tcb(2, 0, 5, 68, 0x4405000000000002) || n.CurrentTCB != n.ReportedTCB {
		t.Errorf("claims: debug %v status %s %+v", c.Debug, c.TCBStatus, *n)
	}
	if c.ReportData[0] != 1 || c.ReportData[4] != 5 {
		t.Errorf("report data %x", c.ReportData)
	}
	m, _ := hex.DecodeString(s.measurement)
	err = snp.Requirements{Measurements: [][]byte{m}, AllowSMT: true}.Check(c)
	if !errors.Is(err, snp.ErrDebug) || !strings.Contains(err.Error(), "debug") {
		t.Errorf("debug guest: %v, want a refusal naming debug", err)
	}
	if err := (snp.Requirements{Measurements: [][]byte{m}, AllowSMT: true, AllowDebug: true}).Check(c); err != nil {
		t.Errorf("AllowDebug: %v", err)
	}
}

// TestMutations: a changed byte anywhere the signature covers is refused,
// naming the signature; bytes that no field holds are refused as such.
func TestMutations(t *testing.T) {
	s := trusteeVCEK(t)
	v := s.verifier(t)
	if _, err := v.Verify(t.Context(), s.evidence(t)); err != nil { // also fills the cache
		t.Fatal(err)
	}
	for _, m := range []struct {
		name  string
		at    int
		xor   byte
		words []string
	}{
		{"report data", 0x50, 0x01, []string{"report signature does not verify"}},
		{"measurement", 0x90 + 47, 0x80, []string{"report signature does not verify"}},
		{"signature R", 0x2A0 + 3, 0x01, []string{"report signature does not verify"}},
		{"signature S", 0x2A0 + 0x48, 0x01, []string{"report signature does not verify"}},
		{"debug bit", 0x08 + 2, 0x08, []string{"report signature does not verify"}},
		{"VMPL", 0x30, 0x01, []string{"report signature does not verify"}},
		{"reported TCB", 0x180 + 7, 0x01, []string{"report signature does not verify"}},
		{"reserved byte", 0x1A0 - 1, 0x01, []string{"does not parse"}},
		{"signature padding", 0x2A0 + 0x90, 0x01, []string{"does not parse"}},
		{"version", 0x00, 0x0b, []string{"format", "version is: 9"}},
	} {
		r := copyOf(s.report)
		r[m.at] ^= m.xor
		_, err := v.Verify(t.Context(), evidence(t, r, s.cert))
		t.Run(m.name, func(t *testing.T) { mustRefuse(t, err, false, m.words...) })
	}
	// The debug bit really is bit 19 of the policy.
	if p := binary.LittleEndian.Uint64(s.report[0x08:]); p&(1<<19) != 0 {
		t.Fatalf("sample policy %x already debug", p)
	}
}

// TestMissingEndorsement: a report without its VCEK, certificate fetching
// being off, is refused as missing collateral; with the VCEK from
// Config.Endorsements it verifies.
func TestMissingEndorsement(t *testing.T) {
	s := trusteeVCEK(t)
	bare := evidence(t, s.report, nil)
	_, err := s.verifier(t).Verify(t.Context(), bare)
	mustRefuse(t, err, true, "no VCEK certificate", "fetching certificates from AMD's KDS is off")

	type ask struct {
		product, signer, chip string
		tcb                   uint64
	}
	var (
		mu    sync.Mutex
		asked []ask
	)
	cache := func(product, signer string, chip []byte, reported uint64) ([]byte, error) {
		mu.Lock()
		asked = append(asked, ask{product, signer, hex.EncodeToString(chip), reported})
		mu.Unlock()
		if reported == 0x7308000000000003 {
			return s.cert, nil
		}
		return nil, errors.New("not cached")
	}
	v, err := snp.New(snp.Config{Endorsements: cache})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(t.Context(), bare)
	if err != nil {
		t.Fatalf("with the cache's VCEK: %v", err)
	}
	if c.SNP.Signer != snp.SignerVCEK || c.Collateral[0].Kind != "VCEK" {
		t.Errorf("claims %+v", c.SNP)
	}
	want := ask{"", "VCEK", hex.EncodeToString(c.SNP.ChipID), 0x7308000000000003} // a version 2 report names no product line
	if len(asked) != 1 || asked[0] != want {
		t.Errorf("cache asked %+v, want %+v", asked, want)
	}

	empty := func(string, string, []byte, uint64) ([]byte, error) { return nil, nil }
	failing := func(string, string, []byte, uint64) ([]byte, error) { return nil, errors.New("cache down") }
	for name, f := range map[string]func(string, string, []byte, uint64) ([]byte, error){"empty": empty, "failing": failing} {
		v, _ := snp.New(snp.Config{Endorsements: f})
		_, err := v.Verify(t.Context(), bare)
		t.Run(name, func(t *testing.T) { mustRefuse(t, err, true, "no VCEK certificate") })
	}
}

// TestEndorsementForOtherTCB: a VCEK that verifies but certifies another
// TCB than the report's REPORTED_TCB (a stale certificate table or cache) is
// refused as collateral.
func TestEndorsementForOtherTCB(t *testing.T) {
	created := time.Now().Add(-time.Hour)
	a, err := snptest.New(snptest.Options{Created: created})
	if err != nil {
		t.Fatal(err)
	}
	// Same test keys and names, so b's VCEK chains to a's roots, but for a
	// lower TCB.
	b, err := snptest.New(snptest.Options{Created: created, ReportedTCB: 0xd0<<56 | 22<<48 | 1<<8 | 4})
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.Report([64]byte{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := snp.New(a.Config())
	if _, err := v.Verify(t.Context(), evidence(t, r, a.Endorsement())); err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(t.Context(), evidence(t, r, b.Endorsement()))
	mustRefuse(t, err, true, "VCEK certificate is for TCB 0xd016000000000104", "REPORTED_TCB is 0xd516000000000104")
}

// TestExpiredAtNow: Config.Now decides validity: the trustee VCEK (valid to
// 2030-01-24) is refused as expired collateral after that, and before its
// issue.
func TestExpiredAtNow(t *testing.T) {
	s := trusteeVCEK(t)
	for _, at := range []time.Time{time.Date(2030, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)} {
		v, _ := snp.New(snp.Config{Now: fixed(at)})
		_, err := v.Verify(t.Context(), s.evidence(t))
		mustRefuse(t, err, true, "VCEK certificate", "2030-01-24", "not at "+at.Format("2006-01-02"))
	}
}

// TestForgedChainRefused is go-sev-guest issue #185 as a regression test:
// the real trustee report re-signed with a key whose VCEK, ASK and ARK are
// forged with AMD's names (the ARK's and ASK's subjects copied from the real
// ones, the VCEK's TCB and hardware ID from the real VCEK) is refused by the
// default verifier, naming the chain. (That go-sev-guest ignores an ARK and
// ASK presented with the evidence is TestChainInAttestationIgnored.)
func TestForgedChainRefused(t *testing.T) {
	s := trusteeVCEK(t)
	real := snp.DefaultRoots()[snp.ProductMilan][0].ProductCerts
	v0, err := s.verifier(t).Verify(t.Context(), s.evidence(t))
	if err != nil {
		t.Fatal(err)
	}
	forged := forgeChain(t, real.Ark.Subject, real.Ask.Subject, v0.SNP.ReportedTCB.Raw, v0.SNP.ChipID)
	r := copyOf(s.report)
	if err := forged.sign(r); err != nil {
		t.Fatal(err)
	}
	// The forgery is complete: with the forged roots it verifies.
	fv, err := snp.New(snp.Config{Roots: forged.roots})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fv.Verify(t.Context(), evidence(t, r, forged.vcek)); err != nil {
		t.Fatalf("the forgery does not verify even with its own roots: %v", err)
	}
	_, err = s.verifier(t).Verify(t.Context(), evidence(t, r, forged.vcek))
	mustRefuse(t, err, false, "VCEK certificate", "does not chain to the trusted AMD Milan roots")
}

// TestFakeRefusedByRealRoots: snptest's reports verify with the fake's roots
// only; the default verifier, with AMD's, refuses them naming the chain, for
// each product line and signer.
func TestFakeRefusedByRealRoots(t *testing.T) {
	def, _ := snp.New(snp.Config{})
	for _, p := range []string{snp.ProductMilan, snp.ProductGenoa, snp.ProductTurin} {
		for _, signer := range []string{snp.SignerVCEK, snp.SignerVLEK} {
			f, err := snptest.New(snptest.Options{ProductLine: p, Signer: signer})
			if err != nil {
				t.Fatal(err)
			}
			ev, err := f.Attester().Attest(t.Context(), [64]byte{7})
			if err != nil {
				t.Fatal(err)
			}
			fv, _ := snp.New(f.Config())
			if c, err := fv.Verify(t.Context(), ev); err != nil || c.SNP.ProductLine != p || c.SNP.Signer != signer {
				t.Errorf("%s %s with the fake's roots: %v", p, signer, err)
			}
			_, err = def.Verify(t.Context(), ev)
			mustRefuse(t, err, false, signer+" certificate", "does not chain to the trusted AMD "+p+" roots")
		}
	}
}

// TestOnlyGivenRoots: a verifier given other roots (the fake's) refuses a
// real report: it trusts nothing else, not go-sev-guest's defaults.
func TestOnlyGivenRoots(t *testing.T) {
	f, err := snptest.New(snptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	v, _ := snp.New(f.Config())
	s := trusteeVCEK(t)
	_, err = v.Verify(t.Context(), s.evidence(t))
	mustRefuse(t, err, false, "does not chain to the trusted AMD Milan roots")

	g, _ := snptest.New(snptest.Options{ProductLine: snp.ProductGenoa})
	v, _ = snp.New(g.Config()) // Genoa roots only
	_, err = v.Verify(t.Context(), s.evidence(t))
	mustRefuse(t, err, false, "trusts no roots for it")
}

// TestFakeClaims: the fake's options come out in the claims, and the TCB
// statuses: up to date, provisional, reported below current.
func TestFakeClaims(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   snptest.Options
		status string
	}{
		{"up to date", snptest.Options{}, enclave.TCBUpToDate},
		{"provisional", snptest.Options{CommittedTCB: 0xd5<<56 | 21<<48 | 1<<8 | 4}, snp.TCBProvisional},
		{"reported below", snptest.Options{ReportedTCB: 0xd0<<56 | 22<<48 | 1<<8 | 4}, snp.TCBReportedBelowCurrent},
	} {
		f, err := snptest.New(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := snp.New(f.Config())
		c, err := v.Verify(t.Context(), mustAttest(t, f.Attester(), [64]byte{9}))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if c.TCBStatus != tc.status || c.ReportData[0] != 9 || hex.EncodeToString(c.UniqueID) != hex.EncodeToString(snptest.DefaultMeasurement) {
			t.Errorf("%s: status %s, report data %x", tc.name, c.TCBStatus, c.ReportData[:1])
		}
		if err := (snp.Requirements{Measurements: [][]byte{snptest.DefaultMeasurement}, AllowProvisional: true}).Check(c); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// TestConcurrentVerify: one Verifier, many goroutines, real and fake
// evidence, accepted and refused (run with -race).
func TestConcurrentVerify(t *testing.T) {
	s := trusteeVCEK(t)
	g := goSevGuest()
	f, err := snptest.New(snptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	roots := snp.DefaultRoots()
	for p, r := range f.Roots() {
		roots[p] = append(roots[p], r...) // Milan: AMD's and the fake's
	}
	v, err := snp.New(snp.Config{Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	good := [][]byte{s.evidence(t), g.evidence(t), mustAttest(t, f.Attester(), [64]byte{1})}
	bad := copyOf(s.report)
	bad[0x50] ^= 1
	badEv := evidence(t, bad, s.cert)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 16 {
		wg.Go(func() {
			for j := range 8 {
				if _, err := v.Verify(t.Context(), good[(i+j)%len(good)]); err != nil {
					errs <- err
				}
				if _, err := v.Verify(t.Context(), badEv); err == nil {
					errs <- errors.New("a changed report verified")
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

func mustAttest(t testing.TB, a enclave.Attester, rd [64]byte) []byte {
	t.Helper()
	ev, err := a.Attest(t.Context(), rd)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// BenchmarkVerify is one verification of the trustee report with its VCEK
// in the evidence, the VCEK's chain verification cached.
func BenchmarkVerify(b *testing.B) {
	s := trusteeVCEK(b)
	v := s.verifier(b)
	ev := s.evidence(b)
	if _, err := v.Verify(b.Context(), ev); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(b.Context(), ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyUncached is a verification by a new Verifier each time: the
// VCEK's chain verified too.
func BenchmarkVerifyUncached(b *testing.B) {
	s := trusteeVCEK(b)
	ev := s.evidence(b)
	b.ReportAllocs()
	for b.Loop() {
		v, _ := snp.New(snp.Config{})
		if _, err := v.Verify(b.Context(), ev); err != nil {
			b.Fatal(err)
		}
	}
}
