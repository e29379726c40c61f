package messages

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// Code is the typed reason a service gives for refusing a request. Codes are
// part of the wire protocol: add new ones, never rename or reuse one.
type Code string

// The codes. Each names one reason, so that an operator reading a refusal, or
// a caller branching on it, knows exactly what was wrong.
const (
	CodeMalformed       Code = "malformed"                // the payload does not decode
	CodeTooLarge        Code = "too_large"                // the payload exceeds the subject's cap
	CodeVersion         Code = "unsupported_version"      // the protocol version is not Version
	CodeEvidence        Code = "evidence_invalid"         // the evidence does not verify
	CodeBinding         Code = "binding_mismatch"         // the evidence's report data does not bind the request
	CodeUnknownTask     Code = "unknown_task"             // the policy names no such task
	CodeMeasurement     Code = "measurement_not_accepted" // the policy does not accept the unit's measurement
	CodeSimulated       Code = "simulated_not_accepted"   // simulated evidence, and the policy refuses it
	CodeDebug           Code = "debug_not_accepted"       // a debug enclave, and the policy refuses it
	CodeSecurityVersion Code = "security_version_too_low" // below the policy's minimum security version
	CodeStale           Code = "stale_request"            // the request's time is outside the accepted window
	CodeReplay          Code = "replayed_request"         // the request's nonce was seen before
	CodeUnsupportedKEM  Code = "unsupported_kem"          // the HPKE KEM is not one the issuer accepts
	CodeOverloaded      Code = "overloaded"               // the service's queue is full; retry later
	CodeInternal        Code = "internal"                 // the service failed; nothing was handed out
	CodeUnauthentic     Code = "issuer_unauthentic"       // (client side) the issuer's evidence or report does not check out
	CodeUnknownGroup    Code = "unknown_group"            // the policy names no such group
	CodeNotInGroup      Code = "not_in_group"             // the unit's task is not a member of a group it asked for
	// The trust lifecycle's (version 5).
	CodePolicyInvalid     Code = "policy_invalid"            // the proposed policy does not validate
	CodePolicyVersion     Code = "policy_version_not_higher" // the proposed version is not above the one in force (an old update replayed, say)
	CodePolicySignatures  Code = "policy_signatures"         // too few, unknown or wrong administrators' signatures
	CodePolicyConflict    Code = "policy_conflict"           // another update was applied meanwhile; read the policy in force and sign again
	CodeIssuerNotAccepted Code = "issuer_not_accepted"       // the policy in force does not accept this issuer build
	CodeStateKey          Code = "state_key_mismatch"        // the request names another state than this issuer's
	CodeRecoveryShare     Code = "recovery_share_invalid"    // a recovery share that does not open, or is given twice
	CodeNotWaiting        Code = "not_waiting"               // this issuer is not waiting for recovery
	// Hardware platforms' (version 6).
	CodePlatform   Code = "platform_not_accepted"   // the evidence is of a platform the task's policy does not name
	CodeTCBStatus  Code = "tcb_status_not_accepted" // the platform's TCB status is not one the task's policy accepts
	CodeTCB        Code = "tcb_too_low"             // a TCB component or security version below the task's minimum, or a platform setting it refuses
	CodeCollateral Code = "collateral_unavailable"  // the collateral the evidence needs is missing or expired at the issuer
	// Root rotation's (version 7): both pass; retry in a moment.
	CodeRotating    Code = "root_rotating"     // the issuer replicas are switching to a new root and answer under neither
	CodeUnconfirmed Code = "state_unconfirmed" // this issuer replica could not confirm the policy in force lately, so cannot tell whether its root is current
)

const (
	maxReasonLen      = 512
	maxCodeLen        = 64
	errorPayloadLimit = 1024
	unknownCode       = "unknown"
)

