package messages

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func validJoinBody() *JoinBody {
	return &JoinBody{
		V: Version, Cluster: "dev", Unit: "unit-0_A", Task: "demo-task", Measurement: fill(21, HashSize),
		Addr: "10.0.0.7:8443", Time: 1_700_000_000_000_000_000, Nonce: fill(22, NonceSize),
		Chain: [][]byte{fill(23, 600), fill(24, 500)},
	}
}

func validJoinRequest() *JoinRequest {
	return &JoinRequest{V: Version, Body: fill(25, 1200), Signature: fill(26, 71)}
}

func validJoinReply() *JoinReply {
	return &JoinReply{V: Version, Token: fill(27, TokenSize), Interval: 1_000_000_000, Misses: 3}
}

func validHeartbeat() *Heartbeat {
	return &Heartbeat{V: Version, Cluster: "dev", Unit: "unit-0_A", Token: fill(28, TokenSize)}
}

func validHeartbeatReply() *HeartbeatReply { return &HeartbeatReply{V: Version, Known: true} }

// maximalJoinBody has every field at its cap: the longest names, address and
// chain Validate accepts.
func maximalJoinBody() *JoinBody {
	chain := make([][]byte, MaxChain-1)
	for i := range chain {
		chain[i] = fill(byte(i+1), MaxCertificate)
	}
	return &JoinBody{
		V: Version, Cluster: strings.Repeat("c", MaxTaskName), Unit: strings.Repeat("U", MaxUnitID),
		Task: strings.Repeat("t", MaxTaskName), Measurement: fill(1, HashSize), Addr: strings.Repeat("a", MaxAddr),
		Time: -1 << 63, Nonce: fill(2, NonceSize), Chain: chain,
	}
}

// managerWireTypes are the manager's message types, described as wireTypes
// are in codec_test.go.
var managerWireTypes = []wireType{
	{"JoinRequest", MaxJoinRequest, func() Validator { return validJoinRequest() },
		func() Validator {
			return &JoinRequest{V: Version, Body: fill(1, MaxJoinBody), Signature: fill(2, MaxSignature)}
		},
		func() Validator { return new(JoinRequest) }},
	{"JoinBody", MaxJoinBody, func() Validator { return validJoinBody() },
		func() Validator { return maximalJoinBody() },
		func() Validator { return new(JoinBody) }},
	{"JoinReply", MaxJoinReply, func() Validator { return validJoinReply() },
		func() Validator {
			return &JoinReply{V: Version, Token: fill(1, TokenSize), Interval: 1<<63 - 1, Misses: 0xffff}
		},
		func() Validator { return new(JoinReply) }},
	{"Heartbeat", MaxHeartbeat, func() Validator { return validHeartbeat() },
		func() Validator {
			return &Heartbeat{V: Version, Cluster: strings.Repeat("c", MaxTaskName), Unit: strings.Repeat("u", MaxUnitID), Token: fill(1, TokenSize)}
		},
		func() Validator { return new(Heartbeat) }},
	{"HeartbeatReply", MaxHeartbeatReply, func() Validator { return validHeartbeatReply() },
		func() Validator { return &HeartbeatReply{V: Version, Known: false} },
		func() Validator { return new(HeartbeatReply) }},
}

// TestJoinBodyTwoMaximalCertificatesFit: a leaf and an intermediate at the
// certificate cap, with the longest names and address, must fit MaxJoinBody
// (a regression: the cap was once smaller than Validate allowed).
func TestJoinBodyTwoMaximalCertificatesFit(t *testing.T) {
	v := maximalJoinBody()
	v.Chain = v.Chain[:2]
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	b := mustMarshal(t, v)
	if err := Decode(b, MaxJoinBody, new(JoinBody)); err != nil {
		t.Fatalf("%d bytes: %v", len(b), err)
	}
	// A single certificate at the cap fits, with room to spare.
	v.Chain = v.Chain[:1]
	b = mustMarshal(t, v)
	if err := Decode(b, MaxJoinBody, new(JoinBody)); err != nil {
		t.Fatalf("one certificate, %d bytes: %v", len(b), err)
	}
}

