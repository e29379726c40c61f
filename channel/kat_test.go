package channel

// Known-answer tests of the channel's wire: the shared secret a user takes
// from a unit's encapsulation, the transcript hash, the session keys, the
// session id, the sealed session record, calls, answers and call claims.
//
// The expected values are in testdata/vectors.json, written once from a
// reviewed run and never recomputed by the code under test: a change that
// alters any of them breaks every deployed client and every stored record,
// and must come with a protocol version bump (messages.Version) and new
// vectors. Every vector is also checked against spec, below: the same
// constructions written out again from the design, with the labels as
// literals, on the standard library alone, so that a vector is not merely
// what this package produced.
//
// To add a vector, write its inputs into the file (outputs empty) and run
//
//	go test ./channel -run TestKnownAnswers -args -write-vectors
//
// which fills in the outputs of every vector from the code under test (and
// the random values, an encapsulation or a nonce, that a vector lacks).
// Review the diff before committing: an output that changed is a wire
// break, not something to regenerate.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/cohort-dev/cohort/internal/kattest"
	"github.com/cohort-dev/cohort/messages"
)

// hexBytes is a byte string written as hex in the vectors; null is nil.
type hexBytes = kattest.Hex

type channelVectors struct {
	Comment     []string           `json:"comment"`
	Secrets     []secretVector     `json:"secrets"`
	Transcripts []transcriptVector `json:"transcripts"`
	Keys        []keysVector       `json:"keys"`
	SessionIDs  []sessionIDVector  `json:"session_ids"`
	Records     []recordVector     `json:"records"`
	Calls       []callVector       `json:"calls"`
	Answers     []answerVector     `json:"answers"`
	Claims      []claimVector      `json:"claims"`
}

// secretVector: the user's side of the key agreement. Enc was made once by
// Accept (it draws randomness); Secret is what the user exports from it.
type secretVector struct {
	Name       string   `json:"name"`
	KEM        uint16   `json:"kem"`
	PrivateKey hexBytes `json:"private_key"` // the user's ephemeral key, as KEM.NewPrivateKey takes it
	Hello      hexBytes `json:"hello"`       // the encoded messages.Hello carrying its public key
	Enc        hexBytes `json:"enc"`         // the unit's encapsulation
	PublicKey  hexBytes `json:"public_key"`  // output
	Info       hexBytes `json:"info"`        // output: the HPKE info
	Secret     hexBytes `json:"secret"`      // output
}

type transcriptVector struct {
	Name        string   `json:"name"`
	ClientHello hexBytes `json:"client_hello"`
	ServerHello hexBytes `json:"server_hello"` // the encoded messages.HelloReplyBody
	Transcript  hexBytes `json:"transcript"`   // output
}

type keysVector struct {
	Name       string   `json:"name"`
	Secret     hexBytes `json:"secret"`
	Transcript hexBytes `json:"transcript"`
	C2S        hexBytes `json:"c2s"` // output
	S2C        hexBytes `json:"s2c"` // output
}

type sessionIDVector struct {
	Name    string   `json:"name"`
	Hello   hexBytes `json:"hello"`
	Session hexBytes `json:"session"` // output
}

// recordVector: SealRecord draws its nonce; Sealed is the record sealed
// under Nonce (nonce, ciphertext, tag), which OpenRecord must open.
type recordVector struct {
	Name       string   `json:"name"`
	ClusterKey hexBytes `json:"cluster_key"`
	Epoch      uint32   `json:"epoch"`
	Cluster    string   `json:"cluster"`
	Session    hexBytes `json:"session"`
	Plaintext  hexBytes `json:"plaintext"` // an encoded messages.SessionKeys
	Nonce      hexBytes `json:"nonce"`
	RecordKey  hexBytes `json:"record_key"` // output
	AAD        hexBytes `json:"aad"`        // output
	Sealed     hexBytes `json:"sealed"`     // output
}