// Error is the reply a service sends instead of the requested message. On NATS
// it travels as a micro error reply: the code in the Nats-Service-Error-Code
// header and this message, encoded, as the payload.
//
// Error values match each other under errors.Is by code, so a caller writes
// errors.Is(err, messages.ErrMeasurement).
type Error struct {
	V      uint16 `msgpack:"v"`
	Code   Code   `msgpack:"code"`
	Reason string `msgpack:"reason"`
	// Proof, on the issuer's refusal of a certify request, is its root
	// key's signature over RefusalDigest: a unit acts on a refusal (leaves
	// its cluster) only when its root signed it, since anyone on NATS can
	// answer with an unsigned one. Empty elsewhere (version 5).
	Proof []byte `msgpack:"proof,omitempty"`
}

// Sentinels for the codes callers branch on.
var (
	ErrMeasurement  = &Error{Code: CodeMeasurement}
	ErrBinding      = &Error{Code: CodeBinding}
	ErrEvidence     = &Error{Code: CodeEvidence}
	ErrSimulated    = &Error{Code: CodeSimulated}
	ErrUnknownTask  = &Error{Code: CodeUnknownTask}
	ErrReplay       = &Error{Code: CodeReplay}
	ErrStale        = &Error{Code: CodeStale}
	ErrOverloaded   = &Error{Code: CodeOverloaded}
	ErrUnauthentic  = &Error{Code: CodeUnauthentic}
	ErrUnknownGroup = &Error{Code: CodeUnknownGroup}
	ErrNotInGroup   = &Error{Code: CodeNotInGroup}

	ErrPolicyInvalid     = &Error{Code: CodePolicyInvalid}
	ErrPolicyVersion     = &Error{Code: CodePolicyVersion}
	ErrPolicySignatures  = &Error{Code: CodePolicySignatures}
	ErrPolicyConflict    = &Error{Code: CodePolicyConflict}
	ErrIssuerNotAccepted = &Error{Code: CodeIssuerNotAccepted}
	ErrStateKey          = &Error{Code: CodeStateKey}
	ErrRecoveryShare     = &Error{Code: CodeRecoveryShare}
	ErrNotWaiting        = &Error{Code: CodeNotWaiting}

	ErrPlatform   = &Error{Code: CodePlatform}
	ErrTCBStatus  = &Error{Code: CodeTCBStatus}
	ErrTCB        = &Error{Code: CodeTCB}
	ErrCollateral = &Error{Code: CodeCollateral}

	ErrRotating    = &Error{Code: CodeRotating}
	ErrUnconfirmed = &Error{Code: CodeUnconfirmed}
)

// Refusal returns an Error with the given code and a formatted reason.
func Refusal(code Code, format string, args ...any) *Error {
	return &Error{V: Version, Code: code, Reason: truncate(fmt.Sprintf(format, args...), maxReasonLen)}
}

func (e *Error) Error() string {
	if e.Reason == "" {
		return string(e.Code)
	}
	return string(e.Code) + ": " + e.Reason
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

// Validate bounds the code and the reason.
func (e *Error) Validate() error {
	if e.V != Version {
		return fmt.Errorf("%w: %d", ErrVersion, e.V)
	}
	if e.Code == "" || len(e.Code) > maxCodeLen || len(e.Reason) > maxReasonLen || len(e.Proof) > MaxSignature {
		return fmt.Errorf("%w: error code, reason or proof out of bounds", ErrField)
	}
	return nil
}

// DecodeError decodes an error reply. A reply that does not decode becomes an
// Error with the code the header named and the decode failure as its reason,
// so that a caller always gets a typed error back.
func DecodeError(headerCode string, data []byte) *Error {
	var e Error
	if err := Decode(data, errorPayloadLimit, &e); err != nil {
		if headerCode == "" {
			headerCode = unknownCode
		}
		code := Code(truncate(headerCode, maxCodeLen))
		if code == "" {
			code = unknownCode
		}
		return &Error{V: Version, Code: code, Reason: truncate("undecodable error reply: "+err.Error(), maxReasonLen)}
	}
	return &e
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence. A
// sequence is at most utf8.UTFMax bytes, so it backs up at most that far; in
// bytes that are not UTF-8 at all it cuts at n.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for back := 0; back < utf8.UTFMax && back <= n; back++ {
		if utf8.RuneStart(s[n-back]) {
			return s[:n-back]
		}
	}
	return s[:n]
}