// TestJoinRequestCarriesAnyJoinBody: a JoinRequest whose body is a JoinBody
// as large as MaxJoinBody, with the longest signature, fits MaxJoinRequest.
func TestJoinRequestCarriesAnyJoinBody(t *testing.T) {
	r := &JoinRequest{V: Version, Body: fill(1, MaxJoinBody), Signature: fill(2, MaxSignature)}
	b := mustMarshal(t, r)
	if len(b) > MaxJoinRequest {
		t.Fatalf("%d bytes, cap %d", len(b), MaxJoinRequest)
	}
	// And the nested body decodes with its own cap.
	body := mustMarshal(t, validJoinBody())
	r = &JoinRequest{V: Version, Body: body, Signature: fill(2, 70)}
	var got JoinRequest
	if err := Decode(mustMarshal(t, r), MaxJoinRequest, &got); err != nil {
		t.Fatal(err)
	}
	var jb JoinBody
	if err := Decode(got.Body, MaxJoinBody, &jb); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&jb, validJoinBody()) {
		t.Fatalf("nested body changed: %+v", jb)
	}
}

// TestManagerNonCanonicalRefused: only the encoding Marshal makes is
// accepted; a number out of its field's range is not wrapped.
func TestManagerNonCanonicalRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		wt    int // index in managerWireTypes
		field string
		value any
	}{
		{"JoinReply misses 0x10003", 2, "misses", uint32(0x10003)},
		{"JoinReply misses -1", 2, "misses", int8(-1)},
		{"JoinReply interval 2^63", 2, "interval", uint64(1 << 63)},
		{"JoinReply interval as float", 2, "interval", float64(1e9)},
		{"Heartbeat version 0x10001", 3, "v", uint32(0x10001)},
		{"HeartbeatReply known as 1", 4, "known", 1},
		{"JoinBody time as float", 1, "time", float64(1.7e18)},
		{"JoinRequest body as string", 0, "body", string(fill('b', 100))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wt := managerWireTypes[tc.wt]
			m := asMap(t, mustMarshal(t, wt.valid()))
			m[tc.field] = tc.value
			v := wt.zero()
			if err := Decode(mustMarshal(t, m), wt.limit, v); err == nil {
				t.Fatalf("%s = %v accepted, decoded as %+v", tc.field, tc.value, v)
			}
		})
	}
	// Fields reordered: the same value, another encoding.
	b := []byte{0x82, 0xa5, 'k', 'n', 'o', 'w', 'n', 0xc3, 0xa1, 'v', 0xcd, 0, byte(Version)}
	if err := Decode(b, MaxHeartbeatReply, new(HeartbeatReply)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("reordered fields: got %v, want ErrMalformed", err)
	}
	// A repeated key.
	b = []byte{0x83, 0xa1, 'v', 0xcd, 0, byte(Version), 0xa5, 'k', 'n', 'o', 'w', 'n', 0xc3, 0xa5, 'k', 'n', 'o', 'w', 'n', 0xc2}
	if err := Decode(b, MaxHeartbeatReply, new(HeartbeatReply)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("repeated key: got %v, want ErrMalformed", err)
	}
}

// TestJoinBodyChainEntryCap: the chain is an array, capped at 64 entries by
// the pre-scan whatever Validate says, and at MaxChain-1 by Validate.
func TestJoinBodyChainEntryCap(t *testing.T) {
	for _, n := range []int{maxItems, maxItems + 1} {
		v := validJoinBody()
		v.Chain = make([][]byte, n)
		for i := range v.Chain {
			v.Chain[i] = []byte{byte(i)}
		}
		err := Decode(mustMarshal(t, v), MaxJoinBody, new(JoinBody))
		switch {
		case n <= maxItems && !errors.Is(err, ErrField):
			t.Fatalf("chain of %d: got %v, want ErrField from Validate", n, err)
		case n > maxItems && (!errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "entries")):
			t.Fatalf("chain of %d: got %v, want ErrMalformed about entries", n, err)
		}
	}
}