type callVector struct {
	Name       string   `json:"name"`
	C2S        hexBytes `json:"c2s"`
	Kind       Kind     `json:"kind"`
	Session    hexBytes `json:"session"`
	Seq        uint64   `json:"seq"`
	Sent       int64    `json:"sent"`
	Plaintext  hexBytes `json:"plaintext"`
	Nonce      hexBytes `json:"nonce"`      // output
	AAD        hexBytes `json:"aad"`        // output
	Ciphertext hexBytes `json:"ciphertext"` // output
}

// answerVector: SealAnswer draws its nonce; Ciphertext is the answer sealed
// under Nonce, which OpenAnswer must open.
type answerVector struct {
	Name       string   `json:"name"`
	S2C        hexBytes `json:"s2c"`
	Unit       string   `json:"unit"`
	Kind       Kind     `json:"kind"`
	Session    hexBytes `json:"session"`
	Seq        uint64   `json:"seq"`
	Plaintext  hexBytes `json:"plaintext"`
	Nonce      hexBytes `json:"nonce"`
	UnitKey    hexBytes `json:"unit_key"`   // output
	AAD        hexBytes `json:"aad"`        // output
	Ciphertext hexBytes `json:"ciphertext"` // output
}

// claimVector: a call claim as a unit stores it (unit/claims.go).
type claimVector struct {
	Name       string   `json:"name"`
	ClusterKey hexBytes `json:"cluster_key"`
	Cluster    string   `json:"cluster"`
	Epoch      uint32   `json:"epoch"`
	Subject    string   `json:"subject"`
	Unit       string   `json:"unit"`
	State      uint8    `json:"state"`
	Prev       uint64   `json:"prev"`
	Answer     hexBytes `json:"answer"`
	ClaimKey   hexBytes `json:"claim_key"` // output
	MAC        hexBytes `json:"mac"`       // output
	Encoded    hexBytes `json:"encoded"`   // output: the stored messages.CallClaim
}

func readVectors(t *testing.T) *channelVectors {
	t.Helper()
	var v channelVectors
	kattest.Read(t, &v)
	return &v
}

// same reports a mismatch of one output of one vector.
func same(t *testing.T, vector, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: %s is\n%x\nwant\n%x", vector, what, got, want)
	}
}

func TestKnownAnswers(t *testing.T) {
	v := readVectors(t)
	if kattest.Writing() {
		fill(t, v)
		kattest.Write(t, v)
		return
	}
	if len(v.Secrets) == 0 || len(v.Transcripts) == 0 || len(v.Keys) == 0 || len(v.SessionIDs) == 0 ||
		len(v.Records) == 0 || len(v.Calls) == 0 || len(v.Answers) == 0 || len(v.Claims) == 0 {
		t.Fatalf("%s lacks a kind of vector", kattest.File)
	}
	t.Run("secrets", func(t *testing.T) {
		for _, s := range v.Secrets {
			checkSecret(t, &s)
		}
	})
	t.Run("transcripts", func(t *testing.T) {
		for _, s := range v.Transcripts {
			tr := Transcript(s.ClientHello, s.ServerHello)
			same(t, s.Name, "transcript", tr[:], s.Transcript)
			same(t, s.Name, "transcript (spec)", specTranscript(s.ClientHello, s.ServerHello), s.Transcript)
		}
	})
	t.Run("keys", func(t *testing.T) {
		for _, s := range v.Keys {
			k, err := DeriveKeys(s.Secret, [32]byte(s.Transcript))
			if err != nil {
				t.Fatal(err)
			}
			same(t, s.Name, "c2s", k.C2S, s.C2S)
			same(t, s.Name, "s2c", k.S2C, s.S2C)
			c2s, s2c := specKeys(s.Secret, s.Transcript)
			same(t, s.Name, "c2s (spec)", c2s, s.C2S)
			same(t, s.Name, "s2c (spec)", s2c, s.S2C)
		}
	})
	t.Run("session ids", func(t *testing.T) {
		for _, s := range v.SessionIDs {
			same(t, s.Name, "session", SessionID(s.Hello), s.Session)
			same(t, s.Name, "session (spec)", specSessionID(s.Hello), s.Session)
		}
	})
	t.Run("records", func(t *testing.T) {
		for _, s := range v.Records {
			checkRecord(t, &s)
		}
	})
	t.Run("calls", func(t *testing.T) {
		for _, s := range v.Calls {
			checkCall(t, &s)
		}
	})
	t.Run("answers", func(t *testing.T) {
		for _, s := range v.Answers {
			checkAnswer(t, &s)
		}
	})
	t.Run("claims", func(t *testing.T) {
		for _, s := range v.Claims {
			checkClaim(t, &s)
		}
	})
}

