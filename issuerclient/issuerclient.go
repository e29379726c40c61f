// Package issuerclient is the client side of the issuer's protocol: checking
// the issuer's evidence against a pinned measurement (VerifyIssuer), and
// obtaining a task's certificate pair (Certifier). Units, `cohort trust` and
// the benchmark use it.
//
// Guarantees:
//   - A Trust is returned only for an issuer whose evidence verifies, whose
//     measurement equals the pinned one, and whose evidence binds the root,
//     the policy hash and this call's fresh nonce. A simulated issuer is
//     refused unless the caller allows it.
//   - A Pair is returned only when the report is signed by that root, answers
//     this very request, opens with this request's ephemeral key, and holds a
//     chain that verifies to the root with a leaf that matches the key and
//     names the task asked for.
//   - The ephemeral private key never leaves the process, and the task key is
//     never logged or returned in an error.
package issuerclient

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

// Errors callers branch on. Refusals from the issuer come back as
// *messages.Error and match the messages sentinels.
var (
	// ErrMeasurement: the issuer's measurement is not the pinned one.
	ErrMeasurement = errors.New("issuer measurement does not match the pinned measurement")
	// ErrSimulated: the issuer's evidence is simulated and that was not allowed.
	ErrSimulated = errors.New("issuer evidence is simulated and simulated issuers are not allowed")
	// ErrDebug: the issuer runs in a debug enclave, whose memory its host can read.
	ErrDebug = errors.New("issuer runs in a debug enclave")
	// ErrPolicy: the issuer serves another policy than the pinned one.
	ErrPolicy = errors.New("issuer policy does not match the pinned policy hash")
	// ErrUnauthentic: evidence or a report does not check out.
	ErrUnauthentic = errors.New("issuer reply is not authentic")
)

const defaultTimeout = 5 * time.Second

// Config says how to reach and recognise the issuer.
type Config struct {
	Conn              *nats.Conn       // required
	Verifier          enclave.Verifier // required: checks the issuer's evidence
	IssuerMeasurement []byte           // required: the pinned measurement, 32 bytes
	AllowSimulated    bool             // accept a simulated issuer (development only)
	AllowDebug        bool             // accept an issuer in a debug enclave (development only)
	PolicyHash        []byte           // optional: the SHA-256 of the policy the issuer must serve
	// Root, if set, is the root this caller already trusts. An issuer whose
	// evidence binds exactly this root, or a root this one vouches for (a
	// rotation: VerifyVouchers), is accepted whatever its measurement, so
	// that a unit renews across an issuer upgrade that the policy admitted
	// and follows a rotation: only an issuer holding the root's key (or a
	// key made by one that held it) can sign the reports it then accepts,
	// and the root key passes only between issuers the policy lists.
	// Without IssuerMeasurement, only such an issuer is accepted.
	Root    *x509.Certificate
	Timeout time.Duration // per request; default 5s
	Rand    io.Reader     // nonces; default crypto/rand
}

