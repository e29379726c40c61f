package group

// Known-answer tests of the proof a group member sends inside mutual TLS:
// its frame (a 4-byte big-endian length, then the encoded
// messages.GroupProof), the task chain, and the task key's signature over
// messages.GroupProofDigest of the role and the connection's exported keying
// material.
//
// The expected values are in testdata/vectors.json, written once from a
// reviewed run (the certificates and the signatures were made then, with
// keys not kept) and never recomputed by the code under test: a change
// that fails them means members of this build cannot accept the proofs of
// members of deployed builds. The signatures are also checked by spec
// below, with the label as a literal.
//
// To add a vector, write its inputs into the file (outputs empty) and run
//
//	go test ./group -run TestKnownAnswers -args -write-vectors
//
// which fills in the outputs of every vector from the code under test.
// Review the diff before committing: an output that changed is a wire
// break, not something to regenerate.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/internal/kattest"
	"github.com/cohort-dev/cohort/messages"
)

// hexBytes is a byte string written as hex in the vectors; null is nil.
type hexBytes = kattest.Hex

type groupVectors struct {
	Comment []string      `json:"comment"`
	Proofs  []proofVector `json:"proofs"`
}

// proofVector: a proof as it arrives on a connection of group, from the
// peer playing role, and the peer it proves.
type proofVector struct {
	Name     string   `json:"name"`
	Root     hexBytes `json:"root"` // DER
	Now      int64    `json:"now"`  // Unix nanoseconds
	Group    string   `json:"group"`
	Tasks    []string `json:"tasks"`    // the group's member tasks
	Role     string   `json:"role"`     // the peer's
	Exporter hexBytes `json:"exporter"` // the connection's keying material
	Frame    hexBytes `json:"frame"`
	Task     string   `json:"task"` // output: the task the peer proves
}

func readVectors(t *testing.T) *groupVectors {
	t.Helper()
	var v groupVectors
	kattest.Read(t, &v)
	return &v
}

// checkProof reads the vector's frame and checks it as a member of its
// group does, for role and exporter.
func checkProof(t *testing.T, s *proofVector, role string, exporter []byte) (Peer, error) {
	t.Helper()
	root, err := x509.ParseCertificate(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	g := &TLS{cfg: Config{Group: s.Group, Now: func() time.Time { return time.Unix(0, s.Now) }}}
	st := &state{roots: roots, root: root, groupID: identity.Identity{Kind: identity.KindGroup, Name: s.Group, Tasks: s.Tasks}}
	var p messages.GroupProof
	if err := readFrame(bytes.NewReader(s.Frame), &p); err != nil {
		t.Fatalf("%s: the frame: %v", s.Name, err)
	}
	return g.check(st, &p, role, exporter)
}

func TestKnownAnswers(t *testing.T) {
	v := readVectors(t)
	if kattest.Writing() {
		for i := range v.Proofs {
			s := &v.Proofs[i]
			peer, err := checkProof(t, s, s.Role, s.Exporter)
			if err != nil {
				t.Fatalf("%s: %v", s.Name, err)
			}
			s.Task = peer.Task
		}
		kattest.Write(t, v)
		return
	}
	if len(v.Proofs) == 0 {
		t.Fatalf("%s holds no proof", kattest.File)
	}
	for _, s := range v.Proofs {
		peer, err := checkProof(t, &s, s.Role, s.Exporter)
		if err != nil {
			t.Errorf("%s: %v", s.Name, err)
		} else if peer.Task != s.Task || peer.Group != s.Group {
			t.Errorf("%s: the peer proves task %q of group %q, want %q of %q", s.Name, peer.Task, peer.Group, s.Task, s.Group)
		}

		// A proof holds for its role and connection only.
		other := messages.GroupRoleClient
		if s.Role == other {
			other = messages.GroupRoleServer
		}
		if _, err := checkProof(t, &s, other, s.Exporter); !errors.Is(err, ErrPeer) {
			t.Errorf("%s: reflected to the %s: %v", s.Name, other, err)
		}
		exporter := bytes.Clone(s.Exporter)
		exporter[0] ^= 1
		if _, err := checkProof(t, &s, s.Role, exporter); !errors.Is(err, ErrPeer) {
			t.Errorf("%s: on another connection: %v", s.Name, err)
		}

		// By spec: the frame's length, and the signature over SHA-256 of
		// the label and the role, group and exporter, each prefixed with
		// its length as 2 big-endian bytes.
		if n := binary.BigEndian.Uint32(s.Frame); int(n) != len(s.Frame)-4 {
			t.Errorf("%s: the frame says %d bytes, holds %d", s.Name, n, len(s.Frame)-4)
		}
		var p messages.GroupProof
		if err := messages.Decode(s.Frame[4:], messages.MaxGroupProof, &p); err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(p.Chain[0])
		if err != nil {
			t.Fatal(err)
		}
		b := []byte("cohort/v3/group-peer-proof\x00")
		for _, f := range [][]byte{[]byte(s.Role), []byte(s.Group), s.Exporter} {
			b = append(binary.BigEndian.AppendUint16(b, uint16(len(f))), f...)
		}
		d := sha256.Sum256(b)
		if !ecdsa.VerifyASN1(leaf.PublicKey.(*ecdsa.PublicKey), d[:], p.Signature) {
			t.Errorf("%s: the signature does not verify by spec", s.Name)
		}
	}
}
