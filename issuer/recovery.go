package issuer

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/hpke"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
	"github.com/cohort-dev/cohort/shamir"
)

// recoveryRecord keeps the state key split among the recovery holders the
// policy names, each share HPKE-sealed to its holder's key. It is not under
// the state key: a fresh issuer must read it without the key. Instead the
// state's root key signs each share (messages.ShareDigest) with a
// commitment to its plaintext: a holder hands a share over only for the
// root it trusts, so a record that whoever holds the issuer's credential
// made (shares of a key of their own) is refused; and the waiting issuer
// takes only shares that match their commitments, so junk handed to it
// cannot spoil the real shares.
type recoveryRecord struct {
	V         uint16          `msgpack:"v"`
	KeyID     []byte          `msgpack:"key_id"`
	Policy    uint64          `msgpack:"policy"` // the policy version it was made under
	Threshold uint8           `msgpack:"threshold"`
	Root      []byte          `msgpack:"root"` // the state's root certificate, DER
	Shares    []recoveryShare `msgpack:"shares"`
	// Vouchers lead from the state's earlier roots to Root (a rotation),
	// so that a holder who trusts an earlier root recovers the state.
	Vouchers [][]byte `msgpack:"vouchers,omitempty"`
}

type recoveryShare struct {
	Name      string `msgpack:"name"`
	Key       []byte `msgpack:"key"` // the holder's X25519 public key
	Index     uint8  `msgpack:"index"`
	Sealed    []byte `msgpack:"sealed"`
	Commit    []byte `msgpack:"commit"`    // messages.ShareCommitment of the plaintext
	Signature []byte `msgpack:"signature"` // the root key's, over messages.ShareDigest
}

const maxRecoveryRecord = 64<<10 + messages.MaxVouchers*messages.MaxCertificate

func decodeRecoveryRecord(b []byte) (*recoveryRecord, error) {
	var r recoveryRecord
	if err := messages.Unmarshal(b, maxRecoveryRecord, &r); err != nil {
		return nil, fmt.Errorf("recovery record: %w", err)
	}
	if r.V != recordVersion || len(r.KeyID) != messages.KeyIDSize || len(r.Shares) > shamir.MaxShares || int(r.Threshold) > len(r.Shares) {
		return nil, errors.New("recovery record: wrong version, key id or threshold")
	}
	if len(r.Root) == 0 || len(r.Root) > messages.MaxCertificate {
		return nil, errors.New("recovery record: root certificate out of bounds")
	}
	if len(r.Vouchers) > messages.MaxVouchers || slices.ContainsFunc(r.Vouchers, func(v []byte) bool { return len(v) == 0 || len(v) > messages.MaxCertificate }) {
		return nil, errors.New("recovery record: vouchers out of bounds")
	}
	for _, s := range r.Shares {
		if s.Index == 0 || len(s.Key) != messages.RecoveryKeySize || len(s.Sealed) == 0 || len(s.Sealed) > 512 ||
			len(s.Commit) != messages.HashSize || len(s.Signature) == 0 || len(s.Signature) > messages.MaxSignature {
			return nil, errors.New("recovery record: a share out of bounds")
		}
	}
	return &r, nil
}

func (r *recoveryRecord) digest(s *recoveryShare) [messages.HashSize]byte {
	return messages.ShareDigest(r.KeyID, r.Policy, r.Threshold, s.Index, s.Key, s.Sealed, s.Commit)
}

// signedBy reports whether every share of the record is signed by root.
func (r *recoveryRecord) signedBy(root *x509.Certificate) bool {
	pub, ok := root.PublicKey.(*ecdsa.PublicKey)
	if !ok || !bytes.Equal(r.Root, root.Raw) {
		return false
	}
	for k := range r.Shares {
		d := r.digest(&r.Shares[k])
		if !ecdsa.VerifyASN1(pub, d[:], r.Shares[k].Signature) {
			return false
		}
	}
	return true
}

