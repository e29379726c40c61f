package manager

import (
	"cmp"
	"crypto/subtle"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"
)

// Member is what the manager records of a unit: who it is, where it serves,
// and the token its heartbeats carry. It is stored, encoded, in the members
// bucket under Key(cluster, unit).
type Member struct {
	V           uint16 `msgpack:"v"`
	Cluster     string `msgpack:"cluster"`
	Unit        string `msgpack:"unit"`
	Task        string `msgpack:"task"`
	Measurement []byte `msgpack:"measurement"`
	Addr        string `msgpack:"addr"`
	Token       []byte `msgpack:"token"`
	Joined      int64  `msgpack:"joined"`    // Unix nanoseconds, the manager's clock
	JoinTime    int64  `msgpack:"join_time"` // the time the join names, the unit's clock
	Manager     string `msgpack:"manager"`
}

// Key is the bucket key of a member.
func Key(cluster, unit string) string { return cluster + "." + unit }

// State of a member as the table sees it.
type State string

// The states: active, late (missed at least one heartbeat), and due (missed
// Misses in a row: to be evicted).
const (
	Active State = "active"
	Late   State = "late"
	Due    State = "due"
)

const tableShards = 32

// Table is the manager's decision logic for membership, without I/O: who is a
// member, who is alive, who is due for eviction. Time is passed in. It is
// safe for concurrent use; it is sharded so that heartbeats from many units
// rarely share a lock.
//
// The members bucket is the record; the table mirrors it (Put, Remove) and
// adds what only the manager's memory holds: when each member was last heard.
//
// Joins are ordered by the time each names, on the unit's clock: a join no
// later than the member's current one, or than the last one of a member
// removed within the join window, is a replay (Newer).
type Table struct {
	interval time.Duration
	misses   int
	window   time.Duration
	seed     maphash.Seed
	shards   [tableShards]shard
}

type shard struct {
	mu    sync.Mutex
	m     map[string]*entry
	gone  map[string]int64 // removed members: the time their last join named
	swept time.Time
}

type entry struct {
	member   Member
	rev      uint64
	lastSeen time.Time
}

// NewTable returns an empty table: members are heard every interval, and due
// after misses intervals without a heartbeat.
// A removed member's last join time is kept for window, the span in which
// a join's time is accepted (twice the clock skew allowed).
func NewTable(interval time.Duration, misses int, window time.Duration) *Table {
	t := &Table{interval: interval, misses: misses, window: window, seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].m = make(map[string]*entry)
		t.shards[i].gone = make(map[string]int64)
	}
	return t
}

// Newer reports whether a join of unit of cluster naming joinTime is later
// than every join of it the table knows: its current membership's, and, for
// a member removed within the window, its last one's. A join that is not is
// a replay of an earlier one.
func (t *Table) Newer(cluster, unit string, joinTime int64) bool {
	key := Key(cluster, unit)
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[key]; ok && joinTime <= e.member.JoinTime {
		return false
	}
	if last, ok := s.gone[key]; ok && joinTime <= last {
		return false
	}
	return true
}

func (t *Table) shard(key string) *shard {
	return &t.shards[maphash.String(t.seed, key)%tableShards]
}

// Put records a member at revision rev, as the bucket has it. A newer
// revision replaces an older one; the member counts as heard at now, so that
// a restarted manager gives every member it loads a full grace period.
func (t *Table) Put(m Member, rev uint64, now time.Time) {
	key := Key(m.Cluster, m.Unit)
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[key]; ok && e.rev >= rev {
		return
	}
	s.m[key] = &entry{member: m, rev: rev, lastSeen: now}
}

// Remove forgets a member if the table has it at revision rev or older,
// and keeps the time of its last join.
func (t *Table) Remove(key string, rev uint64) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[key]; ok && e.rev <= rev {
		delete(s.m, key)
		s.gone[key] = max(s.gone[key], e.member.JoinTime)
	}
}

// Heartbeat records that a member was heard at now. It reports false for an
// unknown member or a token that does not match: the unit must join again.
func (t *Table) Heartbeat(cluster, unit string, token []byte, now time.Time) bool {
	key := Key(cluster, unit)
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	if !ok || subtle.ConstantTimeCompare(e.member.Token, token) != 1 {
		return false
	}
	if now.After(e.lastSeen) {
		e.lastSeen = now
	}
	return true
}

// Lookup returns a member and its revision if the token matches.
func (t *Table) Lookup(cluster, unit string, token []byte) (Member, uint64, bool) {
	key := Key(cluster, unit)
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	if !ok || subtle.ConstantTimeCompare(e.member.Token, token) != 1 {
		return Member{}, 0, false
	}
	return e.member, e.rev, true
}

// Eviction names a member due for eviction and the revision to delete.
type Eviction struct {
	Member Member
	Rev    uint64
	Silent time.Duration // how long it has not been heard
}

// Due returns the members not heard for misses intervals at now. It also
// forgets the joins of removed members that are older than the window.
func (t *Table) Due(now time.Time) []Eviction {
	var out []Eviction
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		if now.Sub(s.swept) >= t.window/4 {
			for k, last := range s.gone {
				if now.Sub(time.Unix(0, last)) > t.window {
					delete(s.gone, k)
				}
			}
			s.swept = now
		}
		for _, e := range s.m {
			if t.state(e, now) == Due {
				out = append(out, Eviction{Member: e.member, Rev: e.rev, Silent: now.Sub(e.lastSeen)})
			}
		}
		s.mu.Unlock()
	}
	return out
}

func (t *Table) state(e *entry, now time.Time) State {
	silent := now.Sub(e.lastSeen)
	switch {
	case silent > time.Duration(t.misses)*t.interval:
		return Due
	case silent > t.interval+t.interval/2:
		return Late
	}
	return Active
}

// View is one member as an operator sees it.
type View struct {
	Member   Member
	State    State
	LastSeen time.Time
}

// Snapshot returns every member, ordered by cluster and unit.
func (t *Table) Snapshot(now time.Time) []View {
	var out []View
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for _, e := range s.m {
			out = append(out, View{Member: e.member, State: t.state(e, now), LastSeen: e.lastSeen})
		}
		s.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b View) int {
		return cmp.Or(strings.Compare(a.Member.Cluster, b.Member.Cluster), strings.Compare(a.Member.Unit, b.Member.Unit))
	})
	return out
}

// Counts returns the number of members in each state.
func (t *Table) Counts(now time.Time) map[State]int {
	c := map[State]int{Active: 0, Late: 0, Due: 0}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for _, e := range s.m {
			c[t.state(e, now)]++
		}
		s.mu.Unlock()
	}
	return c
}
