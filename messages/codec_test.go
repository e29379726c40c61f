package messages

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
)

// fill returns n bytes of b.
func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func validEvidenceRequest() *EvidenceRequest {
	return &EvidenceRequest{V: Version, Nonce: fill(1, NonceSize)}
}

func validEvidenceReply() *EvidenceReply {
	return &EvidenceReply{V: Version, Evidence: fill(2, 300), Root: fill(3, 400), PolicyHash: fill(4, HashSize), Backend: "sim"}
}

func validCertifyRequest() *CertifyRequest {
	return &CertifyRequest{V: Version, Body: fill(5, 100), Evidence: fill(6, 300)}
}

func validCertifyBody() *CertifyBody {
	return &CertifyBody{V: Version, Task: "demo-task", KEM: KEMX25519, PublicKey: fill(7, 32), Nonce: fill(8, NonceSize), Time: 1_700_000_000_000_000_000}
}

func validCertifyReply() *CertifyReply {
	return &CertifyReply{V: Version, Body: fill(9, 500), Signature: fill(10, 71)}
}

func validReportBody() *ReportBody {
	return &ReportBody{V: Version, RequestHash: fill(11, HashSize), Task: "demo", Chain: [][]byte{fill(12, 400), fill(13, 300)}, Sealed: fill(14, 200)}
}

func validSecrets() *Secrets { return &Secrets{V: Version, TaskKey: fill(15, 138)} }

func validGroupProof() *GroupProof {
	return &GroupProof{V: Version, Chain: [][]byte{fill(17, 600)}, Signature: fill(18, 71)}
}

// maxGroupIDs is MaxGroups distinct group ids of the longest length.
func maxGroupIDs() []string {
	ids := make([]string, MaxGroups)
	for i := range ids {
		ids[i] = strings.Repeat(string(rune('a'+i)), MaxTaskName)
	}
	return ids
}

func validError() *Error {
	return Refusal(CodeMeasurement, "measurement %x is not accepted", fill(16, 32))
}

// wireType describes one message type: a valid value, its maximal value (every
// field at its cap), a zero value to decode into and its payload cap.
type wireType struct {
	name    string
	limit   int
	valid   func() Validator
	maximal func() Validator
	zero    func() Validator
}