func TestManagerFieldBounds(t *testing.T) {
	type mutation struct {
		name string
		v    Validator
		ok   bool // the mutation is at a bound and must be accepted
	}
	jr := func(f func(*JoinRequest)) Validator { v := validJoinRequest(); f(v); return v }
	jb := func(f func(*JoinBody)) Validator { v := validJoinBody(); f(v); return v }
	jp := func(f func(*JoinReply)) Validator { v := validJoinReply(); f(v); return v }
	hb := func(f func(*Heartbeat)) Validator { v := validHeartbeat(); f(v); return v }
	cases := []mutation{
		{"JoinRequest body empty", jr(func(m *JoinRequest) { m.Body = nil }), false},
		{"JoinRequest body one byte", jr(func(m *JoinRequest) { m.Body = []byte{1} }), true},
		{"JoinRequest body max", jr(func(m *JoinRequest) { m.Body = fill(1, MaxJoinBody) }), true},
		{"JoinRequest body over", jr(func(m *JoinRequest) { m.Body = fill(1, MaxJoinBody+1) }), false},
		{"JoinRequest signature empty", jr(func(m *JoinRequest) { m.Signature = nil }), false},
		{"JoinRequest signature short", jr(func(m *JoinRequest) { m.Signature = fill(1, 7) }), false},
		{"JoinRequest signature min", jr(func(m *JoinRequest) { m.Signature = fill(1, 8) }), true},
		{"JoinRequest signature max", jr(func(m *JoinRequest) { m.Signature = fill(1, MaxSignature) }), true},
		{"JoinRequest signature over", jr(func(m *JoinRequest) { m.Signature = fill(1, MaxSignature+1) }), false},

		{"JoinBody cluster empty", jb(func(m *JoinBody) { m.Cluster = "" }), false},
		{"JoinBody cluster upper case", jb(func(m *JoinBody) { m.Cluster = "Dev" }), false},
		{"JoinBody cluster underscore", jb(func(m *JoinBody) { m.Cluster = "a_b" }), false},
		{"JoinBody cluster dot", jb(func(m *JoinBody) { m.Cluster = "a.b" }), false},
		{"JoinBody cluster wildcard", jb(func(m *JoinBody) { m.Cluster = "*" }), false},
		{"JoinBody cluster max", jb(func(m *JoinBody) { m.Cluster = strings.Repeat("c", MaxTaskName) }), true},
		{"JoinBody cluster over", jb(func(m *JoinBody) { m.Cluster = strings.Repeat("c", MaxTaskName+1) }), false},
		{"JoinBody task empty", jb(func(m *JoinBody) { m.Task = "" }), false},
		{"JoinBody task trailing hyphen", jb(func(m *JoinBody) { m.Task = "demo-" }), false},
		{"JoinBody task newline", jb(func(m *JoinBody) { m.Task = "demo\n" }), false},
		{"JoinBody task over", jb(func(m *JoinBody) { m.Task = strings.Repeat("t", MaxTaskName+1) }), false},
		{"JoinBody unit empty", jb(func(m *JoinBody) { m.Unit = "" }), false},
		{"JoinBody unit dot", jb(func(m *JoinBody) { m.Unit = "a.b" }), false},
		{"JoinBody unit space", jb(func(m *JoinBody) { m.Unit = "a b" }), false},
		{"JoinBody unit wildcard", jb(func(m *JoinBody) { m.Unit = ">" }), false},
		{"JoinBody unit non-ASCII", jb(func(m *JoinBody) { m.Unit = "é" }), false},
		{"JoinBody unit newline", jb(func(m *JoinBody) { m.Unit = "u\n" }), false},
		{"JoinBody unit max", jb(func(m *JoinBody) { m.Unit = strings.Repeat("u", MaxUnitID) }), true},
		{"JoinBody unit over", jb(func(m *JoinBody) { m.Unit = strings.Repeat("u", MaxUnitID+1) }), false},
		{"JoinBody unit one character", jb(func(m *JoinBody) { m.Unit = "_" }), true},
		{"JoinBody measurement missing", jb(func(m *JoinBody) { m.Measurement = nil }), false},
		{"JoinBody measurement short", jb(func(m *JoinBody) { m.Measurement = fill(1, HashSize-1) }), false},
		{"JoinBody measurement long", jb(func(m *JoinBody) { m.Measurement = fill(1, HashSize+1) }), false},
		{"JoinBody addr empty", jb(func(m *JoinBody) { m.Addr = "" }), true},
		{"JoinBody addr max", jb(func(m *JoinBody) { m.Addr = strings.Repeat("a", MaxAddr) }), true},
		{"JoinBody addr over", jb(func(m *JoinBody) { m.Addr = strings.Repeat("a", MaxAddr+1) }), false},
		{"JoinBody nonce missing", jb(func(m *JoinBody) { m.Nonce = nil }), false},
		{"JoinBody nonce short", jb(func(m *JoinBody) { m.Nonce = fill(1, NonceSize-1) }), false},
		{"JoinBody nonce long", jb(func(m *JoinBody) { m.Nonce = fill(1, NonceSize+1) }), false},
		{"JoinBody chain empty", jb(func(m *JoinBody) { m.Chain = nil }), false},
		{"JoinBody chain of one", jb(func(m *JoinBody) { m.Chain = m.Chain[:1] }), true},
		{"JoinBody chain max", jb(func(m *JoinBody) { m.Chain = append(m.Chain, fill(1, 1)) }), true},
		{"JoinBody chain too long", jb(func(m *JoinBody) { m.Chain = append(m.Chain, fill(1, 1), fill(1, 1)) }), false},
		{"JoinBody chain empty certificate", jb(func(m *JoinBody) { m.Chain[1] = nil }), false},
		{"JoinBody chain certificate max", jb(func(m *JoinBody) { m.Chain = [][]byte{fill(1, MaxCertificate)} }), true},
		{"JoinBody chain certificate over", jb(func(m *JoinBody) { m.Chain[0] = fill(1, MaxCertificate+1) }), false},
		{"JoinBody time negative", jb(func(m *JoinBody) { m.Time = -1 }), true},

		{"JoinReply token missing", jp(func(m *JoinReply) { m.Token = nil }), false},
		{"JoinReply token short", jp(func(m *JoinReply) { m.Token = fill(1, TokenSize-1) }), false},
		{"JoinReply token long", jp(func(m *JoinReply) { m.Token = fill(1, TokenSize+1) }), false},
		{"JoinReply interval zero", jp(func(m *JoinReply) { m.Interval = 0 }), false},
		{"JoinReply interval negative", jp(func(m *JoinReply) { m.Interval = -1 }), false},
		{"JoinReply interval 1ns", jp(func(m *JoinReply) { m.Interval = 1 }), true},
		{"JoinReply misses zero", jp(func(m *JoinReply) { m.Misses = 0 }), false},
		{"JoinReply misses one", jp(func(m *JoinReply) { m.Misses = 1 }), true},

		{"Heartbeat cluster empty", hb(func(m *Heartbeat) { m.Cluster = "" }), false},
		{"Heartbeat cluster invalid", hb(func(m *Heartbeat) { m.Cluster = "Dev" }), false},
		{"Heartbeat cluster over", hb(func(m *Heartbeat) { m.Cluster = strings.Repeat("c", MaxTaskName+1) }), false},
		{"Heartbeat unit empty", hb(func(m *Heartbeat) { m.Unit = "" }), false},
		{"Heartbeat unit invalid", hb(func(m *Heartbeat) { m.Unit = "a.b" }), false},
		{"Heartbeat unit over", hb(func(m *Heartbeat) { m.Unit = strings.Repeat("u", MaxUnitID+1) }), false},
		{"Heartbeat token missing", hb(func(m *Heartbeat) { m.Token = nil }), false},
		{"Heartbeat token short", hb(func(m *Heartbeat) { m.Token = fill(1, TokenSize-1) }), false},
		{"Heartbeat token long", hb(func(m *Heartbeat) { m.Token = fill(1, TokenSize+1) }), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.v.Validate()
			if tc.ok {
				if err != nil {
					t.Fatalf("value at the bound refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrField) {
				t.Fatalf("got %v, want ErrField", err)
			}
			// Decode gives the same verdict on the wire form.
			b := mustMarshal(t, tc.v)
			zero := reflect.New(reflect.TypeOf(tc.v).Elem()).Interface().(Validator)
			if err := Decode(b, 1<<20, zero); !errors.Is(err, ErrField) {
				t.Fatalf("Decode: got %v, want ErrField", err)
			}
		})
	}
}

// TestJoinBodyAddrHasNoControlCharacter: the address a unit claims is stored
// in its member record, shown by status and carried by every audit event
// about the unit (joined, join refused, left, evicted). events refuses a
// field holding a newline or NUL, so such an address makes the manager drop
// the event: a join, even a refused one, that leaves no audit record. Other
// control characters (ESC, CR) reach an operator's terminal through `cohort
// events`. The address must hold none.
//
// A regression test: before the fix, JoinBody.Validate only bounds the address's
// length (messages/manager.go, stringBetween("addr", m.Addr, 0, MaxAddr)).
func TestJoinBodyAddrHasNoControlCharacter(t *testing.T) {
	for _, addr := range []string{"https://a:1\n", "https://a:1\x00", "\x1b[2J", "https://a:1\rforged", "a\x7f"} {
		v := validJoinBody()
		v.Addr = addr
		if err := v.Validate(); !errors.Is(err, ErrField) {
			t.Errorf("addr %q: got %v, want ErrField", addr, err)
		}
	}
}

// TestManagerRefusalsNameTheField: a field refusal says which field.
func TestManagerRefusalsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		v    Validator
		want string
	}{
		{&JoinRequest{V: Version, Signature: fill(1, 70)}, "body"},
		{&JoinRequest{V: Version, Body: []byte{1}}, "signature"},
		{func() Validator { v := validJoinBody(); v.Unit = ""; return v }(), "unit id"},
		{func() Validator { v := validJoinBody(); v.Cluster = ""; return v }(), "cluster"},
		{func() Validator { v := validJoinBody(); v.Chain = nil; return v }(), "chain"},
		{func() Validator { v := validJoinBody(); v.Chain[1] = nil; return v }(), "chain[1]"},
		{func() Validator { v := validJoinBody(); v.Measurement = nil; return v }(), "measurement"},
		{func() Validator { v := validJoinBody(); v.Addr = strings.Repeat("a", MaxAddr+1); return v }(), "addr"},
		{func() Validator { v := validJoinBody(); v.Nonce = nil; return v }(), "nonce"},
		{func() Validator { v := validJoinReply(); v.Token = nil; return v }(), "token"},
		{func() Validator { v := validJoinReply(); v.Misses = 0; return v }(), "misses"},
		{func() Validator { v := validHeartbeat(); v.Token = nil; return v }(), "token"},
		{func() Validator { v := validHeartbeat(); v.Unit = "."; return v }(), "unit id"},
	} {
		err := tc.v.Validate()
		if !errors.Is(err, ErrField) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%T: got %v, want ErrField naming %q", tc.v, err, tc.want)
		}
	}
}

