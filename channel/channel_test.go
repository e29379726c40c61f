package channel

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/cohort-dev/cohort/messages"
)

// handshake runs both sides and returns the keys each derived.
func handshake(t testing.TB, kemID uint16) (user, unit *Keys) {
	t.Helper()
	c, pub, err := NewClient(kemID)
	if err != nil {
		t.Fatal(err)
	}
	hello := append([]byte("client hello with "), pub...)
	enc, unitSecret, err := Accept(kemID, pub, hello)
	if err != nil {
		t.Fatal(err)
	}
	serverHello := append([]byte("server hello with "), enc...)
	tr := Transcript(hello, serverHello)
	if unit, err = DeriveKeys(unitSecret, tr); err != nil {
		t.Fatal(err)
	}
	userSecret, err := c.Secret(enc, hello)
	if err != nil {
		t.Fatal(err)
	}
	if user, err = DeriveKeys(userSecret, tr); err != nil {
		t.Fatal(err)
	}
	return user, unit
}

func TestHandshakeAgreesOnKeys(t *testing.T) {
	for _, k := range []uint16{messages.KEMMLKEM768X25519, messages.KEMX25519} {
		user, unit := handshake(t, k)
		if !bytes.Equal(user.C2S, unit.C2S) || !bytes.Equal(user.S2C, unit.S2C) || bytes.Equal(user.C2S, user.S2C) {
			t.Errorf("KEM 0x%04x: keys disagree or coincide", k)
		}
	}
	if _, _, err := NewClient(0x0010); err == nil {
		t.Error("an unaccepted KEM was used")
	}
}

// The shared secret is bound to the user's hello: a unit that saw another
// hello derives another secret, and so other keys.
func TestSecretIsBoundToTheHello(t *testing.T) {
	c, pub, err := NewClient(messages.KEMMLKEM768X25519)
	if err != nil {
		t.Fatal(err)
	}
	enc, unitSecret, err := Accept(messages.KEMMLKEM768X25519, pub, []byte("hello A"))
	if err != nil {
		t.Fatal(err)
	}
	userSecret, err := c.Secret(enc, []byte("hello B"))
	if err == nil && bytes.Equal(userSecret, unitSecret) {
		t.Fatal("different hellos gave the same secret")
	}
	if Transcript([]byte("a"), []byte("bc")) == Transcript([]byte("ab"), []byte("c")) {
		t.Fatal("the transcript does not separate the hellos")
	}
}