func vectorClient(t *testing.T, kemID uint16, priv []byte) *Client {
	t.Helper()
	k, err := kem(kemID)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := k.NewPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return &Client{key: sk}
}

func checkSecret(t *testing.T, s *secretVector) {
	c := vectorClient(t, s.KEM, s.PrivateKey)
	same(t, s.Name, "public key", c.key.PublicKey().Bytes(), s.PublicKey)
	var h messages.Hello
	if err := messages.Decode(s.Hello, messages.MaxHello, &h); err != nil {
		t.Fatalf("%s: the hello: %v", s.Name, err)
	}
	if h.KEM != s.KEM || !bytes.Equal(h.PublicKey, s.PublicKey) {
		t.Errorf("%s: the hello carries KEM 0x%04x and another key", s.Name, h.KEM)
	}
	same(t, s.Name, "info", info(s.Hello), s.Info)
	same(t, s.Name, "info (spec)", specInfo(s.Hello), s.Info)
	secret, err := c.Secret(s.Enc, s.Hello)
	if err != nil {
		t.Fatalf("%s: %v", s.Name, err)
	}
	same(t, s.Name, "secret", secret, s.Secret)
	same(t, s.Name, "secret (spec)", specSecret(t, c.key, s.Enc, s.Hello), s.Secret)

	// The unit's side draws a fresh encapsulation: what it takes for the
	// secret must be what the user exports from it, by spec.
	enc, unitSecret, err := Accept(s.KEM, s.PublicKey, s.Hello)
	if err != nil {
		t.Fatalf("%s: accept: %v", s.Name, err)
	}
	same(t, s.Name, "a fresh encapsulation's secret (spec)", specSecret(t, c.key, enc, s.Hello), unitSecret)
}

