package manager

import (
	"bytes"
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testInterval = time.Second
	testMisses   = 3
)

// t0 is the tests' clock origin: every time is t0 plus an offset.
var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func token(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func member(cluster, unit string, tok byte) Member {
	return Member{
		V: memberV, Cluster: cluster, Unit: unit, Task: "demo", Measurement: bytes.Repeat([]byte{9}, 32),
		Addr: unit + ":8443", Token: token(tok), Joined: t0.UnixNano(), Manager: "m1",
	}
}

// view returns the snapshot entry of cluster/unit, or false.
func view(tb *Table, cluster, unit string, now time.Time) (View, bool) {
	for _, v := range tb.Snapshot(now) {
		if v.Member.Cluster == cluster && v.Member.Unit == unit {
			return v, true
		}
	}
	return View{}, false
}

func state(t *testing.T, tb *Table, cluster, unit string, now time.Time) State {
	t.Helper()
	v, ok := view(tb, cluster, unit, now)
	if !ok {
		t.Fatalf("%s/%s is not in the table", cluster, unit)
	}
	return v.State
}

func TestKey(t *testing.T) {
	if got := Key("dev", "unit-0"); got != "dev.unit-0" {
		t.Fatalf("Key = %q", got)
	}
}

func TestTablePutNewerRevisionWins(t *testing.T) {
	tb := NewTable(testInterval, testMisses, 4*time.Minute)
	m5 := member("dev", "u", 1)
	tb.Put(m5, 5, at(0))

	// An older revision never replaces a newer one, nor refreshes last seen.
	old := member("dev", "u", 2)
	old.Addr = "old:1"
	tb.Put(old, 4, at(2*time.Second))
	// Nor does the same revision again.
	same := member("dev", "u", 3)
	same.Addr = "same:1"
	tb.Put(same, 5, at(2*time.Second))

	got, rev, ok := tb.Lookup("dev", "u", token(1))
	if !ok || rev != 5 || got.Addr != m5.Addr {
		t.Fatalf("after stale puts: Lookup = %+v, %d, %t; want revision 5 as first put", got, rev, ok)
	}
	for _, tok := range []byte{2, 3} {
		if _, _, ok := tb.Lookup("dev", "u", token(tok)); ok {
			t.Fatalf("the token of a stale put (%d) is accepted", tok)
		}
	}
	if v, _ := view(tb, "dev", "u", at(2*time.Second)); !v.LastSeen.Equal(at(0)) {
		t.Fatalf("a stale put moved last seen to %v", v.LastSeen)
	}

	// A newer revision replaces it, with its own token and time.
	m7 := member("dev", "u", 7)
	m7.Addr = "new:1"
	tb.Put(m7, 7, at(2*time.Second))
	got, rev, ok = tb.Lookup("dev", "u", token(7))
	if !ok || rev != 7 || got.Addr != "new:1" {
		t.Fatalf("after a newer put: Lookup = %+v, %d, %t", got, rev, ok)
	}
	if _, _, ok := tb.Lookup("dev", "u", token(1)); ok {
		t.Fatal("the replaced member's token is still accepted")
	}
	if v, _ := view(tb, "dev", "u", at(2*time.Second)); !v.LastSeen.Equal(at(2 * time.Second)) {
		t.Fatalf("last seen %v, want the newer put's time", v.LastSeen)
	}
	if n := len(tb.Snapshot(at(0))); n != 1 {
		t.Fatalf("%d members, want 1", n)
	}
}

func TestTableRemoveRevision(t *testing.T) {
	tb := NewTable(testInterval, testMisses, 4*time.Minute)
	tb.Put(member("dev", "u", 1), 5, at(0))
	key := Key("dev", "u")

	// An older revision than stored does nothing: the delete is of a record
	// the member has since replaced.
	tb.Remove(key, 4)
	if _, rev, ok := tb.Lookup("dev", "u", token(1)); !ok || rev != 5 {
		t.Fatalf("Remove at an older revision removed the member (%d, %t)", rev, ok)
	}
	// Unknown keys are ignored.
	tb.Remove(Key("dev", "other"), 100)
	tb.Remove("", 0)
	if len(tb.Snapshot(at(0))) != 1 {
		t.Fatal("removing an unknown key changed the table")
	}
	// The same revision removes it.
	tb.Remove(key, 5)
	if _, _, ok := tb.Lookup("dev", "u", token(1)); ok {
		t.Fatal("Remove at the stored revision left the member")
	}
	// A newer revision (a delete marker after the put) removes it too.
	tb.Put(member("dev", "u", 2), 9, at(0))
	tb.Remove(key, 10)
	if _, _, ok := tb.Lookup("dev", "u", token(2)); ok || len(tb.Snapshot(at(0))) != 0 {
		t.Fatal("Remove at a newer revision left the member")
	}
	if tb.Heartbeat("dev", "u", token(2), at(time.Second)) {
		t.Fatal("a removed member's heartbeat is known")
	}
}

func TestTableHeartbeat(t *testing.T) {
	tb := NewTable(testInterval, testMisses, 4*time.Minute)
	tb.Put(member("dev", "u", 1), 1, at(0))
	tb.Put(member("dev", "v", 2), 2, at(0))

	if !tb.Heartbeat("dev", "u", token(1), at(2*time.Second)) {
		t.Fatal("heartbeat with the right token refused")
	}
	if v, _ := view(tb, "dev", "u", at(2*time.Second)); !v.LastSeen.Equal(at(2*time.Second)) || v.State != Active {
		t.Fatalf("after heartbeat: last seen %v, state %s", v.LastSeen, v.State)
	}

	short := token(1)[:31]
	long := append(token(1), 1)
	for name, hb := range map[string]func() bool{
		"wrong token":         func() bool { return tb.Heartbeat("dev", "u", token(2), at(3*time.Second)) },
		"other member's":      func() bool { return tb.Heartbeat("dev", "v", token(1), at(3*time.Second)) },
		"nil token":           func() bool { return tb.Heartbeat("dev", "u", nil, at(3*time.Second)) },
		"token prefix":        func() bool { return tb.Heartbeat("dev", "u", short, at(3*time.Second)) },
		"token longer":        func() bool { return tb.Heartbeat("dev", "u", long, at(3*time.Second)) },
		"unknown unit":        func() bool { return tb.Heartbeat("dev", "w", token(1), at(3*time.Second)) },
		"unknown cluster":     func() bool { return tb.Heartbeat("prod", "u", token(1), at(3*time.Second)) },
		"cluster/unit mix-up": func() bool { return tb.Heartbeat("u", "dev", token(1), at(3*time.Second)) },
	} {
		if hb() {
			t.Errorf("%s: heartbeat accepted", name)
		}
	}
	// A refused heartbeat changes nothing.
	if v, _ := view(tb, "dev", "u", at(3*time.Second)); !v.LastSeen.Equal(at(2 * time.Second)) {
		t.Fatalf("a refused heartbeat moved last seen to %v", v.LastSeen)
	}
	if v, _ := view(tb, "dev", "v", at(0)); !v.LastSeen.Equal(at(0)) {
		t.Fatalf("a refused heartbeat moved another member's last seen to %v", v.LastSeen)
	}
	// A heartbeat stamped earlier (a slow delivery) does not move last seen
	// back, but the member is still known.
	if !tb.Heartbeat("dev", "u", token(1), at(time.Second)) {
		t.Fatal("an earlier heartbeat with the right token refused")
	}
	if v, _ := view(tb, "dev", "u", at(3*time.Second)); !v.LastSeen.Equal(at(2 * time.Second)) {
		t.Fatalf("an earlier heartbeat moved last seen back to %v", v.LastSeen)
	}
}

func TestTableStates(t *testing.T) {
	tb := NewTable(testInterval, testMisses, 4*time.Minute)
	tb.Put(member("dev", "u", 1), 1, at(0))
	for _, tc := range []struct {
		after time.Duration
		want  State
	}{
		{0, Active},
		{time.Second, Active},
		{1500 * time.Millisecond, Active}, // late only after 1.5 intervals
		{1500*time.Millisecond + time.Nanosecond, Late},
		{2 * time.Second, Late},
		{3 * time.Second, Late}, // due only after misses × interval
		{3*time.Second + time.Nanosecond, Due},
		{time.Hour, Due},
		{-time.Hour, Active}, // a clock before last seen: not late
	} {
		if got := state(t, tb, "dev", "u", at(tc.after)); got != tc.want {
			t.Errorf("%v after the put: %s, want %s", tc.after, got, tc.want)
		}
	}
	// A heartbeat brings a late member back to active, and restarts the count.
	if !tb.Heartbeat("dev", "u", token(1), at(2500*time.Millisecond)) {
		t.Fatal("heartbeat refused")
	}
	for _, tc := range []struct {
		after time.Duration
		want  State
	}{
		{2500 * time.Millisecond, Active},
		{4 * time.Second, Active},
		{4*time.Second + time.Nanosecond, Late},
		{5500 * time.Millisecond, Late},
		{5500*time.Millisecond + time.Nanosecond, Due},
	} {
		if got := state(t, tb, "dev", "u", at(tc.after)); got != tc.want {
			t.Errorf("%v after the put (heartbeat at 2.5s): %s, want %s", tc.after, got, tc.want)
		}
	}
}

func TestTableStatesOtherSettings(t *testing.T) {
	tb := NewTable(200*time.Millisecond, 5, 4*time.Minute)
	tb.Put(member("dev", "u", 1), 1, at(0))
	for _, tc := range []struct {
		after time.Duration
		want  State
	}{
		{300 * time.Millisecond, Active},
		{300*time.Millisecond + 1, Late},
		{time.Second, Late},
		{time.Second + 1, Due},
	} {
		if got := state(t, tb, "dev", "u", at(tc.after)); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.after, got, tc.want)
		}
	}
}