func TestRecordsOpenOnlyAsSealed(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	session := []byte("0123456789abcdef")
	sealed, err := SealRecord(key, 1, "c1", session, []byte("keys and expiry"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := OpenRecord(key, 1, "c1", session, sealed); err != nil || string(pt) != "keys and expiry" {
		t.Fatalf("open: %q, %v", pt, err)
	}
	other := bytes.Clone(key)
	other[0] ^= 1
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	for name, open := range map[string]func() ([]byte, error){
		"another cluster key": func() ([]byte, error) { return OpenRecord(other, 1, "c1", session, sealed) },
		"another epoch":       func() ([]byte, error) { return OpenRecord(key, 2, "c1", session, sealed) },
		"another cluster":     func() ([]byte, error) { return OpenRecord(key, 1, "c2", session, sealed) },
		"another session":     func() ([]byte, error) { return OpenRecord(key, 1, "c1", []byte("fedcba9876543210"), sealed) },
		"tampered":            func() ([]byte, error) { return OpenRecord(key, 1, "c1", session, tampered) },
		"truncated":           func() ([]byte, error) { return OpenRecord(key, 1, "c1", session, sealed[:5]) },
	} {
		if pt, err := open(); !errors.Is(err, ErrAuth) || pt != nil {
			t.Errorf("%s: %q, %v; want ErrAuth", name, pt, err)
		}
	}
}

func TestCallsAndAnswers(t *testing.T) {
	user, unit := handshake(t, messages.KEMX25519)
	session := []byte("0123456789abcdef")
	ct, err := SealCall(user, KindCall, session, 7, 100, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := OpenCall(unit, KindCall, session, 7, 100, ct); err != nil || string(pt) != "hello" {
		t.Fatalf("call: %q, %v", pt, err)
	}
	if _, err := OpenCall(unit, KindCall, session, 8, 100, ct); !errors.Is(err, ErrAuth) {
		t.Errorf("call under another sequence number: %v", err)
	}
	if _, err := OpenCall(unit, KindCall, session, 7, 101, ct); !errors.Is(err, ErrAuth) {
		t.Errorf("call with another time: %v", err)
	}
	if _, err := OpenCall(unit, KindClose, session, 7, 100, ct); !errors.Is(err, ErrAuth) {
		t.Errorf("a call opened as a close: %v", err)
	}
	if _, err := OpenCall(unit, KindCall, []byte("fedcba9876543210"), 7, 100, ct); !errors.Is(err, ErrAuth) {
		t.Errorf("call under another session: %v", err)
	}
	a1, err := SealAnswer(unit, KindCall, "u1", session, 7, []byte("answer"))
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := SealAnswer(unit, KindCall, "u1", session, 7, []byte("answer"))
	if bytes.Equal(a1, a2) {
		t.Error("two answers of the same text encrypt the same: the nonce repeats")
	}
	if pt, err := OpenAnswer(user, KindCall, "u1", session, 7, a1); err != nil || string(pt) != "answer" {
		t.Fatalf("answer: %q, %v", pt, err)
	}
	if _, err := OpenAnswer(user, KindClose, "u1", session, 7, a1); !errors.Is(err, ErrAuth) {
		t.Errorf("an answer to a call opened as one to a close: %v", err)
	}
	if _, err := OpenAnswer(user, KindCall, "u2", session, 7, a1); !errors.Is(err, ErrAuth) {
		t.Errorf("u1's answer opened as u2's: %v", err)
	}
	if _, err := OpenAnswer(user, KindCall, "u1", session, 6, a1); !errors.Is(err, ErrAuth) {
		t.Errorf("an answer to call 7 opened as one to call 6: %v", err)
	}
}

// Whatever arrives as a record, a call or an answer, opening it never
// panics, and succeeds only for what was sealed.
func FuzzOpen(f *testing.F) {
	user, unit := handshake(f, messages.KEMX25519)
	session := []byte("0123456789abcdef")
	ct, _ := SealCall(user, KindCall, session, 1, 1, []byte("call"))
	ans, _ := SealAnswer(unit, KindCall, "u", session, 1, []byte("answer"))
	f.Add(ct, uint64(1))
	f.Add(ans, uint64(1))
	f.Add([]byte{}, uint64(0))
	f.Add(bytes.Repeat([]byte{0xff}, 100), uint64(1<<63))
	key := make([]byte, 32)
	f.Fuzz(func(t *testing.T, data []byte, seq uint64) {
		if pt, err := OpenCall(unit, KindCall, session, seq, 1, data); err == nil && !(seq == 1 && bytes.Equal(data, ct)) {
			t.Fatalf("forged call opened: %q", pt)
		}
		if pt, err := OpenAnswer(user, KindCall, "u", session, seq, data); err == nil && !(seq == 1 && bytes.Equal(data, ans)) {
			t.Fatalf("forged answer opened: %q", pt)
		}
		if pt, err := OpenRecord(key, uint32(seq), "c", session, data); err == nil {
			t.Fatalf("forged record opened: %q", pt)
		}
	})
}

func BenchmarkHandshake(b *testing.B) {
	for _, k := range []struct {
		name string
		id   uint16
	}{{"mlkem768x25519", messages.KEMMLKEM768X25519}, {"x25519", messages.KEMX25519}} {
		b.Run(k.name, func(b *testing.B) {
			for b.Loop() {
				handshake(b, k.id)
			}
		})
	}
}

func BenchmarkCall1KiB(b *testing.B) {
	user, unit := handshake(b, messages.KEMX25519)
	session := []byte("0123456789abcdef")
	msg := make([]byte, 1024)
	var seq uint64
	for b.Loop() {
		seq++
		ct, _ := SealCall(user, KindCall, session, seq, 1, msg)
		pt, _ := OpenCall(unit, KindCall, session, seq, 1, ct)
		a, _ := SealAnswer(unit, KindCall, "u", session, seq, pt)
		if _, err := OpenAnswer(user, KindCall, "u", session, seq, a); err != nil {
			b.Fatal(err)
		}
	}
}

func TestSessionIDIsTheHellos(t *testing.T) {
	a, b := []byte("hello one"), []byte("hello two")
	if !bytes.Equal(SessionID(a), SessionID(a)) || bytes.Equal(SessionID(a), SessionID(b)) || len(SessionID(a)) != SessionIDSize {
		t.Fatal("session ids are not a function of the hello alone")
	}
}

// A claim authenticates under its cluster's claim key, at its subject, over
// the revision it names; anything else is tampered with.
func TestClaimsAuthenticate(t *testing.T) {
	clusterKey := bytes.Repeat([]byte{1}, 32)
	key, err := ClaimKey(clusterKey, "c1", 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []struct {
		cluster string
		epoch   uint32
	}{{"c2", 1}, {"c1", 2}} {
		k, _ := ClaimKey(clusterKey, other.cluster, other.epoch)
		if bytes.Equal(k, key) {
			t.Fatalf("the claim key of %+v is c1's of epoch 1", other)
		}
	}
	subject := messages.ClaimSubject("c1", []byte{0xab}, 3)
	good := messages.CallClaim{V: messages.Version, Unit: "u1", State: messages.ClaimAnswered, Prev: 41, Answer: []byte("sealed answer")}
	SignClaim(key, subject, &good)
	if err := CheckClaim(key, subject, &good, 41, true); err != nil {
		t.Fatalf("a good claim: %v", err)
	}
	for name, tc := range map[string]struct {
		claim   messages.CallClaim
		subject string
		prev    uint64
		hasPrev bool
	}{
		"stored over another revision": {good, subject, 42, true},
		"stored without its revision":  {good, subject, 41, false},
		"at another call's subject":    {good, messages.ClaimSubject("c1", []byte{0xab}, 4), 41, true},
		"another unit":                 {func() messages.CallClaim { c := good; c.Unit = "u2"; return c }(), subject, 41, true},
		"another answer":               {func() messages.CallClaim { c := good; c.Answer = []byte("other"); return c }(), subject, 41, true},
		"another state":                {func() messages.CallClaim { c := good; c.State = messages.ClaimRunning; return c }(), subject, 41, true},
		"no MAC":                       {func() messages.CallClaim { c := good; c.MAC = make([]byte, 32); return c }(), subject, 41, true},
	} {
		if err := CheckClaim(key, tc.subject, &tc.claim, tc.prev, tc.hasPrev); !errors.Is(err, ErrTampered) {
			t.Errorf("%s: %v, want %v", name, err, ErrTampered)
		}
	}
	other, _ := ClaimKey(bytes.Repeat([]byte{2}, 32), "c1", 1)
	if err := CheckClaim(other, subject, &good, 41, true); !errors.Is(err, ErrTampered) {
		t.Errorf("under another cluster key: %v", err)
	}
}
