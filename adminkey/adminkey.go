// Package adminkey owns the keys of the people who govern a cohort
// deployment: the administrators who sign policy updates and the holders of
// recovery keys who can restore the issuer's state key into a fresh issuer.
//
// One key file serves both roles. It holds a 32-byte seed, from which an
// Ed25519 signing key (the administrator's) and an X25519 key (the recovery
// holder's) are derived with HKDF under separate labels; a policy names the
// public half of whichever role the holder has.
//
// Guarantees:
//   - A key file is written with mode 0600 and never printed; only public
//     keys and signatures leave this package.
//   - A signature covers exactly one policy document
//     (messages.PolicySigned): it verifies for no other bytes.
//   - A recovery share opens only with the holder's key and only for the
//     state key id and index it was sealed for.
//   - Decoders (ParseSignature, a key file) refuse anything but their exact
//     format, with the reason.
package adminkey

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cohort-dev/cohort/messages"
)

const (
	pemType  = "COHORT ADMINISTRATOR KEY"
	seedSize = 32
	// maxSignatureFile bounds a signature file.
	maxSignatureFile = 4 << 10
	// SignatureVersion is the version of the signature file format.
	SignatureVersion = 1
)

// ErrFormat: a key or signature file is not in its format.
var ErrFormat = errors.New("adminkey: bad format")

// Key is an administrator's or recovery holder's key.
type Key struct {
	seed    []byte
	sign    ed25519.PrivateKey
	recover *ecdh.PrivateKey
}

// Generate draws a new key from r (crypto/rand.Reader in production).
func Generate(r io.Reader) (*Key, error) {
	seed := make([]byte, seedSize)
	if _, err := io.ReadFull(r, seed); err != nil {
		return nil, fmt.Errorf("adminkey: draw seed: %w", err)
	}
	return fromSeed(seed)
}

func fromSeed(seed []byte) (*Key, error) {
	if len(seed) != seedSize {
		return nil, fmt.Errorf("%w: seed is %d bytes, want %d", ErrFormat, len(seed), seedSize)
	}
	s, err := hkdf.Key(sha256.New, seed, nil, "cohort admin key v1: ed25519 policy signing", ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	x, err := hkdf.Key(sha256.New, seed, nil, "cohort admin key v1: x25519 recovery", 32)
	if err != nil {
		return nil, err
	}
	rk, err := ecdh.X25519().NewPrivateKey(x)
	if err != nil {
		return nil, fmt.Errorf("adminkey: recovery key: %w", err)
	}
	return &Key{seed: bytes.Clone(seed), sign: ed25519.NewKeyFromSeed(s), recover: rk}, nil
}

// Parse reads a key file's contents.
func Parse(data []byte) (*Key, error) {
	b, rest := pem.Decode(data)
	if b == nil || b.Type != pemType || len(bytes.TrimSpace(rest)) != 0 || len(b.Headers) != 0 {
		return nil, fmt.Errorf("%w: want one PEM block %q", ErrFormat, pemType)
	}
	return fromSeed(b.Bytes)
}

// Load reads a key file.
func Load(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("adminkey: %w", err)
	}
	k, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Marshal returns the key file's contents.
func (k *Key) Marshal() []byte { return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: k.seed}) }

// Save writes the key file, mode 0600; it refuses to overwrite a file.
func (k *Key) Save(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("adminkey: %w", err)
	}
	if _, err := f.Write(k.Marshal()); err != nil {
		f.Close()
		return fmt.Errorf("adminkey: %w", err)
	}
	return f.Close()
}

// AdminPublic is the administrator's public key, as a policy's
// administrators list it.
func (k *Key) AdminPublic() []byte { return bytes.Clone(k.sign.Public().(ed25519.PublicKey)) }

// RecoveryPublic is the recovery holder's public key, as a policy's recovery
// list names it.
func (k *Key) RecoveryPublic() []byte { return k.recover.PublicKey().Bytes() }

// Sign signs a policy document.
func (k *Key) Sign(document []byte) messages.PolicySignature {
	return messages.PolicySignature{Key: k.AdminPublic(), Signature: ed25519.Sign(k.sign, messages.PolicySigned(document))}
}