func (c *Config) fill() error {
	switch {
	case c.Conn == nil:
		return errors.New("issuerclient: Config.Conn is required")
	case c.Verifier == nil:
		return errors.New("issuerclient: Config.Verifier is required")
	case !enclave.ValidMeasurement(c.IssuerMeasurement) && (c.Root == nil || len(c.IssuerMeasurement) != 0):
		return fmt.Errorf("issuerclient: the pinned issuer measurement is %d bytes, want 32 or 48", len(c.IssuerMeasurement))
	case c.PolicyHash != nil && len(c.PolicyHash) != messages.HashSize:
		return fmt.Errorf("issuerclient: the pinned policy hash is %d bytes, want %d", len(c.PolicyHash), messages.HashSize)
	}
	if c.Timeout <= 0 {
		c.Timeout = defaultTimeout
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	return nil
}

// Trust is a verified issuer: its root and the policy in force.
type Trust struct {
	Root          *x509.Certificate
	PolicyHash    []byte
	PolicyVersion uint64
	Measurement   []byte // the issuer's, from its evidence
	Backend       string // from the verified evidence, not from the reply
	Simulated     bool
	// Previous is the root the caller held (Config.Root) when the issuer
	// serves a later one it vouches for: the root was rotated. Nil
	// otherwise.
	Previous *x509.Certificate
	roots    *x509.CertPool
}

// VerifyIssuer fetches the issuer's evidence with a fresh nonce and checks it.
func VerifyIssuer(ctx context.Context, cfg Config) (*Trust, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	nonce := make([]byte, messages.NonceSize)
	if _, err := io.ReadFull(cfg.Rand, nonce); err != nil {
		return nil, fmt.Errorf("issuerclient: draw nonce: %w", err)
	}
	data, err := messages.Marshal(&messages.EvidenceRequest{V: messages.Version, Nonce: nonce})
	if err != nil {
		return nil, err
	}
	reply, err := request(ctx, cfg.Conn, messages.SubjectEvidence, data, cfg.Timeout)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: issuer evidence: %w", err)
	}
	var m messages.EvidenceReply
	if err := messages.Decode(reply, messages.MaxEvidenceReply, &m); err != nil {
		return nil, fmt.Errorf("issuerclient: issuer evidence: %w: %w", ErrUnauthentic, err)
	}
	claims, err := cfg.Verifier.Verify(ctx, m.Evidence)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: issuer evidence: %w: %w", ErrUnauthentic, err)
	}
	if claims.Simulated && !cfg.AllowSimulated {
		return nil, fmt.Errorf("issuerclient: %w", ErrSimulated)
	}
	if claims.Debug && !cfg.AllowDebug {
		return nil, fmt.Errorf("issuerclient: %w", ErrDebug)
	}
	if claims.ReportData != messages.EvidenceBinding(m.Root, m.PolicyHash, m.PolicyVersion, nonce) {
		return nil, fmt.Errorf("issuerclient: %w: the evidence does not bind the root, the policy and this nonce", ErrUnauthentic)
	}
	root, err := x509.ParseCertificate(m.Root)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: %w: root certificate: %w", ErrUnauthentic, err)
	}
	sameRoot := cfg.Root != nil && bytes.Equal(cfg.Root.Raw, m.Root)
	var previous *x509.Certificate
	if cfg.Root != nil && !sameRoot {
		// Renewal keeps the root, or follows a rotation it vouches for: an
		// issuer with another root (even one of the pinned build, over
		// another state) is not the one this caller trusts, and neither
		// its pairs nor its signed refusals count.
		if err := VerifyVouchers(cfg.Root, root, m.Vouchers); err != nil {
			return nil, fmt.Errorf("issuerclient: %w: the issuer serves another root than the one held (sha256 %x), and %w", ErrUnauthentic, fingerprint(cfg.Root), err)
		}
		previous, sameRoot = cfg.Root, true
	}
	if !bytes.Equal(claims.UniqueID, cfg.IssuerMeasurement) && !sameRoot {
		return nil, fmt.Errorf("issuerclient: %w: the issuer measures %x, pinned %x. If the issuer was upgraded, the signed policy in force "+
			"(version %d, sha256 %x) lists its builds under issuers: check it with `cohort policy show`, then pin the new measurement; "+
			"a root.pem you hold keeps working", ErrMeasurement, claims.UniqueID, cfg.IssuerMeasurement, m.PolicyVersion, m.PolicyHash)
	}
	if cfg.PolicyHash != nil && !bytes.Equal(cfg.PolicyHash, m.PolicyHash) {
		return nil, fmt.Errorf("issuerclient: %w: the issuer serves policy %x, pinned %x", ErrPolicy, m.PolicyHash, cfg.PolicyHash)
	}
	if !root.IsCA {
		return nil, fmt.Errorf("issuerclient: %w: the root is not a CA certificate", ErrUnauthentic)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &Trust{Root: root, PolicyHash: m.PolicyHash, PolicyVersion: m.PolicyVersion, Measurement: claims.UniqueID,
		Backend: claims.Backend, Simulated: claims.Simulated, Previous: previous, roots: pool}, nil
}

// ErrNotVouched: a root is not vouched for by the one held.
var ErrNotVouched = errors.New("no chain of vouchers leads to it from the root held")

