package messages

import (
	"crypto/sha256"
	"fmt"
	"regexp"
	"strings"
)

// Subjects of the manager's service, named ManagerService. A unit's join,
// leave and session records go to one manager of the queue group;
// heartbeats go to every manager (no queue group), so that each manager's
// view of who is alive is complete. Each of a unit's subjects ends with its
// cluster and its unit id: NATS permissions (and, in a deployment with
// accounts, its cluster's imports) let a unit publish only under its own,
// so the manager knows from the server which unit speaks, and one that holds
// a peer's token still cannot speak for it.
const (
	ManagerService       = "cohort-manager"
	ManagerQueue         = "cohort-manager"
	SubjectManagerPrefix = "cohort.v1.manager."
	SubjectStatus        = "cohort.v1.manager.status"
)

// The verbs of a unit's requests to the manager.
const (
	VerbJoin      = "join"
	VerbHeartbeat = "heartbeat"
	VerbLeave     = "leave"
	VerbSession   = "session"
)

// ManagerSubject is the subject on which the unit unitID of cluster asks the
// manager to verb.
func ManagerSubject(verb, cluster, unitID string) string {
	return SubjectManagerPrefix + verb + "." + cluster + "." + unitID
}

// ManagerFilter is the subject filter the manager serves verb on.
func ManagerFilter(verb string) string { return SubjectManagerPrefix + verb + ".*.*" }

// UnitOfSubject returns the cluster and unit id a manager subject of verb
// names, as the server delivered it.
func UnitOfSubject(subject, verb string) (cluster, unitID string, ok bool) {
	rest, ok := strings.CutPrefix(subject, SubjectManagerPrefix+verb+".")
	if !ok {
		return "", "", false
	}
	cluster, unitID, ok = strings.Cut(rest, ".")
	return cluster, unitID, ok && ValidTaskName(cluster) && ValidUnitID(unitID)
}

// Sizes of the manager's messages.
const (
	TokenSize         = 32
	MaxUnitID         = 64
	MaxAddr           = 255
	MaxJoinBody       = (MaxChain-1)*(MaxCertificate+8) + 1024
	MaxJoinRequest    = MaxJoinBody + MaxSignature + 64
	MaxJoinReply      = 128
	MaxHeartbeat      = 256
	MaxHeartbeatReply = 32
)

// Codes the manager adds.
const (
	CodeClusterNotCovered Code = "cluster_not_covered" // the unit's certificate does not cover the cluster it names
	CodeCertificate       Code = "certificate_invalid" // the chain does not verify to the issuer's root
	CodeSignature         Code = "signature_invalid"   // the join is not signed by the certificate's key
	CodeUnknownUnit       Code = "unknown_unit"        // no such member, or the token does not match
	CodeWrongSubject      Code = "wrong_subject"       // the request names another cluster or unit than its subject
	CodeReaderRefused     Code = "reader_refused"      // an operator's consumer on the audit stream would not be a reader's: it pushes, never expires, or is one too many
)

// Sentinels for the manager's codes.
var (
	ErrClusterNotCovered = &Error{Code: CodeClusterNotCovered}
	ErrCertificate       = &Error{Code: CodeCertificate}
	ErrSignature         = &Error{Code: CodeSignature}
	ErrUnknownUnit       = &Error{Code: CodeUnknownUnit}
)

var (
	unitID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	addr   = regexp.MustCompile(`^[A-Za-z0-9.:\[\]_-]{0,255}$`)
)

// ValidAddr reports whether s is a valid advertised address: a host (name,
// IPv4, or IPv6 in brackets) and port, at most MaxAddr bytes, no other
// characters. Empty is valid: the unit serves nothing it advertises.
func ValidAddr(s string) bool { return addr.MatchString(s) }

// ValidUnitID reports whether s is a valid unit id: letters, digits, '-' and
// '_', at most MaxUnitID bytes. Unit ids are unique within a cluster.
func ValidUnitID(s string) bool { return unitID.MatchString(s) }

const labelJoin = "cohort/v1/join-signature\x00"

