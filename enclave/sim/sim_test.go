package sim

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/messages"
)

func secret(b byte) []byte { return bytes.Repeat([]byte{b}, SealSecretSize) }

func newPlatform(t testing.TB, identity string, sealSecret []byte) *Platform {
	t.Helper()
	p, err := New(Config{Identity: identity, SealSecret: sealSecret})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func reportData(s string) [enclave.ReportDataSize]byte {
	return enclave.Bind("cohort/test", []byte(s))
}

// signedEvidence signs any body with the simulated platform key, as anyone
// can, to reach the checks behind the signature.
func signedEvidence(t testing.TB, body any) []byte {
	t.Helper()
	b, err := messages.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	sig := ed25519.Sign(platformKey, append([]byte(evidenceLabel), b...))
	ev, err := messages.Marshal(&evidence{Body: b, Signature: sig})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func goodBody() *evidenceBody {
	return &evidenceBody{
		V: 1, Format: Format, UniqueID: bytes.Repeat([]byte{1}, 32), SignerID: signerID,
		ProductID: productID, SecurityVersion: securityVersion, ReportData: bytes.Repeat([]byte{2}, enclave.ReportDataSize),
	}
}

func TestAttestVerifyRoundTrip(t *testing.T) {
	p := newPlatform(t, UnitIdentity("demo"), nil)
	rd := reportData("request")
	ev, err := p.Attest(t.Context(), rd)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Measure(UnitIdentity("demo"))
	if err != nil {
		t.Fatal(err)
	}
	// Any verifier checks it: the platform itself, another identity's
	// platform and the stand-alone verifier.
	for name, v := range map[string]enclave.Verifier{
		"self": p, "other platform": newPlatform(t, IssuerIdentity, nil), "Verifier()": Verifier(),
	} {
		c, err := v.Verify(t.Context(), ev)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !c.Simulated || c.Backend != "sim" || c.TCBStatus != "Simulated" {
			t.Fatalf("%s: claims not marked simulated: %+v", name, c)
		}
		if c.ReportData != rd {
			t.Fatalf("%s: report data %x, want %x", name, c.ReportData, rd)
		}
		if !bytes.Equal(c.UniqueID, want) || !bytes.Equal(c.UniqueID, p.Measurement()) {
			t.Fatalf("%s: unique id %x, want the measurement %x", name, c.UniqueID, want)
		}
		if !bytes.Equal(c.SignerID, signerID) || c.ProductID != productID || c.SecurityVersion != securityVersion || c.Debug {
			t.Fatalf("%s: claims %+v", name, c)
		}
	}
	if p.Name() != "sim" || !p.Simulated() {
		t.Fatalf("Name %q, Simulated %t", p.Name(), p.Simulated())
	}
	// Other report data gives other evidence, which binds only its own.
	ev2, err := p.Attest(t.Context(), reportData("another request"))
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Verifier().Verify(t.Context(), ev2)
	if err != nil || c2.ReportData == rd {
		t.Fatalf("evidence for other report data: %v, binds %x", err, c2.ReportData)
	}
}

func TestTamperedEvidenceRefused(t *testing.T) {
	p := newPlatform(t, UnitIdentity("demo"), nil)
	ev, err := p.Attest(t.Context(), reportData("request"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range ev {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			bad := bytes.Clone(ev)
			bad[i] ^= mask
			if _, err := Verifier().Verify(t.Context(), bad); !errors.Is(err, enclave.ErrInvalidEvidence) {
				t.Fatalf("byte %d ^ %#x: got %v, want ErrInvalidEvidence", i, mask, err)
			}
		}
	}
	for _, bad := range [][]byte{nil, {}, ev[:len(ev)-1], append(bytes.Clone(ev), 0), bytes.Repeat([]byte{0xc0}, maxEvidence+1)} {
		if _, err := Verifier().Verify(t.Context(), bad); !errors.Is(err, enclave.ErrInvalidEvidence) {
			t.Fatalf("%d bytes: got %v, want ErrInvalidEvidence", len(bad), err)
		}
	}
}

func TestEvidenceBodyShapeChecked(t *testing.T) {
	if _, err := Verifier().Verify(t.Context(), signedEvidence(t, goodBody())); err != nil {
		t.Fatalf("well-formed signed body refused: %v", err)
	}
	for name, mutate := range map[string]func(*evidenceBody){
		"version 2":          func(b *evidenceBody) { b.V = 2 },
		"other format":       func(b *evidenceBody) { b.Format = "cohort-simulated-v2" },
		"unique id short":    func(b *evidenceBody) { b.UniqueID = b.UniqueID[:31] },
		"signer id missing":  func(b *evidenceBody) { b.SignerID = nil },
		"report data short":  func(b *evidenceBody) { b.ReportData = b.ReportData[:enclave.ReportDataSize-1] },
		"report data long":   func(b *evidenceBody) { b.ReportData = append(b.ReportData, 0) },
		"unique id oversize": func(b *evidenceBody) { b.UniqueID = bytes.Repeat([]byte{1}, 33) },
	} {
		b := goodBody()
		mutate(b)
		if _, err := Verifier().Verify(t.Context(), signedEvidence(t, b)); !errors.Is(err, enclave.ErrInvalidEvidence) {
			t.Errorf("%s: got %v, want ErrInvalidEvidence", name, err)
		}
	}
	// A signed body with an unknown field, or not a body at all.
	extra := map[string]any{"v": 1, "format": Format, "unique_id": bytes.Repeat([]byte{1}, 32), "signer_id": signerID,
		"report_data": bytes.Repeat([]byte{2}, 64), "mrenclave": []byte{1}}
	if _, err := Verifier().Verify(t.Context(), signedEvidence(t, extra)); !errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Errorf("unknown field: got %v, want ErrInvalidEvidence", err)
	}
	if _, err := Verifier().Verify(t.Context(), signedEvidence(t, "text")); !errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Errorf("string body: got %v, want ErrInvalidEvidence", err)
	}
	// A signature by another key, and a signature without the label.
	b, _ := messages.Marshal(goodBody())
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))
	for name, sig := range map[string][]byte{
		"other key": ed25519.Sign(other, append([]byte(evidenceLabel), b...)),
		"no label":  ed25519.Sign(platformKey, b),
		"short":     ed25519.Sign(platformKey, append([]byte(evidenceLabel), b...))[:63],
		"empty":     nil,
		"long":      append(ed25519.Sign(platformKey, append([]byte(evidenceLabel), b...)), 0),
	} {
		ev, _ := messages.Marshal(&evidence{Body: b, Signature: sig})
		if _, err := Verifier().Verify(t.Context(), ev); !errors.Is(err, enclave.ErrInvalidEvidence) {
			t.Errorf("signature %s: got %v, want ErrInvalidEvidence", name, err)
		}
	}
}

