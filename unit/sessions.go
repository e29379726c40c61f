package unit

import (
	"sync"
	"time"

	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/rate"
)

// session is what a unit knows of a session: its keys, task, user and
// expiry, or that it was closed.
type session struct {
	keys    *channel.Keys
	task    string
	user    string
	expires time.Time
	closed  bool
}

// sessionTable holds the sessions of the unit's cluster, keyed by id, and
// how many live ones each user holds.
type sessionTable struct {
	mu      sync.RWMutex
	m       map[[messages.SessionIDSize]byte]*session
	perUser map[string]int // sessions not closed, reserved ones included
}

func key(id []byte) (k [messages.SessionIDSize]byte) {
	copy(k[:], id)
	return k
}

func (t *sessionTable) get(id []byte) (*session, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	s, ok := t.m[key(id)]
	return s, ok
}

// put records a session and reports whether it was new. A session given as
// reserved was counted for its user by reserve already.
func (t *sessionTable) put(id []byte, s *session, reserved bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m, t.perUser = map[[messages.SessionIDSize]byte]*session{}, map[string]int{}
	}
	k := key(id)
	old, had := t.m[k]
	if had && old.closed && !s.closed {
		if reserved {
			t.release(s.user)
		}
		return false // closed is final: a replayed open record cannot reopen a session
	}
	switch {
	case had && !old.closed && s.closed:
		t.release(old.user)
	case !had && !s.closed && !reserved:
		t.perUser[s.user]++
	case had && reserved:
		t.release(s.user) // learned from the stream before this unit's own store returned
	}
	t.m[k] = s
	return !had
}

// reserve counts a session about to be opened for user, if the user holds
// fewer than limit; release undoes it when the opening fails.
func (t *sessionTable) reserve(user string, limit int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.perUser == nil {
		t.m, t.perUser = map[[messages.SessionIDSize]byte]*session{}, map[string]int{}
	}
	if t.perUser[user] >= limit {
		return false
	}
	t.perUser[user]++
	return true
}

func (t *sessionTable) unreserve(user string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.release(user)
}

// release uncounts one session of user. Called with t.mu held.
func (t *sessionTable) release(user string) {
	if t.perUser[user] <= 1 {
		delete(t.perUser, user)
		return
	}
	t.perUser[user]--
}

// live is how many sessions user holds, reserved ones included.
func (t *sessionTable) live(user string) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.perUser[user]
}

// sweep drops the sessions expired at now, closed ones too (an expired
// session is refused as unknown, and its record expires from the stream a
// minute after it), and returns how many it dropped.
func (t *sessionTable) sweep(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for k, s := range t.m {
		if now.After(s.expires) {
			if !s.closed {
				t.release(s.user)
			}
			delete(t.m, k)
			n++
		}
	}
	return n
}

func (t *sessionTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}

// holds records a session, and tells the observer when it is new.
func (u *Unit) holds(id []byte, s *session, reserved bool) {
	if u.sessions.put(id, s, reserved) && u.cfg.OnSession != nil {
		u.cfg.OnSession(id)
	}
}

// HasSession reports whether the unit holds a live session: known, not
// expired, not closed.
func (u *Unit) HasSession(id []byte) bool {
	s, ok := u.sessions.get(id)
	return ok && !s.closed && u.cfg.Now().Before(s.expires)
}

// Sessions is how many sessions the unit holds in memory, closed and not yet
// swept ones included.
func (u *Unit) Sessions() int { return u.sessions.len() }

// LiveSessions is how many live sessions user holds in the unit's cluster,
// as far as the unit knows.
func (u *Unit) LiveSessions(user string) int { return u.sessions.live(user) }

// Quota bounds what one user may ask of a cluster. Zero fields take the
// defaults noted. Sessions is counted across the cluster (every unit holds
// every session); the rates are each unit's, so a cluster of n units takes
// at most n times them from one user.
type Quota struct {
	Sessions       int     // live sessions a user may hold in the cluster; default 1000
	Handshakes     float64 // handshakes a second; default 20
	HandshakeBurst float64 // handshakes at once; default 40
	Calls          float64 // calls (and closes) a second; default 500
	CallBurst      float64 // calls at once; default 1000
	// CallBytes bounds the bytes a user's calls and their answers add to
	// the cluster's claims, a second; default 1 MiB. CallBytesBurst at
	// once; default 8 MiB.
	CallBytes      float64
	CallBytesBurst float64
}

func (q *Quota) fill() {
	if q.Sessions <= 0 {
		q.Sessions = 1000
	}
	if q.Handshakes <= 0 {
		q.Handshakes = 20
	}
	if q.HandshakeBurst <= 0 {
		q.HandshakeBurst = 2 * q.Handshakes
	}
	if q.Calls <= 0 {
		q.Calls = 500
	}
	if q.CallBurst <= 0 {
		q.CallBurst = 2 * q.Calls
	}
	if q.CallBytes <= 0 {
		q.CallBytes = 1 << 20
	}
	if q.CallBytesBurst <= 0 {
		q.CallBytesBurst = max(8<<20, 2*q.CallBytes)
	}
}

// Unlimited is a quota no load reaches: for benchmarks.
var Unlimited = Quota{Sessions: 1 << 30, Handshakes: 1e9, HandshakeBurst: 1e9, Calls: 1e9, CallBurst: 1e9, CallBytes: 1e15, CallBytesBurst: 1e15}

// maxQuotaUsers bounds the users whose rates a unit tracks at once.
const maxQuotaUsers = 1 << 16

// quotas are a unit's per-user buckets.
type quotas struct {
	handshakes, calls, bytes *rate.Buckets
}

func newQuotas(q Quota) *quotas {
	return &quotas{
		handshakes: rate.New(rate.Limit{Rate: q.Handshakes, Burst: q.HandshakeBurst}, maxQuotaUsers),
		calls:      rate.New(rate.Limit{Rate: q.Calls, Burst: q.CallBurst}, maxQuotaUsers),
		bytes:      rate.New(rate.Limit{Rate: q.CallBytes, Burst: q.CallBytesBurst}, maxQuotaUsers),
	}
}
