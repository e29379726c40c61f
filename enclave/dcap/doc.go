// Package dcap is cohort's verifier of Intel SGX ECDSA (DCAP) quotes,
// version 3, in pure Go: raw quotes, or the Open Enclave remote reports
// that EGo's enclave.GetRemoteReport returns (a 16-byte oe_report_header_t,
// then the quote).
//
// A Verifier checks, in the order of the chain of trust:
//   - the quote's form: version 3, attestation key ECDSA-256-with-P-256,
//     TEE type SGX, Intel's QE, every length in bounds and consistent;
//   - the PCK certificate chain inside the quote (certification data type
//     5) to the root, with the root as the only trust anchor, each
//     certificate valid at the time of verification;
//   - the QE report's signature by the PCK key, and its report data:
//     SHA-256(attestation key || QE auth data) followed by 32 zero bytes;
//   - the ISV enclave report's signature (header and report) by the
//     attestation key;
//   - the collateral (package pcs): TCB info and QE identity signed by
//     Intel's TCB signing key and current, the root CA's and PCK CA's CRLs
//     signed and current, the PCK certificate, its CA and the collateral's
//     signers not revoked, the TCB info for the PCK certificate's FMSPC
//     and PCE-ID;
//   - the TCB level (Intel's algorithm, on the PCK certificate's TCB) and
//     the QE's level under its identity, converged as Intel's QVL does.
//
// Guarantees: Verify returns claims only when all of that holds; every
// refusal wraps enclave.ErrInvalidEvidence and names its reason, and a
// refusal for collateral missing or out of date also wraps
// enclave.ErrCollateral. Collateral is required, CRLs included: without it
// verification fails closed. A Revoked TCB is refused; any other status
// (OutOfDate, SWHardeningNeeded, ...) is returned in Claims.TCBStatus with
// its advisories, for the caller's policy to accept or refuse. No input
// panics; nothing reaches the network.
//
// Why cohort has its own verifier: no small, maintained Go library verifies
// SGX DCAP quotes. github.com/google/go-tdx-guest verifies TDX quotes (v4,
// v5) only; Edgeless's EGo verifies through Open Enclave's C libraries and
// Intel's quote verification library (cgo); oasis-core's pcs package lives
// in oasis-core's large module and keeps process-wide settings (such as
// allowing debug enclaves). DCAP verification is a few hundred lines over
// the standard library's x509 and ECDSA, which this package and pcs are.
package dcap