func TestManagerLyingHeadersRefused(t *testing.T) {
	for _, wt := range managerWireTypes {
		for name, b := range lyingHeaders() {
			t.Run(wt.name+"/"+name, func(t *testing.T) {
				err := Decode(b, wt.limit, wt.zero())
				if len(b) > wt.limit {
					if !errors.Is(err, ErrTooLarge) {
						t.Fatalf("%d bytes over the cap: got %v, want ErrTooLarge", len(b), err)
					}
					return
				}
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("got %v, want ErrMalformed", err)
				}
			})
		}
	}
}

func TestValidUnitID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "A": true, "0": true, "_": true, "-": true, "unit-0": true, "Unit_0-x": true, "--": true,
		"": false, "a.b": false, "a b": false, "a/b": false, "a*": false, ">": false, "é": false,
		"a\n": false, "\na": false, "a\x00": false,
		strings.Repeat("u", MaxUnitID):   true,
		strings.Repeat("u", MaxUnitID+1): false,
	} {
		if got := ValidUnitID(id); got != want {
			t.Errorf("ValidUnitID(%q) = %t, want %t", id, got, want)
		}
	}
}

func TestJoinDigest(t *testing.T) {
	body := mustMarshal(t, validJoinBody())
	d := JoinDigest(body)
	if d != JoinDigest(bytes.Clone(body)) {
		t.Fatal("JoinDigest is not deterministic")
	}
	want := sha256.Sum256(append([]byte(labelJoin), body...))
	if d != want {
		t.Fatalf("JoinDigest = %x, want SHA-256(label || body) = %x", d, want)
	}
	// Domain separation: the same body gives a different digest under every
	// other use, so a join signature is no report signature and vice versa.
	if d == ReportDigest(body) {
		t.Fatal("JoinDigest equals ReportDigest for the same body")
	}
	if d == sha256.Sum256(body) || d == RequestHash(body) {
		t.Fatal("JoinDigest equals the plain hash of the body")
	}
	other := bytes.Clone(body)
	other[len(other)-1] ^= 1
	if JoinDigest(other) == d {
		t.Fatal("two bodies give the same digest")
	}
	if JoinDigest(nil) == ReportDigest(nil) {
		t.Fatal("empty body: JoinDigest equals ReportDigest")
	}
	// The labels are prefix-free, so no choice of bodies makes the hashed
	// inputs equal: label1 || b1 = label2 || b2 needs one label to be a
	// prefix of the other.
	labels := []string{labelJoin, labelReportSignature, labelSecretsInfo}
	for i, a := range labels {
		for j, b := range labels {
			if i != j && strings.HasPrefix(a, b) {
				t.Errorf("label %q is a prefix of %q", b, a)
			}
		}
	}
	// Concretely: moving the NUL terminator across the boundary does not
	// make a collision.
	if JoinDigest(append([]byte("x"), body...)) == ReportDigest(body) {
		t.Fatal("collision across labels")
	}
}

