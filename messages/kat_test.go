package messages

// Known-answer tests of the wire: the msgpack encodings of the messages,
// the report-data bindings, digests and HPKE info strings, and the names of
// subjects, streams and queues.
//
// The expected values are in testdata/vectors.json, written once from a
// reviewed run and never recomputed by the code under test: a change that
// alters any of them breaks every deployed client, unit or issuer, and must
// come with a protocol version bump (Version) and new vectors. Encodings are
// also decoded back into the message they were made from, some are derived
// again by hand below (TestEncodingsByHand), and every binding is computed
// again by spec, from the design with the labels as literals, so that a
// vector is not merely what this package produced.
//
// To add a vector, write its inputs into the file (a message's fields by
// their wire names, byte strings in hex, null for nil; outputs empty) and run
//
//	go test ./messages -run TestKnownAnswers -args -write-vectors
//
// which fills in the outputs of every vector from the code under test.
// Review the diff before committing: an output that changed is a wire
// break, not something to regenerate.

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/cohort-dev/cohort/internal/kattest"
)

// hexBytes is a byte string written as hex in the vectors; null is nil.
type hexBytes = kattest.Hex

type messageVectors struct {
	Comment   []string          `json:"comment"`
	Encodings []encodingVector  `json:"encodings"`
	Bindings  []bindingVector   `json:"bindings"`
	Subjects  []subjectVector   `json:"subjects"`
	Constants map[string]string `json:"constants"`
}

// encodingVector: a message, its fields by wire name, and its encoding.
type encodingVector struct {
	Name     string          `json:"name"`
	Type     string          `json:"type"`
	Fields   json.RawMessage `json:"fields"`
	Encoding hexBytes        `json:"encoding"` // output
}

// bindingVector: a binding, digest or info string of this package, its
// arguments and its value.
type bindingVector struct {
	Name     string      `json:"name"`
	Function string      `json:"function"`
	Args     bindingArgs `json:"args"`
	Output   hexBytes    `json:"output"` // output
}

type bindingArgs struct {
	Body          hexBytes `json:"body,omitempty"`
	Root          hexBytes `json:"root,omitempty"`
	PolicyHash    hexBytes `json:"policy_hash,omitempty"`
	PolicyVersion uint64   `json:"policy_version,omitempty"`
	Nonce         hexBytes `json:"nonce,omitempty"`
	RequestHash   hexBytes `json:"request_hash,omitempty"`
	Code          string   `json:"code,omitempty"`
	Reason        string   `json:"reason,omitempty"`
	Role          string   `json:"role,omitempty"`
	Group         string   `json:"group,omitempty"`
	Exporter      hexBytes `json:"exporter,omitempty"`
	KeyID         hexBytes `json:"key_id,omitempty"`
	Index         uint8    `json:"index,omitempty"`
	Y             hexBytes `json:"y,omitempty"`
	Policy        uint64   `json:"policy,omitempty"`
	Threshold     uint8    `json:"threshold,omitempty"`
	Holder        hexBytes `json:"holder,omitempty"`
	Sealed        hexBytes `json:"sealed,omitempty"`
	Commit        hexBytes `json:"commit,omitempty"`
	Document      hexBytes `json:"document,omitempty"`
	OfferHash     hexBytes `json:"offer_hash,omitempty"`
}

// subjectVector: a subject, stream or queue name made by a function.
type subjectVector struct {
	Name     string      `json:"name"`
	Function string      `json:"function"`
	Args     subjectArgs `json:"args"`
	Output   string      `json:"output"` // output
}

type subjectArgs struct {
	Cluster  string   `json:"cluster,omitempty"`
	User     string   `json:"user,omitempty"`
	Verb     string   `json:"verb,omitempty"`
	Unit     string   `json:"unit,omitempty"`
	Instance string   `json:"instance,omitempty"`
	Session  hexBytes `json:"session,omitempty"`
	Seq      uint64   `json:"seq,omitempty"`
	Shard    int      `json:"shard,omitempty"`
}

