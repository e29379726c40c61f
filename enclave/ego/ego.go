//go:build ego

// Package ego is the Intel SGX backend of the enclave seam, through EGo
// (github.com/edgelesssys/ego v1.9.0). It builds with the "ego" tag and cgo,
// and works only inside an enclave started by `ego run`; elsewhere every call
// fails with an error wrapping enclave.ErrUnsupported.
//
// Sealing uses the enclave's unique seal key (MRENCLAVE policy), so only the
// same build of the same code can open what it sealed. Outside an enclave EGo
// hands out an all-zero seal key without an error; this backend detects that
// and refuses to seal rather than seal under a key everyone knows.
package ego

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"

	"github.com/edgelesssys/ego/attestation"
	"github.com/edgelesssys/ego/attestation/tcbstatus"
	"github.com/edgelesssys/ego/ecrypto"
	egoenclave "github.com/edgelesssys/ego/enclave"

	"github.com/cohort-dev/cohort/enclave"
)

// BackendName is the name of this backend in claims, logs and replies.
const BackendName = "sgx"

// Platform is the SGX platform of the running enclave.
type Platform struct{}

// EGo's calls (into the enclave's runtime, and from there to the quoting
// enclave and to the quote verification library, which may fetch
// collateral) cannot be interrupted. Attest and Verify make them through
// these gates, so that a caller can give up on one; the gates bound how
// many are left running. There is one enclave per process, so the gates are
// the package's.
var (
	reportGate = enclave.NewGate(1) // the quoting enclave makes one quote at a time
	// Verifications are mostly computation: as many at once as there are
	// processors, and at least 4.
	verifyGate = enclave.NewGate(max(4, runtime.GOMAXPROCS(0)))
)

var _ enclave.Platform = Platform{}

// New returns the platform after checking that this process runs in an
// enclave with a usable seal key.
func New() (Platform, error) {
	if _, err := egoenclave.GetSelfReport(); err != nil {
		return Platform{}, wrap("self report", err)
	}
	if err := checkSealKey(); err != nil {
		return Platform{}, err
	}
	return Platform{}, nil
}

// Name implements enclave.Platform.
func (Platform) Name() string { return BackendName }

// Measurement returns this enclave's MRENCLAVE, or nil outside an enclave.
func (Platform) Measurement() []byte {
	r, err := egoenclave.GetSelfReport()
	if err != nil {
		return nil
	}
	return r.UniqueID
}

// Simulated implements enclave.Platform: SGX evidence is never simulated.
func (Platform) Simulated() bool { return false }

// Attest implements enclave.Attester with an SGX remote report. Once ctx is
// done it returns an error wrapping ctx.Err(), while the report asked for
// runs on until EGo returns.
func (Platform) Attest(ctx context.Context, reportData [enclave.ReportDataSize]byte) ([]byte, error) {
	r, err := enclave.Call(ctx, reportGate, "ego: remote report", func() ([]byte, error) {
		return egoenclave.GetRemoteReport(reportData[:])
	})
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
		return nil, err
	}
	if err != nil {
		return nil, wrap("remote report", err)
	}
	return r, nil
}

// Verify implements enclave.Verifier. Evidence whose TCB is not up to date is
// refused with its status named. Once ctx is done it returns an error
// wrapping ctx.Err(), while the verification runs on until EGo returns.
func (Platform) Verify(ctx context.Context, evidence []byte) (enclave.Claims, error) {
	evidence = bytes.Clone(evidence) // the call may outlive Verify
	r, err := enclave.Call(ctx, verifyGate, "ego: verify remote report", func() (attestation.Report, error) {
		return egoenclave.VerifyRemoteReport(evidence)
	})
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
		return enclave.Claims{}, err
	}
	if errors.Is(err, attestation.ErrTCBLevelInvalid) {
		return enclave.Claims{}, fmt.Errorf("%w: TCB status %s (advisories %s)",
			enclave.ErrInvalidEvidence, r.TCBStatus, strings.Join(r.TCBAdvisories, ","))
	}
	if err != nil {
		return enclave.Claims{}, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, wrap("verify remote report", err))
	}
	return claims(r)
}

func claims(r attestation.Report) (enclave.Claims, error) {
	if len(r.Data) < enclave.ReportDataSize || len(r.ProductID) < 2 {
		return enclave.Claims{}, fmt.Errorf("%w: report too short", enclave.ErrInvalidEvidence)
	}
	c := enclave.Claims{
		Backend:         BackendName,
		UniqueID:        r.UniqueID,
		SignerID:        r.SignerID,
		ProductID:       uint16(r.ProductID[0]) | uint16(r.ProductID[1])<<8,
		SecurityVersion: uint16(r.SecurityVersion),
		Debug:           r.Debug,
		TCBStatus:       r.TCBStatus.String(),
	}
	if r.TCBStatus == tcbstatus.UpToDate {
		c.TCBStatus = "UpToDate"
	}
	copy(c.ReportData[:], r.Data)
	return c, nil
}

// Seal implements enclave.Sealer with the enclave's unique seal key.
func (Platform) Seal(plaintext, additionalData []byte) ([]byte, error) {
	if err := checkSealKey(); err != nil {
		return nil, err
	}
	out, err := ecrypto.SealWithUniqueKey(plaintext, additionalData)
	if err != nil {
		return nil, wrap("seal", err)
	}
	return out, nil
}

// Unseal implements enclave.Sealer.
func (Platform) Unseal(sealed, additionalData []byte) ([]byte, error) {
	if err := checkSealKey(); err != nil {
		return nil, err
	}
	out, err := ecrypto.Unseal(sealed, additionalData)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", enclave.ErrUnseal, err)
	}
	return out, nil
}

// checkSealKey refuses the all-zero key EGo returns outside an enclave.
func checkSealKey() error {
	id, err := egoenclave.GetSealKeyID()
	if err != nil {
		return wrap("seal key id", err)
	}
	if len(id) == 0 || bytes.Equal(id, make([]byte, len(id))) {
		return fmt.Errorf("%w: EGo returned the all-zero seal key (not running in an SGX enclave)", enclave.ErrNoSealKey)
	}
	return nil
}

// wrap turns EGo's OE_UNSUPPORTED into enclave.ErrUnsupported with a hint.
func wrap(op string, err error) error {
	if err != nil && err.Error() == "OE_UNSUPPORTED" {
		return fmt.Errorf("ego: %s: %w (OE_UNSUPPORTED: run the binary inside an SGX enclave with `ego run`)", op, enclave.ErrUnsupported)
	}
	return fmt.Errorf("ego: %s: %w", op, err)
}