// VerifySignature reports whether sig is a signature of its key over
// document.
func VerifySignature(document []byte, sig messages.PolicySignature) bool {
	return len(sig.Key) == ed25519.PublicKeySize && len(sig.Signature) == ed25519.SignatureSize &&
		ed25519.Verify(ed25519.PublicKey(sig.Key), messages.PolicySigned(document), sig.Signature)
}

// Suite is the HPKE suite of recovery shares: X25519, HKDF-SHA256, AES-256-GCM.
func suite() (hpke.KEM, hpke.KDF, hpke.AEAD) {
	return hpke.DHKEM(ecdh.X25519()), hpke.HKDFSHA256(), hpke.AES256GCM()
}

// SealShare seals a recovery share to a holder's public key, for the state
// key keyID and share index.
func SealShare(holder, keyID []byte, index uint8, share []byte) ([]byte, error) {
	kem, kdf, aead := suite()
	pub, err := kem.NewPublicKey(holder)
	if err != nil {
		return nil, fmt.Errorf("adminkey: recovery key: %w", err)
	}
	return hpke.Seal(pub, kdf, aead, messages.RecoveryRecordInfo(keyID, index), share)
}

// OpenShare opens a share sealed to this key by SealShare.
func (k *Key) OpenShare(keyID []byte, index uint8, sealed []byte) ([]byte, error) {
	kem, kdf, aead := suite()
	priv, err := kem.NewPrivateKey(k.recover.Bytes())
	if err != nil {
		return nil, err
	}
	out, err := hpke.Open(priv, kdf, aead, messages.RecoveryRecordInfo(keyID, index), sealed)
	if err != nil {
		return nil, errors.New("adminkey: the share does not open with this key: it was sealed to another holder or for another state")
	}
	return out, nil
}

// SignatureFile is the signature of one administrator over one policy
// document, as `cohort policy sign` writes it.
type SignatureFile struct {
	V            int    `json:"v"`
	Key          string `json:"key"`           // Ed25519 public key, hex
	PolicySHA256 string `json:"policy_sha256"` // the document signed, for people; the signature covers it anyway
	Signature    string `json:"signature"`     // hex
}

// MarshalSignature encodes sig over document as a signature file.
func MarshalSignature(document []byte, sig messages.PolicySignature) []byte {
	h := sha256.Sum256(document)
	b, _ := json.MarshalIndent(SignatureFile{V: SignatureVersion, Key: hex.EncodeToString(sig.Key), PolicySHA256: hex.EncodeToString(h[:]),
		Signature: hex.EncodeToString(sig.Signature)}, "", "  ")
	return append(b, '\n')
}

// ParseSignature decodes a signature file. It checks the format only: the
// issuer decides whether the signature counts.
func ParseSignature(data []byte) (messages.PolicySignature, [32]byte, error) {
	var f SignatureFile
	var none messages.PolicySignature
	var hash [32]byte
	if len(data) > maxSignatureFile {
		return none, hash, fmt.Errorf("%w: signature file is %d bytes, at most %d", ErrFormat, len(data), maxSignatureFile)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return none, hash, fmt.Errorf("%w: signature file: %v", ErrFormat, err)
	}
	if dec.More() {
		return none, hash, fmt.Errorf("%w: signature file: trailing data", ErrFormat)
	}
	if f.V != SignatureVersion {
		return none, hash, fmt.Errorf("%w: signature file version %d, want %d", ErrFormat, f.V, SignatureVersion)
	}
	key, err1 := hex.DecodeString(f.Key)
	sig, err2 := hex.DecodeString(f.Signature)
	h, err3 := hex.DecodeString(f.PolicySHA256)
	if err1 != nil || err2 != nil || err3 != nil || len(key) != messages.AdminKeySize || len(sig) != messages.AdminSignatureSize || len(h) != 32 {
		return none, hash, fmt.Errorf("%w: signature file: key, signature or policy_sha256 is not hex of the right size", ErrFormat)
	}
	copy(hash[:], h)
	return messages.PolicySignature{Key: key, Signature: sig}, hash, nil
}
