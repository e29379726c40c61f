package issuer

// Known-answer tests of the issuer's state at rest: the state key's id,
// the key records are sealed under, their AAD (bucket, record, revision
// written over) and the envelope they are stored in. Every issuer replica,
// and every later build, must open the records an earlier one wrote.
//
// The expected values are in testdata/vectors.json, written once from a
// reviewed run and never recomputed by the code under test: a change that
// alters any of them makes every stored state unreadable, and must come
// with a new state format (stateFormat) and new vectors. Every vector is
// also checked by spec below, from the labels as literals, on the standard
// library alone, the envelope derived by hand from msgpack.
//
// To add a vector, write its inputs into the file (outputs empty) and run
//
//	go test ./issuer -run TestKnownAnswers -args -write-vectors
//
// which fills in the outputs of every vector from the code under test (the
// record sealed by spec under the vector's nonce). Review the diff before
// committing: an output that changed is a break, not something to
// regenerate.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/internal/kattest"
	"github.com/cohort-dev/cohort/messages"
)

// hexBytes is a byte string written as hex in the vectors; null is nil.
type hexBytes = kattest.Hex

type stateVectors struct {
	Comment []string      `json:"comment"`
	Records []stateVector `json:"records"`
}

// stateVector: a record of the issuer's state as stored. Sealing draws a
// nonce; Envelope holds the record sealed under Nonce, which the store must
// open.
type stateVector struct {
	Name      string   `json:"name"`
	StateKey  hexBytes `json:"state_key"`
	Bucket    string   `json:"bucket"`
	Record    string   `json:"record"`
	Over      uint64   `json:"over"` // the revision written over
	Plaintext hexBytes `json:"plaintext"`
	Nonce     hexBytes `json:"nonce"`
	KeyID     hexBytes `json:"key_id"`   // output
	Subject   string   `json:"subject"`  // output
	AAD       hexBytes `json:"aad"`      // output
	Envelope  hexBytes `json:"envelope"` // output: the stored message
}

func readStateVectors(t *testing.T) *stateVectors {
	t.Helper()
	var v stateVectors
	kattest.Read(t, &v)
	return &v
}

func vectorStore(t *testing.T, s *stateVector) *store {
	t.Helper()
	k, err := newStateKey(s.StateKey)
	if err != nil {
		t.Fatal(err)
	}
	return &store{bucket: s.Bucket, key: k}
}

// storedMsg is the record as JetStream keeps it, written over over when
// conditional.
func storedMsg(subject string, data []byte, over uint64, conditional bool) *jetstream.RawStreamMsg {
	m := &jetstream.RawStreamMsg{Subject: subject, Sequence: over + 1, Data: data, Header: nats.Header{}}
	if conditional {
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(over, 10))
	}
	return m
}

