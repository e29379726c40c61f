package messages

import (
	"crypto/sha256"
	"fmt"

	"github.com/cohort-dev/cohort/enclave"
)

// Subjects of the issuer's trust lifecycle (protocol version 5).
//
//   - SubjectPeerStateKey: an issuer that cannot open the state asks a running
//     issuer of an accepted build for the state key. Only the issuer's own
//     credential reaches it, and it answers only into the issuer's inbox.
//   - SubjectPolicyApply and SubjectPolicyShow: administrators submit a
//     signed policy update, and anyone the operator's account admits reads
//     the policy in force and its history.
//   - SubjectRecoverHello and RecoverSubject(instance): recovery-key holders
//     find an issuer waiting for recovery and hand it their shares.
const (
	SubjectPeerStateKey  = "cohort.v1.issuer.peer.statekey"
	SubjectPolicyApply   = "cohort.v1.issuer.policy.apply"
	SubjectPolicyShow    = "cohort.v1.issuer.policy.show"
	SubjectRecoverPrefix = "cohort.v1.issuer.recover."
	SubjectRecoverHello  = SubjectRecoverPrefix + "hello"
	// IssuerPeerQueue is the queue group running issuers answer state-key
	// requests in.
	IssuerPeerQueue = "cohort-issuer-peer"
)

// RecoverSubject is the subject on which the waiting issuer instance takes
// recovery shares.
func RecoverSubject(instance string) string { return SubjectRecoverPrefix + "share." + instance }

// Sizes of the trust lifecycle's messages.
const (
	KeyIDSize            = 16
	StateKeySize         = 32
	AdminKeySize         = 32 // Ed25519 public key
	AdminSignatureSize   = 64 // Ed25519 signature
	RecoveryKeySize      = 32 // X25519 public key
	MaxPolicyDocument    = 256 << 10
	MaxPolicySignatures  = 64
	MaxPolicyHistory     = 256
	MaxSignerName        = 64
	MaxInstance          = 32
	MaxStateKeyBody      = 2 << 10
	MaxStateKeyRequest   = MaxStateKeyBody + MaxEvidence + 64
	MaxStateKeyReplyBody = 4 << 10
	MaxStateKeyReply     = MaxStateKeyReplyBody + MaxEvidence + 64
	MaxPolicyApply       = MaxPolicyDocument + MaxPolicySignatures*(AdminKeySize+AdminSignatureSize+8) + 64
	MaxPolicyApplied     = 64 << 10
	MaxPolicyShowReply   = MaxPolicyDocument + MaxPolicySignatures*(AdminKeySize+AdminSignatureSize+8) + MaxPolicyHistory*(MaxPolicySignatures*(MaxSignerName+2)+64) + 64
	MaxRecoverHello      = 128
	MaxRecoverOffer      = 16<<10 + MaxVouchers*(MaxCertificate+8)
	MaxRecoverReply      = MaxRecoverOffer + MaxEvidence + 64
	MaxRecoverShare      = 4 << 10
	MaxRecoverAck        = 256
)

// StateKeyRequest is a newcomer issuer's request for the state key: Body is
// an encoded StateKeyBody and Evidence binds exactly those bytes
// (StateKeyRequestBinding), the ephemeral key included.
type StateKeyRequest struct {
	V        uint16 `msgpack:"v"`
	Body     []byte `msgpack:"body"`
	Evidence []byte `msgpack:"evidence"`
}

// Validate implements Validator.
func (m *StateKeyRequest) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(between("body", m.Body, 1, MaxStateKeyBody), between("evidence", m.Evidence, 1, MaxEvidence))
}

// StateKeyBody names the state asked for (its key id), the HPKE key the state
// key is to be sealed to, a fresh nonce and the newcomer's clock.
type StateKeyBody struct {
	V         uint16 `msgpack:"v"`
	KeyID     []byte `msgpack:"key_id"`
	KEM       uint16 `msgpack:"kem"`
	PublicKey []byte `msgpack:"public_key"`
	Nonce     []byte `msgpack:"nonce"`
	Time      int64  `msgpack:"time"` // Unix nanoseconds
}

// Validate implements Validator.
func (m *StateKeyBody) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(exactly("key_id", m.KeyID, KeyIDSize), between("public_key", m.PublicKey, 1, MaxPublicKey), exactly("nonce", m.Nonce, NonceSize))
}

