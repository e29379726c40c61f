package messages

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// managerHostileSeeds are hostile inputs shaped like the manager's messages:
// a known first field followed by a lying header, a chain of too many
// entries, out-of-range numbers.
func managerHostileSeeds() [][]byte {
	v1 := []byte{0xa1, 'v', 0xcd, 0x00, 0x01}
	field := func(name string, value []byte) []byte {
		b := append([]byte{0x82}, v1...)
		b = append(b, 0xa0|byte(len(name)))
		b = append(b, name...)
		return append(b, value...)
	}
	chain65 := header(0xdc, 2, maxItems+1)
	for range maxItems + 1 {
		chain65 = append(chain65, 0xc4, 0x01, 0x00)
	}
	return [][]byte{
		field("body", header(0xc6, 4, 0xffffffff)),
		field("signature", header(0xc5, 2, 0xffff)),
		field("chain", header(0xdd, 4, 0xffffffff)),
		field("chain", chain65),
		field("chain", append(header(0xdc, 2, 1), header(0xc6, 4, 0xffffffff)...)),
		field("cluster", header(0xdb, 4, 0xffffffff)),
		field("unit", header(0xd9, 1, 0xff)),
		field("token", header(0xc4, 1, 0xff)),
		field("misses", []byte{0xce, 0x00, 0x01, 0x00, 0x03}),
		field("interval", []byte{0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0}),
		field("known", []byte{0x01}),
		{0x81, 0xa1, 'v', 0xcd, 0xff, 0xff},
		{0x81, 0xa1, 'v', 0xce, 0x00, 0x01, 0x00, 0x01},
	}
}

// fuzzManagerDecoder runs the fuzz target of one of the manager's message
// types: decoding never panics and refuses with a typed error; what it
// accepts is within the cap, validates, and re-encodes to exactly the input
// (the canonical encoding), which decodes again to an equal value. check, if
// not nil, is run on every accepted value.
func fuzzManagerDecoder[T any, PT interface {
	*T
	Validator
}](f *testing.F, limit int, check func(*testing.T, PT), valid ...PT) {
	for _, v := range valid {
		b := mustMarshal(f, v)
		f.Add(b)
		f.Add(append(bytes.Clone(b), 0))                       // trailing byte
		f.Add(b[:len(b)-1])                                    // truncated
		f.Add(append([]byte{0x81, 0xa1, 'x', 0x00}, b[1:]...)) // wrong map size
		m := asMap(f, b)
		m["v"] = Version + 1
		f.Add(mustMarshal(f, m)) // wrong version
		m["v"] = Version
		m["extra"] = 1
		f.Add(mustMarshal(f, m)) // unknown field
	}
	for _, b := range hostileSeeds() {
		f.Add(b)
	}
	for _, b := range managerHostileSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v T
		err := Decode(data, limit, PT(&v))
		if err != nil {
			if !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrField) {
				t.Fatalf("untyped refusal: %v", err)
			}
			if len(data) > limit && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("%d bytes over the cap %d refused as %v, want ErrTooLarge", len(data), limit, err)
			}
			return
		}
		if len(data) > limit {
			t.Fatalf("accepted %d bytes, cap %d", len(data), limit)
		}
		if err := PT(&v).Validate(); err != nil {
			t.Fatalf("Decode accepted a value that does not validate: %v", err)
		}
		again, err := Marshal(PT(&v))
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted a non-canonical encoding:\n  in % x\nout % x", data, again)
		}
		var w T
		if err := Decode(again, limit, PT(&w)); err != nil {
			t.Fatalf("re-encoded value does not decode: %v", err)
		}
		if !reflect.DeepEqual(v, w) {
			t.Fatalf("round trip changed the value:\n got %+v\nwant %+v", w, v)
		}
		if check != nil {
			check(t, PT(&v))
		}
	})
}

// FuzzJoinRequest also decodes the body of every request it accepts, as the
// manager does, so that the nested decode is fuzzed with the outer one.
func FuzzJoinRequest(f *testing.F) {
	signed := &JoinRequest{V: Version, Body: mustMarshal(f, validJoinBody()), Signature: fill(1, 71)}
	hostileBody := &JoinRequest{V: Version, Body: append([]byte{0x81, 0xa5, 'c', 'h', 'a', 'i', 'n'}, header(0xdd, 4, 0xffffffff)...), Signature: fill(1, 8)}
	fuzzManagerDecoder(f, MaxJoinRequest, func(t *testing.T, r *JoinRequest) {
		if len(r.Body) > MaxJoinBody || len(r.Signature) > MaxSignature {
			t.Fatalf("body %d bytes, signature %d bytes", len(r.Body), len(r.Signature))
		}
		var body JoinBody
		if err := Decode(r.Body, MaxJoinBody, &body); err != nil {
			if !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrField) {
				t.Fatalf("body: untyped refusal: %v", err)
			}
			return
		}
		if again := mustMarshal(t, &body); !bytes.Equal(again, r.Body) {
			t.Fatal("body: accepted a non-canonical encoding")
		}
		_ = JoinDigest(r.Body)
	}, validJoinRequest(), signed, hostileBody,
		&JoinRequest{V: Version, Body: []byte{1}, Signature: fill(2, MaxSignature)})
}

// FuzzJoinBody: the seeds under testdata/fuzz/FuzzJoinBody named bug-* are
// regressions of bugs since fixed; see TestJoinBodyAddrHasNoControlCharacter.
func FuzzJoinBody(f *testing.F) {
	one := validJoinBody()
	one.Chain, one.Addr, one.Unit = one.Chain[:1], "", "-"
	three := validJoinBody()
	three.Chain = append(three.Chain, []byte{1})
	fuzzManagerDecoder(f, MaxJoinBody, func(t *testing.T, b *JoinBody) {
		if !ValidTaskName(b.Cluster) || !ValidTaskName(b.Task) || !ValidUnitID(b.Unit) {
			t.Fatalf("accepted names %q %q %q", b.Cluster, b.Task, b.Unit)
		}
		if len(b.Chain) < 1 || len(b.Chain) >= MaxChain || len(b.Addr) > MaxAddr ||
			len(b.Measurement) != HashSize || len(b.Nonce) != NonceSize {
			t.Fatalf("accepted out-of-bounds fields: %+v", b)
		}
		if strings.ContainsFunc(b.Addr, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("accepted an address with a control character: %q", b.Addr)
		}
	}, validJoinBody(), one, three)
}

func FuzzJoinReply(f *testing.F) {
	fuzzManagerDecoder(f, MaxJoinReply, func(t *testing.T, r *JoinReply) {
		if r.Interval <= 0 || r.Misses == 0 || len(r.Token) != TokenSize {
			t.Fatalf("accepted %+v", r)
		}
	}, validJoinReply(), &JoinReply{V: Version, Token: fill(1, TokenSize), Interval: 1, Misses: 1},
		&JoinReply{V: Version, Token: fill(2, TokenSize), Interval: 1<<63 - 1, Misses: 0xffff})
}

func FuzzHeartbeat(f *testing.F) {
	fuzzManagerDecoder(f, MaxHeartbeat, func(t *testing.T, h *Heartbeat) {
		if !ValidTaskName(h.Cluster) || !ValidUnitID(h.Unit) || len(h.Token) != TokenSize {
			t.Fatalf("accepted %+v", h)
		}
	}, validHeartbeat(), managerWireTypes[3].maximal().(*Heartbeat))
}

func FuzzHeartbeatReply(f *testing.F) {
	fuzzManagerDecoder(f, MaxHeartbeatReply, nil, validHeartbeatReply(), &HeartbeatReply{V: Version})
}