func TestManagerCodes(t *testing.T) {
	for _, tc := range []struct {
		code     Code
		sentinel *Error
	}{
		{CodeClusterNotCovered, ErrClusterNotCovered},
		{CodeCertificate, ErrCertificate},
		{CodeSignature, ErrSignature},
		{CodeUnknownUnit, ErrUnknownUnit},
	} {
		if len(tc.code) == 0 || len(tc.code) > maxCodeLen {
			t.Errorf("code %q out of bounds", tc.code)
		}
		e := Refusal(tc.code, "because")
		if err := e.Validate(); err != nil {
			t.Errorf("%s: %v", tc.code, err)
		}
		if !errors.Is(fmt.Errorf("wrapped: %w", e), tc.sentinel) {
			t.Errorf("%s does not match its sentinel", tc.code)
		}
		if errors.Is(e, ErrMeasurement) {
			t.Errorf("%s matches another code", tc.code)
		}
		got := DecodeError(string(tc.code), mustMarshal(t, e))
		if !reflect.DeepEqual(got, e) {
			t.Errorf("%s: error reply round trip gives %+v", tc.code, got)
		}
	}
}

func TestManagerSubjects(t *testing.T) {
	seen := map[string]bool{}
	for _, verb := range []string{VerbJoin, VerbHeartbeat, VerbLeave, VerbSession} {
		s := ManagerSubject(verb, "dev", "demo-1")
		if !strings.HasPrefix(s, "cohort.v1.manager.") || strings.ContainsAny(s, " *>") || seen[s] || s == SubjectStatus {
			t.Errorf("subject %q", s)
		}
		seen[s] = true
		c, u, ok := UnitOfSubject(s, verb)
		if !ok || c != "dev" || u != "demo-1" {
			t.Errorf("UnitOfSubject(%q) = %q, %q, %v", s, c, u, ok)
		}
		if _, _, ok := UnitOfSubject(s, VerbStatusless); ok {
			t.Errorf("%q parsed as another verb's", s)
		}
	}
	for _, bad := range []string{"cohort.v1.manager.join", "cohort.v1.manager.join.dev", "cohort.v1.manager.join.dev.a.b", "cohort.v1.manager.join.Dev.u", "cohort.v1.manager.join.dev.*"} {
		if _, _, ok := UnitOfSubject(bad, VerbJoin); ok {
			t.Errorf("UnitOfSubject(%q) accepted", bad)
		}
	}
}

