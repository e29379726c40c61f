// Package channel is the cryptography of the cluster channel, without I/O:
// the handshake's key agreement and transcript, the session keys, the
// session record sealed under the cluster key, and the encryption of calls
// and their answers.
//
// The handshake. The user sends an ephemeral KEM public key (ML-KEM-768 +
// X25519 by default, X25519 as an option) and a nonce. A unit encapsulates to
// it with HPKE (RFC 9180, base mode) and takes the shared secret from HPKE's
// exporter; the HPKE info binds the user's hello. The session keys come from
// HKDF over that secret with the transcript hash (both hellos) as salt, and
// the unit signs the transcript hash with its task key, so the user knows
// that a unit of the expected task, holding the cluster's certificate,
// answered.
//
// Nonces never repeat under one key: calls are encrypted by the user alone,
// with the call's sequence number as the nonce; answers are encrypted under
// a key each unit derives for itself from the session's answer key, with
// random nonces, so two units never share a key.
//
// Call claims. A unit claims a call before it runs it; ClaimKey, SignClaim
// and CheckClaim authenticate those claims under a key derived from the
// cluster key and bind each to its subject and to the revision it was
// written over, so that nothing but a unit of the cluster writes a claim a
// unit accepts, and no claim can be written again elsewhere. SessionID makes
// a session's id from the user's hello, so that a hello sent again names the
// session it opened.
//
// Guarantees: every function here either returns what it was asked for or
// an error; nothing decrypts without authenticating; keys are derived with
// labels that keep each use apart.
package channel

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cohort-dev/cohort/messages"
)

// Sizes.
const (
	SessionIDSize = 16
	KeySize       = 32
	SecretSize    = 32
	callNonceSize = 12
)

// ErrAuth: something did not authenticate (a record, a call, an answer, a
// transcript signature). Nothing was decrypted.
var ErrAuth = errors.New("channel: does not authenticate")

const (
	labelHPKEInfo   = "cohort/v1 channel hello\x00"
	labelExport     = "cohort/v1 channel secret"
	labelTranscript = "cohort/v1 channel transcript\x00"
	labelC2S        = "cohort/v1 channel calls"
	labelS2C        = "cohort/v1 channel answers"
	labelUnitS2C    = "cohort/v1 channel answers of unit\x00"
	labelRecordKey  = "cohort/v1 session records"
	labelRecordAAD  = "cohort/v1 session record\x00"
	labelCallAAD    = "cohort/v1 call\x00"
	labelAnswerAAD  = "cohort/v1 answer\x00"
	labelSessionID  = "cohort/v1 session id\x00"
	labelClaimKey   = "cohort/v1 call claims\x00"
	labelClaimMAC   = "cohort/v1 call claim\x00"
)

func kem(id uint16) (hpke.KEM, error) {
	switch id {
	case messages.KEMMLKEM768X25519, messages.KEMX25519:
		return hpke.NewKEM(id)
	}
	return nil, fmt.Errorf("channel: KEM 0x%04x is not accepted", id)
}

// Client is the user's side of a handshake in progress.
type Client struct {
	key hpke.PrivateKey
}

// NewClient makes the user's ephemeral key pair for a handshake and returns
// it with its public key, to send in the hello.
func NewClient(kemID uint16) (*Client, []byte, error) {
	k, err := kem(kemID)
	if err != nil {
		return nil, nil, err
	}
	dk, err := k.GenerateKey()
	if err != nil {
		return nil, nil, fmt.Errorf("channel: ephemeral key: %w", err)
	}
	return &Client{key: dk}, dk.PublicKey().Bytes(), nil
}

// Accept is the unit's side: it encapsulates to the user's public key from
// the encoded hello and returns the encapsulation to send back and the
// shared secret.
func Accept(kemID uint16, publicKey, hello []byte) (enc, secret []byte, err error) {
	k, err := kem(kemID)
	if err != nil {
		return nil, nil, err
	}
	pk, err := k.NewPublicKey(publicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("channel: the user's public key: %w", err)
	}
	enc, s, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.ExportOnly(), info(hello))
	if err != nil {
		return nil, nil, fmt.Errorf("channel: encapsulate: %w", err)
	}
	secret, err = s.Export(labelExport, SecretSize)
	if err != nil {
		return nil, nil, fmt.Errorf("channel: export: %w", err)
	}
	return enc, secret, nil
}

