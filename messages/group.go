package messages

import (
	"crypto/sha256"
	"fmt"
)

// GroupExporterLabel is the TLS exporter label (RFC 8446, section 7.5) of the
// keying material a group peer proof signs. Each TLS connection exports a
// different value, so a proof made for one connection is worthless on another.
const GroupExporterLabel = "EXPORTER-cohort-group-peer-proof"

// GroupExporterSize is the size of that keying material.
const GroupExporterSize = 32

// MaxGroupProof caps an encoded GroupProof.
const MaxGroupProof = (MaxChain-1)*(MaxCertificate+8) + MaxSignature + 64

// Roles of the two ends of a group connection, signed into their proofs so
// that a proof cannot be reflected back to the side that made it.
const (
	GroupRoleClient = "client"
	GroupRoleServer = "server"
)

// GroupProof travels inside a mutual-TLS connection between two units of a
// group, each way, right after the handshake. The group certificate the
// handshake checked says that the peer runs code of one of the group's
// tasks; the proof says which: the peer's task chain (leaf first, without the
// root, which both hold) and its task key's signature over GroupProofDigest
// of this connection's exported keying material.
type GroupProof struct {
	V         uint16   `msgpack:"v"`
	Chain     [][]byte `msgpack:"chain"`
	Signature []byte   `msgpack:"signature"` // ASN.1 ECDSA P-256
}

// Validate implements Validator.
func (m *GroupProof) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if len(m.Chain) < 1 || len(m.Chain) > MaxChain-1 {
		return fmt.Errorf("%w: chain has %d certificates, want 1 to %d", ErrField, len(m.Chain), MaxChain-1)
	}
	for i, c := range m.Chain {
		if err := between(fmt.Sprintf("chain[%d]", i), c, 1, MaxCertificate); err != nil {
			return err
		}
	}
	return between("signature", m.Signature, 8, MaxSignature)
}

// GroupProofDigest is what a unit's task key signs to prove, on one TLS
// connection of group, that it runs its task: the role it plays on the
// connection and the connection's exported keying material.
func GroupProofDigest(role, group string, exporter []byte) [HashSize]byte {
	h := sha256.New()
	h.Write([]byte(labelGroupProof))
	for _, f := range [][]byte{[]byte(role), []byte(group), exporter} {
		var n [2]byte
		n[0], n[1] = byte(len(f)>>8), byte(len(f))
		h.Write(n[:])
		h.Write(f)
	}
	var d [HashSize]byte
	h.Sum(d[:0])
	return d
}