// JoinDigest is what a unit's task key signs for a join whose encoded
// JoinBody is body.
func JoinDigest(body []byte) [HashSize]byte {
	h := sha256.New()
	h.Write([]byte(labelJoin))
	h.Write(body)
	var d [HashSize]byte
	h.Sum(d[:0])
	return d
}

// JoinRequest asks the manager to admit a unit to a cluster. Body is an
// encoded JoinBody, signed by the private key of the task certificate it
// carries.
type JoinRequest struct {
	V         uint16 `msgpack:"v"`
	Body      []byte `msgpack:"body"`
	Signature []byte `msgpack:"signature"`
}

// Validate implements Validator.
func (m *JoinRequest) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(between("body", m.Body, 1, MaxJoinBody), between("signature", m.Signature, 8, MaxSignature))
}

// JoinBody says who joins where: the unit, its cluster and task, the
// measurement of its code, its HTTPS address, the time and a nonce, and its
// certificate chain (leaf first, without the root).
type JoinBody struct {
	V           uint16   `msgpack:"v"`
	Cluster     string   `msgpack:"cluster"`
	Unit        string   `msgpack:"unit"`
	Task        string   `msgpack:"task"`
	Measurement []byte   `msgpack:"measurement"`
	Addr        string   `msgpack:"addr"`
	Time        int64    `msgpack:"time"` // Unix nanoseconds, UTC
	Nonce       []byte   `msgpack:"nonce"`
	Chain       [][]byte `msgpack:"chain"`
}

// Validate implements Validator.
func (m *JoinBody) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidTaskName(m.Cluster) || !ValidTaskName(m.Task) {
		return fmt.Errorf("%w: cluster or task name", ErrField)
	}
	if !ValidUnitID(m.Unit) {
		return fmt.Errorf("%w: unit id", ErrField)
	}
	if len(m.Chain) < 1 || len(m.Chain) > MaxChain-1 {
		return fmt.Errorf("%w: chain has %d certificates, want 1 to %d", ErrField, len(m.Chain), MaxChain-1)
	}
	for i, c := range m.Chain {
		if err := between(fmt.Sprintf("chain[%d]", i), c, 1, MaxCertificate); err != nil {
			return err
		}
	}
	if !ValidAddr(m.Addr) {
		return fmt.Errorf("%w: addr: a host and port, at most %d bytes of letters, digits and .:[]_-", ErrField, MaxAddr)
	}
	return firstError(
		measurement("measurement", m.Measurement),
		exactly("nonce", m.Nonce, NonceSize),
	)
}

// JoinReply admits the unit: the token its heartbeats and leave carry, and
// the heartbeat interval the manager expects.
type JoinReply struct {
	V        uint16 `msgpack:"v"`
	Token    []byte `msgpack:"token"`
	Interval int64  `msgpack:"interval"` // nanoseconds
	Misses   uint16 `msgpack:"misses"`   // heartbeats missed in a row before eviction
}

// Validate implements Validator.
func (m *JoinReply) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if m.Interval <= 0 || m.Misses == 0 {
		return fmt.Errorf("%w: interval and misses must be positive", ErrField)
	}
	return exactly("token", m.Token, TokenSize)
}

// Heartbeat says a member is alive. Leave says it is going. Both carry the
// token from the join. The token is no secret from whoever reads NATS: it
// keeps blind parties from speaking for a unit, nothing more. Liveness is
// advisory, as the manager is untrusted anyway.
type Heartbeat struct {
	V       uint16 `msgpack:"v"`
	Cluster string `msgpack:"cluster"`
	Unit    string `msgpack:"unit"`
	Token   []byte `msgpack:"token"`
}

// Validate implements Validator.
func (m *Heartbeat) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidTaskName(m.Cluster) || !ValidUnitID(m.Unit) {
		return fmt.Errorf("%w: cluster or unit id", ErrField)
	}
	return exactly("token", m.Token, TokenSize)
}

// HeartbeatReply says whether the manager knows the member. A unit that hears
// Known false joins again.
type HeartbeatReply struct {
	V     uint16 `msgpack:"v"`
	Known bool   `msgpack:"known"`
}

// Validate implements Validator.
func (m *HeartbeatReply) Validate() error { return checkVersion(m.V) }
