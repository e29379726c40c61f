package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cohort-dev/cohort/attest"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/unit"
)

const backends = "sim, snp, tdx, or sgx in a build with -tags ego"

// verifier checks evidence of every hardware platform against its vendor's
// real roots, with collateral from the cache in dir (none when dir is
// empty), and simulated evidence, whose claims say so: whoever acts on the
// claims (the issuer's policy, a client's AllowSimulated) refuses them
// unless simulated attestation is allowed.
func verifier(dir string) (*attest.Verifier, error) { return verifierAt(dir, nil) }

// verifierAt is verifier at the times now gives; nil: the clock's.
func verifierAt(dir string, now func() time.Time) (*attest.Verifier, error) {
	return attest.Everything(dir, now)
}

// clientVerifier is what a command checks an issuer's evidence with: every
// platform, collateral from the cache COHORT_COLLATERAL names (if any). A
// cache that does not open is refused as evidence it cannot check.
func clientVerifier() enclave.Verifier {
	v, err := verifier(os.Getenv("COHORT_COLLATERAL"))
	if err != nil {
		return refusing{err}
	}
	return v
}

type refusing struct{ err error }

func (r refusing) Verify(context.Context, []byte) (enclave.Claims, error) {
	return enclave.Claims{}, fmt.Errorf("%w: %v", enclave.ErrInvalidEvidence, r.err)
}

// hardwarePlatform is the platform of a unit or issuer in an SGX enclave or
// an SEV-SNP or TDX guest, its evidence in cohort's envelope and checking
// others' with v. A guest's first report, asked for its measurement, is
// given up on once ctx is done.
func hardwarePlatform(ctx context.Context, backend string, v enclave.Verifier) (enclave.Platform, error) {
	switch backend {
	case enclave.PlatformSNP, enclave.PlatformTDX:
		return attest.Guest(ctx, backend, v)
	case enclave.PlatformSGX:
		p, err := sgxPlatform()
		if err != nil {
			return nil, err
		}
		return &attest.Platform{Kind: backend, Attester: p, Verifier: v, Self: p.Measurement(), Sealer: p}, nil
	}
	return nil, fmt.Errorf("%w: --backend %q: want %s", errUsage, backend, backends)
}

// issuerPlatform is the issuer's platform; its verifier checks units and
// peers of every platform.
func issuerPlatform(ctx context.Context, backend, dataDir string, v enclave.Verifier) (enclave.Platform, error) {
	if backend == enclave.PlatformSim {
		secret, err := sim.LoadOrCreateSealSecret(filepath.Join(dataDir, sim.SealSecretFile))
		if err != nil {
			return nil, err
		}
		return sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: secret})
	}
	return hardwarePlatform(ctx, backend, v)
}

// unitPlatform is a unit's platform; its verifier checks the issuer.
func unitPlatform(ctx context.Context, backend, task string, v enclave.Verifier) (unit.Platform, error) {
	if backend == enclave.PlatformSim {
		p, err := sim.New(sim.Config{Identity: sim.UnitIdentity(task)})
		if err != nil {
			return nil, err
		}
		return &simUnit{Platform: p, v: v}, nil
	}
	return hardwarePlatform(ctx, backend, v)
}

// simUnit is a simulated unit that checks its issuer with the deployment's
// verifier, so that a simulated unit can trust an issuer on hardware.
type simUnit struct {
	*sim.Platform
	v enclave.Verifier
}

func (s *simUnit) Verify(ctx context.Context, evidence []byte) (enclave.Claims, error) {
	return s.v.Verify(ctx, evidence)
}
