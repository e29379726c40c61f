package messages

import (
	"fmt"
	"regexp"

	"github.com/cohort-dev/cohort/enclave"
)

// Subjects of the issuer's service. The issuer serves them as a service named
// IssuerService (which nats micro's discovery sees), in the queue group
// IssuerQueue, so several issuer processes share the load.
const (
	IssuerService   = "cohort-issuer"
	IssuerQueue     = "cohort-issuer"
	SubjectEvidence = "cohort.v1.issuer.evidence"
	SubjectCertify  = "cohort.v1.issuer.certify"
)

// Sizes. Every variable-length field has a cap, and every subject a payload
// cap, so that a decoder never holds more than these.
const (
	NonceSize      = 32
	HashSize       = 32 // SHA-256
	MaxEvidence    = 16 << 10
	MaxCertificate = 8 << 10
	MaxChain       = 4
	MaxPublicKey   = 1216 // ML-KEM-768 + X25519 (X-Wing) is the largest accepted
	MaxSealed      = 8 << 10
	MaxSignature   = 80 // ASN.1 ECDSA P-256
	MaxBackend     = 32
	MaxTaskName    = 63
	MaxGroups      = 8   // groups one certify request may name
	MaxGroupKey    = 256 // PKCS #8; a P-256 key is 138 bytes

	MaxEvidenceRequest = 128
	MaxEvidenceReply   = MaxEvidence + (1+MaxVouchers)*(MaxCertificate+8) + 256
	MaxCertifyBody     = 2 << 10
	MaxCertifyRequest  = MaxCertifyBody + MaxEvidence + 64
	MaxReportBody      = MaxChain*(MaxCertificate+8) + MaxGroups*(MaxCertificate+MaxTaskName+32) + MaxSealed + 256
	MaxCertifyReply    = MaxReportBody + MaxSignature + 64
	MaxSecrets         = 4 << 10
)

// HPKE KEM identifiers (RFC 9180 and draft-ietf-hpke-pq) a certify request may
// name for sealing its secrets.
const (
	KEMX25519         uint16 = 0x0020 // DHKEM(X25519, HKDF-SHA256)
	KEMMLKEM768X25519 uint16 = 0x647a // ML-KEM-768 + X25519 (X-Wing), post-quantum hybrid
)

var taskName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidTaskName reports whether s is a valid task name: lower-case letters,
// digits and inner hyphens, at most MaxTaskName bytes, as in a DNS label.
func ValidTaskName(s string) bool { return taskName.MatchString(s) }

// EvidenceRequest asks the issuer to attest to its root certificate and
// policy. The nonce is the caller's, fresh for every request.
type EvidenceRequest struct {
	V     uint16 `msgpack:"v"`
	Nonce []byte `msgpack:"nonce"`
}

// Validate implements Validator.
func (m *EvidenceRequest) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return exactly("nonce", m.Nonce, NonceSize)
}

// EvidenceReply is the issuer's answer: evidence whose report data binds the
// root certificate, the policy's hash and version and the caller's nonce (see
// EvidenceBinding).
type EvidenceReply struct {
	V          uint16 `msgpack:"v"`
	Evidence   []byte `msgpack:"evidence"`
	Root       []byte `msgpack:"root"`        // DER
	PolicyHash []byte `msgpack:"policy_hash"` // SHA-256 of the policy in force
	// PolicyVersion is the version of the policy in force.
	PolicyVersion uint64 `msgpack:"policy_version"`
	Backend       string `msgpack:"backend"` // the issuer's enclave backend, "sim" or "sgx"
	// Vouchers, after a rotation, certify the root's key by the roots
	// before it, oldest first: the first is signed by the state's first
	// root and certifies the second root's key, and so on to Root's. Each
	// is a DER certificate whose subject and key are the next root's. They
	// are not bound by the evidence: they verify on their own (version 7).
	Vouchers [][]byte `msgpack:"vouchers,omitempty"`
}

// MaxVouchers bounds the rotations a root's vouchers record.
const MaxVouchers = 16

// Validate implements Validator.
func (m *EvidenceReply) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(
		between("evidence", m.Evidence, 1, MaxEvidence),
		between("root", m.Root, 1, MaxCertificate),
		exactly("policy_hash", m.PolicyHash, HashSize),
		stringBetween("backend", m.Backend, 1, MaxBackend),
		vouchers(m.Vouchers),
	)
}

