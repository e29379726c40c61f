package issuerclient

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/hpke"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

// ApplyPolicy submits a policy document with administrators' signatures to
// the issuer and returns what it applied, or its refusal
// (*messages.Error: messages.ErrPolicySignatures, ErrPolicyVersion, …).
func ApplyPolicy(ctx context.Context, nc *nats.Conn, document []byte, sigs []messages.PolicySignature, timeout time.Duration) (*messages.PolicyApplied, error) {
	req, err := messages.Marshal(&messages.PolicyApply{V: messages.Version, Document: document, Signatures: sigs})
	if err != nil {
		return nil, err
	}
	data, err := service.Request(ctx, nc, messages.SubjectPolicyApply, req, timeout)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: apply policy: %w", err)
	}
	var m messages.PolicyApplied
	if err := messages.Decode(data, messages.MaxPolicyApplied, &m); err != nil {
		return nil, fmt.Errorf("issuerclient: apply policy: %w: %w", ErrUnauthentic, err)
	}
	return &m, nil
}

// ShowPolicy fetches the policy in force, its signatures and its history.
// It checks that the document is the one the reply names; that it is the
// one an issuer attests to is VerifyIssuer's (its Trust.PolicyHash).
func ShowPolicy(ctx context.Context, nc *nats.Conn, timeout time.Duration) (*messages.PolicyShowReply, error) {
	req, err := messages.Marshal(&messages.PolicyShowRequest{V: messages.Version})
	if err != nil {
		return nil, err
	}
	data, err := service.Request(ctx, nc, messages.SubjectPolicyShow, req, timeout)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: show policy: %w", err)
	}
	var m messages.PolicyShowReply
	if err := messages.Decode(data, messages.MaxPolicyShowReply, &m); err != nil {
		return nil, fmt.Errorf("issuerclient: show policy: %w: %w", ErrUnauthentic, err)
	}
	if h := sha256.Sum256(m.Document); !bytes.Equal(h[:], m.Hash) {
		return nil, fmt.Errorf("issuerclient: show policy: %w: the document's hash is not the one named", ErrUnauthentic)
	}
	return &m, nil
}

// RecoverConfig configures one recovery holder's hand-over.
type RecoverConfig struct {
	Conn     *nats.Conn       // required
	Verifier enclave.Verifier // required: checks the waiting issuer's evidence
	// IssuerMeasurement is the build the holder restores the key into,
	// 32 bytes: the holder's decision, since the state's policy cannot be
	// read before the key is back.
	IssuerMeasurement []byte
	// Root is the root of the state to restore, the one the holder
	// trusts (its root.pem): a share is handed over only for a recovery
	// record that root's key signed, so that nobody can have the holders
	// restore a state key of their own making. Required.
	Root           *x509.Certificate
	AllowSimulated bool
	Key            *adminkey.Key // required: the holder's key
	Timeout        time.Duration // per request; default 5s
	Rand           io.Reader     // nonces; default crypto/rand
}

// ErrNoWaitingIssuer: no issuer waits for recovery.
var ErrNoWaitingIssuer = errors.New("issuerclient: no issuer waits for recovery (start one with --recover)")