func TestMeasurement(t *testing.T) {
	a1, err := Measure(UnitIdentity("demo"))
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := Measure(UnitIdentity("demo"))
	if !bytes.Equal(a1, a2) || len(a1) != 32 {
		t.Fatalf("measurement not stable: %x, %x", a1, a2)
	}
	if p := newPlatform(t, UnitIdentity("demo"), nil); !bytes.Equal(p.Measurement(), a1) {
		t.Fatalf("platform measures %x, Measure %x", p.Measurement(), a1)
	}
	seen := map[string]string{hex.EncodeToString(a1): UnitIdentity("demo")}
	for _, id := range []string{UnitIdentity("other"), UnitIdentity("demo2"), IssuerIdentity, "unit/", strings.Repeat("x", 128)} {
		m, err := Measure(id)
		if err != nil {
			t.Fatalf("%q: %v", id, err)
		}
		if prev, dup := seen[hex.EncodeToString(m)]; dup {
			t.Fatalf("%q measures the same as %q", id, prev)
		}
		seen[hex.EncodeToString(m)] = id
	}
	h, err := MeasurementHex(UnitIdentity("demo"))
	if err != nil || h != hex.EncodeToString(a1) {
		t.Fatalf("MeasurementHex = %q, %v", h, err)
	}
	for _, id := range []string{"", strings.Repeat("x", 129)} {
		if _, err := Measure(id); err == nil {
			t.Errorf("Measure(%d bytes) accepted", len(id))
		}
		if _, err := New(Config{Identity: id}); err == nil {
			t.Errorf("New with a %d-byte identity accepted", len(id))
		}
	}
	// Measurement returns a copy.
	p := newPlatform(t, IssuerIdentity, nil)
	m := p.Measurement()
	m[0] ^= 0xff
	if bytes.Equal(p.Measurement(), m) {
		t.Fatal("Measurement exposes the platform's own slice")
	}
}

func TestNewRefusesBadSealSecret(t *testing.T) {
	for _, n := range []int{0, 1, SealSecretSize - 1, SealSecretSize + 1} {
		if _, err := New(Config{Identity: IssuerIdentity, SealSecret: make([]byte, n)}); err == nil {
			t.Errorf("seal secret of %d bytes accepted", n)
		}
	}
}