// katTypes are the messages the vectors may name.
var katTypes = map[string]func() any{
	"EvidenceRequest":   func() any { return new(EvidenceRequest) },
	"EvidenceReply":     func() any { return new(EvidenceReply) },
	"CertifyRequest":    func() any { return new(CertifyRequest) },
	"CertifyBody":       func() any { return new(CertifyBody) },
	"CertifyReply":      func() any { return new(CertifyReply) },
	"ReportBody":        func() any { return new(ReportBody) },
	"Secrets":           func() any { return new(Secrets) },
	"GroupProof":        func() any { return new(GroupProof) },
	"Error":             func() any { return new(Error) },
	"Hello":             func() any { return new(Hello) },
	"HelloReply":        func() any { return new(HelloReply) },
	"HelloReplyBody":    func() any { return new(HelloReplyBody) },
	"SessionRecord":     func() any { return new(SessionRecord) },
	"SessionAck":        func() any { return new(SessionAck) },
	"SessionKeys":       func() any { return new(SessionKeys) },
	"Call":              func() any { return new(Call) },
	"CallReply":         func() any { return new(CallReply) },
	"CallClaim":         func() any { return new(CallClaim) },
	"JoinRequest":       func() any { return new(JoinRequest) },
	"JoinBody":          func() any { return new(JoinBody) },
	"JoinReply":         func() any { return new(JoinReply) },
	"Heartbeat":         func() any { return new(Heartbeat) },
	"HeartbeatReply":    func() any { return new(HeartbeatReply) },
	"StateKeyRequest":   func() any { return new(StateKeyRequest) },
	"StateKeyBody":      func() any { return new(StateKeyBody) },
	"StateKeyReply":     func() any { return new(StateKeyReply) },
	"StateKeyReplyBody": func() any { return new(StateKeyReplyBody) },
	"PolicyApply":       func() any { return new(PolicyApply) },
	"PolicyApplied":     func() any { return new(PolicyApplied) },
	"PolicyShowRequest": func() any { return new(PolicyShowRequest) },
	"PolicyShowReply":   func() any { return new(PolicyShowReply) },
	"RecoverHello":      func() any { return new(RecoverHello) },
	"RecoverReply":      func() any { return new(RecoverReply) },
	"RecoverOffer":      func() any { return new(RecoverOffer) },
	"RecoverShare":      func() any { return new(RecoverShare) },
	"RecoverAck":        func() any { return new(RecoverAck) },
}

