package messages

import (
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// Subjects of the cluster channel. A cluster's units share queue groups on
// its handshake, call and close subjects, so exactly one unit answers each
// request. The last token of each is the user's name: NATS permissions (and,
// in a deployment with accounts, the user's imports) let a user publish only
// under its own name, so the unit knows, from the server, which user asks.
//
// Each cluster keeps its own state, so that permissions can name it: the
// stream SessionsStream(cluster) of its sealed session records, one subject
// a session, written by the manager; and the stream CallsStream(cluster) of
// its call claims and closed marks, written by its units.
const (
	SubjectClusterPrefix  = "cohort.v1.cluster."
	SubjectSessionsPrefix = "cohort.v1.sessions."
	SubjectCallsPrefix    = "cohort.v1.calls."
	UnitsQueuePrefix      = "cohort-units-"
	sessionsStreamPrefix  = "cohort_sessions_"
	callsStreamPrefix     = "cohort_calls_"
)

// The verbs of a cluster's subjects.
const (
	VerbHandshake = "handshake"
	VerbCall      = "call"
	VerbClose     = "close"
)

// ClusterSubject is the subject on which user asks cluster to verb: a
// handshake, a call or a close.
func ClusterSubject(cluster, verb, user string) string {
	return SubjectClusterPrefix + cluster + "." + verb + "." + user
}

// HandshakeSubject is the subject of user's handshakes with cluster.
func HandshakeSubject(cluster, user string) string {
	return ClusterSubject(cluster, VerbHandshake, user)
}

// CallSubject is the subject of user's calls to cluster.
func CallSubject(cluster, user string) string { return ClusterSubject(cluster, VerbCall, user) }

// CloseSubject is the subject on which user closes a session: a Call whose
// plaintext is CloseMarker.
func CloseSubject(cluster, user string) string { return ClusterSubject(cluster, VerbClose, user) }

// ClusterFilter is the subject filter a cluster's units serve verb on, for
// every user.
func ClusterFilter(cluster, verb string) string {
	return SubjectClusterPrefix + cluster + "." + verb + ".*"
}

// UserOfSubject returns the user a cluster subject names, as the server
// delivered it: the token after cluster and verb.
func UserOfSubject(subject, cluster, verb string) (string, bool) {
	user, ok := strings.CutPrefix(subject, SubjectClusterPrefix+cluster+"."+verb+".")
	return user, ok && ValidUserName(user)
}

// CloseMarker is the plaintext of a close: only the session's holder can
// encrypt it under the session's key.
const CloseMarker = "cohort/v1 close session"

// SessionsStream is the stream of a cluster's session records.
func SessionsStream(cluster string) string { return sessionsStreamPrefix + cluster }

// SessionSubject is the subject under which a session's record is kept.
func SessionSubject(cluster string, session []byte) string {
	return SubjectSessionsPrefix + cluster + "." + hex.EncodeToString(session)
}

// SessionsOfCluster is the subject filter of a cluster's session records.
func SessionsOfCluster(cluster string) string { return SubjectSessionsPrefix + cluster + ".>" }

// CallShards is the number of streams a cluster's claims and closed marks
// are spread over, by session (CallShard): JetStream writes and fsyncs one
// stream's messages one after another, and separate streams in parallel.
// Every unit of a cluster must spread them alike, or two units could claim
// one call in two places: the number is part of the storage layout
// (package doc, "Storage"), and a build that changes it runs only after
// the cluster's units are stopped and its calls streams removed.
const CallShards = 4

// CallShard is the shard of a session's claims and closed mark.
func CallShard(session []byte) int {
	if len(session) == 0 {
		return 0
	}
	return int(session[0]) % CallShards
}

// CallsStream is the stream of shard shard of a cluster's call claims and
// closed marks.
func CallsStream(cluster string, shard int) string {
	return fmt.Sprintf("%s%s_%d", callsStreamPrefix, cluster, shard)
}

// CallsStreamOf is the stream of a session's claims and closed mark.
func CallsStreamOf(cluster string, session []byte) string {
	return CallsStream(cluster, CallShard(session))
}

// CallsStreams are the names of a cluster's calls streams.
func CallsStreams(cluster string) []string {
	names := make([]string, CallShards)
	for k := range names {
		names[k] = CallsStream(cluster, k)
	}
	return names
}

// ClaimSubject is the subject of the claim on call seq of a session.
func ClaimSubject(cluster string, session []byte, seq uint64) string {
	return fmt.Sprintf("%s%s.%d.%x.%d", SubjectCallsPrefix, cluster, CallShard(session), session, seq)
}

// ClosedSubject is the subject of a session's closed mark.
func ClosedSubject(cluster string, session []byte) string {
	return fmt.Sprintf("%s%s.%d.%x.closed", SubjectCallsPrefix, cluster, CallShard(session), session)
}

// ClaimsOfCluster is the subject filter of a cluster's claims and marks, in
// every shard.
func ClaimsOfCluster(cluster string) string { return SubjectCallsPrefix + cluster + ".>" }

// ClaimsOfShard is the subject filter of one shard's claims and marks.
func ClaimsOfShard(cluster string, shard int) string {
	return fmt.Sprintf("%s%s.%d.>", SubjectCallsPrefix, cluster, shard)
}

// LegacyCallsStream is the one calls stream of a cluster as cohort made it
// before its claims were spread over CallShards streams: its subjects
// overlap theirs, so it must be removed before they can be made.
func LegacyCallsStream(cluster string) string { return callsStreamPrefix + cluster }

var userName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidUserName reports whether s is a valid user name: as a task name,
// lower-case letters, digits and inner hyphens, at most 63 bytes.
func ValidUserName(s string) bool { return userName.MatchString(s) }

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
)

