package client

// Known-answer tests of the handshake's reply as a user checks it: the
// unit's chain to the root, its identity, and its task key's signature over
// the transcript hash of the user's hello and the reply's body
// (channel.Transcript).
//
// The expected values are in testdata/vectors.json, written once from a
// reviewed run (the certificates and the signature were made then, with
// keys not kept) and never recomputed by the code under test: a change
// that fails them means users of this build cannot complete a handshake
// with units of the deployed builds. The signature is also checked by spec
// below, over the transcript written out again with its label as a literal.
//
// The user's ephemeral key cannot be handed to the client (channel.Client
// is made only by NewClient), so the keys a session derives are not checked
// here: channel/testdata/vectors.json holds them, for this hello and
// encapsulation.
//
// To add a vector, write its inputs into the file (outputs empty) and run
//
//	go test ./client -run TestKnownAnswers -args -write-vectors
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

	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/internal/kattest"
	"github.com/cohort-dev/cohort/messages"
)

// hexBytes is a byte string written as hex in the vectors; null is nil.
type hexBytes = kattest.Hex

type clientVectors struct {
	Comment    []string          `json:"comment"`
	Handshakes []handshakeVector `json:"handshakes"`
}

// handshakeVector: a user's hello and the unit's reply, and the session
// the user takes from it.
type handshakeVector struct {
	Name    string   `json:"name"`
	Root    hexBytes `json:"root"` // DER
	Now     int64    `json:"now"`  // Unix nanoseconds
	Cluster string   `json:"cluster"`
	Task    string   `json:"task"`  // what the user expects; empty for any
	Hello   hexBytes `json:"hello"` // the encoded messages.Hello sent
	Reply   hexBytes `json:"reply"` // the encoded messages.HelloReply
	// Outputs.
	Transcript hexBytes `json:"transcript"`
	Session    hexBytes `json:"session"`
	Unit       string   `json:"unit"`
	Expires    int64    `json:"expires"`
	SessionOf  string   `json:"session_task"` // the task the session is with
}

func readVectors(t *testing.T) *clientVectors {
	t.Helper()
	var v clientVectors
	kattest.Read(t, &v)
	return &v
}

// finishVector completes the vector's handshake as the client does, with a
// client of the hello's KEM (its own key: see the file's comment).
func finishVector(t *testing.T, s *handshakeVector, hello, reply []byte) (*Session, error) {
	t.Helper()
	root, err := x509.ParseCertificate(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	var h messages.Hello
	if err := messages.Decode(s.Hello, messages.MaxHello, &h); err != nil {
		t.Fatalf("%s: the hello: %v", s.Name, err)
	}
	c, _, err := channel.NewClient(h.KEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Cluster: s.Cluster, Task: s.Task, Roots: roots, KEM: h.KEM, Now: func() time.Time { return time.Unix(0, s.Now) }}
	return finish(cfg, c, hello, reply)
}

func TestKnownAnswers(t *testing.T) {
	v := readVectors(t)
	if kattest.Writing() {
		for i := range v.Handshakes {
			s := &v.Handshakes[i]
			var r messages.HelloReply
			if err := messages.Decode(s.Reply, messages.MaxHelloReply, &r); err != nil {
				t.Fatal(err)
			}
			tr := channel.Transcript(s.Hello, r.Body)
			sess, err := finishVector(t, s, s.Hello, s.Reply)
			if err != nil {
				t.Fatalf("%s: %v", s.Name, err)
			}
			s.Transcript, s.Session, s.Unit, s.Expires, s.SessionOf = tr[:], sess.ID, sess.Unit, sess.Expires.UnixNano(), sess.Task
		}
		kattest.Write(t, v)
		return
	}
	if len(v.Handshakes) == 0 {
		t.Fatalf("%s holds no handshake", kattest.File)
	}
	for _, s := range v.Handshakes {
		sess, err := finishVector(t, &s, s.Hello, s.Reply)
		if err != nil {
			t.Errorf("%s: %v", s.Name, err)
			continue
		}
		if !bytes.Equal(sess.ID, s.Session) || sess.Unit != s.Unit || sess.Expires.UnixNano() != s.Expires || sess.Task != s.SessionOf || sess.Cluster != s.Cluster {
			t.Errorf("%s: session %x with unit %q of task %q until %d; want %x, %q, %q, %d", s.Name, sess.ID, sess.Unit, sess.Task, sess.Expires.UnixNano(), s.Session, s.Unit, s.SessionOf, s.Expires)
		}

		// By spec: the reply's signature is the leaf key's over the
		// transcript of exactly these bytes.
		var r messages.HelloReply
		if err := messages.Decode(s.Reply, messages.MaxHelloReply, &r); err != nil {
			t.Fatal(err)
		}
		var b messages.HelloReplyBody
		if err := messages.Decode(r.Body, messages.MaxHelloReplyBody, &b); err != nil {
			t.Fatal(err)
		}
		tr := specTranscript(s.Hello, r.Body)
		if !bytes.Equal(tr, s.Transcript) {
			t.Errorf("%s: transcript by spec is %x, want %x", s.Name, tr, s.Transcript)
		}
		leaf, err := x509.ParseCertificate(b.Chain[0])
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(leaf.PublicKey.(*ecdsa.PublicKey), tr, r.Signature) {
			t.Errorf("%s: the signature does not verify by spec", s.Name)
		}

		// The reply answers this hello only.
		other := bytes.Clone(s.Hello)
		other[len(other)-1] ^= 1
		if _, err := finishVector(t, &s, other, s.Reply); !errors.Is(err, ErrUnauthentic) {
			t.Errorf("%s: the reply completed another hello: %v", s.Name, err)
		}
	}
}

// specTranscript: SHA-256 of the label and both hellos, each prefixed with
// its length as 8 big-endian bytes.
func specTranscript(clientHello, serverHello []byte) []byte {
	b := []byte("cohort/v1 channel transcript\x00")
	for _, p := range [][]byte{clientHello, serverHello} {
		b = binary.BigEndian.AppendUint64(b, uint64(len(p)))
		b = append(b, p...)
	}
	h := sha256.Sum256(b)
	return h[:]
}