// ensureRecovery keeps the recovery record in step with the policy p and
// the state key: made anew, with fresh shares, for each policy version.
func (i *Issuer) ensureRecovery(ctx context.Context, p *Policy, rs *rootState) error {
	root := rs.cred
	r, err := i.store.get(ctx, recoveryKey)
	var over uint64
	switch {
	case errors.Is(err, errNotFound):
		if len(p.Recovery.Keys) == 0 {
			return nil
		}
	case err != nil:
		return err
	default:
		over = r.rev
		if cur, err := decodeRecoveryRecord(r.data); err == nil && !r.gone && bytes.Equal(cur.KeyID, i.store.key.id) &&
			cur.Policy == p.Version && int(cur.Threshold) == p.Recovery.Threshold && len(cur.Shares) == len(p.Recovery.Keys) && cur.signedBy(root.cert) {
			return nil
		}
	}
	rec := &recoveryRecord{V: recordVersion, KeyID: i.store.key.id, Policy: p.Version, Threshold: uint8(p.Recovery.Threshold), Root: root.cert.Raw, Vouchers: rs.vouchers}
	if n := len(p.Recovery.Keys); n > 0 {
		shares, err := shamir.Split(i.cfg.Rand, i.store.key.raw, n, p.Recovery.Threshold)
		if err != nil {
			return err
		}
		for k, s := range shares {
			holder := p.Recovery.Keys[k]
			sealed, err := adminkey.SealShare(holder.raw, i.store.key.id, s.X, s.Y)
			commit := messages.ShareCommitment(i.store.key.id, s.X, s.Y)
			clear(s.Y)
			if err != nil {
				return fmt.Errorf("recovery key %s: %w", holder.Name, err)
			}
			sh := recoveryShare{Name: holder.Name, Key: holder.raw, Index: s.X, Sealed: sealed, Commit: commit}
			d := rec.digest(&sh)
			if sh.Signature, err = ecdsa.SignASN1(i.cfg.Rand, root.key, d[:]); err != nil {
				return err
			}
			rec.Shares = append(rec.Shares, sh)
		}
	}
	b, err := messages.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := i.store.write(ctx, recoveryKey, b, over); err != nil && !errors.Is(err, errExists) {
		return err
	}
	i.log.Info("recovery record made", "policy_version", p.Version, "holders", len(rec.Shares), "threshold", rec.Threshold)
	return nil
}

// waiting is an issuer waiting for recovery shares.
type waiting struct {
	rec   *recoveryRecord
	keyID []byte
	priv  hpke.PrivateKey
	pub   []byte

	mu     sync.Mutex
	offers map[uint8][]string // by share index, the hashes of its latest offers
	shares map[uint8][]byte
	done   chan *stateKey
	closed bool
}

// offersKept is how many outstanding offers a share index keeps: a flood of
// hellos for one holder's key delays that holder, and nobody else.
const offersKept = 4

