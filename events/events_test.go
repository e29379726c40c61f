package events

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// when is the events' time in the tests.
var when = time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)

var allKinds = []string{UnitJoined, UnitLeft, UnitEvicted, UnitJoinRefused, CertificateIssued, CertificateRefused, SessionOpened, SessionClosed,
	PolicyApplied, PolicyRefused, StateKeyGranted, StateKeyRefused, IssuerRecovered, RecoveryRefused, RecoveryShare, IssuerGenesis, IssuerStopped, RootRotated}

const measurementHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// validEvent returns an event of kind with the fields its publisher sets.
func validEvent(kind string) *Event {
	e := &Event{V: Version, Time: when, Kind: kind, Source: "manager/ab12cd34"}
	switch kind {
	case UnitJoined:
		e.Cluster, e.Task, e.Unit, e.Addr, e.Measurement, e.Simulated = "dev", "demo", "unit-0", "https://10.0.0.7:8443", measurementHex, true
	case UnitLeft:
		e.Cluster, e.Task, e.Unit, e.Addr = "dev", "demo", "unit-0", "https://10.0.0.7:8443"
	case UnitEvicted:
		e.Cluster, e.Task, e.Unit, e.Addr, e.Reason = "dev", "demo", "unit-0", "https://10.0.0.7:8443", "no heartbeat for 3.1s (3 missed)"
	case UnitJoinRefused:
		e.Cluster, e.Task, e.Unit, e.Code, e.Reason = "dev", "demo", "unit-0", "cluster_not_covered", `the certificate of task "demo" does not cover cluster "dev"`
	case CertificateIssued:
		e.Source, e.Task, e.Measurement, e.Code = "issuer", "demo", measurementHex, "issued"
	case CertificateRefused:
		e.Source, e.Task, e.Measurement, e.Code, e.Reason, e.Simulated = "issuer", "demo", measurementHex, "measurement_not_accepted", "measurement 01… is not accepted", true
	}
	return e
}