func TestKnownAnswers(t *testing.T) {
	v := readStateVectors(t)
	if kattest.Writing() {
		for i := range v.Records {
			s := &v.Records[i]
			st := vectorStore(t, s)
			s.KeyID, s.Subject, s.AAD = st.key.id, st.subject(s.Record), st.aad(s.Record, s.Over)
			s.Envelope = specEnvelope(st.key.id, specStateSeal(specStateAEADKey(s.StateKey), s.Nonce, s.Plaintext, s.AAD))
		}
		kattest.Write(t, v)
		return
	}
	if len(v.Records) == 0 {
		t.Fatalf("%s holds no record", kattest.File)
	}
	for _, s := range v.Records {
		st := vectorStore(t, &s)
		if !bytes.Equal(st.key.id, s.KeyID) {
			t.Errorf("%s: key id is %x, want %x", s.Name, st.key.id, s.KeyID)
		}
		if got := st.subject(s.Record); got != s.Subject {
			t.Errorf("%s: subject is %q, want %q", s.Name, got, s.Subject)
		}
		if got := st.aad(s.Record, s.Over); !bytes.Equal(got, s.AAD) {
			t.Errorf("%s: aad is %x, want %x", s.Name, got, s.AAD)
		}

		// The stored message opens, read as the store reads it.
		r, err := st.parse(s.Record, storedMsg(s.Subject, s.Envelope, s.Over, true))
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		plain, _, err := st.decrypt(s.Record, r)
		if err != nil {
			t.Errorf("%s: %v", s.Name, err)
		} else if !bytes.Equal(plain, s.Plaintext) {
			t.Errorf("%s: opens as %x, want %x", s.Name, plain, s.Plaintext)
		}

		// By spec.
		if got := specKeyID(s.StateKey); !bytes.Equal(got, s.KeyID) {
			t.Errorf("%s: key id by spec is %x, want %x", s.Name, got, s.KeyID)
		}
		if got := "$KV." + s.Bucket + "." + s.Record; got != s.Subject {
			t.Errorf("%s: subject by spec is %q, want %q", s.Name, got, s.Subject)
		}
		a := specStateAAD(s.Bucket, s.Record, s.Over)
		if !bytes.Equal(a, s.AAD) {
			t.Errorf("%s: aad by spec is %x, want %x", s.Name, a, s.AAD)
		}
		key := specStateAEADKey(s.StateKey)
		if got := specEnvelope(s.KeyID, specStateSeal(key, s.Nonce, s.Plaintext, a)); !bytes.Equal(got, s.Envelope) {
			t.Errorf("%s: envelope by spec is\n%x\nwant\n%x", s.Name, got, s.Envelope)
		}

		// A record sealed now, under a fresh nonce, opens by spec.
		sealed, err := st.seal(s.Record, s.Over, s.Plaintext)
		if err != nil {
			t.Fatal(err)
		}
		var e envelope
		if err := messages.Unmarshal(sealed, len(sealed), &e); err != nil || e.V != 3 || !bytes.Equal(e.KeyID, s.KeyID) || len(e.Box) < 12 {
			t.Errorf("%s: a fresh record is %x (%v), not an envelope of format 3 under key %x", s.Name, sealed, err, s.KeyID)
			continue
		}
		if !bytes.Equal(specEnvelope(e.KeyID, e.Box), sealed) {
			t.Errorf("%s: a fresh record is %x, not the envelope by spec", s.Name, sealed)
		}
		box := e.Box
		b, err := aes.NewCipher(key)
		if err != nil {
			t.Fatal(err)
		}
		g, err := cipher.NewGCM(b)
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := g.Open(nil, box[:12], box[12:], a); err != nil || !bytes.Equal(pt, s.Plaintext) {
			t.Errorf("%s: a fresh record does not open by spec: %v", s.Name, err)
		}

		// Stored unconditionally, over another revision or in another bucket,
		// it does not.
		for name, m := range map[string]*jetstream.RawStreamMsg{
			"unconditionally":       storedMsg(s.Subject, s.Envelope, s.Over, false),
			"over another revision": storedMsg(s.Subject, s.Envelope, s.Over+1, true),
			"in another bucket":     storedMsg(s.Subject, s.Envelope, s.Over, true),
		} {
			other := st
			if name == "in another bucket" {
				other = &store{bucket: s.Bucket + "x", key: st.key}
			}
			r, err := other.parse(s.Record, m)
			if err == nil {
				_, _, err = other.decrypt(s.Record, r)
			}
			if err == nil {
				t.Errorf("%s: stored %s, it opens", s.Name, name)
			}
		}
	}
}

// The spec of the state's sealing, from the design.

func specKeyID(stateKey []byte) []byte {
	id, err := hkdf.Key(sha256.New, stateKey, nil, "cohort issuer state key id v1", 16)
	if err != nil {
		panic(err)
	}
	return id
}

func specStateAEADKey(stateKey []byte) []byte {
	k, err := hkdf.Key(sha256.New, stateKey, nil, "cohort issuer state aead v1", 32)
	if err != nil {
		panic(err)
	}
	return k
}

func specStateAAD(bucket, record string, over uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("cohort/issuer/state/v3\x00"+bucket+"\x00"+record+"\x00"), over)
}

// specStateSeal is AES-256-GCM with an explicit nonce, the nonce first.
func specStateSeal(key, nonce, plaintext, aad []byte) []byte {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g.Seal(bytes.Clone(nonce), nonce, plaintext, aad)
}

// specEnvelope is the envelope by hand, in msgpack: a map of v (uint16 3),
// key_id and box (bin 8; the vectors' boxes are under 256 bytes).
func specEnvelope(keyID, box []byte) []byte {
	out := []byte{0x83, 0xa1, 'v', 0xcd, 0x00, 0x03, 0xa6}
	out = append(out, "key_id"...)
	out = append(append(out, 0xc4, byte(len(keyID))), keyID...)
	out = append(out, 0xa3, 'b', 'o', 'x')
	return append(append(out, 0xc4, byte(len(box))), box...)
}
