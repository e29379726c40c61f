package attest

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/sim"
)

// claimsAs is a verifier that takes any evidence as its platform's, to
// show what the Verifier makes of what a platform's verifier says.
type claimsAs string

func (p claimsAs) Verify(context.Context, []byte) (enclave.Claims, error) {
	return enclave.Claims{Backend: string(p)}, nil
}

func simEvidence(t *testing.T) []byte {
	t.Helper()
	p, err := sim.New(sim.Config{Identity: sim.UnitIdentity("demo")})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Attest(t.Context(), enclave.Bind("test"))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestSimulatedEvidence(t *testing.T) {
	ev := simEvidence(t)
	for name, in := range map[string][]byte{"as it is": ev, "in an envelope": must(Wrap(enclave.PlatformSim, ev))} {
		c, err := New(Config{Simulated: sim.Verifier()}).Verify(t.Context(), in)
		if err != nil || !c.Simulated || c.Backend != enclave.PlatformSim {
			t.Errorf("%s: %+v, %v", name, c, err)
		}
		if _, err := New(Config{SNP: claimsAs(enclave.PlatformSNP)}).Verify(t.Context(), in); !errors.Is(err, enclave.ErrInvalidEvidence) {
			t.Errorf("%s: verified by a verifier without the simulated platform: %v", name, err)
		}
	}
}

func TestPlatformsAreKeptApart(t *testing.T) {
	v := New(Config{Simulated: sim.Verifier(), SNP: claimsAs(enclave.PlatformSNP), TDX: claimsAs(enclave.PlatformSNP)})
	if got := v.Platforms(); len(got) != 3 || got[0] != "sim" || got[1] != "snp" || got[2] != "tdx" {
		t.Fatalf("platforms %v", got)
	}
	if c, err := v.Verify(t.Context(), must(Wrap(enclave.PlatformSNP, []byte("report")))); err != nil || c.Backend != enclave.PlatformSNP {
		t.Fatalf("snp: %+v, %v", c, err)
	}
	// A platform's verifier that says another platform: refused.
	if _, err := v.Verify(t.Context(), must(Wrap(enclave.PlatformTDX, []byte("quote")))); !errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Fatalf("tdx evidence verified as snp: %v", err)
	}
	// A platform not given: refused, naming it.
	_, err := v.Verify(t.Context(), must(Wrap(enclave.PlatformSGX, []byte("quote"))))
	if !errors.Is(err, ErrPlatform) || !bytes.Contains([]byte(err.Error()), []byte("sgx")) {
		t.Fatalf("sgx evidence: %v", err)
	}
}

func TestEnvelope(t *testing.T) {
	b := must(Wrap(enclave.PlatformTDX, []byte{1, 2, 3}))
	p, ev, err := Unwrap(b)
	if err != nil || p != enclave.PlatformTDX || !bytes.Equal(ev, []byte{1, 2, 3}) {
		t.Fatalf("%q %x %v", p, ev, err)
	}
	if _, err := Wrap("sev", []byte{1}); err == nil {
		t.Error("an unknown platform wrapped")
	}
	if _, err := Wrap(enclave.PlatformSNP, nil); err == nil {
		t.Error("no evidence wrapped")
	}
	if _, err := Wrap(enclave.PlatformSNP, make([]byte, MaxEvidence+1)); err == nil {
		t.Error("oversize evidence wrapped")
	}
	for _, bad := range [][]byte{nil, {0x80}, b[:len(b)-1], append(append([]byte{}, b...), 0)} {
		if _, _, err := Unwrap(bad); !errors.Is(err, enclave.ErrInvalidEvidence) {
			t.Errorf("%x: %v", bad, err)
		}
	}
}

func FuzzUnwrap(f *testing.F) {
	f.Add(must(Wrap(enclave.PlatformSNP, []byte("report"))))
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ev, err := Unwrap(b)
		if err != nil {
			return
		}
		again, err := Wrap(p, ev)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("an envelope that unwraps does not wrap back: %v", err)
		}
	})
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