// Codes the channel adds.
const (
	CodeWrongCluster Code = "wrong_cluster"   // the request names another cluster than the unit's
	CodeWrongTask    Code = "wrong_task"      // the user expects another task than the unit runs
	CodeNotReady     Code = "not_ready"       // the unit cannot serve the channel yet (no cluster key)
	CodeNoSession    Code = "unknown_session" // no such session, or it expired
	CodeAuth         Code = "not_authentic"   // the call does not authenticate under the session's key
	CodeInProgress   Code = "in_progress"     // another unit runs this call now; ask again for its answer
	CodeQuota        Code = "quota_exceeded"  // the user holds as many live sessions as a user may
	CodeRateLimited  Code = "rate_limited"    // the user asks faster than a user may; retry later
	CodeTampered     Code = "tampered"        // stored state does not authenticate, or has history it should not: nothing runs
)

// CallClaim is a message of CallsStream: the claim on one call of a session
// (subject ClaimSubject), or a session's closed mark (ClosedSubject). A unit
// creates a claim before it runs the call, and stores the call's sealed
// answer in it once it ran, so that a retry of the same call gets the same
// answer instead of a second run.
//
// A claim is create-only and final. Every claim a unit writes names the
// revision it was written over (Prev: 0 for the first) and is published with
// that revision as Nats-Expected-Last-Subject-Sequence, which JetStream both
// enforces and keeps with the message; MAC, under a key only the cluster's
// units hold (channel.ClaimKey), binds the subject, the unit, the state, Prev
// and the answer. So a reader can tell, from the last message alone, that
// the claim is a unit's and was written where it stands: a delete marker, an
// overwrite, or an old claim written again, does not authenticate or stands
// over another revision than it names, and the call is refused as tampered,
// never run again.
type CallClaim struct {
	V      uint16 `msgpack:"v"`
	Unit   string `msgpack:"unit"`
	State  uint8  `msgpack:"state"`
	Prev   uint64 `msgpack:"prev"`
	Answer []byte `msgpack:"answer"`
	MAC    []byte `msgpack:"mac"`
}

// States of a CallClaim.
const (
	ClaimRunning  uint8 = 1 // the unit runs the call; Answer is empty
	ClaimAnswered uint8 = 2 // the call ran; Answer is the encoded CallReply
	ClaimClosed   uint8 = 3 // the session's closed mark
)

// ClaimMACSize is the size of CallClaim.MAC (HMAC-SHA256).
const ClaimMACSize = 32

// Validate implements Validator.
func (m *CallClaim) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidUnitID(m.Unit) {
		return fmt.Errorf("%w: unit id", ErrField)
	}
	switch m.State {
	case ClaimRunning, ClaimClosed:
		if len(m.Answer) != 0 {
			return fmt.Errorf("%w: only an answered claim carries an answer", ErrField)
		}
	case ClaimAnswered:
		if err := between("answer", m.Answer, 1, MaxCallReply); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: claim state %d", ErrField, m.State)
	}
	return exactly("mac", m.MAC, ClaimMACSize)
}

// MaxCallClaim bounds a call claim.
const MaxCallClaim = MaxCallReply + 128

// Sentinels for the channel's codes.
var (
	ErrNoSession   = &Error{Code: CodeNoSession}
	ErrAuth        = &Error{Code: CodeAuth}
	ErrInProgress  = &Error{Code: CodeInProgress}
	ErrQuota       = &Error{Code: CodeQuota}
	ErrRateLimited = &Error{Code: CodeRateLimited}
	ErrTampered    = &Error{Code: CodeTampered}
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
// keys, the user whose session it is, and its expiry, or, for a closed
// session, no keys. It never travels in the clear.
type SessionKeys struct {
	V       uint16 `msgpack:"v"`
	C2S     []byte `msgpack:"c2s"`
	S2C     []byte `msgpack:"s2c"`
	Task    string `msgpack:"task"`
	User    string `msgpack:"user"`
	Expires int64  `msgpack:"expires"`
	Closed  bool   `msgpack:"closed"`
}

// MaxSessionKeys bounds a SessionKeys.
const MaxSessionKeys = 256

// Validate implements Validator.
func (m *SessionKeys) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidTaskName(m.Task) || !ValidUserName(m.User) || m.Expires <= 0 {
		return fmt.Errorf("%w: task, user or expiry", ErrField)
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