func vouchers(v [][]byte) error {
	if len(v) > MaxVouchers {
		return fmt.Errorf("vouchers: %d, at most %d", len(v), MaxVouchers)
	}
	for k, c := range v {
		if err := between(fmt.Sprintf("vouchers[%d]", k), c, 1, MaxCertificate); err != nil {
			return err
		}
	}
	return nil
}

// CertifyRequest asks for the task's certificate pair. Body is an encoded
// CertifyBody; the evidence's report data binds a hash of exactly those bytes,
// so that what the issuer reads is what the enclave attested to.
type CertifyRequest struct {
	V        uint16 `msgpack:"v"`
	Body     []byte `msgpack:"body"`
	Evidence []byte `msgpack:"evidence"`
}

// Validate implements Validator.
func (m *CertifyRequest) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(
		between("body", m.Body, 1, MaxCertifyBody),
		between("evidence", m.Evidence, 1, MaxEvidence),
	)
}

// CertifyBody is what a unit asks for and what its evidence binds: the task,
// the cluster whose key it needs (none if empty), the groups whose pairs it
// needs, the ephemeral HPKE public key the secrets are to be sealed to, a
// fresh nonce and the unit's clock.
type CertifyBody struct {
	V         uint16   `msgpack:"v"`
	Task      string   `msgpack:"task"`
	Cluster   string   `msgpack:"cluster"`
	Groups    []string `msgpack:"groups"` // at most MaxGroups, each once
	KEM       uint16   `msgpack:"kem"`
	PublicKey []byte   `msgpack:"public_key"`
	Nonce     []byte   `msgpack:"nonce"`
	Time      int64    `msgpack:"time"` // Unix nanoseconds, UTC
}

// Validate implements Validator.
func (m *CertifyBody) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidTaskName(m.Task) {
		return fmt.Errorf("%w: task name %q", ErrField, truncate(m.Task, MaxTaskName+1))
	}
	if m.Cluster != "" && !ValidTaskName(m.Cluster) {
		return fmt.Errorf("%w: cluster id %q", ErrField, truncate(m.Cluster, MaxTaskName+1))
	}
	return firstError(
		checkGroupIDs(len(m.Groups), func(i int) string { return m.Groups[i] }),
		between("public_key", m.PublicKey, 1, MaxPublicKey),
		exactly("nonce", m.Nonce, NonceSize),
	)
}

// CertifyReply carries the certificate report: Body is an encoded ReportBody,
// and Signature the issuer's root key's signature over it (see
// ReportDigest), so that a unit knows the report came from the
// issuer whose evidence it checked.
type CertifyReply struct {
	V         uint16 `msgpack:"v"`
	Body      []byte `msgpack:"body"`
	Signature []byte `msgpack:"signature"`
}

// Validate implements Validator.
func (m *CertifyReply) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return firstError(
		between("body", m.Body, 1, MaxReportBody),
		between("signature", m.Signature, 8, MaxSignature),
	)
}

// ReportBody is the certificate report: the chain, leaf first and root last,
// the certificate of each group the request named, in its order, and the
// secrets HPKE-sealed to the request's public key.
type ReportBody struct {
	V           uint16      `msgpack:"v"`
	RequestHash []byte      `msgpack:"request_hash"` // SHA-256 of CertifyRequest.Body
	Task        string      `msgpack:"task"`
	Chain       [][]byte    `msgpack:"chain"`
	Groups      []GroupCert `msgpack:"groups"`
	Sealed      []byte      `msgpack:"sealed"` // HPKE encapsulated key || ciphertext of Secrets
}

// GroupCert is a group's certificate in a report. It is signed by the root
// that ends the report's chain.
type GroupCert struct {
	ID   string `msgpack:"id"`
	Cert []byte `msgpack:"cert"` // DER
}