// Secret is the user's side of Accept: the shared secret from the unit's
// encapsulation.
func (c *Client) Secret(enc, hello []byte) ([]byte, error) {
	r, err := hpke.NewRecipient(enc, c.key, hpke.HKDFSHA256(), hpke.ExportOnly(), info(hello))
	if err != nil {
		return nil, fmt.Errorf("%w: the encapsulation: %v", ErrAuth, err)
	}
	secret, err := r.Export(labelExport, SecretSize)
	if err != nil {
		return nil, fmt.Errorf("channel: export: %w", err)
	}
	return secret, nil
}

func info(hello []byte) []byte {
	h := sha256.Sum256(hello)
	return append([]byte(labelHPKEInfo), h[:]...)
}

// Transcript is the hash the unit signs and the key schedule is salted
// with: both hellos, each length-prefixed, under a label. serverHello is the
// unit's hello without its signature.
func Transcript(clientHello, serverHello []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(labelTranscript))
	var n [8]byte
	for _, b := range [][]byte{clientHello, serverHello} {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// Keys are a session's keys: calls from the user, answers from the units.
type Keys struct {
	C2S []byte // calls: the user encrypts, units decrypt
	S2C []byte // answers: each unit derives its own key from it
}

// DeriveKeys derives the session keys from the shared secret and the
// transcript.
func DeriveKeys(secret []byte, transcript [sha256.Size]byte) (*Keys, error) {
	c2s, err := hkdf.Key(sha256.New, secret, transcript[:], labelC2S, KeySize)
	if err != nil {
		return nil, err
	}
	s2c, err := hkdf.Key(sha256.New, secret, transcript[:], labelS2C, KeySize)
	if err != nil {
		return nil, err
	}
	return &Keys{C2S: c2s, S2C: s2c}, nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func randomNonceGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithRandomNonce(b)
}

// aad joins a label and length-prefixed parts.
func aad(label string, parts ...[]byte) []byte {
	out := []byte(label)
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		out = append(append(out, n[:]...), p...)
	}
	return out
}

func epochBytes(epoch uint32) []byte { return binary.BigEndian.AppendUint32(nil, epoch) }

// recordKey derives the key that seals session records from a cluster key.
func recordKey(clusterKey []byte, epoch uint32) ([]byte, error) {
	return hkdf.Key(sha256.New, clusterKey, epochBytes(epoch), labelRecordKey, KeySize)
}

// SealRecord seals a session record's plaintext under the cluster key: only
// the cluster's units can open it, and only as the record of this cluster,
// session and epoch.
func SealRecord(clusterKey []byte, epoch uint32, cluster string, session, plaintext []byte) ([]byte, error) {
	k, err := recordKey(clusterKey, epoch)
	if err != nil {
		return nil, err
	}
	a, err := randomNonceGCM(k)
	if err != nil {
		return nil, err
	}
	return a.Seal(nil, nil, plaintext, aad(labelRecordAAD, []byte(cluster), session, epochBytes(epoch))), nil
}

// OpenRecord opens a sealed session record.
func OpenRecord(clusterKey []byte, epoch uint32, cluster string, session, sealed []byte) ([]byte, error) {
	k, err := recordKey(clusterKey, epoch)
	if err != nil {
		return nil, err
	}
	a, err := randomNonceGCM(k)
	if err != nil {
		return nil, err
	}
	pt, err := a.Open(nil, nil, sealed, aad(labelRecordAAD, []byte(cluster), session, epochBytes(epoch)))
	if err != nil {
		return nil, fmt.Errorf("%w: session record", ErrAuth)
	}
	return pt, nil
}

// callNonce is the nonce of call seq: the user sends each sequence number
// once, so no nonce repeats under the calls key.
func callNonce(seq uint64) []byte {
	n := make([]byte, callNonceSize)
	binary.BigEndian.PutUint64(n[4:], seq)
	return n
}

// Kind says what a message of a session is: a call, or the session's close.
// It is authenticated with the message and its answer, so that neither can
// be taken for the other.
type Kind byte

// The kinds.
const (
	KindCall  Kind = 1
	KindClose Kind = 2
)

func callAAD(kind Kind, session []byte, seq uint64, sent int64) []byte {
	return aad(labelCallAAD, []byte{byte(kind)}, session, binary.BigEndian.AppendUint64(nil, seq), binary.BigEndian.AppendUint64(nil, uint64(sent)))
}

// SealCall encrypts message seq of a session, a call or a close, sent at
// the given time (Unix nanoseconds, authenticated); only the user does this.
// Sealing the same message again gives the same bytes: a retry is the same
// message.
func SealCall(k *Keys, kind Kind, session []byte, seq uint64, sent int64, plaintext []byte) ([]byte, error) {
	a, err := gcm(k.C2S)
	if err != nil {
		return nil, err
	}
	return a.Seal(nil, callNonce(seq), plaintext, callAAD(kind, session, seq, sent)), nil
}