// awaitRecovery serves the recovery endpoints until holders have handed
// over enough shares to make the state key with id keyID, or ctx is done.
func (i *Issuer) awaitRecovery(ctx context.Context, keyID []byte) (*stateKey, error) {
	r, err := i.store.get(ctx, recoveryKey)
	if errors.Is(err, errNotFound) {
		return nil, fmt.Errorf("%w: the state has no recovery record: its policy names no recovery keys", ErrNoStateKey)
	}
	if err != nil {
		return nil, fmt.Errorf("issuer: %w", err)
	}
	rec, err := decodeRecoveryRecord(r.data)
	if err != nil || r.gone || !bytes.Equal(rec.KeyID, keyID) || rec.Threshold == 0 {
		return nil, fmt.Errorf("%w: the state's recovery record is missing, damaged or for another state key", ErrNoStateKey)
	}
	kem, err := hpke.NewKEM(messages.KEMMLKEM768X25519)
	if err != nil {
		return nil, err
	}
	priv, err := kem.GenerateKey()
	if err != nil {
		return nil, err
	}
	w := &waiting{rec: rec, keyID: keyID, priv: priv, pub: priv.PublicKey().Bytes(), offers: map[uint8][]string{}, shares: map[uint8][]byte{}, done: make(chan *stateKey, 1)}
	svc, err := service.New(service.Config{Conn: i.cfg.Serve, QueueGroup: messages.IssuerQueue + "-recover", Workers: 1, Queue: 64, Logger: i.log})
	if err != nil {
		return nil, err
	}
	defer svc.Stop()
	for _, ep := range []service.Endpoint{
		{Name: "recover-hello", Subject: messages.SubjectRecoverHello, Handle: func(m service.Msg) ([]byte, *messages.Error) { return i.recoverHello(m.Context(), w, m.Data) }},
		{Name: "recover-share", Subject: messages.RecoverSubject(i.cfg.Instance), Handle: func(m service.Msg) ([]byte, *messages.Error) { return i.recoverShare(w, m.Data) }},
	} {
		if err := svc.Add(ep); err != nil {
			return nil, fmt.Errorf("issuer: recovery endpoint: %w", err)
		}
	}
	if err := svc.Flush(); err != nil {
		return nil, fmt.Errorf("issuer: %w", err)
	}
	i.log.Warn("waiting for recovery: each holder runs `cohort recover --key FILE --issuer-measurement "+hex.EncodeToString(i.self)+"`",
		"need", rec.Threshold, "holders", len(rec.Shares), "policy_version", rec.Policy)
	if i.cfg.Waiting != nil {
		i.cfg.Waiting(i.cfg.Instance)
	}
	select {
	case k := <-w.done:
		i.log.Info("state key restored by its recovery holders", "key_id", hex.EncodeToString(keyID))
		i.lifecycle(events.Event{Kind: events.IssuerRecovered, Measurement: hex.EncodeToString(i.self), Simulated: i.cfg.Platform.Simulated()})
		return k, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: stopped while waiting for recovery", ErrNoStateKey)
	}
}

func (i *Issuer) recoverRefused(r *messages.Error) *messages.Error {
	i.log.Warn("recovery share refused", "code", r.Code, "reason", r.Reason)
	i.event(events.Event{Kind: events.RecoveryRefused, Code: string(r.Code), Reason: r.Reason})
	return r
}

// recoverHello answers a holder with an attested offer: where to send its
// share and the key to seal it to.
func (i *Issuer) recoverHello(ctx context.Context, w *waiting, data []byte) ([]byte, *messages.Error) {
	var m messages.RecoverHello
	if err := messages.Decode(data, messages.MaxRecoverHello, &m); err != nil {
		return nil, service.DecodeRefusal("recover hello", err)
	}
	var share *recoveryShare
	for k := range w.rec.Shares {
		if bytes.Equal(w.rec.Shares[k].Key, m.RecoveryKey) {
			share = &w.rec.Shares[k]
		}
	}
	if share == nil {
		return nil, i.recoverRefused(messages.Refusal(messages.CodeRecoveryShare, "recovery key %x is not one the state's recovery record names (policy version %d)", m.RecoveryKey, w.rec.Policy))
	}
	w.mu.Lock()
	have := len(w.shares)
	w.mu.Unlock()
	body, err := messages.Marshal(&messages.RecoverOffer{V: messages.Version, Instance: i.cfg.Instance, KeyID: w.keyID, Nonce: m.Nonce,
		KEM: messages.KEMMLKEM768X25519, PublicKey: w.pub, Index: share.Index, Share: share.Sealed, Need: w.rec.Threshold, Have: uint8(have), Policy: w.rec.Policy,
		Root: w.rec.Root, Commit: share.Commit, Signature: share.Signature, Vouchers: w.rec.Vouchers})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the offer failed")
	}
	ev, err := i.cfg.Platform.Attest(ctx, messages.RecoverOfferBinding(body))
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "the issuer could not produce evidence")
	}
	h := messages.RequestHash(body)
	w.mu.Lock()
	o := append(w.offers[share.Index], string(h[:]))
	if len(o) > offersKept {
		o = o[len(o)-offersKept:]
	}
	w.offers[share.Index] = o
	w.mu.Unlock()
	return service.Encode(&messages.RecoverReply{V: messages.Version, Body: body, Evidence: ev})
}