func TestTableDue(t *testing.T) {
	tb := NewTable(testInterval, testMisses, 4*time.Minute)
	tb.Put(member("dev", "fresh", 1), 11, at(0))
	tb.Put(member("dev", "late", 2), 12, at(0))
	tb.Put(member("dev", "due", 3), 13, at(0))
	tb.Put(member("prod", "due", 4), 14, at(0))
	tb.Put(member("prod", "edge", 5), 15, at(0))
	now := at(10 * time.Second)
	tb.Heartbeat("dev", "fresh", token(1), at(9500*time.Millisecond))
	tb.Heartbeat("dev", "late", token(2), at(8*time.Second))
	tb.Heartbeat("dev", "due", token(3), at(5*time.Second))
	tb.Heartbeat("prod", "edge", token(5), at(7*time.Second)) // exactly misses × interval: not yet due

	if got := tb.Due(at(0)); len(got) != 0 {
		t.Fatalf("Due at the put: %+v", got)
	}
	got := tb.Due(now)
	slices.SortFunc(got, func(a, b Eviction) int { return cmp.Compare(a.Rev, b.Rev) })
	want := []Eviction{
		{Member: member("dev", "due", 3), Rev: 13, Silent: 5 * time.Second},
		{Member: member("prod", "due", 4), Rev: 14, Silent: 10 * time.Second},
	}
	if len(got) != len(want) {
		t.Fatalf("Due = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Rev != w.Rev || g.Silent != w.Silent || g.Member.Cluster != w.Member.Cluster ||
			g.Member.Unit != w.Member.Unit || !bytes.Equal(g.Member.Token, w.Member.Token) {
			t.Errorf("eviction %d = %+v, want %+v", i, g, w)
		}
	}
	// Due only reports: the members stay until removed at their revision.
	if len(tb.Due(now)) != 2 || len(tb.Snapshot(now)) != 5 {
		t.Fatal("Due changed the table")
	}
	for _, e := range got {
		tb.Remove(Key(e.Member.Cluster, e.Member.Unit), e.Rev)
	}
	if d := tb.Due(now); len(d) != 0 {
		t.Fatalf("after removing the due: Due = %+v", d)
	}
	if n := len(tb.Snapshot(now)); n != 3 {
		t.Fatalf("%d members left, want 3", n)
	}
	// A member that joined again (a newer revision) is not removed by the
	// eviction of the old one.
	tb.Put(member("dev", "again", 6), 20, at(0))
	ev := tb.Due(now)
	if len(ev) != 1 || ev[0].Rev != 20 {
		t.Fatalf("Due = %+v", ev)
	}
	tb.Put(member("dev", "again", 7), 21, now)
	tb.Remove(Key("dev", "again"), ev[0].Rev)
	if _, rev, ok := tb.Lookup("dev", "again", token(7)); !ok || rev != 21 {
		t.Fatal("evicting the old revision removed the member that joined again")
	}
}

func TestTableCounts(t *testing.T) {
	tb := NewTable(testInterval, testMisses, 4*time.Minute)
	want := map[State]int{Active: 0, Late: 0, Due: 0}
	if got := tb.Counts(at(0)); !equalCounts(got, want) {
		t.Fatalf("empty table: Counts = %v, want %v", got, want)
	}
	for i := range 10 {
		tb.Put(member("dev", fmt.Sprint("u", i), byte(i)), uint64(i+1), at(time.Duration(-i)*time.Second))
	}
	// At t0: silent 0..9 s. Active up to 1.5 s (0, 1), late up to 3 s (2, 3),
	// due beyond (4..9).
	want = map[State]int{Active: 2, Late: 2, Due: 6}
	if got := tb.Counts(at(0)); !equalCounts(got, want) {
		t.Fatalf("Counts = %v, want %v", got, want)
	}
	if due := tb.Due(at(0)); len(due) != want[Due] {
		t.Fatalf("Due lists %d, Counts says %d", len(due), want[Due])
	}
	n := 0
	for _, v := range tb.Snapshot(at(0)) {
		if v.State == Late {
			n++
		}
	}
	if n != want[Late] {
		t.Fatalf("Snapshot has %d late, Counts says %d", n, want[Late])
	}
}

func equalCounts(a, b map[State]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if n, ok := a[k]; !ok || n != v {
			return false
		}
	}
	return true
}