// bindings are the functions binding vectors name, each with its spec.
var bindings = map[string]struct {
	code, spec func(a *bindingArgs) []byte
}{
	"CertifyBinding": {
		func(a *bindingArgs) []byte { b := CertifyBinding(a.Body); return b[:] },
		func(a *bindingArgs) []byte { return specBind("cohort/v1/certify-request", a.Body) },
	},
	"EvidenceBinding": {
		func(a *bindingArgs) []byte {
			b := EvidenceBinding(a.Root, a.PolicyHash, a.PolicyVersion, a.Nonce)
			return b[:]
		},
		func(a *bindingArgs) []byte {
			return specBind("cohort/v1/issuer-evidence", a.Root, a.PolicyHash, be64(a.PolicyVersion), a.Nonce)
		},
	},
	"RefusalDigest": {
		func(a *bindingArgs) []byte { d := RefusalDigest(a.RequestHash, Code(a.Code), a.Reason); return d[:] },
		func(a *bindingArgs) []byte {
			return sha(specBind("cohort/v5/certify-refusal", a.RequestHash, []byte(a.Code), []byte(a.Reason)))
		},
	},
	"RequestHash": {
		func(a *bindingArgs) []byte { h := RequestHash(a.Body); return h[:] },
		func(a *bindingArgs) []byte { return sha(a.Body) },
	},
	"ReportDigest": {
		func(a *bindingArgs) []byte { d := ReportDigest(a.Body); return d[:] },
		func(a *bindingArgs) []byte { return sha([]byte("cohort/v1/certify-report-signature\x00"), a.Body) },
	},
	"SecretsInfo": {
		func(a *bindingArgs) []byte { return SecretsInfo(a.RequestHash) },
		func(a *bindingArgs) []byte {
			return append([]byte("cohort/v1/certify-report-secrets\x00"), a.RequestHash...)
		},
	},
	"JoinDigest": {
		func(a *bindingArgs) []byte { d := JoinDigest(a.Body); return d[:] },
		func(a *bindingArgs) []byte { return sha([]byte("cohort/v1/join-signature\x00"), a.Body) },
	},
	"GroupProofDigest": {
		func(a *bindingArgs) []byte { d := GroupProofDigest(a.Role, a.Group, a.Exporter); return d[:] },
		func(a *bindingArgs) []byte {
			out := []byte("cohort/v3/group-peer-proof\x00")
			for _, f := range [][]byte{[]byte(a.Role), []byte(a.Group), a.Exporter} {
				out = binary.BigEndian.AppendUint16(out, uint16(len(f)))
				out = append(out, f...)
			}
			return sha(out)
		},
	},
	"ShareCommitment": {
		func(a *bindingArgs) []byte { return ShareCommitment(a.KeyID, a.Index, a.Y) },
		func(a *bindingArgs) []byte {
			return sha(specBind("cohort/v5/recovery-share-commitment", a.KeyID, []byte{a.Index}, a.Y))
		},
	},
	"ShareDigest": {
		func(a *bindingArgs) []byte {
			d := ShareDigest(a.KeyID, a.Policy, a.Threshold, a.Index, a.Holder, a.Sealed, a.Commit)
			return d[:]
		},
		func(a *bindingArgs) []byte {
			return sha(specBind("cohort/v5/recovery-share-signature", a.KeyID, be64(a.Policy), []byte{a.Threshold, a.Index}, a.Holder, a.Sealed, a.Commit))
		},
	},
	"StateKeyRequestBinding": {
		func(a *bindingArgs) []byte { b := StateKeyRequestBinding(a.Body); return b[:] },
		func(a *bindingArgs) []byte { return specBind("cohort/v5/issuer-state-key-request", a.Body) },
	},
	"StateKeyReplyBinding": {
		func(a *bindingArgs) []byte { b := StateKeyReplyBinding(a.Body); return b[:] },
		func(a *bindingArgs) []byte { return specBind("cohort/v5/issuer-state-key-reply", a.Body) },
	},
	"StateKeyInfo": {
		func(a *bindingArgs) []byte { return StateKeyInfo(a.RequestHash) },
		func(a *bindingArgs) []byte { return append([]byte("cohort/v5/issuer-state-key\x00"), a.RequestHash...) },
	},
	"PolicySigned": {
		func(a *bindingArgs) []byte { return PolicySigned(a.Document) },
		func(a *bindingArgs) []byte {
			return append([]byte("cohort/v5/policy-signature\x00"), sha(a.Document)...)
		},
	},
	"RecoverOfferBinding": {
		func(a *bindingArgs) []byte { b := RecoverOfferBinding(a.Body); return b[:] },
		func(a *bindingArgs) []byte { return specBind("cohort/v5/recover-offer", a.Body) },
	},
	"RecoverShareInfo": {
		func(a *bindingArgs) []byte { return RecoverShareInfo(a.OfferHash) },
		func(a *bindingArgs) []byte { return append([]byte("cohort/v5/recover-share\x00"), a.OfferHash...) },
	},
	"RecoveryRecordInfo": {
		func(a *bindingArgs) []byte { return RecoveryRecordInfo(a.KeyID, a.Index) },
		func(a *bindingArgs) []byte {
			return append(append([]byte("cohort/v5/recovery-record-share\x00"), a.KeyID...), a.Index)
		},
	},
}

