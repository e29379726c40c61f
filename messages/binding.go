package messages

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/cohort-dev/cohort/enclave"
)

// Domain-separation labels. Each use of a hash or a key in the protocol has
// its own, so that nothing signed, sealed or attested for one purpose can be
// taken for another.
const (
	labelCertifyRequest  = "cohort/v1/certify-request"
	labelIssuerEvidence  = "cohort/v1/issuer-evidence"
	labelReportSignature = "cohort/v1/certify-report-signature\x00"
	labelSecretsInfo     = "cohort/v1/certify-report-secrets\x00"
	labelGroupProof      = "cohort/v3/group-peer-proof\x00"
	labelRefusal         = "cohort/v5/certify-refusal"
)

// RefusalDigest is what the issuer's root key signs for its refusal, with
// code and reason, of the certify request whose whole encoding (body and
// evidence) has SHA-256 requestHash (Error.Proof).
func RefusalDigest(requestHash []byte, code Code, reason string) [HashSize]byte {
	b := enclave.Bind(labelRefusal, requestHash, []byte(code), []byte(reason))
	return sha256.Sum256(b[:])
}

// CertifyBinding is the report data a unit's evidence must carry for a
// certify request whose encoded body is body.
func CertifyBinding(body []byte) [enclave.ReportDataSize]byte {
	return enclave.Bind(labelCertifyRequest, body)
}

// EvidenceBinding is the report data the issuer's evidence must carry: its
// root certificate, the hash and version of the policy in force and the
// caller's nonce.
func EvidenceBinding(rootDER, policyHash []byte, policyVersion uint64, nonce []byte) [enclave.ReportDataSize]byte {
	return enclave.Bind(labelIssuerEvidence, rootDER, policyHash, binary.BigEndian.AppendUint64(nil, policyVersion), nonce)
}

// RequestHash identifies a certify request in its report: SHA-256 of the
// encoded CertifyBody.
func RequestHash(body []byte) [HashSize]byte { return sha256.Sum256(body) }

// ReportDigest is what the issuer's root key signs for a report whose encoded
// ReportBody is body.
func ReportDigest(body []byte) [HashSize]byte {
	h := sha256.New()
	h.Write([]byte(labelReportSignature))
	h.Write(body)
	var d [HashSize]byte
	h.Sum(d[:0])
	return d
}

// SecretsInfo is the HPKE info string for the secrets of the report that
// answers the request with hash requestHash: the sealed secrets open only for
// that request.
func SecretsInfo(requestHash []byte) []byte {
	return append([]byte(labelSecretsInfo), requestHash...)
}