var wireTypes = []wireType{
	{"EvidenceRequest", MaxEvidenceRequest, func() Validator { return validEvidenceRequest() },
		func() Validator { return validEvidenceRequest() },
		func() Validator { return new(EvidenceRequest) }},
	{"EvidenceReply", MaxEvidenceReply, func() Validator { return validEvidenceReply() },
		func() Validator {
			return &EvidenceReply{V: Version, Evidence: fill(1, MaxEvidence), Root: fill(2, MaxCertificate), PolicyHash: fill(3, HashSize), Backend: strings.Repeat("b", MaxBackend)}
		},
		func() Validator { return new(EvidenceReply) }},
	{"CertifyRequest", MaxCertifyRequest, func() Validator { return validCertifyRequest() },
		func() Validator {
			return &CertifyRequest{V: Version, Body: fill(1, MaxCertifyBody), Evidence: fill(2, MaxEvidence)}
		},
		func() Validator { return new(CertifyRequest) }},
	{"CertifyBody", MaxCertifyBody, func() Validator { return validCertifyBody() },
		func() Validator {
			return &CertifyBody{V: Version, Task: strings.Repeat("t", MaxTaskName), Cluster: strings.Repeat("c", MaxTaskName), Groups: maxGroupIDs(),
				KEM: 0xffff, PublicKey: fill(1, MaxPublicKey), Nonce: fill(2, NonceSize), Time: -1 << 63}
		},
		func() Validator { return new(CertifyBody) }},
	{"CertifyReply", MaxCertifyReply, func() Validator { return validCertifyReply() },
		func() Validator {
			return &CertifyReply{V: Version, Body: fill(1, MaxReportBody), Signature: fill(2, MaxSignature)}
		},
		func() Validator { return new(CertifyReply) }},
	{"ReportBody", MaxReportBody, func() Validator { return validReportBody() },
		func() Validator {
			chain := make([][]byte, MaxChain)
			for i := range chain {
				chain[i] = fill(byte(i), MaxCertificate)
			}
			var groups []GroupCert
			for i, id := range maxGroupIDs() {
				groups = append(groups, GroupCert{ID: id, Cert: fill(byte(i), MaxCertificate)})
			}
			return &ReportBody{V: Version, RequestHash: fill(1, HashSize), Task: strings.Repeat("r", MaxTaskName), Chain: chain, Groups: groups, Sealed: fill(2, MaxSealed)}
		},
		func() Validator { return new(ReportBody) }},
	{"Secrets", MaxSecrets, func() Validator { return validSecrets() },
		func() Validator {
			var groups []GroupKey
			for i, id := range maxGroupIDs() {
				groups = append(groups, GroupKey{ID: id, Key: fill(byte(i), MaxGroupKey)})
			}
			return &Secrets{V: Version, TaskKey: fill(1, 1<<10), Cluster: strings.Repeat("c", MaxTaskName), ClusterEpoch: 1<<32 - 1,
				ClusterKey: fill(3, ClusterKeySize), Groups: groups}
		},
		func() Validator { return new(Secrets) }},
	{"GroupProof", MaxGroupProof, func() Validator { return validGroupProof() },
		func() Validator {
			chain := make([][]byte, MaxChain-1)
			for i := range chain {
				chain[i] = fill(byte(i), MaxCertificate)
			}
			return &GroupProof{V: Version, Chain: chain, Signature: fill(9, MaxSignature)}
		},
		func() Validator { return new(GroupProof) }},
	{"Error", errorPayloadLimit, func() Validator { return validError() },
		func() Validator {
			return &Error{V: Version, Code: Code(strings.Repeat("c", maxCodeLen)), Reason: strings.Repeat("r", maxReasonLen)}
		},
		func() Validator { return new(Error) }},
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// asMap re-decodes an encoded message as a generic map, for tests that edit
// the wire form directly.
func asMap(t testing.TB, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := msgpack.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// everyWireType is every message type the table tests run over: the
// issuer's (wireTypes) and the manager's (managerWireTypes).
func everyWireType() []wireType { return slices.Concat(wireTypes, managerWireTypes) }

func TestRoundTripEveryType(t *testing.T) {
	for _, wt := range everyWireType() {
		t.Run(wt.name, func(t *testing.T) {
			for _, v := range []Validator{wt.valid(), wt.maximal()} {
				if err := v.Validate(); err != nil {
					t.Fatalf("test value does not validate: %v", err)
				}
				b := mustMarshal(t, v)
				if len(b) > wt.limit {
					t.Fatalf("a valid %s encodes to %d bytes, over its cap %d", wt.name, len(b), wt.limit)
				}
				got := wt.zero()
				if err := Decode(b, wt.limit, got); err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if !reflect.DeepEqual(got, v) {
					t.Fatalf("round trip changed the value:\n got %+v\nwant %+v", got, v)
				}
				if again := mustMarshal(t, got); !bytes.Equal(again, b) {
					t.Fatalf("re-encoding differs:\n got % x\nwant % x", again, b)
				}
			}
		})
	}
}

func TestUnknownFieldRefused(t *testing.T) {
	for _, wt := range everyWireType() {
		t.Run(wt.name, func(t *testing.T) {
			m := asMap(t, mustMarshal(t, wt.valid()))
			m["extra"] = 1
			err := Decode(mustMarshal(t, m), wt.limit, wt.zero())
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), `unknown field "extra"`) {
				t.Fatalf("unknown field: got %v, want ErrMalformed naming the field", err)
			}
		})
	}
}

func TestFieldNamesAreCaseSensitive(t *testing.T) {
	m := asMap(t, mustMarshal(t, validEvidenceRequest()))
	m["Nonce"] = m["nonce"]
	delete(m, "nonce")
	if err := Decode(mustMarshal(t, m), MaxEvidenceRequest, new(EvidenceRequest)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("field %q: got %v, want ErrMalformed", "Nonce", err)
	}
}

func TestTrailingBytesRefused(t *testing.T) {
	for _, wt := range everyWireType() {
		t.Run(wt.name, func(t *testing.T) {
			b := mustMarshal(t, wt.valid())
			for _, tail := range [][]byte{{0x00}, {0xc0}, b} {
				in := append(bytes.Clone(b), tail...)
				if len(in) > wt.limit {
					continue // refused as too large: TestOversizeRefusedBeforeParsing
				}
				err := Decode(in, wt.limit, wt.zero())
				if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "trailing") {
					t.Fatalf("trailing %x: got %v, want ErrMalformed about trailing bytes", tail, err)
				}
			}
		})
	}
}

