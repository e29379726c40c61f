package messages

import (
	"encoding/hex"
	"fmt"
)

// Subjects of the cluster channel. A cluster's units share queue groups on
// its handshake and call subjects, so exactly one unit answers each request.
// Session records travel to the manager on SubjectSession and are kept in the
// stream SessionsStream, one subject a session.
const (
	SubjectClusterPrefix  = "cohort.v1.cluster."
	SubjectSession        = "cohort.v1.manager.session"
	SessionsStream        = "cohort_sessions"
	SubjectSessionsPrefix = "cohort.v1.sessions."
	UnitsQueuePrefix      = "cohort-units-"
)

// HandshakeSubject is the subject of a cluster's handshakes.
func HandshakeSubject(cluster string) string { return SubjectClusterPrefix + cluster + ".handshake" }

// CallSubject is the subject of a cluster's calls.
func CallSubject(cluster string) string { return SubjectClusterPrefix + cluster + ".call" }

// CloseSubject is the subject on which a user closes a session: a Call whose
// plaintext is CloseMarker.
func CloseSubject(cluster string) string { return SubjectClusterPrefix + cluster + ".close" }

// CloseMarker is the plaintext of a close: only the session's holder can
// encrypt it under the session's key.
const CloseMarker = "cohort/v1 close session"

// SessionSubject is the subject under which a session's record is kept.
func SessionSubject(cluster string, session []byte) string {
	return SubjectSessionsPrefix + cluster + "." + hex.EncodeToString(session)
}

// SessionsOfCluster is the subject filter of a cluster's session records.
func SessionsOfCluster(cluster string) string { return SubjectSessionsPrefix + cluster + ".>" }

// Sizes of the channel's messages.
const (
	SessionIDSize     = 16
	MaxEnc            = 1120 // ML-KEM-768 + X25519 ciphertext, the largest accepted
	MaxSealedSession  = 256
	MaxHello          = 2 << 10
	MaxHelloReplyBody = 2*(MaxCertificate+8) + MaxEnc + 512
	MaxHelloReply     = MaxHelloReplyBody + MaxSignature + 64
	MaxSessionRecord  = 1 << 10
	MaxSessionAck     = 64
	MaxCallData       = 64 << 10
	MaxCall           = MaxCallData + 128
	MaxCallReply      = MaxCallData + 128
	CallsBucket       = "cohort_calls"
)

// Codes the channel adds.
const (
	CodeWrongCluster Code = "wrong_cluster"   // the request names another cluster than the unit's
	CodeWrongTask    Code = "wrong_task"      // the user expects another task than the unit runs
	CodeNotReady     Code = "not_ready"       // the unit cannot serve the channel yet (no cluster key)
	CodeNoSession    Code = "unknown_session" // no such session, or it expired
	CodeAuth         Code = "not_authentic"   // the call does not authenticate under the session's key
	CodeInProgress   Code = "in_progress"     // another unit runs this call now; ask again for its answer
)

// CallClaim is the value of a call's key in CallsBucket, which is
// "<cluster>.<session hex>.<seq>" (and "<cluster>.<session hex>.closed" marks
// a closed session): which unit took the call and, once it ran, the encoded
// CallReply, so that a retry of the same call gets the same answer instead
// of a second run. The unit renews the claim while the task runs; a claim
// left unrenewed for 3 s is a dead unit's, and another unit takes the call.
type CallClaim struct {
	V      uint16 `msgpack:"v"`
	Unit   string `msgpack:"unit"`
	Answer []byte `msgpack:"answer"`
}

// Validate implements Validator.
func (m *CallClaim) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidUnitID(m.Unit) {
		return fmt.Errorf("%w: unit id", ErrField)
	}
	return between("answer", m.Answer, 0, MaxCallReply)
}

// MaxCallClaim bounds a call claim.
const MaxCallClaim = MaxCallReply + 128

// Sentinels for the channel's codes.
var (
	ErrNoSession  = &Error{Code: CodeNoSession}
	ErrAuth       = &Error{Code: CodeAuth}
	ErrInProgress = &Error{Code: CodeInProgress}
)

// Hello opens a session: the user's ephemeral KEM public key and nonce, the
// cluster it addresses and, optionally, the task it expects there.
type Hello struct {
	V         uint16 `msgpack:"v"`
	Cluster   string `msgpack:"cluster"`
	Task      string `msgpack:"task"`
	KEM       uint16 `msgpack:"kem"`
	PublicKey []byte `msgpack:"public_key"`
	Nonce     []byte `msgpack:"nonce"`
	Time      int64  `msgpack:"time"` // Unix nanoseconds
}

// Validate implements Validator.
func (m *Hello) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidTaskName(m.Cluster) || (m.Task != "" && !ValidTaskName(m.Task)) {
		return fmt.Errorf("%w: cluster or task name", ErrField)
	}
	return firstError(between("public_key", m.PublicKey, 1, MaxPublicKey), exactly("nonce", m.Nonce, NonceSize))
}

// HelloReply completes the handshake: Body is an encoded HelloReplyBody, and
// Signature the unit's task key's signature over the transcript hash of the
// user's encoded Hello and Body (channel.Transcript).
type HelloReply struct {
	V         uint16 `msgpack:"v"`
	Body      []byte `msgpack:"body"`
	Signature []byte `msgpack:"signature"`
}