// Validate implements Validator.
func (m *ReportBody) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if !ValidTaskName(m.Task) {
		return fmt.Errorf("%w: task name", ErrField)
	}
	if len(m.Chain) < 2 || len(m.Chain) > MaxChain {
		return fmt.Errorf("%w: chain has %d certificates, want 2 to %d", ErrField, len(m.Chain), MaxChain)
	}
	for i, c := range m.Chain {
		if err := between(fmt.Sprintf("chain[%d]", i), c, 1, MaxCertificate); err != nil {
			return err
		}
	}
	for i, g := range m.Groups {
		if err := between(fmt.Sprintf("groups[%d].cert", i), g.Cert, 1, MaxCertificate); err != nil {
			return err
		}
	}
	return firstError(
		checkGroupIDs(len(m.Groups), func(i int) string { return m.Groups[i].ID }),
		exactly("request_hash", m.RequestHash, HashSize),
		between("sealed", m.Sealed, 1, MaxSealed),
	)
}

// ClusterKeySize is the size of a cluster key.
const ClusterKeySize = 32

// Secrets is the plaintext sealed in a ReportBody. It never travels in the
// clear. The cluster fields are set when the request named a cluster, and
// Groups holds the key of each group it named, in its order.
type Secrets struct {
	V            uint16     `msgpack:"v"`
	TaskKey      []byte     `msgpack:"task_key"` // PKCS #8
	Cluster      string     `msgpack:"cluster"`
	ClusterEpoch uint32     `msgpack:"cluster_epoch"`
	ClusterKey   []byte     `msgpack:"cluster_key"`
	Groups       []GroupKey `msgpack:"groups"`
}

// GroupKey is a group's private key in the sealed secrets.
type GroupKey struct {
	ID  string `msgpack:"id"`
	Key []byte `msgpack:"key"` // PKCS #8
}

// Validate implements Validator.
func (m *Secrets) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if m.Cluster == "" {
		if len(m.ClusterKey) != 0 || m.ClusterEpoch != 0 {
			return fmt.Errorf("%w: a cluster key without a cluster", ErrField)
		}
	} else {
		if !ValidTaskName(m.Cluster) || m.ClusterEpoch == 0 {
			return fmt.Errorf("%w: cluster id or epoch", ErrField)
		}
		if err := exactly("cluster_key", m.ClusterKey, ClusterKeySize); err != nil {
			return err
		}
	}
	for i, g := range m.Groups {
		if err := between(fmt.Sprintf("groups[%d].key", i), g.Key, 1, MaxGroupKey); err != nil {
			return err
		}
	}
	return firstError(
		checkGroupIDs(len(m.Groups), func(i int) string { return m.Groups[i].ID }),
		between("task_key", m.TaskKey, 1, 1<<10),
	)
}

// checkGroupIDs checks a list of n group ids: at most MaxGroups, each valid
// and named once.
func checkGroupIDs(n int, id func(int) string) error {
	if n > MaxGroups {
		return fmt.Errorf("%w: %d groups, at most %d", ErrField, n, MaxGroups)
	}
	for i := range n {
		if !ValidTaskName(id(i)) {
			return fmt.Errorf("%w: group id %q", ErrField, truncate(id(i), MaxTaskName+1))
		}
		for k := range i {
			if id(k) == id(i) {
				return fmt.Errorf("%w: group %q named twice", ErrField, id(i))
			}
		}
	}
	return nil
}

func checkVersion(v uint16) error {
	if v != Version {
		return fmt.Errorf("%w: %d (this build speaks %d)", ErrVersion, v, Version)
	}
	return nil
}

func exactly(name string, b []byte, n int) error {
	if len(b) != n {
		return fmt.Errorf("%w: %s is %d bytes, want %d", ErrField, name, len(b), n)
	}
	return nil
}

// measurement checks a measurement's size: 32 bytes (SGX, simulated) or 48
// (SEV-SNP, TDX).
func measurement(name string, b []byte) error {
	if !enclave.ValidMeasurement(b) {
		return fmt.Errorf("%w: %s is %d bytes, want %d or %d", ErrField, name, len(b), enclave.MeasurementSize, enclave.MeasurementSize384)
	}
	return nil
}

func between(name string, b []byte, lo, hi int) error {
	if len(b) < lo || len(b) > hi {
		return fmt.Errorf("%w: %s is %d bytes, want %d to %d", ErrField, name, len(b), lo, hi)
	}
	return nil
}

func stringBetween(name, s string, lo, hi int) error {
	if len(s) < lo || len(s) > hi {
		return fmt.Errorf("%w: %s is %d bytes, want %d to %d", ErrField, name, len(s), lo, hi)
	}
	return nil
}

func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