// Recover hands one holder's share of the state key to an issuer waiting
// for recovery, after checking that issuer's evidence: the share opens
// only with the holder's key and travels sealed to a key the evidence
// binds. It returns how far recovery has come.
func Recover(ctx context.Context, cfg RecoverConfig) (*messages.RecoverAck, error) {
	if cfg.Conn == nil || cfg.Verifier == nil || cfg.Key == nil || cfg.Root == nil {
		return nil, errors.New("issuerclient: RecoverConfig.Conn, Verifier, Root and Key are required")
	}
	if !enclave.ValidMeasurement(cfg.IssuerMeasurement) {
		return nil, fmt.Errorf("issuerclient: the issuer measurement to recover into is %d bytes, want 32 or 48", len(cfg.IssuerMeasurement))
	}
	c := Config{Conn: cfg.Conn, Verifier: cfg.Verifier, IssuerMeasurement: cfg.IssuerMeasurement, Timeout: cfg.Timeout, Rand: cfg.Rand}
	if err := c.fill(); err != nil {
		return nil, err
	}
	nonce := make([]byte, messages.NonceSize)
	if _, err := io.ReadFull(c.Rand, nonce); err != nil {
		return nil, err
	}
	hello, err := messages.Marshal(&messages.RecoverHello{V: messages.Version, Nonce: nonce, RecoveryKey: cfg.Key.RecoveryPublic()})
	if err != nil {
		return nil, err
	}
	data, err := service.Request(ctx, cfg.Conn, messages.SubjectRecoverHello, hello, c.Timeout)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, ErrNoWaitingIssuer
	}
	if err != nil {
		return nil, fmt.Errorf("issuerclient: recover: %w", err)
	}
	var rep messages.RecoverReply
	if err := messages.Decode(data, messages.MaxRecoverReply, &rep); err != nil {
		return nil, fmt.Errorf("issuerclient: recover: %w: %w", ErrUnauthentic, err)
	}
	claims, err := cfg.Verifier.Verify(ctx, rep.Evidence)
	switch {
	case err != nil:
		return nil, fmt.Errorf("issuerclient: recover: %w: %w", ErrUnauthentic, err)
	case claims.ReportData != messages.RecoverOfferBinding(rep.Body):
		return nil, fmt.Errorf("issuerclient: recover: %w: the evidence does not bind the offer", ErrUnauthentic)
	case claims.Simulated && !cfg.AllowSimulated:
		return nil, fmt.Errorf("issuerclient: recover: %w", ErrSimulated)
	case claims.Debug:
		return nil, fmt.Errorf("issuerclient: recover: %w", ErrDebug)
	case !bytes.Equal(claims.UniqueID, cfg.IssuerMeasurement):
		return nil, fmt.Errorf("issuerclient: recover: %w: the waiting issuer measures %x, expected %x", ErrMeasurement, claims.UniqueID, cfg.IssuerMeasurement)
	}
	var offer messages.RecoverOffer
	if err := messages.Decode(rep.Body, messages.MaxRecoverOffer, &offer); err != nil {
		return nil, fmt.Errorf("issuerclient: recover: %w: %w", ErrUnauthentic, err)
	}
	if !bytes.Equal(offer.Nonce, nonce) {
		return nil, fmt.Errorf("issuerclient: recover: %w: the offer answers another request", ErrUnauthentic)
	}
	root := cfg.Root
	if !bytes.Equal(offer.Root, cfg.Root.Raw) {
		// A later root the one given vouches for: the state's root was
		// rotated since the holder took its root.pem.
		later, err := x509.ParseCertificate(offer.Root)
		if err == nil {
			err = VerifyVouchers(cfg.Root, later, offer.Vouchers)
		}
		if err != nil {
			return nil, fmt.Errorf("issuerclient: recover: %w: the waiting issuer's state has another root than the one given, and %w", ErrUnauthentic, err)
		}
		root = later
	}
	rootKey, ok := root.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("issuerclient: the root's key is not ECDSA")
	}
	d := messages.ShareDigest(offer.KeyID, offer.Policy, offer.Need, offer.Index, cfg.Key.RecoveryPublic(), offer.Share, offer.Commit)
	if !ecdsa.VerifyASN1(rootKey, d[:], offer.Signature) {
		return nil, fmt.Errorf("issuerclient: recover: %w: the root did not sign this share (the state's recovery record was not made by its issuers)", ErrUnauthentic)
	}
	share, err := cfg.Key.OpenShare(offer.KeyID, offer.Index, offer.Share)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: recover: %w", err)
	}
	defer clear(share)
	if !bytes.Equal(messages.ShareCommitment(offer.KeyID, offer.Index, share), offer.Commit) {
		return nil, fmt.Errorf("issuerclient: recover: %w: the share does not match its commitment", ErrUnauthentic)
	}
	kem, err := hpke.NewKEM(offer.KEM)
	if err != nil || offer.KEM != messages.KEMMLKEM768X25519 {
		return nil, fmt.Errorf("issuerclient: recover: the offer's KEM 0x%04x is not accepted", offer.KEM)
	}
	pub, err := kem.NewPublicKey(offer.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: recover: %w: the offer's key", ErrUnauthentic)
	}
	oh := sha256.Sum256(rep.Body)
	sealed, err := hpke.Seal(pub, hpke.HKDFSHA256(), hpke.AES256GCM(), messages.RecoverShareInfo(oh[:]), share)
	if err != nil {
		return nil, err
	}
	req, err := messages.Marshal(&messages.RecoverShare{V: messages.Version, OfferHash: oh[:], Sealed: sealed})
	if err != nil {
		return nil, err
	}
	data, err = service.Request(ctx, cfg.Conn, messages.RecoverSubject(offer.Instance), req, c.Timeout)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: recover: %w", err)
	}
	var ack messages.RecoverAck
	if err := messages.Decode(data, messages.MaxRecoverAck, &ack); err != nil {
		return nil, fmt.Errorf("issuerclient: recover: %w: %w", ErrUnauthentic, err)
	}
	return &ack, nil
}
