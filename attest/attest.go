// Package attest puts cohort's attestation platforms behind one verifier.
// Evidence from a unit or an issuer on any platform a deployment knows
// (simulated, Intel SGX, AMD SEV-SNP, Intel TDX) goes to that platform's own
// verifier, chosen by the envelope the evidence travels in; a policy then
// decides which platforms and claims it accepts.
//
// Guarantees:
//   - Evidence names its platform in an envelope (Wrap), and the claims a
//     platform's verifier returns must name the same platform: evidence of
//     one platform is never judged by another's rules.
//   - A platform the Verifier was not given is refused, with its name.
//   - Simulated evidence (the simulated platform's own format, which needs
//     no envelope) is verified only when Config.Simulated says so, and its
//     claims say simulated; the policy still decides whether to accept it.
package attest

import (
	"context"
	"errors"
	"fmt"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/messages"
)

// envelopeVersion numbers the envelope's layout.
const envelopeVersion = 1

// MaxEvidence bounds the evidence an envelope carries: a TDX or SGX quote
// with its PCK chain is about 5 KiB, an SEV-SNP report with its VCEK 3 KiB.
const MaxEvidence = messages.MaxEvidence - 64

// envelope is how evidence of a hardware platform travels.
type envelope struct {
	V        uint16 `msgpack:"v"`
	Platform string `msgpack:"platform"`
	Evidence []byte `msgpack:"evidence"`
}

var platforms = []string{enclave.PlatformSim, enclave.PlatformSGX, enclave.PlatformSNP, enclave.PlatformTDX}

func knownPlatform(p string) bool {
	for _, k := range platforms {
		if p == k {
			return true
		}
	}
	return false
}

// Wrap puts evidence of platform in the envelope Verify reads.
func Wrap(platform string, evidence []byte) ([]byte, error) {
	if !knownPlatform(platform) {
		return nil, fmt.Errorf("attest: platform %q is not one of %v", platform, platforms)
	}
	if len(evidence) == 0 || len(evidence) > MaxEvidence {
		return nil, fmt.Errorf("attest: %d bytes of evidence, want 1 to %d", len(evidence), MaxEvidence)
	}
	return messages.Marshal(&envelope{V: envelopeVersion, Platform: platform, Evidence: evidence})
}

// Unwrap reads an envelope: the platform it names and the evidence it
// carries.
func Unwrap(b []byte) (platform string, evidence []byte, err error) {
	var e envelope
	if err := messages.Unmarshal(b, MaxEvidence+256, &e); err != nil {
		return "", nil, fmt.Errorf("%w: not cohort's evidence envelope: %v", enclave.ErrInvalidEvidence, err)
	}
	switch {
	case e.V != envelopeVersion:
		return "", nil, fmt.Errorf("%w: evidence envelope version %d, want %d", enclave.ErrInvalidEvidence, e.V, envelopeVersion)
	case !knownPlatform(e.Platform):
		return "", nil, fmt.Errorf("%w: evidence of platform %q, which cohort does not know", enclave.ErrInvalidEvidence, e.Platform)
	case len(e.Evidence) == 0 || len(e.Evidence) > MaxEvidence:
		return "", nil, fmt.Errorf("%w: %d bytes of evidence, want 1 to %d", enclave.ErrInvalidEvidence, len(e.Evidence), MaxEvidence)
	}
	return e.Platform, e.Evidence, nil
}

// Config says which platforms' evidence a Verifier verifies, and with what.
type Config struct {
	// Simulated is the verifier of simulated evidence (sim.Verifier());
	// nil: simulated evidence is refused.
	Simulated enclave.Verifier
	// SGX, SNP and TDX verify their platforms' evidence; nil: refused.
	SGX, SNP, TDX enclave.Verifier
}

// Verifier verifies evidence of the platforms it was given. It is safe for
// concurrent use when the platforms' verifiers are.
type Verifier struct {
	by  map[string]enclave.Verifier
	sim enclave.Verifier
}

var _ enclave.Verifier = (*Verifier)(nil)

// ErrPlatform: the evidence is of a platform this verifier was not given.
var ErrPlatform = errors.New("attest: platform not accepted here")