// VerbStatusless is no verb of the manager's.
const VerbStatusless = "nothing"

func TestClusterSubjects(t *testing.T) {
	for _, verb := range []string{VerbHandshake, VerbCall, VerbClose} {
		s := ClusterSubject("dev", verb, "alice")
		if u, ok := UserOfSubject(s, "dev", verb); !ok || u != "alice" {
			t.Errorf("UserOfSubject(%q) = %q, %v", s, u, ok)
		}
		if _, ok := UserOfSubject(s, "prod", verb); ok {
			t.Errorf("%q parsed as another cluster's", s)
		}
	}
	for _, bad := range []string{"cohort.v1.cluster.dev.call.", "cohort.v1.cluster.dev.call.a.b", "cohort.v1.cluster.dev.call.Alice", "cohort.v1.cluster.dev.call.*"} {
		if _, ok := UserOfSubject(bad, "dev", VerbCall); ok {
			t.Errorf("UserOfSubject(%q) accepted", bad)
		}
	}
	// 0xab is 171, shard 171 mod 4 = 3.
	if ClaimSubject("dev", []byte{0xab}, 7) != "cohort.v1.calls.dev.3.ab.7" || ClosedSubject("dev", []byte{0xab}) != "cohort.v1.calls.dev.3.ab.closed" {
		t.Errorf("claim subjects %s, %s", ClaimSubject("dev", []byte{0xab}, 7), ClosedSubject("dev", []byte{0xab}))
	}
	// Each shard's stream holds exactly its sessions' subjects, and the
	// cluster's filter (the units' permission) holds every shard's.
	for b := range 256 {
		session := []byte{byte(b), 1, 2}
		k := CallShard(session)
		for j := range CallShards {
			want := j == k
			if got := subjectMatches(ClaimsOfShard("dev", j), ClaimSubject("dev", session, 1)); got != want {
				t.Fatalf("session %x (shard %d) in shard %d's filter: %v", session, k, j, got)
			}
		}
		if !subjectMatches(ClaimsOfCluster("dev"), ClosedSubject("dev", session)) || CallsStreamOf("dev", session) != CallsStreams("dev")[k] {
			t.Fatalf("session %x: the cluster's filter or its stream", session)
		}
	}
	if LegacyCallsStream("dev") == CallsStream("dev", 0) || !subjectMatches(SubjectCallsPrefix+"dev.>", ClaimsOfShard("dev", 0)) {
		t.Error("the legacy stream's subjects must overlap the shards', and its name differ")
	}
}

// subjectMatches reports whether NATS subject s falls under filter.
func subjectMatches(filter, s string) bool {
	f, t := strings.Split(filter, "."), strings.Split(s, ".")
	for i, tok := range f {
		switch {
		case tok == ">":
			return len(t) > i
		case i >= len(t):
			return false
		case tok != "*" && tok != t[i]:
			return false
		}
	}
	return len(f) == len(t)
}