// recoverShare takes one holder's share; with enough of them it makes the
// state key and checks it against the state's key id.
func (i *Issuer) recoverShare(w *waiting, data []byte) ([]byte, *messages.Error) {
	var m messages.RecoverShare
	if err := messages.Decode(data, messages.MaxRecoverShare, &m); err != nil {
		return nil, service.DecodeRefusal("recover share", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return service.Encode(&messages.RecoverAck{V: messages.Version, Have: w.rec.Threshold, Need: w.rec.Threshold, Done: true})
	}
	var index uint8
	var share *recoveryShare
	for k := range w.rec.Shares {
		if slices.Contains(w.offers[w.rec.Shares[k].Index], string(m.OfferHash)) {
			index, share = w.rec.Shares[k].Index, &w.rec.Shares[k]
		}
	}
	if share == nil {
		return nil, i.recoverRefused(messages.Refusal(messages.CodeRecoveryShare, "the share answers no outstanding offer of this issuer: ask for an offer again"))
	}
	y, err := hpke.Open(w.priv, hpke.HKDFSHA256(), hpke.AES256GCM(), messages.RecoverShareInfo(m.OfferHash), m.Sealed)
	if err != nil || len(y) != messages.StateKeySize {
		return nil, i.recoverRefused(messages.Refusal(messages.CodeRecoveryShare, "the share does not open with this offer's key"))
	}
	if !hmac.Equal(messages.ShareCommitment(w.keyID, index, y), share.Commit) {
		clear(y)
		return nil, i.recoverRefused(messages.Refusal(messages.CodeRecoveryShare, "share %d does not match the commitment the state's recovery record holds for it", index))
	}
	w.offers[index] = slices.DeleteFunc(w.offers[index], func(h string) bool { return h == string(m.OfferHash) })
	again := ""
	if old, ok := w.shares[index]; ok {
		clear(old)
		again = " again (it counts once)"
	}
	w.shares[index] = y
	need := int(w.rec.Threshold)
	i.lifecycle(events.Event{Kind: events.RecoveryShare, Policy: w.rec.Policy, Measurement: hex.EncodeToString(i.self),
		Reason: fmt.Sprintf("share %d of holder %s taken%s: %d of the %d needed", index, share.Name, again, min(len(w.shares), need), need)})
	if len(w.shares) < need {
		i.log.Info("recovery share accepted", "have", len(w.shares), "need", need)
		return service.Encode(&messages.RecoverAck{V: messages.Version, Have: uint8(len(w.shares)), Need: uint8(need)})
	}
	var shares []shamir.Share
	for x, y := range w.shares {
		shares = append(shares, shamir.Share{X: x, Y: y})
	}
	raw, err := shamir.Combine(shares)
	for _, s := range w.shares {
		clear(s)
	}
	clear(w.shares)
	if err != nil {
		return nil, i.recoverRefused(messages.Refusal(messages.CodeRecoveryShare, "the shares do not combine: %v", err))
	}
	k, err := newStateKey(raw)
	clear(raw)
	if err != nil || !bytes.Equal(k.id, w.keyID) {
		return nil, i.recoverRefused(messages.Refusal(messages.CodeRecoveryShare, "the %d shares do not make this state's key: one was altered or is from another record; all holders must hand theirs over again", need))
	}
	w.closed = true
	w.done <- k
	return service.Encode(&messages.RecoverAck{V: messages.Version, Have: uint8(need), Need: uint8(need), Done: true})
}
