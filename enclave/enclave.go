// Package enclave is cohort's attestation seam: producing evidence that binds
// 64 bytes of report data, verifying evidence into claims, and sealing data to
// the running enclave.
//
// Two backends implement it: enclave/sim, a simulated platform with real
// cryptography for development and tests, and enclave/ego, Intel SGX through
// EGo (built with the "ego" tag). Code above this package sees only the
// interfaces here, so the same issuer and unit run on either.
//
// Guarantees every backend gives:
//   - Verify returns claims only for evidence that verifies; the caller still
//     decides which claims it accepts (measurement, signer, debug, TCB).
//   - Claims say whether the evidence was simulated; simulated evidence proves
//     nothing about hardware and callers must refuse it unless configured not
//     to.
//   - Seal output opens only in an enclave of the same identity, with the same
//     additional data; Seal refuses rather than seal under a known key.
package enclave

import (
	"crypto/sha512"
	"encoding/binary"
	"errors"
)

// ReportDataSize is the number of bytes evidence binds.
const ReportDataSize = 64

// Errors callers branch on.
var (
	// ErrUnsupported: the backend cannot run here (an SGX call outside an enclave).
	ErrUnsupported = errors.New("enclave: not supported on this platform")
	// ErrInvalidEvidence: the evidence does not verify.
	ErrInvalidEvidence = errors.New("enclave: invalid evidence")
	// ErrUnseal: sealed data does not open (another enclave, other data, or tampered).
	ErrUnseal = errors.New("enclave: cannot unseal")
	// ErrNoSealKey: the platform has no seal key it may use.
	ErrNoSealKey = errors.New("enclave: no usable seal key")
)

// Claims is what verified evidence says about the enclave that produced it.
type Claims struct {
	Backend         string // "sim" or "sgx"
	Simulated       bool   // true for evidence from the simulated platform
	UniqueID        []byte // the measurement of the code (MRENCLAVE on SGX)
	SignerID        []byte // the signer's identity (MRSIGNER on SGX)
	ProductID       uint16
	SecurityVersion uint16
	Debug           bool
	TCBStatus       string // "UpToDate", or the platform's word for what is not
	ReportData      [ReportDataSize]byte
}

// Attester produces evidence about the running enclave.
type Attester interface {
	// Attest returns evidence binding reportData.
	Attest(reportData [ReportDataSize]byte) ([]byte, error)
}

// Verifier checks evidence from another enclave.
type Verifier interface {
	// Verify checks evidence and returns its claims. It returns an error
	// wrapping ErrInvalidEvidence for evidence that does not verify.
	Verify(evidence []byte) (Claims, error)
}

// Sealer seals data so that only the same enclave can open it.
type Sealer interface {
	Seal(plaintext, additionalData []byte) ([]byte, error)
	Unseal(sealed, additionalData []byte) ([]byte, error)
}

// Platform is what a backend offers in full.
type Platform interface {
	Attester
	Verifier
	Sealer
	// Name is the backend's name as it appears in logs and replies.
	Name() string
	// Simulated reports whether the platform is a simulation.
	Simulated() bool
	// Measurement is the running enclave's own measurement (MRENCLAVE on SGX).
	Measurement() []byte
}

// Bind derives report data from a purpose label and the parts of a request.
// Each part is length-prefixed, so that no two different lists of parts bind
// the same bytes, and the label separates the purposes.
func Bind(label string, parts ...[]byte) [ReportDataSize]byte {
	h := sha512.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(label)))
	h.Write(n[:])
	h.Write([]byte(label))
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	var out [ReportDataSize]byte
	h.Sum(out[:0])
	return out
}
