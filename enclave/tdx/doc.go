// Package tdx is cohort's Intel TDX backend: a Verifier of TDX quotes
// (version 4 and 5) built on go-tdx-guest, an Attester that asks the running
// trust domain's kernel for quotes through configfs-tsm, a Platform of the
// two, and Requirements, the per-task checks of verified claims. Its test
// fake, a quote signer under a test root, is tdxtest.
//
// Verify checks a quote's layout, that its PCK chain ends in the root
// (Intel's SGX Root CA, pinned in enclave/pcs, unless Config.Root names a
// test root), and then with go-tdx-guest's verify the chain at the time
// given, the QE report's signature by the PCK key, the QE report's binding
// of the attestation key and the quote's signature; with collateral
// (Config.Collateral) also the TCB info, QE identity and CRLs, each signed
// under the root and current, that neither PCK certificate is revoked, and
// the TCB levels; and with go-tdx-guest's validate what every quote must
// hold: Intel's QE vendor ID and the fixed bits of XFAM and TD_ATTRIBUTES.
// What a task accepts (MRTD, debug, TCB status, minimum TEE_TCB_SVN, the
// TD's configuration IDs) is Requirements.Check's, a pure function.
//
// Guarantees:
//   - Verify returns claims only for a quote that verifies as above, read
//     from the bytes that were verified; every refusal wraps
//     enclave.ErrInvalidEvidence and names its reason, and a refusal for
//     collateral that is missing, malformed, expired or not yet valid also
//     wraps enclave.ErrCollateral and names each piece at fault.
//   - Nothing reaches the network: go-tdx-guest gets its collateral from a
//     getter that answers the PCS URLs it asks for from the bytes of the
//     Collateral given, and fails every other; the time is Config.Now's.
//   - Input is bounded (MaxEvidence) and its layout checked before
//     go-tdx-guest's parser, which indexes by the quote's length fields,
//     reads it; a panic in go-tdx-guest is caught and refused all the same
//     (the fuzz tests check none happens). Zero padding after a quote is
//     accepted, other trailing bytes are not.
//   - A Verifier is safe for concurrent use. It caches collateral checked
//     for form, by the SHA-256 of its bytes, until its earliest expiry; the
//     signatures are verified at each use.
//
// TCB status: without collateral, Claims.TCBStatus is TCBNotEvaluated,
// which a policy accepting only UpToDate refuses. With collateral,
// go-tdx-guest refuses a quote unless the quoting enclave's TCB level is
// UpToDate and the TDX module's is too (for a TDX 1.0 module, with
// TEE_TCB_SVN[1] 0, the platform's level stands in for the module's); the
// refusal names the levels found. For a TDX 1.5 or later module, whose
// level is its module identity's, go-tdx-guest does not judge the
// platform's own level (CPUSVN, PCESVN, the rest of TEE_TCB_SVN); this
// package matches it as Intel specifies, and that status (UpToDate,
// SWHardeningNeeded, OutOfDate, ...) is Claims.TCBStatus, for the policy
// to accept or refuse; a Revoked level is refused here. So a policy can
// accept a TCB status other than UpToDate only on TDX 1.5 platforms.
// Claims.TDX.TDXModuleTCB is the module identity's status, empty for TDX
// 1.0. Advisories are those of the levels matched.
//
// Claims: UniqueID is MRTD; SignerID, ProductID and SecurityVersion are
// unset (a TD has no signer); QESVN is the QE report's ISVSVN; FMSPC and
// PCESVN are the PCK certificate's. A TDX 1.5 body's TEE_TCB_SVN_2 and
// MRSERVICETD are covered by the signature but not in the claims.
//
// Not run on TDX hardware: the Attester and Platform have been tested only
// against configfs-tsm fakes (tdxtest's and go-configfs-tsm's faketsm); the
// Verifier has been tested against real quotes from TDX hardware (trustee's,
// dcap-qvl's and go-tdx-guest's samples) and the fake's. A TD has no seal
// key here: Platform's Seal and Unseal return enclave.ErrNoSealKey.
//
// go-tdx-guest's global state, and how cohort keeps clear of it:
//   - Its verify package logs through the process-wide default logger of
//     github.com/google/logger, which its init sets up (writing to stdout)
//     unless something set it up first. Its logging is at verbosity 1 and 2,
//     off at the default level 0; cohort never calls logger.Init or
//     logger.SetLevel (doing so elsewhere in the process would print quote
//     details, and SetLevel races with verification). Its one unconditional
//     log line, a warning, is written only when Options.TrustedRoots is nil;
//     cohort always sets it.
//   - verify holds the embedded Intel root as a package variable, used when
//     TrustedRoots is nil (never here), and falls back to a network getter
//     that retries for two minutes when Options.Getter is nil (never here:
//     Verify always sets the offline getter, failing every request when it
//     has no collateral).
//   - The client package registers a command-line flag
//     (-tdx_guest_device_path) at init; this package does not import it,
//     getting quotes through go-configfs-tsm instead. The packages it does
//     import (abi, pcs, verify, validate) have no flags.
package tdx