// New returns a Verifier of the platforms cfg names.
func New(cfg Config) *Verifier {
	v := &Verifier{by: map[string]enclave.Verifier{}, sim: cfg.Simulated}
	for p, pv := range map[string]enclave.Verifier{enclave.PlatformSim: cfg.Simulated, enclave.PlatformSGX: cfg.SGX, enclave.PlatformSNP: cfg.SNP, enclave.PlatformTDX: cfg.TDX} {
		if pv != nil {
			v.by[p] = pv
		}
	}
	return v
}

// Platforms are the platforms v verifies, in a fixed order.
func (v *Verifier) Platforms() []string {
	var out []string
	for _, p := range platforms {
		if v.by[p] != nil {
			out = append(out, p)
		}
	}
	return out
}

// Verify implements enclave.Verifier: it verifies enveloped evidence with its
// platform's verifier, or simulated evidence as it is.
func (v *Verifier) Verify(ctx context.Context, evidence []byte) (enclave.Claims, error) {
	platform, inner, err := Unwrap(evidence)
	if err != nil {
		if v.sim == nil {
			return enclave.Claims{}, err
		}
		// The simulated platform's evidence travels as it is.
		platform, inner = enclave.PlatformSim, evidence
	}
	pv := v.by[platform]
	if pv == nil {
		return enclave.Claims{}, fmt.Errorf("%w: %w: evidence of platform %s, and this verifier takes %v", enclave.ErrInvalidEvidence, ErrPlatform, platform, v.Platforms())
	}
	c, err := pv.Verify(ctx, inner)
	if err != nil {
		return enclave.Claims{}, err
	}
	if c.Backend != platform {
		return enclave.Claims{}, fmt.Errorf("%w: evidence in an envelope of platform %s verified as %s", enclave.ErrInvalidEvidence, platform, c.Backend)
	}
	return c, nil
}

// Wrapping is an Attester whose evidence travels in the envelope of its
// platform.
type Wrapping struct {
	Platform string
	Attester enclave.Attester
}

// Attest implements enclave.Attester.
func (w Wrapping) Attest(ctx context.Context, reportData [enclave.ReportDataSize]byte) ([]byte, error) {
	ev, err := w.Attester.Attest(ctx, reportData)
	if err != nil {
		return nil, err
	}
	return Wrap(w.Platform, ev)
}

// Platform is a hardware platform as the issuer and units use one: its
// attester, whose evidence travels in its envelope, a verifier of every
// platform the deployment accepts, the measurement of the running code, and
// a sealer where the platform has a seal key.
type Platform struct {
	Kind string // the platform: PlatformSGX, PlatformSNP or PlatformTDX
	// Attester produces the platform's own evidence; Attest wraps it.
	Attester enclave.Attester
	Verifier enclave.Verifier
	// Self is the running code's measurement, as the platform's evidence
	// states it.
	Self []byte
	// Sealer seals to this machine and build; nil: the platform has none
	// here, and Seal refuses (an issuer then obtains its state key from a
	// peer or by recovery at each start).
	Sealer enclave.Sealer
}

var _ enclave.Platform = (*Platform)(nil)

// Name implements enclave.Platform.
func (p *Platform) Name() string { return p.Kind }

// Simulated implements enclave.Platform: hardware is not.
func (p *Platform) Simulated() bool { return false }

// Measurement implements enclave.Platform.
func (p *Platform) Measurement() []byte { return append([]byte(nil), p.Self...) }

// Attest implements enclave.Attester.
func (p *Platform) Attest(ctx context.Context, reportData [enclave.ReportDataSize]byte) ([]byte, error) {
	return Wrapping{Platform: p.Kind, Attester: p.Attester}.Attest(ctx, reportData)
}

// Verify implements enclave.Verifier.
func (p *Platform) Verify(ctx context.Context, evidence []byte) (enclave.Claims, error) {
	return p.Verifier.Verify(ctx, evidence)
}

// Seal implements enclave.Sealer.
func (p *Platform) Seal(plaintext, additionalData []byte) ([]byte, error) {
	if p.Sealer == nil {
		return nil, fmt.Errorf("%w: the %s platform offers cohort no seal key", enclave.ErrNoSealKey, p.Kind)
	}
	return p.Sealer.Seal(plaintext, additionalData)
}

// Unseal implements enclave.Sealer.
func (p *Platform) Unseal(sealed, additionalData []byte) ([]byte, error) {
	if p.Sealer == nil {
		return nil, fmt.Errorf("%w: the %s platform offers cohort no seal key", enclave.ErrNoSealKey, p.Kind)
	}
	return p.Sealer.Unseal(sealed, additionalData)
}