func TestTruncatedRefused(t *testing.T) {
	for _, wt := range everyWireType() {
		t.Run(wt.name, func(t *testing.T) {
			b := mustMarshal(t, wt.valid())
			for n := range len(b) {
				if err := Decode(b[:n], wt.limit, wt.zero()); !errors.Is(err, ErrMalformed) {
					t.Fatalf("first %d of %d bytes: got %v, want ErrMalformed", n, len(b), err)
				}
			}
		})
	}
}

func TestOversizeRefusedBeforeParsing(t *testing.T) {
	for _, wt := range everyWireType() {
		t.Run(wt.name, func(t *testing.T) {
			// 0xc1 is never valid msgpack: if it were parsed, the error
			// would be ErrMalformed.
			err := Decode(fill(0xc1, wt.limit+1), wt.limit, wt.zero())
			if !errors.Is(err, ErrTooLarge) || errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrTooLarge only", err)
			}
			// A valid message is refused too when it exceeds the cap given.
			b := mustMarshal(t, wt.valid())
			if err := Decode(b, len(b)-1, wt.zero()); !errors.Is(err, ErrTooLarge) {
				t.Fatalf("valid message over the cap: got %v, want ErrTooLarge", err)
			}
			if err := Decode(b, len(b), wt.zero()); err != nil {
				t.Fatalf("valid message exactly at the cap: %v", err)
			}
		})
	}
}

func TestWrongVersionRefused(t *testing.T) {
	for _, wt := range everyWireType() {
		t.Run(wt.name, func(t *testing.T) {
			for _, v := range []uint16{0, Version + 1, 0xffff} {
				m := asMap(t, mustMarshal(t, wt.valid()))
				m["v"] = v
				err := Decode(mustMarshal(t, m), wt.limit, wt.zero())
				if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), fmt.Sprint(v)) {
					t.Fatalf("version %d: got %v, want ErrVersion naming it", v, err)
				}
			}
			// Validate checks the version too, for values built in memory.
			mv := wt.valid()
			reflect.ValueOf(mv).Elem().FieldByName("V").SetUint(uint64(Version + 1))
			if err := mv.Validate(); !errors.Is(err, ErrVersion) {
				t.Fatalf("Validate of version %d: got %v, want ErrVersion", Version+1, err)
			}
			// A message without a version is version 0.
			m := asMap(t, mustMarshal(t, wt.valid()))
			delete(m, "v")
			if err := Decode(mustMarshal(t, m), wt.limit, wt.zero()); !errors.Is(err, ErrVersion) {
				t.Fatalf("no version: got %v, want ErrVersion", err)
			}
		})
	}
}

// TestIntegerOutOfRangeRefused: a number that does not fit its field must be
// refused, not wrapped into range (version 0x10001 is not version 1).
func TestIntegerOutOfRangeRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		field string
		value any
		wt    int // index in wireTypes
	}{
		{"version 0x10001", "v", uint32(0x10001), 0},
		{"version -1", "v", int8(-1), 0},
		{"kem 0x10020", "kem", uint32(0x10000 | uint32(KEMX25519)), 3},
		{"time 2^63", "time", uint64(1 << 63), 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wt := wireTypes[tc.wt]
			m := asMap(t, mustMarshal(t, wt.valid()))
			m[tc.field] = tc.value
			v := wt.zero()
			if err := Decode(mustMarshal(t, m), wt.limit, v); err == nil {
				t.Fatalf("%s = %v accepted, decoded as %+v", tc.field, tc.value, v)
			}
		})
	}
}