// StateKeyReply is a running issuer's answer: Body is an encoded
// StateKeyReplyBody, Evidence the running issuer's, binding exactly those
// bytes (StateKeyReplyBinding).
type StateKeyReply struct {
	V        uint16 `msgpack:"v"`
	Body     []byte `msgpack:"body"`
	Evidence []byte `msgpack:"evidence"`
}

// Validate implements Validator.
func (m *StateKeyReply) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(between("body", m.Body, 1, MaxStateKeyReplyBody), between("evidence", m.Evidence, 1, MaxEvidence))
}

// StateKeyReplyBody carries the state key HPKE-sealed to the request's key,
// with StateKeyInfo(RequestHash) as the HPKE info.
type StateKeyReplyBody struct {
	V           uint16 `msgpack:"v"`
	RequestHash []byte `msgpack:"request_hash"` // SHA-256 of StateKeyRequest.Body
	KeyID       []byte `msgpack:"key_id"`
	Sealed      []byte `msgpack:"sealed"`
	// Policy is the version of the policy the answering issuer serves: the
	// newcomer refuses a state whose policy record is older.
	Policy uint64 `msgpack:"policy"`
}

// Validate implements Validator.
func (m *StateKeyReplyBody) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(exactly("request_hash", m.RequestHash, HashSize), exactly("key_id", m.KeyID, KeyIDSize), between("sealed", m.Sealed, 1, 2<<10))
}

// PolicySignature is one administrator's signature over a policy document.
type PolicySignature struct {
	Key       []byte `msgpack:"key"`       // Ed25519 public key
	Signature []byte `msgpack:"signature"` // over PolicySigned(document)
}

func checkSignatures(sigs []PolicySignature) error {
	if len(sigs) > MaxPolicySignatures {
		return fmt.Errorf("%w: %d signatures, at most %d", ErrField, len(sigs), MaxPolicySignatures)
	}
	for i, s := range sigs {
		if err := firstError(exactly(fmt.Sprintf("signatures[%d].key", i), s.Key, AdminKeySize),
			exactly(fmt.Sprintf("signatures[%d].signature", i), s.Signature, AdminSignatureSize)); err != nil {
			return err
		}
	}
	return nil
}

// PolicyApply submits a policy document with administrators' signatures.
type PolicyApply struct {
	V          uint16            `msgpack:"v"`
	Document   []byte            `msgpack:"document"`
	Signatures []PolicySignature `msgpack:"signatures"`
}

// Validate implements Validator.
func (m *PolicyApply) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(between("document", m.Document, 1, MaxPolicyDocument), checkSignatures(m.Signatures))
}

// PolicyApplied answers an accepted update: the version and hash now in
// force, who signed it and which certificates were made anew.
type PolicyApplied struct {
	V        uint16   `msgpack:"v"`
	Version  uint64   `msgpack:"version"`
	Hash     []byte   `msgpack:"hash"`
	Signers  []string `msgpack:"signers"`
	Reissued []string `msgpack:"reissued"` // "task/NAME", "group/ID"
}

// Validate implements Validator.
func (m *PolicyApplied) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if len(m.Signers) > MaxPolicySignatures || len(m.Reissued) > 4096 {
		return fmt.Errorf("%w: too many signers or reissued certificates", ErrField)
	}
	return exactly("hash", m.Hash, HashSize)
}

// PolicyHistory is one policy that was in force.
type PolicyHistory struct {
	Version uint64   `msgpack:"version"`
	Hash    []byte   `msgpack:"hash"`
	Signers []string `msgpack:"signers"` // administrators' names; none for the first policy
	Applied int64    `msgpack:"applied"` // Unix nanoseconds
}

// PolicyShowRequest asks for the policy in force.
type PolicyShowRequest struct {
	V uint16 `msgpack:"v"`
}

// Validate implements Validator.
func (m *PolicyShowRequest) Validate() error { return checkVersion(m.V) }

// PolicyShowReply is the policy in force: its document and signatures and
// the history of the policies before it, oldest first.
type PolicyShowReply struct {
	V          uint16            `msgpack:"v"`
	Version    uint64            `msgpack:"version"`
	Hash       []byte            `msgpack:"hash"`
	Document   []byte            `msgpack:"document"`
	Signatures []PolicySignature `msgpack:"signatures"`
	History    []PolicyHistory   `msgpack:"history"`
}

// Validate implements Validator.
func (m *PolicyShowReply) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if len(m.History) > MaxPolicyHistory {
		return fmt.Errorf("%w: %d history entries, at most %d", ErrField, len(m.History), MaxPolicyHistory)
	}
	for i, h := range m.History {
		if err := checkHistory(i, &h); err != nil {
			return err
		}
	}
	return firstError(exactly("hash", m.Hash, HashSize), between("document", m.Document, 1, MaxPolicyDocument), checkSignatures(m.Signatures))
}

