package attest

import (
	"context"
	"fmt"
	"time"

	"github.com/cohort-dev/cohort/collateral"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/dcap"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/tdx"
)

// Everything is the verifier of every platform cohort knows: SGX, SEV-SNP
// and TDX evidence checked against the vendors' real roots, with collateral
// from the cache in collateralDir (none when empty), and simulated
// evidence, whose claims say so: whoever acts on the claims (the issuer's
// policy, a client's AllowSimulated) refuses them unless simulated
// attestation is allowed. now gives the time of the checks; nil: the
// clock's.
func Everything(collateralDir string, now func() time.Time) (*Verifier, error) {
	cfg := Config{Simulated: sim.Verifier()}
	sgxCfg := dcap.Config{Now: now}
	snpCfg := snp.Config{Now: now}
	tdxCfg := tdx.Config{Now: now}
	if collateralDir != "" {
		d, err := collateral.Open(collateralDir)
		if err != nil {
			return nil, err
		}
		sgxCfg.Collateral, snpCfg.Endorsements, tdxCfg.Collateral = d.SGX, d.Endorsement, d.TDX
	}
	var err error
	if cfg.SGX, err = dcap.New(sgxCfg); err != nil {
		return nil, err
	}
	if cfg.SNP, err = snp.New(snpCfg); err != nil {
		return nil, err
	}
	if cfg.TDX, err = tdx.New(tdxCfg); err != nil {
		return nil, err
	}
	return New(cfg), nil
}

// Guest is the platform of a unit or an issuer in an SEV-SNP or TDX guest:
// evidence from the kernel's configfs-tsm (on SNP, /dev/sev-guest without
// it) in cohort's envelope, others' evidence checked with v. SGX needs EGo's
// build (enclave/ego) and is not here. It asks the guest for one report, to
// learn its measurement, and gives up on it once ctx is done.
func Guest(ctx context.Context, kind string, v enclave.Verifier) (*Platform, error) {
	switch kind {
	case enclave.PlatformSNP:
		p, err := snp.NewPlatform(ctx, snp.AttesterConfig{}, snp.Config{})
		if err != nil {
			return nil, err
		}
		return &Platform{Kind: kind, Attester: p, Verifier: v, Self: p.Measurement()}, nil
	case enclave.PlatformTDX:
		p, err := tdx.NewPlatform(ctx, tdx.AttesterConfig{}, tdx.Config{})
		if err != nil {
			return nil, err
		}
		return &Platform{Kind: kind, Attester: p, Verifier: v, Self: p.Measurement()}, nil
	}
	return nil, fmt.Errorf("attest: %q is no guest platform: want %s or %s", kind, enclave.PlatformSNP, enclave.PlatformTDX)
}