// VerifyVouchers checks that held vouches for current through vouchers, the
// issuer's record of its rotations, oldest first: a voucher is a CA
// certificate of the next root's subject and key, signed by the key of the
// root before it. Starting from held, each voucher signed by the key in
// hand hands on its key, until it is current's. A chain that does not pass
// through held's key does not count, whatever else it proves.
func VerifyVouchers(held, current *x509.Certificate, vouchers [][]byte) error {
	if bytes.Equal(held.Raw, current.Raw) {
		return nil
	}
	if len(vouchers) > messages.MaxVouchers {
		return fmt.Errorf("%w: %d vouchers, at most %d", ErrNotVouched, len(vouchers), messages.MaxVouchers)
	}
	signer := held
	for k, der := range vouchers {
		v, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("%w: voucher %d: %w", ErrNotVouched, k, err)
		}
		if signer == held && !bytes.Equal(v.RawIssuer, held.RawSubject) {
			continue // a voucher from before the held root
		}
		if !v.IsCA || !bytes.Equal(v.RawIssuer, signer.RawSubject) {
			return fmt.Errorf("%w: voucher %d (%q) is not a CA certificate issued by %q", ErrNotVouched, k, v.Subject.CommonName, signer.Subject.CommonName)
		}
		if err := v.CheckSignatureFrom(signer); err != nil {
			return fmt.Errorf("%w: voucher %d (%q) is not signed by the key of %q: %w", ErrNotVouched, k, v.Subject.CommonName, signer.Subject.CommonName, err)
		}
		signer = v
	}
	if signer == held {
		return fmt.Errorf("%w: none of the %d vouchers is signed by it", ErrNotVouched, len(vouchers))
	}
	pub, ok := signer.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(current.PublicKey) || !bytes.Equal(signer.RawSubject, current.RawSubject) {
		return fmt.Errorf("%w: the last voucher certifies %q, not the root served (%q)", ErrNotVouched, signer.Subject.CommonName, current.Subject.CommonName)
	}
	return nil
}

// fingerprint is a certificate's SHA-256.
func fingerprint(c *x509.Certificate) []byte {
	h := sha256.Sum256(c.Raw)
	return h[:]
}

// retryable are the issuer's refusals that pass by themselves: its
// replicas switching roots, or one that could not confirm its state.
var retryable = []error{messages.ErrRotating, messages.ErrUnconfirmed}

// retryBackoff spaces the tries of a request refused as retryable: an
// unconfirmed replica is usually confirmed within a leader read, a
// rotation lasts a lease.
var retryBackoff = backoff.Policy{Min: 100 * time.Millisecond, Max: 2 * time.Second}

// request sends a request to the issuer as service.Request does, and sends
// it again while the issuer refuses it as retryable, until ctx is done or
// timeout has passed.
func request(ctx context.Context, nc *nats.Conn, subject string, data []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for failures := 0; ; failures++ {
		reply, err := service.Request(ctx, nc, subject, data, timeout)
		if err == nil || !slices.ContainsFunc(retryable, func(r error) bool { return errors.Is(err, r) }) {
			return reply, err
		}
		if !backoff.Wait(ctx, retryBackoff.Delay(failures)) {
			return nil, err
		}
	}
}

// LoadRoot reads a root certificate from a PEM file, as `cohort trust`
// writes it (root.pem).
func LoadRoot(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

// verifyReportSignature checks the root's signature over a report body.
func (t *Trust) verifyReportSignature(body, sig []byte) bool {
	pub, ok := t.Root.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return false
	}
	d := messages.ReportDigest(body)
	return ecdsa.VerifyASN1(pub, d[:], sig)
}

// Follower tells the root the issuer serves now, as its Config recognises
// the issuer: the held root, or a later one it vouches for. The manager
// follows rotations with it (manager.RootFollower).
type Follower struct{ Config Config }

// Follow verifies the issuer holding held, and returns the root it serves.
func (f Follower) Follow(ctx context.Context, held *x509.Certificate) (*x509.Certificate, error) {
	cfg := f.Config
	cfg.Root = held
	trust, err := VerifyIssuer(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return trust.Root, nil
}