func mustEncode(t testing.TB, e *Event) []byte {
	t.Helper()
	b, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// edit decodes an encoded event as a generic map, applies f, and encodes it
// again, for tests that shape the JSON directly.
func edit(t testing.TB, e *Event, f func(map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(mustEncode(t, e), &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTripEveryKind(t *testing.T) {
	for _, kind := range allKinds {
		t.Run(kind, func(t *testing.T) {
			e := validEvent(kind)
			b := mustEncode(t, e)
			if len(b) > MaxEventSize || !json.Valid(b) || bytes.ContainsAny(b, "\n\x00") {
				t.Fatalf("encoding: %q", b)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, e) {
				t.Fatalf("round trip changed the event:\n got %+v\nwant %+v", got, e)
			}
			if again := mustEncode(t, got); !bytes.Equal(again, b) {
				t.Fatalf("re-encoding differs:\n%s\n%s", again, b)
			}
		})
	}
}

func TestEncodeOmitsEmptyFields(t *testing.T) {
	e := &Event{V: Version, Time: when, Kind: UnitLeft, Source: "issuer"}
	b := mustEncode(t, e)
	for _, k := range []string{"cluster", "task", "unit", "measurement", "addr", "code", "reason", "simulated"} {
		if bytes.Contains(b, []byte(`"`+k+`"`)) {
			t.Errorf("empty %s encoded: %s", k, b)
		}
	}
	for _, k := range []string{"v", "time", "kind", "source"} {
		if !bytes.Contains(b, []byte(`"`+k+`":`)) {
			t.Errorf("%s missing: %s", k, b)
		}
	}
	if got, err := Decode(b); err != nil || !reflect.DeepEqual(got, e) {
		t.Fatalf("minimal event: %+v, %v", got, err)
	}
}

// TestDecodeTimeIsUTC: an event stamped in another zone decodes to the same
// instant in UTC.
func TestDecodeTimeIsUTC(t *testing.T) {
	e := validEvent(UnitJoined)
	b := edit(t, e, func(m map[string]any) { m["time"] = "2024-05-01T14:00:00.123456789+02:00" })
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(when) || got.Time.Location() != time.UTC {
		t.Fatalf("time %v (%v), want %v in UTC", got.Time, got.Time.Location(), when)
	}
}

func TestDecodeRefusals(t *testing.T) {
	valid := validEvent(UnitJoinRefused)
	enc := mustEncode(t, valid)
	set := func(k string, v any) []byte { return edit(t, valid, func(m map[string]any) { m[k] = v }) }
	del := func(k string) []byte { return edit(t, valid, func(m map[string]any) { delete(m, k) }) }
	cases := map[string]struct {
		data []byte
		want string // the reason the error names
	}{
		"unknown field":          {set("extra", 1), `unknown field "extra"`},
		"unknown nested field":   {set("time", map[string]any{"x": 1}), "decode"},
		"unknown kind":           {set("kind", "unit.exploded"), `unknown kind "unit.exploded"`},
		"empty kind":             {set("kind", ""), `unknown kind ""`},
		"kind wrong case":        {set("kind", "Unit.Joined"), "unknown kind"},
		"kind with prefix":       {set("kind", SubjectPrefix+UnitJoined), "unknown kind"},
		"version 0":              {set("v", 0), "version 0, want 1"},
		"version 2":              {set("v", 2), "version 2, want 1"},
		"version -1":             {set("v", -1), "version -1"},
		"no version":             {del("v"), "version 0"},
		"version as string":      {set("v", "1"), "decode"},
		"version fractional":     {set("v", 1.5), "decode"},
		"no source":              {del("source"), "source and time are required"},
		"empty source":           {set("source", ""), "source and time are required"},
		"no time":                {del("time"), "source and time are required"},
		"zero time":              {set("time", "0001-01-01T00:00:00Z"), "source and time are required"},
		"null time":              {set("time", nil), "source and time are required"},
		"bad time":               {set("time", "yesterday"), "decode"},
		"time as number":         {set("time", 1700000000), "decode"},
		"simulated as string":    {set("simulated", "true"), "decode"},
		"reason over the cap":    {set("reason", strings.Repeat("r", MaxReason+1)), "at most"},
		"reason with a tab":      {set("reason", "a\tb"), "control character"},
		"reason with NUL":        {set("reason", "a\x00b"), "control character"},
		"trailing object":        {append(bytes.Clone(enc), enc...), "trailing data"},
		"trailing garbage":       {append(bytes.Clone(enc), " x"...), "trailing data"},
		"trailing number":        {append(bytes.Clone(enc), "\n1"...), "trailing data"},
		"truncated":              {enc[:len(enc)-1], "decode"},
		"empty":                  {nil, "decode"},
		"whitespace":             {[]byte(" \n"), "decode"},
		"null":                   {[]byte("null"), "version 0"},
		"array":                  {[]byte("[]"), "decode"},
		"string":                 {[]byte(`"unit.joined"`), "decode"},
		"deep":                   {[]byte(strings.Repeat(`{"time":`, 400)), "decode"},
		"not JSON":               {[]byte{0xc1, 0x00}, "decode"},
		"oversize":               {append(bytes.Clone(enc), bytes.Repeat([]byte(" "), MaxEventSize-len(enc)+1)...), "at most 4096"},
		"oversize reason":        {set("reason", strings.Repeat("r", MaxEventSize)), "at most 4096"},
		"oversize before parsed": {bytes.Repeat([]byte{'{'}, MaxEventSize+1), "at most 4096"},
	}
	caps := map[string]int{"source": 80, "cluster": 63, "task": 63, "unit": 64, "measurement": 128, "addr": 255, "code": 64}
	for f, n := range caps {
		cases[f+" with newline"] = struct {
			data []byte
			want string
		}{set(f, "a\nb"), "control character"}
		cases[f+" with NUL"] = struct {
			data []byte
			want string
		}{set(f, "a\x00b"), "control character"}
		cases[f+" over its cap"] = struct {
			data []byte
			want string
		}{set(f, strings.Repeat("x", n+1)), "at most"}
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			e, err := Decode(tc.data)
			if err == nil || e != nil {
				t.Fatalf("accepted: %+v", e)
			}
			if !strings.HasPrefix(err.Error(), "events: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
		})
	}
}

func TestDecodeBounds(t *testing.T) {
	valid := validEvent(UnitEvicted)
	for name, b := range map[string][]byte{
		"reason at the cap":  edit(t, valid, func(m map[string]any) { m["reason"] = strings.Repeat("r", MaxReason) }),
		"addr 255":           edit(t, valid, func(m map[string]any) { m["addr"] = strings.Repeat("a", 255) }),
		"source 80":          edit(t, valid, func(m map[string]any) { m["source"] = strings.Repeat("s", 80) }),
		"no optional fields": []byte(`{"v":1,"time":"2024-05-01T12:00:00Z","kind":"unit.left","source":"issuer"}`),
		"whitespace around":  []byte("\n\t {\"v\":1,\"time\":\"2024-05-01T12:00:00Z\",\"kind\":\"unit.left\",\"source\":\"issuer\"} \r\n"),
		"exactly the cap": func() []byte {
			b := mustEncode(t, valid)
			return append(b, bytes.Repeat([]byte(" "), MaxEventSize-len(b))...)
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			if len(b) > MaxEventSize {
				t.Fatalf("test input is %d bytes", len(b))
			}
			if _, err := Decode(b); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEncodeRefusesWhatDecodeRefuses: Encode checks an event as Decode does,
// so that nothing is published that followers refuse.
func TestEncodeRefusesWhatDecodeRefuses(t *testing.T) {
	for name, f := range map[string]func(*Event){
		"version 0":           func(e *Event) { e.V = 0 },
		"unknown kind":        func(e *Event) { e.Kind = "x" },
		"no source":           func(e *Event) { e.Source = "" },
		"no time":             func(e *Event) { e.Time = time.Time{} },
		"unit newline":        func(e *Event) { e.Unit = "u\n" },
		"cluster NUL":         func(e *Event) { e.Cluster = "\x00" },
		"task over 63":        func(e *Event) { e.Task = strings.Repeat("t", 64) },
		"reason over the cap": func(e *Event) { e.Reason = strings.Repeat("r", MaxReason+1) },
	} {
		t.Run(name, func(t *testing.T) {
			e := validEvent(UnitJoinRefused)
			f(e)
			if b, err := e.Encode(); err == nil || b != nil || !strings.HasPrefix(err.Error(), "events: ") {
				t.Fatalf("Encode = %q, %v", b, err)
			}
		})
	}
}

func TestEventString(t *testing.T) {
	for _, kind := range allKinds {
		t.Run(kind, func(t *testing.T) {
			e := validEvent(kind)
			s := e.String()
			if strings.ContainsAny(s, "\n\r") {
				t.Fatalf("String is not one line: %q", s)
			}
			if !strings.HasPrefix(s, when.Format(time.RFC3339Nano)+" "+kind) {
				t.Fatalf("String %q does not start with the time and the kind", s)
			}
			for k, v := range map[string]string{
				"cluster": e.Cluster, "task": e.Task, "unit": e.Unit, "addr": e.Addr, "code": e.Code, "measurement": e.Measurement,
			} {
				if v == "" {
					if strings.Contains(s, " "+k+"=") {
						t.Errorf("empty %s shown: %q", k, s)
					}
				} else if !strings.Contains(s, " "+k+"="+v) {
					t.Errorf("String %q lacks %s=%s", s, k, v)
				}
			}
			if e.Reason != "" && !strings.Contains(s, " reason="+`"`) {
				t.Errorf("String %q lacks the quoted reason", s)
			}
			if strings.Contains(s, " simulated") != e.Simulated {
				t.Errorf("String %q: simulated shown %t, want %t", s, !e.Simulated, e.Simulated)
			}
			if !strings.HasSuffix(s, " source="+e.Source) {
				t.Errorf("String %q does not end with the source", s)
			}
		})
	}
	// The time is shown in UTC, whatever zone the event holds.
	e := validEvent(UnitLeft)
	e.Time = when.In(time.FixedZone("X", 3600))
	if !strings.HasPrefix(e.String(), when.Format(time.RFC3339Nano)) {
		t.Fatalf("time not in UTC: %q", e.String())
	}
	// A reason is quoted, so that a newline in it stays on the line.
	e.Reason = "two\nlines \"quoted\""
	if s := e.String(); strings.Contains(s, "\n") || !strings.Contains(s, `reason="two\nlines \"quoted\""`) {
		t.Fatalf("reason not quoted: %q", s)
	}
}

func TestSubject(t *testing.T) {
	seen := map[string]bool{}
	for _, kind := range allKinds {
		e := validEvent(kind)
		s := e.Subject()
		if s != "cohort.v1.events."+kind || !strings.HasPrefix(s, strings.TrimSuffix(SubjectAll, ">")) {
			t.Errorf("%s: subject %q", kind, s)
		}
		if strings.ContainsAny(s, " *>\t\n") || seen[s] {
			t.Errorf("%s: subject %q is not a distinct literal subject", kind, s)
		}
		seen[s] = true
		if !kinds[kind] {
			t.Errorf("%s is not a known kind", kind)
		}
	}
	if len(kinds) != len(allKinds) {
		t.Errorf("the package knows %d kinds, the test %d", len(kinds), len(allKinds))
	}
}

// TestDecodeTrailingBracket: a closing bracket after the event is trailing
// data too.
//
// A regression test: before the fix, Decode (events/events.go) detects trailing
// data with json.Decoder.More, which reports false when the next byte is '}'
// or ']', so `{...}}`, `{...}]` and `{...}}anything` are accepted.
func TestDecodeTrailingBracket(t *testing.T) {
	enc := mustEncode(t, validEvent(UnitJoined))
	for _, tail := range []string{"}", "]", "\n]", "}garbage"} {
		if e, err := Decode(append(bytes.Clone(enc), tail...)); err == nil {
			t.Errorf("trailing %q accepted: %v", tail, e)
		}
	}
}

// TestStringHasNoControlCharacters: String renders an event on one line for
// people, and `cohort events` prints it to a terminal: no field may bring a
// control character there (a carriage return rewrites the line, an escape
// sequence drives the terminal).
//
// A regression test: before the fix, validate (events/events.go) refuses only
// '\n' and NUL in the fields String prints unquoted, though its error says
// "control character"; a '\r', ESC, or any other C0 or DEL byte is accepted
// and printed as is.
func TestStringHasNoControlCharacters(t *testing.T) {
	for _, bad := range []string{"\r", "\x1b[2J", "\x08", "\x7f"} {
		var shown []string
		for _, field := range []string{"source", "cluster", "task", "unit", "measurement", "addr", "code"} {
			b := edit(t, validEvent(UnitJoined), func(m map[string]any) { m[field] = "x" + bad + "y" })
			e, err := Decode(b)
			if err != nil {
				continue // refused: fine
			}
			if hasControl(e.String()) {
				shown = append(shown, field)
			}
		}
		if len(shown) > 0 {
			t.Errorf("%q accepted in %v, and String prints it raw", bad, shown)
		}
	}
}

// hasControl reports whether s holds a C0 or C1 control character or DEL.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || (r >= 0x7f && r < 0xa0) })
}

// TestEncodeAcceptsWhatValidates: an event within every field bound must
// encode within MaxEventSize, or Publish drops it.
//
// A regression test: before the fix, the bounds (255 bytes a field, 1024 for the
// reason) hold for the raw strings, but encoding/json writes '<', '>' and
// '&' as \u003c (6 bytes) and control characters such as '\r' as \r or
// \u00XX, so a validated event can encode to several times MaxEventSize:
// Encode refuses it, and Decode accepts the raw form (1.3 KB here) that
// Encode cannot produce. In the manager, the address of a refused join is
// the claimant's, so a claimant can make its own refusal event too large to
// publish.
func TestEncodeAcceptsWhatValidates(t *testing.T) {
	e := validEvent(UnitJoinRefused)
	e.Addr = strings.Repeat("<", 255)
	e.Reason = strings.Repeat("&", MaxReason)
	raw := []byte(`{"v":1,"time":"2024-05-01T12:00:00Z","kind":"unit.join_refused","source":"manager/x","addr":"` + e.Addr + `","reason":"` + e.Reason + `"}`)
	if _, err := Decode(raw); err != nil {
		t.Fatalf("raw form (%d bytes) refused: %v", len(raw), err)
	}
	if _, err := e.Encode(); err != nil {
		t.Fatalf("an event Decode accepts does not encode: %v", err)
	}
}

// TestDecodedEventReencodes: every event Decode accepts can be encoded again,
// as `cohort events --json` does.
//
// A regression test: before the fix, Decode accepts a time of year 0 with a
// positive offset ("0000-01-01T00:00:00+01:00") or of year 9999 with a
// negative one, and converts it to UTC (events/events.go, e.Time.UTC()),
// which is in year -1 or 10000; json.Marshal refuses a year outside
// [0, 9999], so Encode fails and `cohort events --json`, which ignores the
// error, prints an empty line.
func TestDecodedEventReencodes(t *testing.T) {
	for _, ts := range []string{"0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z"} {
		b := edit(t, validEvent(UnitLeft), func(m map[string]any) { m["time"] = ts })
		e, err := Decode(b)
		if err != nil {
			continue // refused: fine
		}
		if _, err := e.Encode(); err != nil {
			t.Errorf("time %s: accepted, but does not encode again: %v", ts, err)
		}
	}
}

func TestKindNames(t *testing.T) {
	// Every kind is <noun>.<verb>, lower case, as the subjects are.
	for _, k := range allKinds {
		parts := strings.Split(k, ".")
		if len(parts) != 2 || k != strings.ToLower(k) || slices.Contains(parts, "") {
			t.Errorf("kind %q", k)
		}
	}
}