func checkHistory(i int, h *PolicyHistory) error {
	if len(h.Signers) > MaxPolicySignatures {
		return fmt.Errorf("%w: history[%d]: %d signers", ErrField, i, len(h.Signers))
	}
	for _, s := range h.Signers {
		if err := stringBetween(fmt.Sprintf("history[%d].signer", i), s, 1, MaxSignerName); err != nil {
			return err
		}
	}
	return exactly(fmt.Sprintf("history[%d].hash", i), h.Hash, HashSize)
}

// RecoverHello is a recovery-key holder's first message to an issuer waiting
// for recovery: a fresh nonce and the holder's recovery public key.
type RecoverHello struct {
	V           uint16 `msgpack:"v"`
	Nonce       []byte `msgpack:"nonce"`
	RecoveryKey []byte `msgpack:"recovery_key"` // X25519 public key
}

// Validate implements Validator.
func (m *RecoverHello) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(exactly("nonce", m.Nonce, NonceSize), exactly("recovery_key", m.RecoveryKey, RecoveryKeySize))
}

// RecoverReply is the waiting issuer's answer: Body is an encoded
// RecoverOffer and Evidence the issuer's, binding exactly those bytes
// (RecoverOfferBinding).
type RecoverReply struct {
	V        uint16 `msgpack:"v"`
	Body     []byte `msgpack:"body"`
	Evidence []byte `msgpack:"evidence"`
}

// Validate implements Validator.
func (m *RecoverReply) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(between("body", m.Body, 1, MaxRecoverOffer), between("evidence", m.Evidence, 1, MaxEvidence))
}

// RecoverOffer is what the waiting issuer attests to: which instance it is,
// which state it waits for (key id), the holder's nonce, the ephemeral HPKE
// key the share is to be sealed to, and the holder's share as the state's
// recovery record keeps it (sealed to the holder's recovery key).
type RecoverOffer struct {
	V         uint16 `msgpack:"v"`
	Instance  string `msgpack:"instance"`
	KeyID     []byte `msgpack:"key_id"`
	Nonce     []byte `msgpack:"nonce"`
	KEM       uint16 `msgpack:"kem"`
	PublicKey []byte `msgpack:"public_key"`
	Index     uint8  `msgpack:"index"`  // the share's x coordinate
	Share     []byte `msgpack:"share"`  // HPKE-sealed to the holder's recovery key
	Need      uint8  `msgpack:"need"`   // the threshold
	Have      uint8  `msgpack:"have"`   // shares received so far
	Policy    uint64 `msgpack:"policy"` // the version of the policy the record was made under
	// Root is the root certificate of the state the record is of, DER; the
	// holder checks it is the root it trusts.
	Root []byte `msgpack:"root"`
	// Commit commits to the share's plaintext (ShareCommitment), and
	// Signature is that root's signature over ShareDigest: the share was
	// made by an issuer holding the root key, for this holder.
	Commit    []byte `msgpack:"commit"`
	Signature []byte `msgpack:"signature"`
	// Vouchers, after a rotation, lead from the state's earlier roots to
	// Root (as EvidenceReply.Vouchers), so that a holder who trusts an
	// earlier root recovers the state (version 7).
	Vouchers [][]byte `msgpack:"vouchers,omitempty"`
}

// Validate implements Validator.
func (m *RecoverOffer) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !validInstance(m.Instance) || m.Index == 0 || m.Need == 0 {
		return fmt.Errorf("%w: instance, index or threshold", ErrField)
	}
	return firstError(exactly("key_id", m.KeyID, KeyIDSize), exactly("nonce", m.Nonce, NonceSize),
		between("public_key", m.PublicKey, 1, MaxPublicKey), between("share", m.Share, 1, 1<<10),
		between("root", m.Root, 1, MaxCertificate), exactly("commit", m.Commit, HashSize), between("signature", m.Signature, 8, MaxSignature),
		vouchers(m.Vouchers))
}

// RecoverShare hands the waiting issuer one share, opened by its holder and
// sealed again to the offer's ephemeral key, with
// RecoverShareInfo(OfferHash) as the HPKE info.
type RecoverShare struct {
	V         uint16 `msgpack:"v"`
	OfferHash []byte `msgpack:"offer_hash"` // SHA-256 of RecoverReply.Body
	Sealed    []byte `msgpack:"sealed"`
}