func checkRecord(t *testing.T, s *recordVector) {
	k, err := recordKey(s.ClusterKey, s.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	same(t, s.Name, "record key", k, s.RecordKey)
	same(t, s.Name, "aad", aad(labelRecordAAD, []byte(s.Cluster), s.Session, epochBytes(s.Epoch)), s.AAD)
	pt, err := OpenRecord(s.ClusterKey, s.Epoch, s.Cluster, s.Session, s.Sealed)
	if err != nil {
		t.Errorf("%s: %v", s.Name, err)
	}
	same(t, s.Name, "opened", pt, s.Plaintext)

	specKey, specAAD := specRecordKey(s.ClusterKey, s.Epoch), specRecordAAD(s.Cluster, s.Session, s.Epoch)
	same(t, s.Name, "record key (spec)", specKey, s.RecordKey)
	same(t, s.Name, "aad (spec)", specAAD, s.AAD)
	same(t, s.Name, "sealed (spec)", specSeal(specKey, s.Nonce, s.Plaintext, specAAD), s.Sealed)

	// A record sealed now (under a fresh nonce) opens by spec.
	sealed, err := SealRecord(s.ClusterKey, s.Epoch, s.Cluster, s.Session, s.Plaintext)
	if err != nil {
		t.Fatal(err)
	}
	same(t, s.Name, "a fresh record opened (spec)", specOpen(t, specKey, sealed, specAAD), s.Plaintext)
}

func checkCall(t *testing.T, s *callVector) {
	k := &Keys{C2S: s.C2S}
	same(t, s.Name, "nonce", callNonce(s.Seq), s.Nonce)
	same(t, s.Name, "aad", callAAD(s.Kind, s.Session, s.Seq, s.Sent), s.AAD)
	ct, err := SealCall(k, s.Kind, s.Session, s.Seq, s.Sent, s.Plaintext)
	if err != nil {
		t.Fatal(err)
	}
	same(t, s.Name, "ciphertext", ct, s.Ciphertext)
	pt, err := OpenCall(k, s.Kind, s.Session, s.Seq, s.Sent, s.Ciphertext)
	if err != nil {
		t.Errorf("%s: %v", s.Name, err)
	}
	same(t, s.Name, "opened", pt, s.Plaintext)

	nonce, a := specCallNonce(s.Seq), specCallAAD(byte(s.Kind), s.Session, s.Seq, s.Sent)
	same(t, s.Name, "nonce (spec)", nonce, s.Nonce)
	same(t, s.Name, "aad (spec)", a, s.AAD)
	// The call's nonce is not sent: the ciphertext is GCM's, without it.
	same(t, s.Name, "ciphertext (spec)", specSeal(s.C2S, nonce, s.Plaintext, a)[len(nonce):], s.Ciphertext)
}

func checkAnswer(t *testing.T, s *answerVector) {
	k := &Keys{S2C: s.S2C}
	key, err := unitAnswerKey(k, s.Unit)
	if err != nil {
		t.Fatal(err)
	}
	same(t, s.Name, "unit key", key, s.UnitKey)
	same(t, s.Name, "aad", answerAAD(s.Kind, s.Session, s.Seq, s.Unit), s.AAD)
	pt, err := OpenAnswer(k, s.Kind, s.Unit, s.Session, s.Seq, s.Ciphertext)
	if err != nil {
		t.Errorf("%s: %v", s.Name, err)
	}
	same(t, s.Name, "opened", pt, s.Plaintext)

	specKey, a := specUnitKey(s.S2C, s.Unit), specAnswerAAD(byte(s.Kind), s.Session, s.Seq, s.Unit)
	same(t, s.Name, "unit key (spec)", specKey, s.UnitKey)
	same(t, s.Name, "aad (spec)", a, s.AAD)
	same(t, s.Name, "ciphertext (spec)", specSeal(specKey, s.Nonce, s.Plaintext, a), s.Ciphertext)

	fresh, err := SealAnswer(k, s.Kind, s.Unit, s.Session, s.Seq, s.Plaintext)
	if err != nil {
		t.Fatal(err)
	}
	same(t, s.Name, "a fresh answer opened (spec)", specOpen(t, specKey, fresh, a), s.Plaintext)
}

func (s *claimVector) claim() messages.CallClaim {
	return messages.CallClaim{V: messages.Version, Unit: s.Unit, State: s.State, Prev: s.Prev, Answer: s.Answer}
}

func checkClaim(t *testing.T, s *claimVector) {
	key, err := ClaimKey(s.ClusterKey, s.Cluster, s.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	same(t, s.Name, "claim key", key, s.ClaimKey)
	c := s.claim()
	SignClaim(s.ClaimKey, s.Subject, &c)
	same(t, s.Name, "mac", c.MAC, s.MAC)
	enc, err := messages.Marshal(&c)
	if err != nil {
		t.Fatal(err)
	}
	same(t, s.Name, "encoded", enc, s.Encoded)

	var stored messages.CallClaim
	if err := messages.Decode(s.Encoded, messages.MaxCallClaim, &stored); err != nil {
		t.Fatalf("%s: the stored claim: %v", s.Name, err)
	}
	if err := CheckClaim(s.ClaimKey, s.Subject, &stored, s.Prev, true); err != nil {
		t.Errorf("%s: the stored claim: %v", s.Name, err)
	}

	specKey := specClaimKey(s.ClusterKey, s.Cluster, s.Epoch)
	same(t, s.Name, "claim key (spec)", specKey, s.ClaimKey)
	same(t, s.Name, "mac (spec)", specClaimMAC(specKey, s.Subject, s.Unit, s.State, s.Prev, s.Answer), s.MAC)
}

// fill computes the outputs of every vector (and the encapsulations and
// nonces that vectors lack) from the code under test; only for
// -write-vectors.
func fill(t *testing.T, v *channelVectors) {
	for i := range v.Secrets {
		s := &v.Secrets[i]
		c := vectorClient(t, s.KEM, s.PrivateKey)
		s.PublicKey = c.key.PublicKey().Bytes()
		s.Info = info(s.Hello)
		if len(s.Enc) == 0 {
			enc, _, err := Accept(s.KEM, s.PublicKey, s.Hello)
			if err != nil {
				t.Fatal(err)
			}
			s.Enc = enc
		}
		secret, err := c.Secret(s.Enc, s.Hello)
		if err != nil {
			t.Fatal(err)
		}
		s.Secret = secret
	}
	for i := range v.Transcripts {
		s := &v.Transcripts[i]
		tr := Transcript(s.ClientHello, s.ServerHello)
		s.Transcript = tr[:]
	}
	for i := range v.Keys {
		s := &v.Keys[i]
		k, err := DeriveKeys(s.Secret, [32]byte(s.Transcript))
		if err != nil {
			t.Fatal(err)
		}
		s.C2S, s.S2C = k.C2S, k.S2C
	}
	for i := range v.SessionIDs {
		v.SessionIDs[i].Session = SessionID(v.SessionIDs[i].Hello)
	}
	for i := range v.Records {
		s := &v.Records[i]
		k, err := recordKey(s.ClusterKey, s.Epoch)
		if err != nil {
			t.Fatal(err)
		}
		s.RecordKey, s.AAD = k, aad(labelRecordAAD, []byte(s.Cluster), s.Session, epochBytes(s.Epoch))
		s.Nonce = nonceOr(s.Nonce)
		s.Sealed = specSeal(k, s.Nonce, s.Plaintext, s.AAD)
	}
	for i := range v.Calls {
		s := &v.Calls[i]
		ct, err := SealCall(&Keys{C2S: s.C2S}, s.Kind, s.Session, s.Seq, s.Sent, s.Plaintext)
		if err != nil {
			t.Fatal(err)
		}
		s.Nonce, s.AAD, s.Ciphertext = callNonce(s.Seq), callAAD(s.Kind, s.Session, s.Seq, s.Sent), ct
	}
	for i := range v.Answers {
		s := &v.Answers[i]
		key, err := unitAnswerKey(&Keys{S2C: s.S2C}, s.Unit)
		if err != nil {
			t.Fatal(err)
		}
		s.UnitKey, s.AAD = key, answerAAD(s.Kind, s.Session, s.Seq, s.Unit)
		s.Nonce = nonceOr(s.Nonce)
		s.Ciphertext = specSeal(key, s.Nonce, s.Plaintext, s.AAD)
	}
	for i := range v.Claims {
		s := &v.Claims[i]
		key, err := ClaimKey(s.ClusterKey, s.Cluster, s.Epoch)
		if err != nil {
			t.Fatal(err)
		}
		c := s.claim()
		SignClaim(key, s.Subject, &c)
		enc, err := messages.Marshal(&c)
		if err != nil {
			t.Fatal(err)
		}
		s.ClaimKey, s.MAC, s.Encoded = key, c.MAC, enc
	}
}

func nonceOr(n []byte) []byte {
	if len(n) != 0 {
		return n
	}
	n = make([]byte, 12)
	rand.Read(n)
	return n
}

// The spec: the channel's constructions written out again from the
// design, labels as literals, for the cross-checks above. Nothing here
// calls the package.

// specJoin is a label followed by each part, prefixed with its length as
// 8 big-endian bytes.
func specJoin(label string, parts ...[]byte) []byte {
	out := []byte(label)
	for _, p := range parts {
		out = binary.BigEndian.AppendUint64(out, uint64(len(p)))
		out = append(out, p...)
	}
	return out
}

func specHKDF(secret, salt []byte, info string) []byte {
	k, err := hkdf.Key(sha256.New, secret, salt, info, 32)
	if err != nil {
		panic(err)
	}
	return k
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func specInfo(hello []byte) []byte {
	h := sha256.Sum256(hello)
	return append([]byte("cohort/v1 channel hello\x00"), h[:]...)
}

// specSecret: HPKE base mode, HKDF-SHA256, export only, with the hello's
// info; the secret is the exporter's 32 bytes under its label.
func specSecret(t *testing.T, key hpke.PrivateKey, enc, hello []byte) []byte {
	t.Helper()
	r, err := hpke.NewRecipient(enc, key, hpke.HKDFSHA256(), hpke.ExportOnly(), specInfo(hello))
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.Export("cohort/v1 channel secret", 32)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func specTranscript(clientHello, serverHello []byte) []byte {
	h := sha256.Sum256(specJoin("cohort/v1 channel transcript\x00", clientHello, serverHello))
	return h[:]
}

func specKeys(secret, transcript []byte) (c2s, s2c []byte) {
	return specHKDF(secret, transcript, "cohort/v1 channel calls"), specHKDF(secret, transcript, "cohort/v1 channel answers")
}

func specSessionID(hello []byte) []byte {
	h := sha256.Sum256(append([]byte("cohort/v1 session id\x00"), hello...))
	return h[:16]
}

func specRecordKey(clusterKey []byte, epoch uint32) []byte {
	return specHKDF(clusterKey, be32(epoch), "cohort/v1 session records")
}

func specRecordAAD(cluster string, session []byte, epoch uint32) []byte {
	return specJoin("cohort/v1 session record\x00", []byte(cluster), session, be32(epoch))
}

func specCallNonce(seq uint64) []byte { return append(make([]byte, 4), be64(seq)...) }

func specCallAAD(kind byte, session []byte, seq uint64, sent int64) []byte {
	return specJoin("cohort/v1 call\x00", []byte{kind}, session, be64(seq), be64(uint64(sent)))
}

func specUnitKey(s2c []byte, unit string) []byte {
	return specHKDF(s2c, nil, "cohort/v1 channel answers of unit\x00"+unit)
}

func specAnswerAAD(kind byte, session []byte, seq uint64, unit string) []byte {
	return specJoin("cohort/v1 answer\x00", []byte{kind}, session, be64(seq), []byte(unit))
}

func specClaimKey(clusterKey []byte, cluster string, epoch uint32) []byte {
	return specHKDF(clusterKey, be32(epoch), "cohort/v1 call claims\x00"+cluster)
}

func specClaimMAC(key []byte, subject, unit string, state uint8, prev uint64, answer []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(specJoin("cohort/v1 call claim\x00", []byte(subject), []byte(unit), []byte{state}, be64(prev), answer))
	return m.Sum(nil)
}

func specGCM(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return a
}

// specSeal is AES-256-GCM under key with an explicit nonce, the nonce first.
func specSeal(key, nonce, plaintext, aad []byte) []byte {
	return specGCM(key).Seal(bytes.Clone(nonce), nonce, plaintext, aad)
}

func specOpen(t *testing.T, key, sealed, aad []byte) []byte {
	t.Helper()
	if len(sealed) < 12 {
		t.Fatalf("sealed is %d bytes", len(sealed))
	}
	pt, err := specGCM(key).Open(nil, sealed[:12], sealed[12:], aad)
	if err != nil {
		t.Fatal(fmt.Errorf("does not open by spec: %w", err))
	}
	return pt
}