// subjects are the functions subject vectors name.
var subjects = map[string]func(a *subjectArgs) string{
	"HandshakeSubject": func(a *subjectArgs) string { return HandshakeSubject(a.Cluster, a.User) },
	"CallSubject":      func(a *subjectArgs) string { return CallSubject(a.Cluster, a.User) },
	"CloseSubject":     func(a *subjectArgs) string { return CloseSubject(a.Cluster, a.User) },
	"ClusterFilter":    func(a *subjectArgs) string { return ClusterFilter(a.Cluster, a.Verb) },
	"SessionsStream":   func(a *subjectArgs) string { return SessionsStream(a.Cluster) },
	"SessionSubject":   func(a *subjectArgs) string { return SessionSubject(a.Cluster, a.Session) },
	"ClaimSubject":     func(a *subjectArgs) string { return ClaimSubject(a.Cluster, a.Session, a.Seq) },
	"ClosedSubject":    func(a *subjectArgs) string { return ClosedSubject(a.Cluster, a.Session) },
	"CallsStream":      func(a *subjectArgs) string { return CallsStream(a.Cluster, a.Shard) },
	"CallsStreamOf":    func(a *subjectArgs) string { return CallsStreamOf(a.Cluster, a.Session) },
	"ManagerSubject":   func(a *subjectArgs) string { return ManagerSubject(a.Verb, a.Cluster, a.Unit) },
	"RecoverSubject":   func(a *subjectArgs) string { return RecoverSubject(a.Instance) },
}

// constants are the wire's fixed names and numbers, by name.
var constants = map[string]string{
	"Version":              fmt.Sprint(Version),
	"KEMX25519":            fmt.Sprintf("0x%04x", KEMX25519),
	"KEMMLKEM768X25519":    fmt.Sprintf("0x%04x", KEMMLKEM768X25519),
	"CallShards":           fmt.Sprint(CallShards),
	"SubjectEvidence":      SubjectEvidence,
	"SubjectCertify":       SubjectCertify,
	"SubjectStatus":        SubjectStatus,
	"SubjectPeerStateKey":  SubjectPeerStateKey,
	"SubjectPolicyApply":   SubjectPolicyApply,
	"SubjectPolicyShow":    SubjectPolicyShow,
	"SubjectRecoverHello":  SubjectRecoverHello,
	"IssuerService":        IssuerService,
	"IssuerQueue":          IssuerQueue,
	"IssuerPeerQueue":      IssuerPeerQueue,
	"UnitsQueuePrefix":     UnitsQueuePrefix,
	"CloseMarker":          CloseMarker,
	"GroupExporterLabel":   GroupExporterLabel,
	"SubjectEventsPrefix":  SubjectEventsPrefix,
	"SubjectManagerPrefix": SubjectManagerPrefix,
}

func readVectors(t *testing.T) *messageVectors {
	t.Helper()
	var v messageVectors
	kattest.Read(t, &v)
	return &v
}

func TestKnownAnswers(t *testing.T) {
	v := readVectors(t)
	if kattest.Writing() {
		fillVectors(t, v)
		kattest.Write(t, v)
		return
	}
	t.Run("encodings", func(t *testing.T) {
		covered := map[string]bool{}
		for _, e := range v.Encodings {
			covered[e.Type] = true
			checkEncoding(t, &e)
		}
		for name := range katTypes {
			if !covered[name] {
				t.Errorf("no vector encodes a %s", name)
			}
		}
	})
	t.Run("bindings", func(t *testing.T) {
		covered := map[string]bool{}
		for _, b := range v.Bindings {
			f, ok := bindings[b.Function]
			if !ok {
				t.Errorf("%s: no function %q", b.Name, b.Function)
				continue
			}
			covered[b.Function] = true
			if got := f.code(&b.Args); !bytes.Equal(got, b.Output) {
				t.Errorf("%s: %s is\n%x\nwant\n%x", b.Name, b.Function, got, b.Output)
			}
			if got := f.spec(&b.Args); !bytes.Equal(got, b.Output) {
				t.Errorf("%s: %s by spec is\n%x\nwant\n%x", b.Name, b.Function, got, b.Output)
			}
		}
		for name := range bindings {
			if !covered[name] {
				t.Errorf("no vector for %s", name)
			}
		}
	})
	t.Run("subjects", func(t *testing.T) {
		for _, s := range v.Subjects {
			f, ok := subjects[s.Function]
			if !ok {
				t.Errorf("%s: no function %q", s.Name, s.Function)
				continue
			}
			if got := f(&s.Args); got != s.Output {
				t.Errorf("%s: %s is %q, want %q", s.Name, s.Function, got, s.Output)
			}
		}
	})
	t.Run("constants", func(t *testing.T) {
		for name, want := range v.Constants {
			if got, ok := constants[name]; !ok || got != want {
				t.Errorf("%s is %q, want %q", name, got, want)
			}
		}
		for name := range constants {
			if _, ok := v.Constants[name]; !ok {
				t.Errorf("no vector for %s", name)
			}
		}
	})
}

