package unit

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/channel"
)

var g0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func info(created time.Time, last uint64) *jetstream.StreamInfo {
	return &jetstream.StreamInfo{Created: created, State: jetstream.StreamState{LastSeq: last}}
}

// The guard passes claims of a stream that only grows, and refuses once
// the stream shows it was made again: a claim below a sequence it had
// passed, or a creation time that moved; calls sent before that are not
// run.
func TestCallsGuard(t *testing.T) {
	var g callsGuard
	g.bind(info(g0, 100))
	if err := g.check(101, g0, g0); err != nil {
		t.Fatalf("a claim above the floor: %v", err)
	}
	g.look(info(g0, 150), g0.Add(30*time.Second))
	if err := g.check(120, g0, g0); err != nil {
		t.Fatalf("a claim written before the look, checked after: %v", err) // the floor lags a look behind
	}
	g.look(info(g0, 200), g0.Add(time.Minute))
	if err := g.check(140, g0, g0.Add(time.Minute)); !errors.Is(err, channel.ErrTampered) {
		t.Fatalf("a claim below the floor: %v", err)
	}
	// Made again: from now, calls sent before now (and the skew) are refused.
	now := g0.Add(2 * time.Minute)
	var h callsGuard
	h.bind(info(g0, 10))
	h.look(info(now, 0), now)
	if err := h.check(1, now.Add(-time.Minute), now); !errors.Is(err, channel.ErrTampered) {
		t.Fatalf("a call sent before the stream was made again: %v", err)
	}
	if err := h.check(2, now.Add(3*time.Minute), now.Add(3*time.Minute)); err != nil {
		t.Fatalf("a call sent well after: %v", err)
	}
}

// The session table counts each user's live sessions: reserved, held,
// learned from the stream before the unit's own store returned, closed,
// expired.
func TestSessionTableCounts(t *testing.T) {
	var tb sessionTable
	exp := g0.Add(time.Hour)
	for i, want := range []bool{true, true, false} {
		if got := tb.reserve("alice", 2); got != want {
			t.Fatalf("reservation %d: %v, want %v", i+1, got, want)
		}
	}
	tb.unreserve("alice")
	tb.put([]byte("a"), &session{user: "alice", expires: exp}, true)
	if n := tb.live("alice"); n != 1 {
		t.Fatalf("%d live after one held", n)
	}
	tb.reserve("alice", 2)
	tb.put([]byte("b"), &session{user: "alice", expires: exp}, false) // learned first
	tb.put([]byte("b"), &session{user: "alice", expires: exp}, true)  // then held
	if n := tb.live("alice"); n != 2 {
		t.Fatalf("%d live after two, one learned before it was held", n)
	}
	tb.put([]byte("a"), &session{user: "alice", expires: exp, closed: true}, false)
	if n := tb.live("alice"); n != 1 {
		t.Fatalf("%d live after a close", n)
	}
	if tb.put([]byte("a"), &session{user: "alice", expires: exp}, false); tb.live("alice") != 1 {
		t.Fatal("a closed session reopened")
	}
	if n := tb.sweep(exp.Add(time.Second)); n != 2 || tb.len() != 0 || tb.live("alice") != 0 {
		t.Fatalf("swept %d, %d left, %d live", n, tb.len(), tb.live("alice"))
	}
}