// OpenCall decrypts message seq of a session, of the given kind, sent at the
// given time.
func OpenCall(k *Keys, kind Kind, session []byte, seq uint64, sent int64, ciphertext []byte) ([]byte, error) {
	a, err := gcm(k.C2S)
	if err != nil {
		return nil, err
	}
	pt, err := a.Open(nil, callNonce(seq), ciphertext, callAAD(kind, session, seq, sent))
	if err != nil {
		return nil, fmt.Errorf("%w: call", ErrAuth)
	}
	return pt, nil
}

// unitAnswerKey is the answer key of one unit: no two units share it, so
// their random nonces can never collide under one key.
func unitAnswerKey(k *Keys, unit string) ([]byte, error) {
	return hkdf.Key(sha256.New, k.S2C, nil, labelUnitS2C+unit, KeySize)
}

func answerAAD(kind Kind, session []byte, seq uint64, unit string) []byte {
	return aad(labelAnswerAAD, []byte{byte(kind)}, session, binary.BigEndian.AppendUint64(nil, seq), []byte(unit))
}

// SealAnswer encrypts a unit's answer to message seq, of the given kind.
func SealAnswer(k *Keys, kind Kind, unit string, session []byte, seq uint64, plaintext []byte) ([]byte, error) {
	key, err := unitAnswerKey(k, unit)
	if err != nil {
		return nil, err
	}
	a, err := randomNonceGCM(key)
	if err != nil {
		return nil, err
	}
	return a.Seal(nil, nil, plaintext, answerAAD(kind, session, seq, unit)), nil
}

// OpenAnswer decrypts the answer of unit to message seq, of the given kind.
func OpenAnswer(k *Keys, kind Kind, unit string, session []byte, seq uint64, ciphertext []byte) ([]byte, error) {
	key, err := unitAnswerKey(k, unit)
	if err != nil {
		return nil, err
	}
	a, err := randomNonceGCM(key)
	if err != nil {
		return nil, err
	}
	pt, err := a.Open(nil, nil, ciphertext, answerAAD(kind, session, seq, unit))
	if err != nil {
		return nil, fmt.Errorf("%w: answer", ErrAuth)
	}
	return pt, nil
}

// SessionID is the id of the session a hello opens: a hash of the encoded
// hello, so that the same hello sent again, to any unit, names the same
// session, whose record exists already: a replayed hello opens nothing new.
// The hello holds a fresh nonce and ephemeral key, so ids do not repeat.
func SessionID(hello []byte) []byte {
	h := sha256.New()
	h.Write([]byte(labelSessionID))
	h.Write(hello)
	return h.Sum(nil)[:SessionIDSize]
}

// ClaimKey derives, from a cluster key, the key that authenticates the
// cluster's call claims (messages.CallClaim): only the cluster's units hold
// it, so no NATS credential can write a claim that a unit accepts.
func ClaimKey(clusterKey []byte, cluster string, epoch uint32) ([]byte, error) {
	return hkdf.Key(sha256.New, clusterKey, epochBytes(epoch), labelClaimKey+cluster, KeySize)
}

// claimMAC is the MAC of a claim kept under subject: over the subject, the
// unit, the state, the revision written over and the answer.
func claimMAC(key []byte, subject string, c *messages.CallClaim) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(aad(labelClaimMAC, []byte(subject), []byte(c.Unit), []byte{c.State},
		binary.BigEndian.AppendUint64(nil, c.Prev), c.Answer))
	return m.Sum(nil)
}

// SignClaim sets c.MAC for the claim's subject.
func SignClaim(key []byte, subject string, c *messages.CallClaim) {
	c.MAC = claimMAC(key, subject, c)
}

// ErrTampered: stored state that a unit should have written does not
// authenticate, or does not stand where it says it was written.
var ErrTampered = errors.New("channel: tampered with")

// CheckClaim checks a claim read from subject, stored by JetStream over
// revision expectedPrev (its Nats-Expected-Last-Subject-Sequence header;
// hasPrev false when the message carries none): its MAC, and that it names
// the revision it stands over. A claim written again later, a delete
// marker, or anything a credential published there fails.
func CheckClaim(key []byte, subject string, c *messages.CallClaim, expectedPrev uint64, hasPrev bool) error {
	if !hmac.Equal(c.MAC, claimMAC(key, subject, c)) {
		return fmt.Errorf("%w: the claim does not authenticate under the cluster's claim key", ErrTampered)
	}
	if !hasPrev || expectedPrev != c.Prev {
		return fmt.Errorf("%w: the claim names revision %d as the one it was written over, and stands elsewhere", ErrTampered, c.Prev)
	}
	return nil
}
