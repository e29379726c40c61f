package events

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzDecode: Decode never panics and refuses with a reason of its own; what
// it accepts is one JSON document within the cap, of a known kind, with every
// field within its bounds, that String shows on one line free of control
// characters, and that encodes and decodes again to the same event.
//
// The seeds under testdata/fuzz/FuzzDecode named bug-* are regressions of bugs
// since fixed; see TestDecodeTrailingBracket,
// TestStringHasNoControlCharacters,
// TestEncodeAcceptsWhatValidates and TestDecodedEventReencodes.
func FuzzDecode(f *testing.F) {
	for _, kind := range allKinds {
		b := mustEncode(f, validEvent(kind))
		f.Add(b)
		f.Add(b[:len(b)-1])
		f.Add(append(bytes.Clone(b), b...))
	}
	b := mustEncode(f, validEvent(UnitJoinRefused))
	f.Add(bytes.Replace(b, []byte(`"v":1`), []byte(`"v":2`), 1))
	f.Add(bytes.Replace(b, []byte(`"v":1`), []byte(`"v":1,"extra":null`), 1))
	f.Add(bytes.Replace(b, []byte(`"v":1`), []byte(`"V":1,"KIND":"unit.left"`), 1))
	f.Add(bytes.Replace(b, []byte(UnitJoinRefused), []byte("unit.exploded"), 1))
	f.Add(bytes.Replace(b, []byte(`"unit":"unit-0"`), []byte(`"unit":"unit\n0"`), 1))
	f.Add(bytes.Replace(b, []byte(`"unit":"unit-0"`), []byte(`"unit":"unit\u00000"`), 1))
	f.Add(bytes.Replace(b, []byte(`"source":"manager/ab12cd34"`), []byte(`"source":""`), 1))
	f.Add(bytes.Replace(b, []byte(`"time":"2024-05-01T12:00:00.123456789Z",`), nil, 1))
	f.Add([]byte(`{"v":1,"time":"2024-05-01T12:00:00Z","kind":"unit.left","source":"s","reason":"` + strings.Repeat("r", 1025) + `"}`))
	f.Add([]byte(strings.Repeat("[", 4000)))
	f.Add([]byte(`{"v":1e400}`))
	f.Add([]byte("null"))
	f.Add([]byte(""))
	f.Add(bytes.Repeat([]byte(" "), MaxEventSize+1))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Decode(data)
		if err != nil {
			if e != nil {
				t.Fatal("a refusal returned an event")
			}
			if !strings.HasPrefix(err.Error(), "events: ") {
				t.Fatalf("refusal does not say who refused: %v", err)
			}
			if len(data) > MaxEventSize && !strings.Contains(err.Error(), "at most") {
				t.Fatalf("%d bytes refused for another reason: %v", len(data), err)
			}
			return
		}
		if len(data) > MaxEventSize {
			t.Fatalf("accepted %d bytes", len(data))
		}
		if !json.Valid(data) {
			t.Fatalf("accepted what is not one JSON document: %q", data)
		}
		if e.V != Version || !kinds[e.Kind] || e.Source == "" || e.Time.IsZero() || len(e.Reason) > 1024 {
			t.Fatalf("accepted %+v", e)
		}
		for _, f := range []string{e.Source, e.Cluster, e.Task, e.Unit, e.Measurement, e.Addr, e.Code} {
			if len(f) > 255 {
				t.Fatalf("accepted a field of %d bytes", len(f))
			}
		}
		if e.Subject() != SubjectPrefix+e.Kind {
			t.Fatalf("subject %q", e.Subject())
		}
		s := e.String()
		if !strings.Contains(s, e.Kind) || !strings.HasSuffix(s, "source="+e.Source) {
			t.Fatalf("String %q lacks the kind or the source", s)
		}
		if hasControl(s) {
			t.Fatalf("String prints a control character: %q", s)
		}
		again, err := e.Encode()
		if err != nil {
			t.Fatalf("accepted event does not encode: %v", err)
		}
		e2, err := Decode(again)
		if err != nil {
			t.Fatalf("re-encoded event does not decode: %v", err)
		}
		if again2, err := e2.Encode(); err != nil || !bytes.Equal(again, again2) {
			t.Fatalf("round trip changed the event:\n%s\n%s (%v)", again, again2, err)
		}
	})
}