func sortedByClusterThenUnit(vs []View) bool {
	return slices.IsSortedFunc(vs, func(a, b View) int {
		return cmp.Or(strings.Compare(a.Member.Cluster, b.Member.Cluster), strings.Compare(a.Member.Unit, b.Member.Unit))
	})
}

func TestTableSnapshotSorted(t *testing.T) {
	tb := NewTable(testInterval, testMisses, 4*time.Minute)
	clusters := []string{"prod", "dev", "b", "a0", "a", "z9"}
	units := []string{"u", "U", "_", "0", "a_b", "A-b", "a", "aa", "z"}
	var all []Member
	for _, c := range clusters {
		for _, u := range units {
			all = append(all, member(c, u, 1))
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	r.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	for i, m := range all {
		tb.Put(m, uint64(i+1), at(time.Duration(i)*time.Millisecond))
	}
	got := tb.Snapshot(at(time.Second))
	if len(got) != len(all) {
		t.Fatalf("%d views, want %d", len(got), len(all))
	}
	if !sortedByClusterThenUnit(got) {
		var order []string
		for _, v := range got {
			order = append(order, v.Member.Cluster+"/"+v.Member.Unit)
		}
		t.Fatalf("Snapshot not sorted by cluster then unit: %v", order)
	}
	for _, v := range got {
		if v.State != Active {
			t.Fatalf("%s/%s: state %s", v.Member.Cluster, v.Member.Unit, v.State)
		}
	}
	if len(NewTable(testInterval, testMisses, 4*time.Minute).Snapshot(t0)) != 0 {
		t.Fatal("an empty table has a snapshot")
	}
}

// TestTableSnapshotSortedClusterPrefix: a cluster whose name is a prefix of
// another's ("a" and "a-b") comes first, as strings order them.
//
// A regression test: before the fix, Snapshot sorts by Key(cluster, unit) =
// cluster+"."+unit (manager/table.go, Snapshot's slices.SortFunc), and '-'
// (0x2d) sorts before '.' (0x2e), so "a-b.x" comes before "a.x": the units of
// cluster "a-b" are listed before those of "a", and status shows the
// clusters out of order. Units of one cluster stay together, so the grouping
// in Status is not broken.
func TestTableSnapshotSortedClusterPrefix(t *testing.T) {
	tb := NewTable(testInterval, testMisses, 4*time.Minute)
	tb.Put(member("a-b", "x", 1), 1, t0)
	tb.Put(member("a", "x", 2), 2, t0)
	tb.Put(member("a", "y", 3), 3, t0)
	got := tb.Snapshot(t0)
	var order []string
	for _, v := range got {
		order = append(order, v.Member.Cluster+"/"+v.Member.Unit)
	}
	if want := []string{"a/x", "a/y", "a-b/x"}; !slices.Equal(order, want) {
		t.Fatalf("Snapshot order %v, want %v", order, want)
	}
}

// TestTableRestartGivesGracePeriod: a table built afresh (a restarted
// manager loading the bucket) counts every member as heard when it loads
// it, however long ago the member was last heard by the manager before.
func TestTableRestartGivesGracePeriod(t *testing.T) {
	before := NewTable(testInterval, testMisses, 4*time.Minute)
	m := member("dev", "u", 1)
	before.Put(m, 3, at(0))
	if got := state(t, before, "dev", "u", at(time.Minute)); got != Due {
		t.Fatalf("before the restart: %s, want due", got)
	}

	load := at(time.Minute)
	after := NewTable(testInterval, testMisses, 4*time.Minute)
	after.Put(m, 3, load)
	if d := after.Due(load); len(d) != 0 {
		t.Fatalf("due right after the restart: %+v", d)
	}
	for _, tc := range []struct {
		after time.Duration
		want  State
	}{
		{0, Active},
		{1500 * time.Millisecond, Active},
		{1500*time.Millisecond + 1, Late},
		{3 * time.Second, Late},
		{3*time.Second + 1, Due},
	} {
		if got := state(t, after, "dev", "u", load.Add(tc.after)); got != tc.want {
			t.Errorf("%v after loading: %s, want %s", tc.after, got, tc.want)
		}
	}
	// The member's heartbeat is known to the new table, with the same token.
	if !after.Heartbeat("dev", "u", token(1), load.Add(3*time.Second)) {
		t.Fatal("the loaded member's heartbeat is refused")
	}
	if got := state(t, after, "dev", "u", load.Add(4*time.Second)); got != Active {
		t.Fatalf("after a heartbeat: %s", got)
	}
	// Loading the same revision again (the watch replaying it) does not
	// extend the grace period of a silent member.
	after.Put(m, 3, load.Add(time.Hour))
	if got := state(t, after, "dev", "u", load.Add(time.Hour)); got != Due {
		t.Fatalf("replayed put extended the grace period: %s", got)
	}
}

// TestTableConcurrent exercises every method from many goroutines at once;
// run with -race. Each worker owns some members, so that the outcome is
// known: every member a worker puts last is in the table at its revision.
func TestTableConcurrent(t *testing.T) {
	tb := NewTable(testInterval, testMisses, 4*time.Minute)
	const workers, members, rounds = 16, 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			cluster := fmt.Sprint("c", w%4)
			for r := range rounds {
				now := at(time.Duration(r) * 100 * time.Millisecond)
				for i := range members {
					unit := fmt.Sprintf("w%d-u%d", w, i)
					rev := uint64(r*members + i + 1)
					tb.Put(member(cluster, unit, byte(r)), rev, now)
					if !tb.Heartbeat(cluster, unit, token(byte(r)), now.Add(time.Millisecond)) {
						t.Errorf("%s/%s: own heartbeat refused", cluster, unit)
						return
					}
					if r%5 == 3 {
						tb.Remove(Key(cluster, unit), rev)
					}
				}
				_ = tb.Due(now.Add(time.Minute))
				_ = tb.Counts(now)
				if s := tb.Snapshot(now); !sortedByClusterThenUnit(s) {
					t.Errorf("unsorted snapshot under load")
					return
				}
				_, _, _ = tb.Lookup(cluster, fmt.Sprintf("w%d-u0", (w+1)%workers), token(byte(r)))
			}
		})
	}
	wg.Wait()
	// The last round (49) is not a removal round (3, 8, … 48): every member is there, at
	// the last revision put.
	now := at(rounds * 100 * time.Millisecond)
	snap := tb.Snapshot(now)
	if len(snap) != workers*members {
		t.Fatalf("%d members, want %d", len(snap), workers*members)
	}
	for w := range workers {
		for i := range members {
			_, rev, ok := tb.Lookup(fmt.Sprint("c", w%4), fmt.Sprintf("w%d-u%d", w, i), token(rounds-1))
			if want := uint64((rounds-1)*members + i + 1); !ok || rev != want {
				t.Errorf("w%d-u%d: revision %d, %t; want %d", w, i, rev, ok, want)
			}
		}
	}
	c := tb.Counts(now)
	if c[Active]+c[Late]+c[Due] != workers*members {
		t.Fatalf("Counts %v do not add up to %d", c, workers*members)
	}
}
