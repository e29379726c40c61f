package manager

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := messages.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// memberMap is a member record as a generic map, for tests that edit the
// stored form directly.
func memberMap(t testing.TB, m Member) map[string]any {
	t.Helper()
	var out map[string]any
	if err := msgpack.Unmarshal(mustMarshal(t, &m), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// memberEvents are the audit events the manager publishes about a member it
// holds: its leave and its eviction. Each must encode, or the manager drops it.
func memberEvents(m *Member) []events.Event {
	base := events.Event{V: events.Version, Time: t0, Source: "manager/m1", Cluster: m.Cluster, Task: m.Task, Unit: m.Unit, Addr: m.Addr}
	left, evicted := base, base
	left.Kind = events.UnitLeft
	evicted.Kind, evicted.Reason = events.UnitEvicted, "no heartbeat for 3.1s (3 missed)"
	return []events.Event{left, evicted}
}

func TestDecodeMember(t *testing.T) {
	m := member("dev", "unit-0_A", 1)
	b := mustMarshal(t, &m)
	got, err := decodeMember(b)
	if err != nil {
		t.Fatal(err)
	}
	if again := mustMarshal(t, got); !bytes.Equal(again, b) {
		t.Fatal("round trip changed the record")
	}
	if got.Cluster != m.Cluster || got.Unit != m.Unit || got.Task != m.Task || got.Addr != m.Addr ||
		!bytes.Equal(got.Token, m.Token) || got.Joined != m.Joined || got.Manager != m.Manager {
		t.Fatalf("got %+v, want %+v", got, m)
	}

	edit := func(f func(*Member)) []byte { c := member("dev", "unit-0_A", 1); f(&c); return mustMarshal(t, &c) }
	for name, tc := range map[string]struct {
		data    []byte
		wantErr error // nil: any error
	}{
		"version 0":         {edit(func(m *Member) { m.V = 0 }), nil},
		"version 1":         {edit(func(m *Member) { m.V = 1 }), nil},
		"version 3":         {edit(func(m *Member) { m.V = 3 }), nil},
		"cluster empty":     {edit(func(m *Member) { m.Cluster = "" }), nil},
		"cluster invalid":   {edit(func(m *Member) { m.Cluster = "Dev" }), nil},
		"unit empty":        {edit(func(m *Member) { m.Unit = "" }), nil},
		"unit with dot":     {edit(func(m *Member) { m.Unit = "a.b" }), nil},
		"unit too long":     {edit(func(m *Member) { m.Unit = strings.Repeat("u", messages.MaxUnitID+1) }), nil},
		"token missing":     {edit(func(m *Member) { m.Token = nil }), nil},
		"token short":       {edit(func(m *Member) { m.Token = m.Token[:31] }), nil},
		"token long":        {edit(func(m *Member) { m.Token = append(m.Token, 0) }), nil},
		"measurement short": {edit(func(m *Member) { m.Measurement = m.Measurement[:31] }), nil},
		"addr too long":     {edit(func(m *Member) { m.Addr = strings.Repeat("a", messages.MaxAddr+1) }), nil},
		"trailing byte":     {append(mustMarshal(t, &m), 0), messages.ErrMalformed},
		"truncated":         {b[:len(b)-1], messages.ErrMalformed},
		"empty":             {nil, messages.ErrMalformed},
		"not msgpack":       {[]byte{0xc1}, messages.ErrMalformed},
		"oversize":          {bytes.Repeat([]byte{0xc1}, maxMember+1), messages.ErrTooLarge},
		"lying bin32":       {[]byte{0xc6, 0xff, 0xff, 0xff, 0xff}, messages.ErrMalformed},
		"lying map32":       {[]byte{0xdf, 0xff, 0xff, 0xff, 0xff}, messages.ErrMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := decodeMember(tc.data)
			if err == nil || got != nil {
				t.Fatalf("accepted: %+v", got)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}

	// The stored form is as strict as the wire: unknown fields, a repeated
	// or reordered key, an out-of-range version are refused.
	mm := memberMap(t, m)
	mm["extra"] = 1
	if _, err := decodeMember(mustMarshal(t, mm)); !errors.Is(err, messages.ErrMalformed) {
		t.Fatalf("unknown field: %v", err)
	}
	mm = memberMap(t, m)
	mm["v"] = uint32(0x10000 | memberV)
	if _, err := decodeMember(mustMarshal(t, mm)); err == nil {
		t.Fatal("version 0x10001 accepted")
	}
}

// TestDecodeMemberRecordCanBeAudited: every member record decodeMember
// accepts must be one whose leave and eviction the manager can publish as
// audit events, and whose task is a task name, as every record the manager
// writes is (the join's body is validated).
//
// A regression test: before the fix, decodeMember (manager/manager.go) checks
// neither the task (any string up to the 4 KiB record cap is accepted) nor
// the content of the address (only its length). A record in the bucket with
// task "Not a task\n" or address "https://x\n" is loaded into the table,
// shown by status, and when the member leaves or is evicted, the event is
// refused by events (a field over 255 bytes or with a newline) and dropped.
func TestDecodeMemberRecordCanBeAudited(t *testing.T) {
	for name, f := range map[string]func(*Member){
		"task not a task name": func(m *Member) { m.Task = "Not a task" },
		"task empty":           func(m *Member) { m.Task = "" },
		"task with newline":    func(m *Member) { m.Task = "demo\n" },
		"task 3 KiB":           func(m *Member) { m.Task = strings.Repeat("t", 3<<10) },
		"addr with newline":    func(m *Member) { m.Addr = "https://x\n" },
		"addr with NUL":        func(m *Member) { m.Addr = "https://x\x00" },
	} {
		t.Run(name, func(t *testing.T) {
			m := member("dev", "u", 1)
			f(&m)
			got, err := decodeMember(mustMarshal(t, &m))
			if err != nil {
				return // refused: fine
			}
			if !messages.ValidTaskName(got.Task) {
				t.Errorf("accepted a record whose task %.40q is not a task name", got.Task)
			}
			for _, e := range memberEvents(got) {
				if _, err := e.Encode(); err != nil {
					t.Errorf("accepted a record whose %s event cannot be published: %v", e.Kind, err)
				}
			}
		})
	}
}

// kvEntry is a jetstream.KeyValueEntry as the members watch delivers it.
type kvEntry struct {
	key   string
	value []byte
	rev   uint64
	op    jetstream.KeyValueOp
}

func (e kvEntry) Bucket() string                  { return DefaultBucket }
func (e kvEntry) Key() string                     { return e.key }
func (e kvEntry) Value() []byte                   { return e.value }
func (e kvEntry) Revision() uint64                { return e.rev }
func (e kvEntry) Created() time.Time              { return t0 }
func (e kvEntry) Delta() uint64                   { return 0 }
func (e kvEntry) Operation() jetstream.KeyValueOp { return e.op }

// testManager is a Manager with a table and a clock and nothing else: enough
// for apply and Status, which do no I/O.
func testManager(now *time.Time) *Manager {
	return &Manager{
		cfg:   Config{ID: "m1", Interval: testInterval, Misses: testMisses, Now: func() time.Time { return *now }},
		log:   slog.New(slog.DiscardHandler),
		table: NewTable(testInterval, testMisses, 4*time.Minute),
	}
}

// TestApplyMirrorsBucket: the watch puts decodable records at their key,
// ignores the rest, and removes at the delete's revision.
func TestApplyMirrorsBucket(t *testing.T) {
	now := t0
	m := testManager(&now)
	good := member("dev", "u", 1)
	m.apply(kvEntry{Key("dev", "u"), mustMarshal(t, &good), 5, jetstream.KeyValuePut})
	if _, rev, ok := m.table.Lookup("dev", "u", token(1)); !ok || rev != 5 {
		t.Fatalf("a good record is not in the table (%d, %t)", rev, ok)
	}
	// A record under another key than its own, or one that does not decode,
	// is ignored.
	other := member("dev", "v", 2)
	m.apply(kvEntry{Key("dev", "w"), mustMarshal(t, &other), 6, jetstream.KeyValuePut})
	m.apply(kvEntry{Key("dev", "x"), []byte{0xc1}, 7, jetstream.KeyValuePut})
	m.apply(kvEntry{Key("dev", "y"), nil, 8, jetstream.KeyValuePut})
	if n := len(m.table.Snapshot(now)); n != 1 {
		t.Fatalf("%d members after bad records, want 1", n)
	}
	// A stale put is ignored.
	stale := member("dev", "u", 3)
	m.apply(kvEntry{Key("dev", "u"), mustMarshal(t, &stale), 4, jetstream.KeyValuePut})
	if _, _, ok := m.table.Lookup("dev", "u", token(1)); !ok {
		t.Fatal("a stale put replaced the member")
	}
	// Delete and purge remove at their revision.
	m.apply(kvEntry{Key("dev", "u"), nil, 9, jetstream.KeyValueDelete})
	if len(m.table.Snapshot(now)) != 0 {
		t.Fatal("delete left the member")
	}
	m.apply(kvEntry{Key("dev", "v"), mustMarshal(t, &other), 10, jetstream.KeyValuePut})
	m.apply(kvEntry{Key("dev", "v"), nil, 11, jetstream.KeyValuePurge})
	if len(m.table.Snapshot(now)) != 0 {
		t.Fatal("purge left the member")
	}
}

// TestConfigMissesFitTheJoinReply: the join reply carries Misses as a
// uint16, and a unit refuses a reply with zero misses; a configuration whose
// Misses does not fit must be refused (or capped) by New, not wrapped.
//
// A regression test: before the fix, Config.fill (manager/manager.go) bounds
// Misses below only, and join sends uint16(m.cfg.Misses): 65536 goes out as
// 0, and every unit refuses every join reply (messages.JoinReply.Validate).
func TestConfigMissesFitTheJoinReply(t *testing.T) {
	for _, misses := range []int{3, 0xffff, 0x10000, 0x10003} {
		cfg := Config{Conn: &nats.Conn{}, Root: &x509.Certificate{}, ID: "m1", Misses: misses}
		if err := cfg.fill(); err != nil {
			continue // refused: fine
		}
		reply := messages.JoinReply{V: messages.Version, Token: token(1), Interval: int64(cfg.Interval), Misses: uint16(cfg.Misses)}
		if err := reply.Validate(); err != nil || int(reply.Misses) != cfg.Misses {
			t.Errorf("Misses %d accepted; the join reply says %d misses (%v)", misses, reply.Misses, err)
		}
	}
}

func populatedStatus() *Status {
	at := time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)
	return &Status{
		V: StatusVersion, Manager: "m1", Time: at, Interval: "1s",
		Counts: Counts{Clusters: 2, Units: 3, Active: 1, Late: 1, Due: 1},
		Clusters: []ClusterStatus{
			{ID: "dev", Units: []UnitStatus{
				{Unit: "u0", Task: "demo", Measurement: strings.Repeat("ab", 32), State: Active, Addr: "u0:8443", Joined: at.Add(-time.Hour), LastHeartbeat: at},
				{Unit: "u1", Task: "demo", Measurement: strings.Repeat("cd", 32), State: Late, Addr: "u1:8443", Joined: at.Add(-time.Hour), LastHeartbeat: at.Add(-2 * time.Second)},
			}},
			{ID: "prod", Units: []UnitStatus{
				{Unit: "p0", Task: "web", Measurement: strings.Repeat("ef", 32), State: Due, Addr: "", Joined: at.Add(-time.Minute), LastHeartbeat: at.Add(-time.Minute)},
			}},
		},
		Truncated: true,
	}
}

func TestStatus(t *testing.T) {
	now := t0
	m := testManager(&now)
	m.table.Put(member("dev", "b", 1), 1, at(0))
	m.table.Put(member("dev", "a", 2), 2, at(-2*time.Second))
	m.table.Put(member("prod", "c", 3), 3, at(-time.Minute))
	s := m.Status()
	if s.V != StatusVersion || s.Manager != "m1" || !s.Time.Equal(now) || s.Interval != "1s" || s.Truncated {
		t.Fatalf("header: %+v", s)
	}
	if want := (Counts{Clusters: 2, Units: 3, Active: 1, Late: 1, Due: 1}); s.Counts != want {
		t.Fatalf("counts %+v, want %+v", s.Counts, want)
	}
	if len(s.Clusters) != 2 || s.Clusters[0].ID != "dev" || s.Clusters[1].ID != "prod" ||
		len(s.Clusters[0].Units) != 2 || s.Clusters[0].Units[0].Unit != "a" || s.Clusters[0].Units[1].Unit != "b" {
		t.Fatalf("clusters %+v", s.Clusters)
	}
	u := s.Clusters[0].Units[0]
	if u.State != Late || u.Task != "demo" || u.Addr != "a:8443" || u.Measurement != strings.Repeat("09", 32) ||
		!u.LastHeartbeat.Equal(at(-2*time.Second)) || !u.Joined.Equal(t0) {
		t.Fatalf("unit %+v", u)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeStatus(b)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := json.Marshal(got); !bytes.Equal(again, b) {
		t.Fatalf("round trip changed the status:\n%s\n%s", again, b)
	}
	// An empty table lists no clusters, as an empty list, not null.
	empty := testManager(&now).Status()
	if b, _ := json.Marshal(empty); !bytes.Contains(b, []byte(`"clusters":[]`)) {
		t.Fatalf("empty status: %s", b)
	}
}

func TestStatusTruncated(t *testing.T) {
	now := t0
	m := testManager(&now)
	for i := range statusLimit + 5 {
		m.table.Put(member(fmt.Sprintf("c%02d", i%50), fmt.Sprint("u", i), 1), uint64(i+1), now)
	}
	s := m.Status()
	if !s.Truncated || s.Counts.Units != statusLimit {
		t.Fatalf("truncated %t, %d units; want true, %d", s.Truncated, s.Counts.Units, statusLimit)
	}
	n := 0
	for _, c := range s.Clusters {
		n += len(c.Units)
	}
	if n != statusLimit || s.Counts.Clusters != len(s.Clusters) {
		t.Fatalf("%d units listed in %d clusters (counted %d)", n, len(s.Clusters), s.Counts.Clusters)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeStatus(b); err != nil {
		t.Fatalf("%d bytes: %v", len(b), err)
	}
}

// TestStatusOfLongestMembersDecodes: the largest status the manager sends
// (statusLimit units, every field of each at its cap) must be one its own
// DecodeStatus accepts, or `cohort status` cannot read it.
//
// A regression test: before the fix, statusLimit (20000) units with a 64-byte
// unit id, a 63-byte task and cluster and a 255-byte address make about 12
// MB of JSON, over maxStatus (8 MiB) (manager/manager.go constants).
func TestStatusOfLongestMembersDecodes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a status of 20000 members")
	}
	now := t0
	m := testManager(&now)
	cluster := strings.Repeat("c", messages.MaxTaskName)
	for i := range statusLimit {
		mem := member(cluster, fmt.Sprintf("%s%05d", strings.Repeat("u", messages.MaxUnitID-5), i), 1)
		mem.Task = strings.Repeat("t", messages.MaxTaskName)
		mem.Addr = strings.Repeat("a", messages.MaxAddr)
		m.table.Put(mem, uint64(i+1), now)
	}
	b, err := json.Marshal(m.Status())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeStatus(b); err != nil {
		t.Fatalf("the manager's own status does not decode: %v", err)
	}
}

func TestDecodeStatusRefusals(t *testing.T) {
	valid, err := json.Marshal(populatedStatus())
	if err != nil {
		t.Fatal(err)
	}
	if s, err := DecodeStatus(valid); err != nil || s.Manager != "m1" || len(s.Clusters) != 2 {
		t.Fatalf("valid status: %+v, %v", s, err)
	}
	withField := func(k string, v any) []byte {
		var m map[string]any
		if err := json.Unmarshal(valid, &m); err != nil {
			t.Fatal(err)
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, tc := range map[string]struct {
		data []byte
		want string // in the error
	}{
		"version 0":           {withField("v", 0), "version 0"},
		"version 2":           {withField("v", 2), "version 2"},
		"no version":          {withField("v", nil), "version 0"},
		"version as string":   {withField("v", "1"), "decode status"},
		"unknown field":       {withField("extra", 1), `unknown field "extra"`},
		"unknown unit field":  {bytes.Replace(valid, []byte(`"unit":"u0"`), []byte(`"unit":"u0","x":1`), 1), `unknown field "x"`},
		"trailing object":     {append(bytes.Clone(valid), valid...), "trailing data"},
		"trailing garbage":    {append(bytes.Clone(valid), " x"...), "trailing data"},
		"truncated":           {valid[:len(valid)-1], "decode status"},
		"empty":               {nil, "decode status"},
		"null":                {[]byte("null"), "version 0"},
		"array":               {[]byte("[]"), "decode status"},
		"deep":                {[]byte(strings.Repeat("[", 20000)), "decode status"},
		"huge number":         {withField("v", json.Number("1e400")), "decode status"},
		"bad time":            {withField("time", "yesterday"), "decode status"},
		"oversize":            {append(bytes.Clone(valid), bytes.Repeat([]byte(" "), maxStatus)...), "at most"},
		"oversize whitespace": {bytes.Repeat([]byte(" "), maxStatus+1), "at most"},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := DecodeStatus(tc.data)
			if err == nil || s != nil {
				t.Fatalf("accepted: %+v", s)
			}
			if !strings.HasPrefix(err.Error(), "manager: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
		})
	}
	// Whitespace around the document is not trailing data; the cap counts it.
	padded := append(append([]byte("\n "), valid...), "\n"...)
	if _, err := DecodeStatus(padded); err != nil {
		t.Fatalf("padded: %v", err)
	}
	atCap := append(bytes.Clone(valid), bytes.Repeat([]byte(" "), maxStatus-len(valid))...)
	if _, err := DecodeStatus(atCap); err != nil {
		t.Fatalf("exactly at the cap: %v", err)
	}
}

// TestDecodeStatusTrailingBracket: a closing bracket after the document is
// trailing data too.
//
// A regression test: before the fix, DecodeStatus (manager/status.go) detects
// trailing data with json.Decoder.More, which reports false when the next
// byte is '}' or ']', so `{...}}` and `{...}]` are accepted.
func TestDecodeStatusTrailingBracket(t *testing.T) {
	valid, err := json.Marshal(populatedStatus())
	if err != nil {
		t.Fatal(err)
	}
	for _, tail := range []string{"}", "]", " ]]]", "}garbage"} {
		if s, err := DecodeStatus(append(bytes.Clone(valid), tail...)); err == nil {
			t.Errorf("trailing %q accepted: %d clusters", tail, len(s.Clusters))
		}
	}
}

// FuzzDecodeMember: decodeMember never panics; what it accepts is the
// canonical encoding of a record within every bound, one whose leave and
// eviction can be audited.
//
// The seeds under testdata/fuzz/FuzzDecodeMember named bug-* are regressions
// of bugs since fixed; see TestDecodeMemberRecordCanBeAudited.
func FuzzDecodeMember(f *testing.F) {
	m := member("dev", "unit-0_A", 1)
	b := mustMarshal(f, &m)
	f.Add(b)
	f.Add(append(bytes.Clone(b), 0))
	f.Add(b[:len(b)-1])
	long := member(strings.Repeat("c", messages.MaxTaskName), strings.Repeat("u", messages.MaxUnitID), 2)
	long.Task, long.Addr = strings.Repeat("t", messages.MaxTaskName), strings.Repeat("a", messages.MaxAddr)
	f.Add(mustMarshal(f, &long))
	noAddr := member("a", "-", 3)
	noAddr.Addr, noAddr.Manager, noAddr.Joined = "", "", -1
	f.Add(mustMarshal(f, &noAddr))
	for _, edit := range []func(map[string]any){
		func(m map[string]any) { m["v"] = 2 },
		func(m map[string]any) { m["extra"] = 1 },
		func(m map[string]any) { m["token"] = bytes.Repeat([]byte{1}, 31) },
		func(m map[string]any) { delete(m, "v") },
	} {
		mm := memberMap(f, m)
		edit(mm)
		f.Add(mustMarshal(f, mm))
	}
	for _, h := range [][]byte{
		{0xc6, 0xff, 0xff, 0xff, 0xff}, {0xdb, 0xff, 0xff, 0xff, 0xff}, {0xdd, 0xff, 0xff, 0xff, 0xff}, {0xdf, 0xff, 0xff, 0xff, 0xff},
		{0x81, 0xa1, 'v', 0xc6, 0xff, 0xff, 0xff, 0xff}, append(bytes.Repeat([]byte{0x91}, 20), 1), nil, {0xc1},
	} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		mem, err := decodeMember(data)
		if err != nil {
			if mem != nil {
				t.Fatal("a refusal returned a member")
			}
			if len(data) > maxMember && !errors.Is(err, messages.ErrTooLarge) {
				t.Fatalf("%d bytes refused as %v, want ErrTooLarge", len(data), err)
			}
			return
		}
		if len(data) > maxMember {
			t.Fatalf("accepted %d bytes", len(data))
		}
		if mem.V != memberV || !messages.ValidTaskName(mem.Cluster) || !messages.ValidUnitID(mem.Unit) ||
			len(mem.Token) != messages.TokenSize || len(mem.Measurement) != messages.HashSize || len(mem.Addr) > messages.MaxAddr {
			t.Fatalf("accepted out of bounds: %+v", mem)
		}
		if again := mustMarshal(t, mem); !bytes.Equal(again, data) {
			t.Fatalf("accepted a non-canonical encoding:\n  in % x\nout % x", data, again)
		}
		if !messages.ValidTaskName(mem.Task) {
			t.Fatalf("accepted a record whose task %.40q is not a task name", mem.Task)
		}
		for _, e := range memberEvents(mem) {
			if _, err := e.Encode(); err != nil {
				t.Fatalf("accepted a record whose %s event cannot be published: %v", e.Kind, err)
			}
		}
		// The table takes it, and its token is what heartbeats must carry.
		tb := NewTable(testInterval, testMisses, 4*time.Minute)
		tb.Put(*mem, 1, t0)
		if !tb.Heartbeat(mem.Cluster, mem.Unit, mem.Token, t0) {
			t.Fatal("the record's own token is refused")
		}
	})
}

// FuzzDecodeStatus: DecodeStatus never panics and refuses with a named
// reason; what it accepts is one JSON document of the current version, within
// the cap, that encodes and decodes again to the same document.
//
// The seeds under testdata/fuzz/FuzzDecodeStatus named bug-* are regressions
// of bugs since fixed; see TestDecodeStatusTrailingBracket.
func FuzzDecodeStatus(f *testing.F) {
	valid, err := json.Marshal(populatedStatus())
	if err != nil {
		f.Fatal(err)
	}
	empty, _ := json.Marshal(&Status{V: StatusVersion, Clusters: []ClusterStatus{}})
	f.Add(valid)
	f.Add(empty)
	f.Add(append(bytes.Clone(valid), valid...))
	f.Add(valid[:len(valid)/2])
	f.Add(bytes.Replace(valid, []byte(`"v":1`), []byte(`"v":2`), 1))
	f.Add(bytes.Replace(valid, []byte(`"v":1`), []byte(`"v":1,"x":{}`), 1))
	f.Add(bytes.Replace(valid, []byte(`"unit":"u0"`), []byte(`"unit":"u0","extra":[1]`), 1))
	f.Add(bytes.Replace(valid, []byte(`"v":1`), []byte(`"V":1,"v":1`), 1))
	f.Add([]byte(strings.Repeat("[", 10001)))
	f.Add([]byte(`{"v":1e400}`))
	f.Add([]byte("null"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeStatus(data)
		if err != nil {
			if s != nil {
				t.Fatal("a refusal returned a status")
			}
			if !strings.HasPrefix(err.Error(), "manager: ") {
				t.Fatalf("refusal does not say who refused: %v", err)
			}
			return
		}
		if len(data) > maxStatus || s.V != StatusVersion {
			t.Fatalf("accepted %d bytes of version %d", len(data), s.V)
		}
		if !json.Valid(data) {
			t.Fatalf("accepted what is not one JSON document: %q", data)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("accepted status does not encode: %v", err)
		}
		s2, err := DecodeStatus(b)
		if err != nil {
			t.Fatalf("re-encoded status does not decode: %v", err)
		}
		if b2, _ := json.Marshal(s2); !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the status:\n%s\n%s", b, b2)
		}
	})
}

// TestSenderTakesOnlyAClientsOwnRequest: a request the NATS server stamped
// as its own publish (a JetStream answer, a consumer's delivery) is no
// unit's, whatever subject it came on; a client's is judged by its subject.
func TestSenderTakesOnlyAClientsOwnRequest(t *testing.T) {
	subject := messages.ManagerSubject(messages.VerbLeave, "c1", "u1")
	stamp := func(info string) nats.Header { return nats.Header{service.RequestInfoHeader: []string{info}} }
	for _, c := range []struct {
		name   string
		header nats.Header
		ok     bool
	}{
		{"no stamp (no import crossed)", nil, true},
		{"a client", stamp(`{"acc":"cluster-c1","user":"UABC","kind":"Client"}`), true},
		{"JetStream", stamp(`{"acc":"cluster-c1","kind":"JetStream"}`), false},
		{"the account", stamp(`{"acc":"cluster-c1","kind":"Account"}`), false},
		{"an import that does not share", stamp(`{"acc":"cluster-c1"}`), false},
		{"a stamp that does not decode", stamp(`{"kind":`), false},
		{"an oversize stamp", stamp(`{"kind":"Client","name":"` + strings.Repeat("x", service.MaxRequestInfo) + `"}`), false},
	} {
		refusal := sender(service.Msg{Subject: subject, Header: c.header}, messages.VerbLeave, "c1", "u1")
		if (refusal == nil) != c.ok {
			t.Errorf("%s: %v, want ok %v", c.name, refusal, c.ok)
		}
		if refusal != nil && (refusal.Code != messages.CodeWrongSubject || refusal.Reason == "") {
			t.Errorf("%s: %v, want %s with a reason", c.name, refusal, messages.CodeWrongSubject)
		}
	}
	// A client's stamp does not lend it another unit's subject.
	if sender(service.Msg{Subject: subject, Header: stamp(`{"kind":"Client"}`)}, messages.VerbLeave, "c1", "u2") == nil {
		t.Error("a leave for u2 on u1's subject was taken")
	}
}