// checkEncoding: the message made of the fields encodes as the vector
// says, and the vector's bytes decode (strictly) into that message.
func checkEncoding(t *testing.T, e *encodingVector) {
	t.Helper()
	built, err := messageOf(e.Type, e.Fields)
	if err != nil {
		t.Errorf("%s: %v", e.Name, err)
		return
	}
	got, err := Marshal(built)
	if err != nil {
		t.Errorf("%s: %v", e.Name, err)
		return
	}
	if !bytes.Equal(got, e.Encoding) {
		t.Errorf("%s: encodes as\n%x\nwant\n%x", e.Name, got, e.Encoding)
	}
	decoded := katTypes[e.Type]()
	if val, ok := decoded.(Validator); ok {
		err = Decode(e.Encoding, len(e.Encoding), val)
	} else {
		err = Unmarshal(e.Encoding, len(e.Encoding), decoded)
	}
	if err != nil {
		t.Errorf("%s: the vector does not decode: %v", e.Name, err)
	} else if !reflect.DeepEqual(decoded, built) {
		t.Errorf("%s: decodes as %+v, want %+v", e.Name, decoded, built)
	}
}

// messageOf makes a message of the named type from its fields.
func messageOf(typ string, fields json.RawMessage) (any, error) {
	newMessage, ok := katTypes[typ]
	if !ok {
		return nil, fmt.Errorf("no type %q", typ)
	}
	m := newMessage()
	if err := setFromJSON(reflect.ValueOf(m).Elem(), fields); err != nil {
		return nil, err
	}
	return m, nil
}

// setFromJSON sets v from raw: a struct from an object of every field by
// its msgpack name, a byte string from hex, a slice from an array, null as
// nil, anything else as encoding/json does.
func setFromJSON(v reflect.Value, raw json.RawMessage) error {
	if string(raw) == "null" {
		v.SetZero()
		return nil
	}
	switch {
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Uint8:
		var h hexBytes
		if err := json.Unmarshal(raw, &h); err != nil {
			return err
		}
		v.SetBytes(h)
	case v.Kind() == reflect.Slice:
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return err
		}
		v.Set(reflect.MakeSlice(v.Type(), len(items), len(items)))
		for i, item := range items {
			if err := setFromJSON(v.Index(i), item); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
	case v.Kind() == reflect.Struct:
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(raw, &fields); err != nil {
			return err
		}
		for i := range v.NumField() {
			name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("msgpack"), ",")
			f, ok := fields[name]
			if !ok {
				return fmt.Errorf("%s: field %q is missing", v.Type().Name(), name)
			}
			if err := setFromJSON(v.Field(i), f); err != nil {
				return fmt.Errorf("%s.%s: %w", v.Type().Name(), name, err)
			}
			delete(fields, name)
		}
		for name := range fields {
			return fmt.Errorf("%s has no field %q", v.Type().Name(), name)
		}
	default:
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		return dec.Decode(v.Addr().Interface())
	}
	return nil
}

