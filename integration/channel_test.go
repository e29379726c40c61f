package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// A session opened through one unit of a five-unit cluster reaches every
// other unit through the manager and JetStream, sealed under the cluster key;
// a unit that joins later learns it too.
func TestSessionReachesEveryUnit(t *testing.T) {
	c := startCluster(t, 5, "s", nil)
	srv, nc, units, roots := c.srv, c.nc, c.units, c.roots
	cfg := client.Config{Conn: connect(t, srv), User: "alice", Cluster: "c1", Task: "demo", Roots: roots}
	opened := time.Now()
	s, err := client.Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "every unit holds the session", func() bool {
		for _, u := range units {
			if !u.HasSession(s.ID) {
				return false
			}
		}
		return true
	})
	t.Logf("session %x opened through %s, usable on all five units %v after the handshake began", s.ID, s.Unit, time.Since(opened).Round(time.Microsecond))
	if s.Task != "demo" || !s.Expires.After(time.Now()) {
		t.Errorf("session %+v", s)
	}
	eventually(t, "a session.opened event", func() bool { return hasEvent(t, nc, events.SessionOpened, s.Unit, "") })

	// A unit that joins after the session was opened learns it too.
	late := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
	late.Name, late.Cluster = "late", "c1"
	lu := startUnit(t, late)
	eventually(t, "the late unit holds the session", func() bool { return lu.HasSession(s.ID) })
	// And serves it: calls go on until the late unit has answered one.
	eventually(t, "the late unit answers a call of the session", func() bool {
		a, err := s.Call(context.Background(), []byte("to whoever"))
		if err != nil {
			t.Fatal(err)
		}
		return a.Unit == "late"
	})

	// Another task expected, or another cluster: refused.
	wrong := cfg
	wrong.Task = "other"
	if _, err := client.Dial(context.Background(), wrong); !errors.Is(err, &messages.Error{Code: messages.CodeWrongTask}) {
		t.Errorf("wrong task: %v", err)
	}
	wrong = cfg
	wrong.Cluster, wrong.Timeout = "o1", 500*time.Millisecond
	if _, err := client.Dial(context.Background(), wrong); err == nil {
		t.Error("a cluster with no unit answered")
	}
}

// Calls through one session are served by several units; the unit that did
// the handshake loses its connection during a stream of calls and not one
// call fails, with no new handshake; a replayed call is refused by every
// unit; an expired session is refused everywhere.
func TestCallsSurviveTheHandshakeUnit(t *testing.T) {
	c := startCluster(t, 5, "k", func(cfg *unit.Config) { cfg.SessionTTL = 20 * time.Second })
	conns, roots := c.conns, c.roots
	userConn := connect(t, c.srv)
	s, err := client.Dial(context.Background(), client.Config{Conn: userConn, User: "alice", Cluster: "c1", Task: "demo", Roots: roots, CallTimeout: 500 * time.Millisecond, Retries: 10})
	if err != nil {
		t.Fatal(err)
	}
	servedBy := map[string]int{}
	for i := range 300 {
		if i == 100 {
			conns[s.Unit].Close() // the handshake unit is gone, mid-stream
		}
		a, err := s.Call(context.Background(), fmt.Appendf(nil, "call %d", i))
		if err != nil {
			t.Fatalf("call %d failed: %v", i, err)
		}
		if want := fmt.Sprintf("heard: call %d", i); !bytes.HasSuffix(a.Data, []byte(want)) {
			t.Fatalf("call %d answered %q", i, a.Data)
		}
		servedBy[a.Unit]++
		if i >= 100 && a.Unit == s.Unit {
			t.Fatalf("call %d answered by the unit whose connection was cut", i)
		}
	}
	for name := range conns {
		if name != s.Unit && servedBy[name] == 0 {
			t.Errorf("unit %s served none of the calls (%v): each of the others should", name, servedBy)
		}
	}
	t.Logf("300 calls, none failed, one handshake, answered by %v", servedBy)

	// A replayed call: the same bytes again, to whichever unit.
	call := recordCall(t, userConn, s)
	for range 4 {
		msg, err := userConn.Request(messages.CallSubject("c1", "alice"), call, deadline)
		if err != nil {
			t.Fatal(err)
		}
		if code := msg.Header.Get("Nats-Service-Error-Code"); code != string(messages.CodeReplay) {
			t.Fatalf("a replayed call: code %q, want %s", code, messages.CodeReplay)
		}
	}
}

// recordCall makes one call through s and returns its request bytes as they
// crossed NATS, for replaying.
func recordCall(t *testing.T, nc *nats.Conn, s *client.Session) []byte {
	t.Helper()
	sub, err := nc.SubscribeSync(messages.CallSubject(s.Cluster, "alice"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Call(context.Background(), []byte("to be replayed")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(deadline)
	if err != nil {
		t.Fatal(err)
	}
	return m.Data
}

func TestExpiredSessionIsRefusedEverywhere(t *testing.T) {
	c := startCluster(t, 3, "e", func(cfg *unit.Config) { cfg.SessionTTL = time.Second })
	s, err := client.Dial(context.Background(), client.Config{Conn: connect(t, c.srv), User: "alice", Cluster: "c1", Roots: c.roots})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Call(context.Background(), []byte("before")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the session expired", func() bool { return time.Now().After(s.Expires) })
	for range 6 { // the queue group spreads these over the units
		if _, err := s.Call(context.Background(), []byte("after")); !errors.Is(err, messages.ErrNoSession) {
			t.Fatalf("a call after expiry: %v, want %v", err, messages.ErrNoSession)
		}
	}
}

// A closed session is refused by every unit, including one that starts
// after the close and only ever sees the closed record.
func TestClosedSessionIsRefusedEverywhere(t *testing.T) {
	c := startCluster(t, 3, "x", nil)
	srv, nc, mgr, units := c.srv, c.nc, c.mgr, c.units
	s, err := client.Dial(context.Background(), client.Config{Conn: connect(t, srv), User: "alice", Cluster: "c1", Roots: c.roots})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Call(context.Background(), []byte("open")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every unit knows the session closed", func() bool {
		for _, u := range units {
			if u.HasSession(s.ID) {
				return false
			}
		}
		return true
	})
	if _, err := s.Call(context.Background(), []byte("after close")); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("a call after close: %v, want %v", err, client.ErrClosed)
	}
	eventually(t, "a session.closed event", func() bool { return hasEvent(t, nc, events.SessionClosed, "", "") })
	// A unit started after the close learns only that the session is closed.
	late := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
	late.Name, late.Cluster = "xlate", "c1"
	lu := startUnit(t, late)
	eventually(t, "the late unit joined", func() bool { return mgr.Table().Counts(time.Now())["active"] == 4 })
	if lu.HasSession(s.ID) {
		t.Fatal("a late unit holds a closed session")
	}
}
