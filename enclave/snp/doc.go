// Package snp is cohort's AMD SEV-SNP backend: evidence from an SEV-SNP
// guest (Attester), its verification into enclave.Claims (Verifier), and the
// per-task checks of those claims (Requirements), on
// github.com/google/go-sev-guest.
//
// Evidence is the guest's attestation report (1184 bytes, signed by the AMD
// secure processor with its VCEK, or a cloud provider's VLEK) and, when the
// host attached it, that key's certificate; Evidence.Marshal encodes it with
// cohort's strict msgpack, versioned and bounded.
//
// What Verify guarantees, for claims it returns:
//   - The VCEK or VLEK certificate chains, at Config.Now, to the roots the
//     Verifier was given, and to nothing else: by default AMD's real ARK,
//     ASK and ASVK for Milan, Genoa and Turin, embedded here (amd/*.pem,
//     pinned by the ARKs' SHA-256, equal to go-sev-guest's copies). Roots are
//     always passed to go-sev-guest explicitly; its own defaults, caches and
//     globals are not used. A chain the evidence brings is never trusted.
//   - Nothing reaches a network: go-sev-guest's certificate fetching is off,
//     its getter refuses every URL, and revocation lists are not fetched. A
//     report whose certificate the evidence lacks is verified only with one
//     from Config.Endorsements (a cache); otherwise it is refused with an
//     error wrapping enclave.ErrCollateral, as is an expired certificate or
//     one for another TCB.
//   - The report's signature verifies with that certificate over exactly
//     the bytes received, and go-sev-guest's validate.SnpAttestation passes
//     with the checks every report must (baseOptions in verify.go): the certificate
//     is for the REPORTED_TCB, committed firmware is not above current,
//     CHIP_ID is the VCEK's, no migration agent.
//   - Every refusal wraps enclave.ErrInvalidEvidence and names its reason.
//
// What Verify leaves to the caller, through Requirements.Check (a pure
// function the issuer's policy calls): the measurement, debug, SMT,
// provisional firmware, a minimum TCB, the VMPL and HOST_DATA. Claims say
// which: TCBStatus is enclave.TCBUpToDate only when the reported, current
// and committed TCBs are one, else TCBProvisional or TCBReportedBelowCurrent.
//
// A Verifier is safe for concurrent use. It keeps endorsement certificates
// it has verified against its roots (keyed by their DER, at most 256), and
// trusts that verification again only within the validity of the
// certificate and of its roots; each report's signature and fields are
// checked every time.
//
// Why go-sev-guest v0.15.0 or later: v0.14.x, when given no trusted roots,
// verified a report's VCEK against the ARK and ASK the attestation itself
// carried, so a forged chain with AMD's names verified (go-sev-guest issue
// #185). This package always passes its roots, and TestForgedChainRefused
// keeps the case as a regression test.
//
// Turin: go-sev-guest v0.15.0 decodes TCBs in the Milan and Genoa layout
// only and does not know the FMC extension (OID 1.3.6.1.4.1.3704.1.3.9) of
// Turin VCEKs, nor their 8-byte hardware ID. This package decodes Turin TCBs
// itself (DecodeTCB); a real Turin VCEK certificate is refused by
// go-sev-guest's extension check (fail closed) until go-sev-guest learns it.
//
// go-sev-guest registers flags on the standard library's flag.CommandLine
// (workaround_kds_productname in verify; sev_guest_device_path,
// self_throttle_duration, self_throttle_burst and default_vmpl in client)
// and logs through the global github.com/google/logger. cohort parses its
// own FlagSets, so no command line sets them; the verifier never sets an
// expected product (the one place workaround_kds_productname is read) and
// the attester passes its VMPL explicitly, so neither flag can change an
// outcome; and the paths used here do not log (errors are returned).
//
// The Attester gets reports through configfs-tsm (go-configfs-tsm, with the
// host's certificate table as the auxblob) and falls back to /dev/sev-guest
// (go-sev-guest's client, which throttles itself to one command per 2 s).
// Where neither exists, NewAttester fails with enclave.ErrUnsupported. The
// attester has not been run on SEV-SNP hardware: its tests use
// snptest's fake source, and its parsing of real reports is covered only
// through the verifier's samples. Platform does not seal (Seal and Unseal
// return enclave.ErrNoSealKey): SEV-SNP's derived keys are out of scope.
package snp