// fillVectors computes the outputs of every vector from the code under
// test; only for -write-vectors.
func fillVectors(t *testing.T, v *messageVectors) {
	for i := range v.Encodings {
		e := &v.Encodings[i]
		m, err := messageOf(e.Type, e.Fields)
		if err != nil {
			t.Fatalf("%s: %v", e.Name, err)
		}
		if e.Encoding, err = Marshal(m); err != nil {
			t.Fatal(err)
		}
	}
	for i := range v.Bindings {
		b := &v.Bindings[i]
		f, ok := bindings[b.Function]
		if !ok {
			t.Fatalf("%s: no function %q", b.Name, b.Function)
		}
		b.Output = f.code(&b.Args)
	}
	for i := range v.Subjects {
		s := &v.Subjects[i]
		f, ok := subjects[s.Function]
		if !ok {
			t.Fatalf("%s: no function %q", s.Name, s.Function)
		}
		s.Output = f(&s.Args)
	}
	v.Constants = constants
}

// TestEncodingsByHand derives the encodings of a few small messages byte by
// byte from the msgpack specification, independently of any encoder, and
// finds them among the vectors. It pins what vmihailenco/msgpack does with
// cohort's structs: a map of the fields in declaration order, keyed by their
// tags, each integer at its Go type's full width (uint16 as 0xcd, uint64 as
// 0xcf, int64 as 0xd3), byte strings as bin, nil as 0xc0.
func TestEncodingsByHand(t *testing.T) {
	str := func(s string) []byte { return append([]byte{0xa0 | byte(len(s))}, s...) } // fixstr
	bin := func(b []byte) []byte { return append([]byte{0xc4, byte(len(b))}, b...) }  // bin 8
	u8 := func(n uint8) []byte { return []byte{0xcc, n} }
	u16 := func(n uint16) []byte { return binary.BigEndian.AppendUint16([]byte{0xcd}, n) }
	u64 := func(n uint64) []byte { return binary.BigEndian.AppendUint64([]byte{0xcf}, n) }
	i64 := func(n int64) []byte { return binary.BigEndian.AppendUint64([]byte{0xd3}, uint64(n)) }
	boolean := func(b bool) []byte {
		if b {
			return []byte{0xc3}
		}
		return []byte{0xc2}
	}
	fmap := func(kv ...[]byte) []byte { // fixmap of len(kv)/2 entries
		return append([]byte{0x80 | byte(len(kv)/2)}, bytes.Join(kv, nil)...)
	}
	seq := func(start byte, n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = start + byte(i)
		}
		return b
	}
	want := map[string][]byte{
		"EvidenceRequest, nonce 00..1f": fmap(str("v"), u16(7), str("nonce"), bin(seq(0, 32))),
		"SessionAck, sequence 42":       fmap(str("v"), u16(7), str("sequence"), u64(42)),
		"HeartbeatReply, known":         fmap(str("v"), u16(7), str("known"), boolean(true)),
		"RecoverAck, 2 of 3, not done": fmap(str("v"), u16(7), str("have"), u8(2), str("need"), u8(3),
			str("done"), boolean(false)),
		"JoinReply": fmap(str("v"), u16(7), str("token"), bin(seq(0x30, 32)), str("interval"), i64(1_000_000_000),
			str("misses"), u16(3)),
		"Error, unknown session, no proof": fmap(str("v"), u16(7), str("code"), str("unknown_session"),
			str("reason"), str("no such session")),
	}
	v := readVectors(t)
	for name, b := range want {
		found := false
		for _, e := range v.Encodings {
			if e.Name == name {
				found = true
				if !bytes.Equal(e.Encoding, b) {
					t.Errorf("%s: the vector is\n%x\nby hand\n%x", name, e.Encoding, b)
				}
			}
		}
		if !found {
			t.Errorf("no vector %q", name)
		}
	}
}

// The spec of the bindings, from the design: report data is SHA-512 over a
// label and parts, each prefixed with its length as 8 big-endian bytes.

func specBind(label string, parts ...[]byte) []byte {
	h := sha512.New()
	for _, p := range append([][]byte{[]byte(label)}, parts...) {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(p))))
		h.Write(p)
	}
	return h.Sum(nil)
}

func sha(parts ...[]byte) []byte {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