// Validate implements Validator.
func (m *HelloReply) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(between("body", m.Body, 1, MaxHelloReplyBody), between("signature", m.Signature, 8, MaxSignature))
}

// HelloReplyBody is the unit's half of the handshake: the session id, the
// KEM encapsulation to the user's key, which unit answered, until when the
// session lives, and the unit's certificate chain without the root.
type HelloReplyBody struct {
	V       uint16   `msgpack:"v"`
	Session []byte   `msgpack:"session"`
	Enc     []byte   `msgpack:"enc"`
	Unit    string   `msgpack:"unit"`
	Expires int64    `msgpack:"expires"` // Unix nanoseconds
	Chain   [][]byte `msgpack:"chain"`
}

// Validate implements Validator.
func (m *HelloReplyBody) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidUnitID(m.Unit) {
		return fmt.Errorf("%w: unit id", ErrField)
	}
	if len(m.Chain) < 1 || len(m.Chain) > 2 {
		return fmt.Errorf("%w: chain has %d certificates, want 1 or 2", ErrField, len(m.Chain))
	}
	for i, c := range m.Chain {
		if err := between(fmt.Sprintf("chain[%d]", i), c, 1, MaxCertificate); err != nil {
			return err
		}
	}
	return firstError(exactly("session", m.Session, SessionIDSize), between("enc", m.Enc, 1, MaxEnc))
}

// SessionRecord is a session as a unit hands it to the manager and the
// manager keeps it: the session's keys sealed under the cluster key
// (channel.SealRecord), with what the manager may see in the clear. Unit and
// Token are the handing unit's membership, checked by the manager and not
// stored.
type SessionRecord struct {
	V       uint16 `msgpack:"v"`
	Cluster string `msgpack:"cluster"`
	Session []byte `msgpack:"session"`
	Epoch   uint32 `msgpack:"epoch"`
	Expires int64  `msgpack:"expires"` // Unix nanoseconds
	Sealed  []byte `msgpack:"sealed"`
	Closed  bool   `msgpack:"closed"` // the record of a closed session replaces the session's record
	Unit    string `msgpack:"unit"`
	Token   []byte `msgpack:"token"`
}

// Validate implements Validator.
func (m *SessionRecord) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidTaskName(m.Cluster) || m.Epoch == 0 || m.Expires <= 0 {
		return fmt.Errorf("%w: cluster, epoch or expiry", ErrField)
	}
	if m.Unit != "" || m.Token != nil { // stored records carry neither
		if !ValidUnitID(m.Unit) {
			return fmt.Errorf("%w: unit id", ErrField)
		}
		if err := exactly("token", m.Token, TokenSize); err != nil {
			return err
		}
	}
	return firstError(exactly("session", m.Session, SessionIDSize), between("sealed", m.Sealed, 1, MaxSealedSession))
}

// SessionAck confirms that JetStream stored a session record.
type SessionAck struct {
	V        uint16 `msgpack:"v"`
	Sequence uint64 `msgpack:"sequence"`
}

// Validate implements Validator.
func (m *SessionAck) Validate() error { return checkVersion(m.V) }

// SessionKeys is the plaintext of a sealed session record: the session's
// keys and expiry, or, for a closed session, none. It never travels in the
// clear.
type SessionKeys struct {
	V       uint16 `msgpack:"v"`
	C2S     []byte `msgpack:"c2s"`
	S2C     []byte `msgpack:"s2c"`
	Task    string `msgpack:"task"`
	Expires int64  `msgpack:"expires"`
	Closed  bool   `msgpack:"closed"`
}

// Validate implements Validator.
func (m *SessionKeys) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidTaskName(m.Task) || m.Expires <= 0 {
		return fmt.Errorf("%w: task or expiry", ErrField)
	}
	if m.Closed {
		if len(m.C2S) != 0 || len(m.S2C) != 0 {
			return fmt.Errorf("%w: a closed session keeps no keys", ErrField)
		}
		return nil
	}
	return firstError(exactly("c2s", m.C2S, 32), exactly("s2c", m.S2C, 32))
}

// Call is one encrypted call of a session: the call's sequence number and
// send time are authenticated with its ciphertext (channel.SealCall).
type Call struct {
	V          uint16 `msgpack:"v"`
	Session    []byte `msgpack:"session"`
	Seq        uint64 `msgpack:"seq"`
	Time       int64  `msgpack:"time"` // Unix nanoseconds
	Ciphertext []byte `msgpack:"ciphertext"`
}

// Validate implements Validator.
func (m *Call) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if m.Seq == 0 {
		return fmt.Errorf("%w: sequence numbers start at 1", ErrField)
	}
	return firstError(exactly("session", m.Session, SessionIDSize), between("ciphertext", m.Ciphertext, 16, MaxCallData+16))
}

// CallReply is a unit's encrypted answer, under the unit's own answer key.
type CallReply struct {
	V          uint16 `msgpack:"v"`
	Unit       string `msgpack:"unit"`
	Ciphertext []byte `msgpack:"ciphertext"`
}

// Validate implements Validator.
func (m *CallReply) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidUnitID(m.Unit) {
		return fmt.Errorf("%w: unit id", ErrField)
	}
	return between("ciphertext", m.Ciphertext, 16, MaxCallData+64)
}
