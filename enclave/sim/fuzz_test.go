package sim

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
)

// FuzzVerify: Verify never panics, refuses with ErrInvalidEvidence, and what
// it accepts is simulated evidence of the right shape.
func FuzzVerify(f *testing.F) {
	p := newPlatform(f, UnitIdentity("demo"), nil)
	ev, err := p.Attest(f.Context(), reportData("seed"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ev)
	f.Add(ev[:len(ev)-1])
	f.Add(append(bytes.Clone(ev), 0))
	b := goodBody()
	b.Debug = true
	b.ProductID = 0xffff
	f.Add(signedEvidence(f, b))
	b = goodBody()
	b.UniqueID = nil
	f.Add(signedEvidence(f, b))
	f.Add(signedEvidence(f, map[string]any{"v": 1, "x": []any{[]any{[]any{1}}}}))
	f.Add([]byte{0xc6, 0xff, 0xff, 0xff, 0xff})
	f.Add(binary.BigEndian.AppendUint32([]byte{0x82, 0xa4, 'b', 'o', 'd', 'y', 0xc6}, 0xffffffff))
	f.Add(bytes.Repeat([]byte{0x91}, 64))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Verifier().Verify(t.Context(), data)
		if err != nil {
			if !errors.Is(err, enclave.ErrInvalidEvidence) {
				t.Fatalf("refusal without ErrInvalidEvidence: %v", err)
			}
			return
		}
		if len(data) > maxEvidence {
			t.Fatalf("accepted %d bytes of evidence, cap %d", len(data), maxEvidence)
		}
		if !c.Simulated || c.Backend != BackendName || c.TCBStatus != "Simulated" {
			t.Fatalf("accepted evidence not marked simulated: %+v", c)
		}
		if len(c.UniqueID) != sha256.Size || len(c.SignerID) != sha256.Size {
			t.Fatalf("accepted evidence of the wrong shape: %+v", c)
		}
	})
}

// FuzzUnseal: Unseal never panics, refuses with ErrUnseal, and what opens is
// what was sealed.
func FuzzUnseal(f *testing.F) {
	p := newPlatform(f, IssuerIdentity, secret(1))
	for _, pt := range [][]byte{nil, []byte("state record")} {
		for _, ad := range [][]byte{nil, []byte("cohort/issuer/state/v1/root")} {
			s, err := p.Seal(pt, ad)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(s, ad)
			f.Add(s[:len(s)-1], ad)
			f.Add(s, []byte("other"))
		}
	}
	f.Add([]byte(nil), []byte(nil))
	f.Add([]byte(sealMagic), []byte(nil))
	f.Add(append([]byte(sealMagic), make([]byte, 12+16)...), []byte(nil))
	f.Fuzz(func(t *testing.T, sealed, ad []byte) {
		pt, err := p.Unseal(sealed, ad)
		if err != nil {
			if !errors.Is(err, enclave.ErrUnseal) {
				t.Fatalf("refusal without ErrUnseal: %v", err)
			}
			if pt != nil {
				t.Fatal("refusal with a plaintext")
			}
			return
		}
		if len(pt) != len(sealed)-len(sealMagic)-12-16 {
			t.Fatalf("%d bytes sealed opened to %d bytes", len(sealed), len(pt))
		}
		again, err := p.Seal(pt, ad)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := p.Unseal(again, ad); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("re-seal round trip: %q, %v", got, err)
		}
	})
}