func TestSealUnseal(t *testing.T) {
	p := newPlatform(t, IssuerIdentity, secret(1))
	ad := []byte("cohort/issuer/state/v1/root")
	for _, pt := range [][]byte{nil, {}, []byte("secret key material"), bytes.Repeat([]byte{7}, 5000)} {
		sealed, err := p.Seal(pt, ad)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(sealed, []byte(sealMagic)) || (len(pt) > 0 && bytes.Contains(sealed, pt)) {
			t.Fatalf("sealed form %x", sealed)
		}
		got, err := p.Unseal(sealed, ad)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Unseal = %q, %v; want %q", got, err, pt)
		}
		// Another process of the same build, identity and secret opens it.
		got, err = newPlatform(t, IssuerIdentity, secret(1)).Unseal(sealed, ad)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("same identity and secret: Unseal = %q, %v", got, err)
		}
	}
	a, _ := p.Seal([]byte("x"), ad)
	b, _ := p.Seal([]byte("x"), ad)
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are equal: the nonce is not fresh")
	}
}

func TestUnsealRefuses(t *testing.T) {
	p := newPlatform(t, IssuerIdentity, secret(1))
	ad := []byte("task.demo")
	sealed, err := p.Seal([]byte("secret"), ad)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		p      *Platform
		sealed []byte
		ad     []byte
	}{
		"other additional data": {p, sealed, []byte("task.other")},
		"no additional data":    {p, sealed, nil},
		"other seal secret":     {newPlatform(t, IssuerIdentity, secret(2)), sealed, ad},
		"other identity":        {newPlatform(t, UnitIdentity("demo"), secret(1)), sealed, ad},
		"empty":                 {p, nil, ad},
		"magic only":            {p, []byte(sealMagic), ad},
		"other magic":           {p, append([]byte("CSS2"), sealed[len(sealMagic):]...), ad},
		"truncated":             {p, sealed[:len(sealed)-1], ad},
		"extended":              {p, append(bytes.Clone(sealed), 0), ad},
	}
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		cases[fmt.Sprintf("flipped byte %d", i)] = struct {
			p      *Platform
			sealed []byte
			ad     []byte
		}{p, bad, ad}
	}
	for name, c := range cases {
		if pt, err := c.p.Unseal(c.sealed, c.ad); !errors.Is(err, enclave.ErrUnseal) {
			t.Errorf("%s: Unseal = %q, %v; want ErrUnseal", name, pt, err)
		}
	}
}

func TestNoSealSecret(t *testing.T) {
	p := newPlatform(t, IssuerIdentity, nil)
	if _, err := p.Seal([]byte("x"), nil); !errors.Is(err, enclave.ErrNoSealKey) {
		t.Fatalf("Seal: got %v, want ErrNoSealKey", err)
	}
	sealed, err := newPlatform(t, IssuerIdentity, secret(1)).Seal([]byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Unseal(sealed, nil); !errors.Is(err, enclave.ErrNoSealKey) {
		t.Fatalf("Unseal: got %v, want ErrNoSealKey", err)
	}
	// It still attests.
	if _, err := p.Attest(t.Context(), reportData("x")); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentUse(t *testing.T) {
	p := newPlatform(t, UnitIdentity("demo"), secret(3))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			rd := reportData(string(rune('a' + i)))
			ev, err := p.Attest(t.Context(), rd)
			if err == nil {
				var c enclave.Claims
				if c, err = p.Verify(t.Context(), ev); err == nil && c.ReportData != rd {
					err = errors.New("report data mixed up between goroutines")
				}
			}
			if err == nil {
				var s []byte
				if s, err = p.Seal([]byte{byte(i)}, rd[:]); err == nil {
					var pt []byte
					if pt, err = p.Unseal(s, rd[:]); err == nil && !bytes.Equal(pt, []byte{byte(i)}) {
						err = errors.New("plaintext mixed up between goroutines")
					}
				}
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestMeasureFile(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The executable measured from outside measures as it does inside.
	for _, id := range []string{IssuerIdentity, UnitIdentity("redact")} {
		inside, err := Measure(id)
		if err != nil {
			t.Fatal(err)
		}
		outside, err := MeasureFile(exe, id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(inside, outside) {
			t.Fatalf("%s: MeasureFile %x, Measure %x", id, outside, inside)
		}
	}
	other := filepath.Join(t.TempDir(), "other")
	if err := os.WriteFile(other, []byte("another program"), 0o755); err != nil {
		t.Fatal(err)
	}
	m1, _ := MeasureFile(exe, UnitIdentity("redact"))
	m2, err := MeasureFile(other, UnitIdentity("redact"))
	if err != nil || bytes.Equal(m1, m2) {
		t.Fatalf("another executable measures the same (%v)", err)
	}
	if _, err := MeasureFile(filepath.Dir(other), UnitIdentity("redact")); err == nil {
		t.Fatal("a folder was measured")
	}
	if _, err := MeasureFile(filepath.Join(t.TempDir(), "absent"), UnitIdentity("redact")); err == nil {
		t.Fatal("a missing file was measured")
	}
}
