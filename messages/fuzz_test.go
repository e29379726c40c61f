package messages

import (
	"errors"
	"reflect"
	"testing"
	"unicode/utf8"
)

// hostileSeeds are inputs every decoder's fuzz target starts from besides the
// valid encodings: lying length headers, deep nesting and plain garbage.
func hostileSeeds() [][]byte {
	seeds := [][]byte{nil, {0xc1}, {0xc0}, {0x80}, nested(maxDepth + 1)}
	for _, b := range lyingHeaders() {
		seeds = append(seeds, b)
	}
	return seeds
}

// fuzzDecoder runs the fuzz target of one message type with the checks of
// fuzzManagerDecoder (manager_fuzz_test.go): decoding never panics and
// refuses with a typed error; what it accepts validates and is the
// canonical encoding of what it decodes to.
func fuzzDecoder[T any, PT interface {
	*T
	Validator
}](f *testing.F, limit int, valid ...PT) {
	fuzzManagerDecoder[T, PT](f, limit, nil, valid...)
}

func FuzzEvidenceRequest(f *testing.F) {
	fuzzDecoder(f, MaxEvidenceRequest, validEvidenceRequest())
}

func FuzzEvidenceReply(f *testing.F) {
	fuzzDecoder(f, MaxEvidenceReply, validEvidenceReply())
}

func FuzzCertifyRequest(f *testing.F) {
	fuzzDecoder(f, MaxCertifyRequest, validCertifyRequest())
}

func FuzzCertifyBody(f *testing.F) {
	fuzzDecoder(f, MaxCertifyBody, validCertifyBody(), &CertifyBody{V: Version, Task: "x", Groups: []string{"g", "h"}, KEM: KEMMLKEM768X25519, PublicKey: fill(1, MaxPublicKey), Nonce: fill(2, NonceSize), Time: -1})
}

func FuzzCertifyReply(f *testing.F) {
	fuzzDecoder(f, MaxCertifyReply, validCertifyReply())
}

func FuzzReportBody(f *testing.F) {
	fuzzDecoder(f, MaxReportBody, validReportBody(), &ReportBody{V: Version, RequestHash: fill(1, HashSize), Task: "t", Chain: [][]byte{{1}, {2}, {3}, {4}}, Groups: []GroupCert{{ID: "g", Cert: []byte{6}}}, Sealed: []byte{5}})
}

func FuzzSecrets(f *testing.F) {
	fuzzDecoder(f, MaxSecrets, validSecrets(), &Secrets{V: Version, TaskKey: []byte{1}, Groups: []GroupKey{{ID: "g", Key: []byte{2}}, {ID: "h", Key: []byte{3}}}})
}

func FuzzGroupProof(f *testing.F) {
	fuzzDecoder(f, MaxGroupProof, validGroupProof(), &GroupProof{V: Version, Chain: [][]byte{{1}, {2}, {3}}, Signature: fill(4, 8)})
}

// FuzzDecodeError: whatever the header and the payload, DecodeError returns a
// typed Error within the protocol's bounds, with the header's code when the
// payload does not decode.
func FuzzDecodeError(f *testing.F) {
	for _, e := range []*Error{validError(), {V: Version, Code: CodeReplay}, Refusal(CodeInternal, "%s", "é")} {
		b := mustMarshal(f, e)
		f.Add(string(e.Code), b)
		f.Add("", b[:len(b)-1])
		f.Add(string(CodeStale), append(b, 0))
	}
	for _, b := range hostileSeeds() {
		f.Add(string(CodeMalformed), b)
	}
	f.Add("", []byte{})
	f.Add("\xff\xfe", []byte{0xc1})
	f.Fuzz(func(t *testing.T, header string, data []byte) {
		e := DecodeError(header, data)
		if e == nil {
			t.Fatal("DecodeError returned nil")
		}
		if e.V != Version || e.Code == "" || len(e.Code) > maxCodeLen {
			t.Fatalf("code %q (%d bytes), version %d", e.Code, len(e.Code), e.V)
		}
		if len(e.Reason) > maxReasonLen {
			t.Fatalf("reason is %d bytes, more than %d", len(e.Reason), maxReasonLen)
		}
		var decoded Error
		if Decode(data, errorPayloadLimit, &decoded) == nil {
			if !reflect.DeepEqual(*e, decoded) {
				t.Fatalf("decodable reply: got %+v, want %+v", e, decoded)
			}
			return
		}
		want := Code(truncate(header, maxCodeLen))
		if header == "" {
			want = unknownCode
		}
		if e.Code != want {
			t.Fatalf("undecodable reply with header %q: code %q, want %q", header, e.Code, want)
		}
		if utf8.ValidString(header) && !utf8.ValidString(string(e.Code)) {
			t.Fatalf("truncating the header code split a rune: %q", e.Code)
		}
		if !errors.Is(e, &Error{Code: want}) {
			t.Fatal("the Error does not match its own code")
		}
	})
}
