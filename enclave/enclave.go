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
//   - Attest and Verify return once their context is done, with an error
//     wrapping its Err, whether or not the call into the hardware (an
//     ioctl, a configfs-tsm read, an EGo call, a collateral fetch) can be
//     interrupted; such calls go through a Gate, which bounds how many a
//     backend leaves running.
//   - Verify returns claims only for evidence that verifies; the caller still
//     decides which claims it accepts (measurement, signer, debug, TCB).
//   - Claims say whether the evidence was simulated; simulated evidence proves
//     nothing about hardware and callers must refuse it unless configured not
//     to.
//   - Seal output opens only in an enclave of the same identity, with the same
//     additional data; Seal refuses rather than seal under a known key.
package enclave

import (
	"context"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"time"
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
	// ErrCollateral: the collateral a verification needs is missing or
	// expired; the evidence may verify once it is there. It is returned
	// wrapped together with ErrInvalidEvidence.
	ErrCollateral = errors.New("enclave: collateral missing or expired")
)

// Platforms: the names of the platforms evidence comes from, as Claims.Backend
// gives them.
const (
	PlatformSim = "sim" // cohort's simulated platform
	PlatformSGX = "sgx" // Intel SGX: an ECDSA (DCAP) quote
	PlatformSNP = "snp" // AMD SEV-SNP: an attestation report
	PlatformTDX = "tdx" // Intel TDX: an ECDSA quote of a trust domain
)

// TCB statuses that Claims.TCBStatus takes: Intel's words for SGX and TDX
// (from the TCB info's level that matches), and these for the others.
const (
	TCBUpToDate  = "UpToDate"
	TCBSimulated = "Simulated"
)

// Claims is what verified evidence says about the enclave that produced it.
type Claims struct {
	Backend   string // the platform: PlatformSim, PlatformSGX, PlatformSNP or PlatformTDX
	Simulated bool   // true for evidence from the simulated platform
	// UniqueID is the measurement of the code in the platform's own size:
	// MRENCLAVE (32 bytes) on SGX, MEASUREMENT (48) on SEV-SNP, MRTD (48)
	// on TDX, 32 bytes simulated.
	UniqueID        []byte
	SignerID        []byte // the signer's identity (MRSIGNER on SGX); nil where the platform has none
	ProductID       uint16
	SecurityVersion uint16 // ISVSVN on SGX
	Debug           bool
	// TCBStatus is the status of the platform's TCB: TCBUpToDate, or the
	// vendor's word for what is not (SGX and TDX: OutOfDate,
	// SWHardeningNeeded, ConfigurationNeeded, ...), or TCBSimulated.
	TCBStatus string
	// Advisories are the vendor's security advisories (INTEL-SA-…) that
	// apply to the TCB level matched.
	Advisories []string
	// Platform facts beyond the common ones; exactly one is set on
	// hardware evidence.
	SGX *SGXClaims `json:",omitempty"`
	SNP *SNPClaims `json:",omitempty"`
	TDX *TDXClaims `json:",omitempty"`
	// Collateral names what the verification used beyond the vendor's
	// root: certificates, TCB info, QE identity, revocation lists.
	Collateral []CollateralUse `json:",omitempty"`
	ReportData [ReportDataSize]byte
}

// SGXClaims are the facts of an SGX quote.
type SGXClaims struct {
	QuoteVersion uint16
	CPUSVN       []byte // 16 bytes
	PCESVN       uint16
	QESVN        uint16
	FMSPC        []byte // 6 bytes, from the PCK certificate
	Attributes   []byte // 16 bytes
	MiscSelect   uint32
	ConfigSVN    uint16
	ISVFamilyID  []byte
	ISVExtProdID []byte
	ConfigID     []byte
}

// SNPClaims are the facts of a SEV-SNP attestation report.
type SNPClaims struct {
	ReportVersion uint32
	GuestPolicy   uint64 // the guest policy the VM was launched with
	VMPL          uint32
	Signer        string // "VCEK" or "VLEK"
	ProductLine   string // Milan, Genoa, Turin
	HostData      []byte // 32 bytes the host gave at launch
	IDKeyDigest   []byte
	AuthorKey     []byte // AUTHOR_KEY_DIGEST
	ReportID      []byte
	ChipID        []byte
	// TCB versions, each of its components (boot loader, TEE, SNP,
	// microcode, and FMC on Turin).
	CurrentTCB   SNPTCB
	ReportedTCB  SNPTCB
	CommittedTCB SNPTCB
	LaunchTCB    SNPTCB
	// Provisional: the firmware running is newer than the one committed.
	Provisional  bool
	SMT          bool // simultaneous multithreading enabled on the host
	PlatformInfo uint64
	GuestSVN     uint32
	FamilyID     []byte
	ImageID      []byte
}

// SNPTCB is an SEV-SNP TCB version, by component.
type SNPTCB struct {
	BootLoader, TEE, SNP, Microcode, FMC uint8
	Raw                                  uint64
}

// TDXClaims are the facts of a TDX quote.
type TDXClaims struct {
	QuoteVersion   uint16
	TEETCBSVN      []byte // 16 bytes
	MRSEAM         []byte // 48 bytes: the TDX module
	MRSignerSEAM   []byte // 48 bytes
	SEAMAttributes []byte
	TDAttributes   []byte    // 8 bytes
	XFAM           []byte    // 8 bytes
	MRConfigID     []byte    // 48 bytes
	MROwner        []byte    // 48 bytes
	MROwnerConfig  []byte    // 48 bytes
	RTMRs          [4][]byte // 48 bytes each
	FMSPC          []byte    // 6 bytes, from the PCK certificate
	PCESVN         uint16
	QESVN          uint16
	TDXModuleTCB   string // the TDX module's TCB status, when collateral was used
}

// CollateralUse names one piece of collateral a verification used.
type CollateralUse struct {
	Kind       string    // "VCEK", "VLEK", "PCK chain", "TCB info", "QE identity", "PCK CRL", "root CA CRL"
	ID         string    // what identifies it: an FMSPC, a serial, a product line
	Issued     time.Time // zero where it carries no time
	NextUpdate time.Time // when it expires; zero where it carries none
}

// Attester produces evidence about the running enclave.
type Attester interface {
	// Attest returns evidence binding reportData. It returns promptly once
	// ctx is done, with an error wrapping ctx.Err(), even where the
	// hardware's call cannot be interrupted (see Gate).
	Attest(ctx context.Context, reportData [ReportDataSize]byte) ([]byte, error)
}

// Verifier checks evidence from another enclave.
type Verifier interface {
	// Verify checks evidence and returns its claims. It returns an error
	// wrapping ErrInvalidEvidence for evidence that does not verify, and
	// one wrapping ctx.Err() (and not ErrInvalidEvidence) once ctx is
	// done: a verification cut short says nothing about the evidence.
	Verify(ctx context.Context, evidence []byte) (Claims, error)
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

// Measurement sizes: SGX's MRENCLAVE and the simulated platform's are 32
// bytes, SEV-SNP's MEASUREMENT and TDX's MRTD 48 (SHA-384).
const (
	MeasurementSize    = 32
	MeasurementSize384 = 48
)

// ValidMeasurement reports whether m has the size of some platform's
// measurement.
func ValidMeasurement(m []byte) bool {
	return len(m) == MeasurementSize || len(m) == MeasurementSize384
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