// Validate implements Validator.
func (m *RecoverShare) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(exactly("offer_hash", m.OfferHash, HashSize), between("sealed", m.Sealed, 1, 2<<10))
}

// RecoverAck says how far recovery has come.
type RecoverAck struct {
	V    uint16 `msgpack:"v"`
	Have uint8  `msgpack:"have"`
	Need uint8  `msgpack:"need"`
	Done bool   `msgpack:"done"` // the state key is restored and the issuer starts
}

// Validate implements Validator.
func (m *RecoverAck) Validate() error { return checkVersion(m.V) }

func validInstance(s string) bool {
	if len(s) == 0 || len(s) > MaxInstance {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// ValidInstance reports whether s is a valid issuer instance name: 1 to
// MaxInstance lower-case letters and digits.
func ValidInstance(s string) bool { return validInstance(s) }

// Labels of the trust lifecycle.
const (
	labelStateKeyRequest = "cohort/v5/issuer-state-key-request"
	labelStateKeyReply   = "cohort/v5/issuer-state-key-reply"
	labelStateKeyInfo    = "cohort/v5/issuer-state-key\x00"
	labelPolicySigned    = "cohort/v5/policy-signature\x00"
	labelRecoverOffer    = "cohort/v5/recover-offer"
	labelRecoverShare    = "cohort/v5/recover-share\x00"
	labelRecoveryRecord  = "cohort/v5/recovery-record-share\x00"
	labelShareDigest     = "cohort/v5/recovery-share-signature"
	labelShareCommit     = "cohort/v5/recovery-share-commitment"
)

// ShareCommitment commits to the plaintext y of the share of index of the
// state key with id keyID: the waiting issuer takes only a share that
// matches the commitment its state's recovery record holds.
func ShareCommitment(keyID []byte, index uint8, y []byte) []byte {
	b := enclave.Bind(labelShareCommit, keyID, []byte{index}, y)
	h := sha256.Sum256(b[:])
	return h[:]
}

// ShareDigest is what the state's root key signs for one share of its
// recovery record: the state key's id, the policy version and threshold it
// was made under, the share's index, its holder's key, the sealed share and
// its commitment.
func ShareDigest(keyID []byte, policy uint64, threshold, index uint8, holder, sealed, commit []byte) [HashSize]byte {
	var v [8]byte
	for k := range 8 {
		v[k] = byte(policy >> (56 - 8*k))
	}
	b := enclave.Bind(labelShareDigest, keyID, v[:], []byte{threshold, index}, holder, sealed, commit)
	return sha256.Sum256(b[:])
}

// StateKeyRequestBinding is the report data of a newcomer's evidence for the
// encoded StateKeyBody body.
func StateKeyRequestBinding(body []byte) [enclave.ReportDataSize]byte {
	return enclave.Bind(labelStateKeyRequest, body)
}

// StateKeyReplyBinding is the report data of a running issuer's evidence for
// the encoded StateKeyReplyBody body.
func StateKeyReplyBinding(body []byte) [enclave.ReportDataSize]byte {
	return enclave.Bind(labelStateKeyReply, body)
}

// StateKeyInfo is the HPKE info of the state key sealed for the request with
// hash requestHash.
func StateKeyInfo(requestHash []byte) []byte {
	return append([]byte(labelStateKeyInfo), requestHash...)
}

// PolicySigned is what an administrator signs for a policy document: the
// label and the document's SHA-256, so that a signature is over exactly
// that document.
func PolicySigned(document []byte) []byte {
	h := sha256.Sum256(document)
	return append([]byte(labelPolicySigned), h[:]...)
}

// RecoverOfferBinding is the report data of a waiting issuer's evidence for
// the encoded RecoverOffer body.
func RecoverOfferBinding(body []byte) [enclave.ReportDataSize]byte {
	return enclave.Bind(labelRecoverOffer, body)
}

// RecoverShareInfo is the HPKE info of a share sealed to the waiting issuer
// for the offer with hash offerHash.
func RecoverShareInfo(offerHash []byte) []byte {
	return append([]byte(labelRecoverShare), offerHash...)
}

// RecoveryRecordInfo is the HPKE info of the share of index, of the state key
// with id keyID, that the recovery record keeps sealed to a holder.
func RecoveryRecordInfo(keyID []byte, index uint8) []byte {
	return append(append([]byte(labelRecoveryRecord), keyID...), index)
}