func TestFieldBounds(t *testing.T) {
	type mutation struct {
		name string
		v    Validator
		ok   bool // the mutation is at a bound and must be accepted
	}
	er := func(f func(*EvidenceRequest)) Validator { v := validEvidenceRequest(); f(v); return v }
	ep := func(f func(*EvidenceReply)) Validator { v := validEvidenceReply(); f(v); return v }
	cr := func(f func(*CertifyRequest)) Validator { v := validCertifyRequest(); f(v); return v }
	cb := func(f func(*CertifyBody)) Validator { v := validCertifyBody(); f(v); return v }
	cp := func(f func(*CertifyReply)) Validator { v := validCertifyReply(); f(v); return v }
	rb := func(f func(*ReportBody)) Validator { v := validReportBody(); f(v); return v }
	sc := func(f func(*Secrets)) Validator { v := validSecrets(); f(v); return v }
	ee := func(f func(*Error)) Validator { v := validError(); f(v); return v }
	cases := []mutation{
		{"EvidenceRequest nonce short", er(func(m *EvidenceRequest) { m.Nonce = fill(1, NonceSize-1) }), false},
		{"EvidenceRequest nonce long", er(func(m *EvidenceRequest) { m.Nonce = fill(1, NonceSize+1) }), false},
		{"EvidenceRequest nonce missing", er(func(m *EvidenceRequest) { m.Nonce = nil }), false},

		{"EvidenceReply evidence empty", ep(func(m *EvidenceReply) { m.Evidence = nil }), false},
		{"EvidenceReply evidence max", ep(func(m *EvidenceReply) { m.Evidence = fill(1, MaxEvidence) }), true},
		{"EvidenceReply evidence over", ep(func(m *EvidenceReply) { m.Evidence = fill(1, MaxEvidence+1) }), false},
		{"EvidenceReply root empty", ep(func(m *EvidenceReply) { m.Root = nil }), false},
		{"EvidenceReply root over", ep(func(m *EvidenceReply) { m.Root = fill(1, MaxCertificate+1) }), false},
		{"EvidenceReply policy hash short", ep(func(m *EvidenceReply) { m.PolicyHash = fill(1, HashSize-1) }), false},
		{"EvidenceReply backend empty", ep(func(m *EvidenceReply) { m.Backend = "" }), false},
		{"EvidenceReply backend max", ep(func(m *EvidenceReply) { m.Backend = strings.Repeat("x", MaxBackend) }), true},
		{"EvidenceReply backend over", ep(func(m *EvidenceReply) { m.Backend = strings.Repeat("x", MaxBackend+1) }), false},

		{"CertifyRequest body empty", cr(func(m *CertifyRequest) { m.Body = nil }), false},
		{"CertifyRequest body over", cr(func(m *CertifyRequest) { m.Body = fill(1, MaxCertifyBody+1) }), false},
		{"CertifyRequest evidence empty", cr(func(m *CertifyRequest) { m.Evidence = []byte{} }), false},
		{"CertifyRequest evidence over", cr(func(m *CertifyRequest) { m.Evidence = fill(1, MaxEvidence+1) }), false},

		{"CertifyBody task empty", cb(func(m *CertifyBody) { m.Task = "" }), false},
		{"CertifyBody task upper case", cb(func(m *CertifyBody) { m.Task = "Demo" }), false},
		{"CertifyBody task leading hyphen", cb(func(m *CertifyBody) { m.Task = "-demo" }), false},
		{"CertifyBody task trailing hyphen", cb(func(m *CertifyBody) { m.Task = "demo-" }), false},
		{"CertifyBody task newline", cb(func(m *CertifyBody) { m.Task = "demo\n" }), false},
		{"CertifyBody task max", cb(func(m *CertifyBody) { m.Task = strings.Repeat("a", MaxTaskName) }), true},
		{"CertifyBody task over", cb(func(m *CertifyBody) { m.Task = strings.Repeat("a", MaxTaskName+1) }), false},
		{"CertifyBody public key empty", cb(func(m *CertifyBody) { m.PublicKey = nil }), false},
		{"CertifyBody public key max", cb(func(m *CertifyBody) { m.PublicKey = fill(1, MaxPublicKey) }), true},
		{"CertifyBody public key over", cb(func(m *CertifyBody) { m.PublicKey = fill(1, MaxPublicKey+1) }), false},
		{"CertifyBody nonce short", cb(func(m *CertifyBody) { m.Nonce = fill(1, NonceSize-1) }), false},
		{"CertifyBody nonce long", cb(func(m *CertifyBody) { m.Nonce = fill(1, NonceSize+1) }), false},

		{"CertifyReply body empty", cp(func(m *CertifyReply) { m.Body = nil }), false},
		{"CertifyReply body over", cp(func(m *CertifyReply) { m.Body = fill(1, MaxReportBody+1) }), false},
		{"CertifyReply signature short", cp(func(m *CertifyReply) { m.Signature = fill(1, 7) }), false},
		{"CertifyReply signature min", cp(func(m *CertifyReply) { m.Signature = fill(1, 8) }), true},
		{"CertifyReply signature over", cp(func(m *CertifyReply) { m.Signature = fill(1, MaxSignature+1) }), false},

		{"ReportBody task invalid", rb(func(m *ReportBody) { m.Task = "a_b" }), false},
		{"ReportBody chain of one", rb(func(m *ReportBody) { m.Chain = m.Chain[:1] }), false},
		{"ReportBody chain max", rb(func(m *ReportBody) { m.Chain = append(m.Chain, fill(1, 1), fill(1, 1)) }), true},
		{"ReportBody chain too long", rb(func(m *ReportBody) { m.Chain = append(m.Chain, fill(1, 1), fill(1, 1), fill(1, 1)) }), false},
		{"ReportBody chain empty certificate", rb(func(m *ReportBody) { m.Chain[1] = nil }), false},
		{"ReportBody chain certificate over", rb(func(m *ReportBody) { m.Chain[0] = fill(1, MaxCertificate+1) }), false},
		{"ReportBody request hash long", rb(func(m *ReportBody) { m.RequestHash = fill(1, HashSize+1) }), false},
		{"ReportBody sealed empty", rb(func(m *ReportBody) { m.Sealed = nil }), false},
		{"ReportBody sealed over", rb(func(m *ReportBody) { m.Sealed = fill(1, MaxSealed+1) }), false},

		{"Secrets task key empty", sc(func(m *Secrets) { m.TaskKey = nil }), false},
		{"Secrets task key over", sc(func(m *Secrets) { m.TaskKey = fill(1, 1<<10+1) }), false},

		{"Error code empty", ee(func(m *Error) { m.Code = "" }), false},
		{"Error code over", ee(func(m *Error) { m.Code = Code(strings.Repeat("c", maxCodeLen+1)) }), false},
		{"Error reason empty", ee(func(m *Error) { m.Reason = "" }), true},
		{"Error reason over", ee(func(m *Error) { m.Reason = strings.Repeat("r", maxReasonLen+1) }), false},
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

// header returns a msgpack header byte followed by a big-endian length.
func header(code byte, width int, n uint32) []byte {
	b := []byte{code}
	switch width {
	case 1:
		return append(b, byte(n))
	case 2:
		return binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		return binary.BigEndian.AppendUint32(b, n)
	}
}

// inNonce wraps a hostile value as the nonce of an EvidenceRequest.
func inNonce(v []byte) []byte {
	b := []byte{0x82, 0xa1, 'v', 0x01, 0xa5, 'n', 'o', 'n', 'c', 'e'}
	return append(b, v...)
}

func lyingHeaders() map[string][]byte {
	return map[string][]byte{
		"bin32 4GiB":            header(0xc6, 4, 0xffffffff),
		"str32 4GiB":            header(0xdb, 4, 0xffffffff),
		"array32 4G items":      header(0xdd, 4, 0xffffffff),
		"map32 4G pairs":        header(0xdf, 4, 0xffffffff),
		"ext32 4GiB":            append(header(0xc9, 4, 0xffffffff), 0x01),
		"bin16 64KiB":           append(header(0xc5, 2, 0xffff), 1, 2, 3),
		"str8 255":              append(header(0xd9, 1, 0xff), 'a'),
		"array16 64K items":     append(header(0xdc, 2, 0xffff), 1, 2, 3),
		"map16 64K pairs":       append(header(0xde, 2, 0xffff), 1, 2, 3),
		"fixarray 15 items":     {0x9f, 1, 2},
		"fixmap 15 pairs":       {0x8f, 1, 2},
		"fixstr 31":             {0xbf, 'a'},
		"nonce bin32 4GiB":      inNonce(header(0xc6, 4, 0xffffffff)),
		"nonce str32 4GiB":      inNonce(header(0xdb, 4, 0xffffffff)),
		"nonce array32 4G":      inNonce(header(0xdd, 4, 0xffffffff)),
		"nonce map32 4G":        inNonce(header(0xdf, 4, 0xffffffff)),
		"nonce bin32 one extra": inNonce(append(header(0xc6, 4, 33), fill(0, 32)...)),
		"truncated length":      {0xc6, 0xff, 0xff},
		"truncated uint64":      {0xcf, 0, 0},
		"truncated fixext16":    {0xd8, 1, 2},
	}
}

func TestLyingLengthHeaderRefusedByScan(t *testing.T) {
	for name, b := range lyingHeaders() {
		t.Run(name, func(t *testing.T) {
			if _, err := scan(b, 0, 0); err == nil {
				t.Fatal("scan accepted a header that claims more than remains")
			}
			err := Decode(b, MaxEvidenceRequest, new(EvidenceRequest))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestLyingLengthHeaderAllocatesLittle(t *testing.T) {
	// Decoding a header that claims 4 GiB must not allocate anywhere near
	// that. The average over many runs is compared with a generous bound.
	const runs = 100
	for name, b := range lyingHeaders() {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			_ = Decode(b, MaxCertifyRequest, new(CertifyRequest))
		}
		runtime.ReadMemStats(&after)
		if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > 64<<10 {
			t.Errorf("%s: %d bytes allocated per decode", name, per)
		}
	}
}

func nested(depth int) []byte {
	return append(fill(0x91, depth), 0x01) // [[[...[1]...]]]
}

func TestNestingDepth(t *testing.T) {
	if end, err := scan(nested(maxDepth), 0, 0); err != nil || end != maxDepth+1 {
		t.Fatalf("nesting %d: scan = %d, %v; want accepted", maxDepth, end, err)
	}
	for _, depth := range []int{maxDepth + 1, 100, 10000} {
		_, err := scan(nested(depth), 0, 0)
		if err == nil || !strings.Contains(err.Error(), "nesting") {
			t.Fatalf("nesting %d: scan error %v, want a nesting error", depth, err)
		}
		if err := Decode(nested(depth), 1<<20, new(ReportBody)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "nesting") {
			t.Fatalf("nesting %d: Decode error %v, want ErrMalformed about nesting", depth, err)
		}
	}
	// Deep maps too: {"a": {"a": ...}}.
	var b []byte
	for range maxDepth + 1 {
		b = append(b, 0x81, 0xa1, 'a')
	}
	b = append(b, 0x01)
	if err := Decode(inNonce(b), 1<<20, new(EvidenceRequest)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "nesting") {
		t.Fatalf("deep maps: got %v, want ErrMalformed about nesting", err)
	}
}

// TestScanAcceptsEveryType guards against the pre-scan refusing valid
// msgpack: each value's encoding must scan to its full length.
func TestScanAcceptsEveryType(t *testing.T) {
	values := []any{
		nil, true, false, 0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 40,
		-1, -32, -33, -128, -129, -32768, -32769, -1 << 40,
		int8(-5), int16(-300), int32(-70000), int64(-1 << 50),
		uint8(200), uint16(60000), uint32(4000000000), uint64(1 << 63),
		float32(1.5), 2.25,
		"", strings.Repeat("s", 31), strings.Repeat("s", 32), strings.Repeat("s", 255), strings.Repeat("s", 256), strings.Repeat("s", 70000),
		[]byte{}, fill(1, 255), fill(1, 256), fill(1, 70000),
		[]int{}, make([]int, 15), make([]int, 16), make([]int, maxItems),
		map[string]int{}, map[string]int{"a": 1},
		time.Unix(1, 0), time.Unix(1<<33, 1), // timestamp ext: fixext4, fixext8, ext8
		time.Unix(1<<40, 5),
		[]any{[]any{map[string]any{"x": []byte{1}}}},
	}
	big := make(map[string]int, maxItems)
	for i := range maxItems {
		big[fmt.Sprint(i)] = i
	}
	values = append(values, big)
	// Containers past the cap are refused, however well formed.
	over := make(map[string]int, maxItems+1)
	for i := range maxItems + 1 {
		over[fmt.Sprint(i)] = i
	}
	for _, v := range []any{make([]int, maxItems+1), over} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := scan(b, 0, 0); err == nil {
			t.Errorf("%T of %d entries: scan accepted it, want refusal past maxItems", v, maxItems+1)
		}
	}
	for _, v := range values {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if end, err := scan(b, 0, 0); err != nil || end != len(b) {
			t.Errorf("%T %.40v: scan = %d, %v; want %d", v, v, end, err, len(b))
		}
	}
	// Extension types of every size.
	for _, b := range [][]byte{
		{0xd4, 1, 0}, {0xd5, 1, 0, 0}, {0xd6, 1, 0, 0, 0, 0},
		append([]byte{0xd7, 1}, fill(0, 8)...), append([]byte{0xd8, 1}, fill(0, 16)...),
		{0xc7, 2, 1, 0, 0}, {0xc8, 0, 2, 1, 0, 0}, {0xc9, 0, 0, 0, 2, 1, 0, 0},
	} {
		if end, err := scan(b, 0, 0); err != nil || end != len(b) {
			t.Errorf("ext % x: scan = %d, %v; want %d", b, end, err, len(b))
		}
	}
	if _, err := scan([]byte{0xc1}, 0, 0); err == nil {
		t.Error("scan accepted the never-used type byte 0xc1")
	}
	if _, err := scan(nil, 0, 0); err == nil {
		t.Error("scan accepted an empty payload")
	}
}

func TestDecodeNeverUsesRefusedValue(t *testing.T) {
	// Garbage of every kind gives an error wrapping one of the sentinels.
	for _, b := range [][]byte{nil, {0xc1}, {0x01}, {0xc0}, {0x90}, {0x80}, []byte("not msgpack at all")} {
		err := Decode(b, MaxEvidenceRequest, new(EvidenceRequest))
		if err == nil {
			t.Fatalf("% x accepted", b)
		}
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrField) {
			t.Fatalf("% x: untyped error %v", b, err)
		}
	}
}

func TestErrorIsMatchesByCode(t *testing.T) {
	e := Refusal(CodeMeasurement, "nope")
	for _, tc := range []struct {
		target error
		want   bool
	}{
		{ErrMeasurement, true},
		{&Error{Code: CodeMeasurement, Reason: "another reason"}, true},
		{ErrBinding, false},
		{ErrReplay, false},
		{errors.New(string(CodeMeasurement)), false},
	} {
		if got := errors.Is(e, tc.target); got != tc.want {
			t.Errorf("errors.Is(%v, %v) = %t, want %t", e, tc.target, got, tc.want)
		}
	}
	wrapped := fmt.Errorf("certify: %w", e)
	if !errors.Is(wrapped, ErrMeasurement) || errors.Is(wrapped, ErrSimulated) {
		t.Error("a wrapped Error does not match by code")
	}
	var got *Error
	if !errors.As(wrapped, &got) || got.Code != CodeMeasurement || got.Reason != "nope" {
		t.Errorf("errors.As gives %v", got)
	}
	if e.Error() != "measurement_not_accepted: nope" {
		t.Errorf("Error() = %q", e.Error())
	}
	if s := (&Error{Code: CodeReplay}).Error(); s != string(CodeReplay) {
		t.Errorf("Error() without reason = %q", s)
	}
}

func TestDecodeErrorGarbage(t *testing.T) {
	for _, tc := range []struct {
		name, header string
		data         []byte
		want         Code
	}{
		{"garbage", string(CodeMeasurement), []byte{0xc1, 0x00}, CodeMeasurement},
		{"empty", string(CodeReplay), nil, CodeReplay},
		{"oversize", string(CodeOverloaded), fill(0xa0, errorPayloadLimit+1), CodeOverloaded},
		{"wrong version", string(CodeBinding), mustMarshal(t, &Error{V: 9, Code: CodeInternal, Reason: "x"}), CodeBinding},
		{"no header", "", []byte{0xc1}, unknownCode},
		{"long header", strings.Repeat("h", 200), []byte{0xc1}, Code(strings.Repeat("h", maxCodeLen))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := DecodeError(tc.header, tc.data)
			if e == nil || e.Code != tc.want || e.V != Version {
				t.Fatalf("got %+v, want code %q", e, tc.want)
			}
			if !strings.HasPrefix(e.Reason, "undecodable error reply: ") {
				t.Fatalf("reason %q does not say the reply was undecodable", e.Reason)
			}
			if err := e.Validate(); err != nil {
				t.Fatalf("the Error DecodeError made does not validate: %v", err)
			}
		})
	}
	// A good reply decodes as sent, whatever the header says.
	sent := Refusal(CodeSimulated, "simulated")
	got := DecodeError(string(CodeInternal), mustMarshal(t, sent))
	if !reflect.DeepEqual(got, sent) || !errors.Is(got, ErrSimulated) {
		t.Fatalf("got %+v, want %+v", got, sent)
	}
}

// TestDecodeErrorBoundsReason: the Error DecodeError builds from an
// undecodable reply must itself respect the reason bound, whatever the reply
// holds (here an unknown field whose 900-byte name the decode error quotes).
func TestDecodeErrorBoundsReason(t *testing.T) {
	b := mustMarshal(t, map[string]any{strings.Repeat("A", 900): 1})
	e := DecodeError(string(CodeInternal), b)
	if err := e.Validate(); err != nil {
		t.Fatalf("reason of %d bytes: %v", len(e.Reason), err)
	}
}

func TestRefusalBoundsReason(t *testing.T) {
	e := Refusal(CodeInternal, "%s", strings.Repeat("é", maxReasonLen)) // 2 bytes a rune
	if len(e.Reason) > maxReasonLen || !utf8.ValidString(e.Reason) {
		t.Fatalf("reason is %d bytes, valid UTF-8 %t", len(e.Reason), utf8.ValidString(e.Reason))
	}
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := DecodeError("", mustMarshal(t, e)).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestTruncateNeverSplitsUTF8(t *testing.T) {
	for _, s := range []string{"", "abc", "héllo", "日本語のテキスト", "🙂🙂🙂", "a🙂b日c"} {
		for n := 0; n <= len(s)+1; n++ {
			got := truncate(s, n)
			if len(got) > n || !strings.HasPrefix(s, got) || !utf8.ValidString(got) {
				t.Fatalf("truncate(%q, %d) = %q", s, n, got)
			}
			// It cuts at the last rune boundary, not earlier.
			if rest := s[len(got):]; rest != "" && len(got)+utf8.RuneLen([]rune(rest)[0]) <= n {
				t.Fatalf("truncate(%q, %d) = %q cut more than needed", s, n, got)
			}
		}
	}
}

func TestValidTaskName(t *testing.T) {
	for name, want := range map[string]bool{
		"a": true, "demo": true, "a-b": true, "0": true, "a1-2b": true, strings.Repeat("a", MaxTaskName): true,
		"": false, "-a": false, "a-": false, "A": false, "a_b": false, "a.b": false, "a b": false,
		strings.Repeat("a", MaxTaskName+1): false, "é": false, "a\n": false,
	} {
		if got := ValidTaskName(name); got != want {
			t.Errorf("ValidTaskName(%q) = %t, want %t", name, got, want)
		}
	}
}

func TestGroupListsRefused(t *testing.T) {
	tooMany := append(maxGroupIDs(), "extra")
	for name, groups := range map[string][]string{
		"too many":    tooMany,
		"named twice": {"mpc", "other", "mpc"},
		"invalid id":  {"Not_Valid"},
		"empty id":    {""},
		"too long id": {strings.Repeat("g", MaxTaskName+1)},
	} {
		t.Run(name, func(t *testing.T) {
			body := validCertifyBody()
			body.Groups = groups
			if err := body.Validate(); !errors.Is(err, ErrField) {
				t.Errorf("certify body: got %v, want ErrField", err)
			}
			rb := validReportBody()
			sec := validSecrets()
			for _, id := range groups {
				rb.Groups = append(rb.Groups, GroupCert{ID: id, Cert: []byte{1}})
				sec.Groups = append(sec.Groups, GroupKey{ID: id, Key: []byte{1}})
			}
			if err := rb.Validate(); !errors.Is(err, ErrField) {
				t.Errorf("report body: got %v, want ErrField", err)
			}
			if err := sec.Validate(); !errors.Is(err, ErrField) {
				t.Errorf("secrets: got %v, want ErrField", err)
			}
		})
	}
	sec := validSecrets()
	sec.Groups = []GroupKey{{ID: "g", Key: fill(1, MaxGroupKey+1)}}
	if err := sec.Validate(); !errors.Is(err, ErrField) {
		t.Errorf("oversize group key: got %v, want ErrField", err)
	}
	rb := validReportBody()
	rb.Groups = []GroupCert{{ID: "g"}}
	if err := rb.Validate(); !errors.Is(err, ErrField) {
		t.Errorf("empty group certificate: got %v, want ErrField", err)
	}
}

func TestGroupProofDigestSeparates(t *testing.T) {
	ex := fill(1, GroupExporterSize)
	base := GroupProofDigest(GroupRoleClient, "mpc", ex)
	for name, d := range map[string][HashSize]byte{
		"other role":     GroupProofDigest(GroupRoleServer, "mpc", ex),
		"other group":    GroupProofDigest(GroupRoleClient, "mpd", ex),
		"other exporter": GroupProofDigest(GroupRoleClient, "mpc", fill(2, GroupExporterSize)),
		"shifted field":  GroupProofDigest(GroupRoleClient+"m", "pc", ex),
	} {
		if d == base {
			t.Errorf("%s: same digest", name)
		}
	}
}
