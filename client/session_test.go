package client

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// rawSend seals a message of the given kind under the session's keys and
// sends it to subject, without the client's retries or checks.
func rawSend(t *testing.T, s *Session, kind channel.Kind, subject string, data []byte) messages.Code {
	t.Helper()
	seq := s.seq.Add(1)
	sent := time.Now().UnixNano()
	ct, err := channel.SealCall(s.keys, kind, s.ID, seq, sent, data)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := messages.Marshal(&messages.Call{V: messages.Version, Session: s.ID, Seq: seq, Time: sent, Ciphertext: ct})
	msg, err := s.cfg.Conn.Request(subject, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return messages.Code(msg.Header.Get("Nats-Service-Error-Code"))
}

// A slow task is run once, however many times the client asks again while
// it runs: the retries hear "in progress", then the stored answer.
func TestSlowCallRunsOnce(t *testing.T) {
	var runs atomic.Int64
	release := make(chan struct{})
	app := func(ctx context.Context, c unit.Call) ([]byte, error) {
		runs.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return append([]byte("done: "), c.Data...), nil
	}
	st := newStack(t, 3, app, nil)
	s, err := Dial(context.Background(), Config{Conn: st.conn(), User: "alice", Cluster: "c1", Roots: st.roots, CallTimeout: 100 * time.Millisecond, Retries: 50})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var ans *Answer
	go func() {
		var err error
		ans, err = s.Call(context.Background(), []byte("slow"))
		done <- err
	}()
	// Hold the task until the client's attempts (100 ms each) have timed
	// out and been sent again several times.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	for runs.Load() == 0 || time.Since(start) < 5*100*time.Millisecond {
		if time.Since(start) > 30*time.Second {
			t.Fatal("the task never ran")
		}
		<-tick.C
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the slow call failed: %v", err)
	}
	if string(ans.Data) != "done: slow" || runs.Load() != 1 {
		t.Fatalf("answer %q after %d runs; want one run", ans.Data, runs.Load())
	}
}

// A close sent to the call subject does not authenticate as a call, and a
// call sent to the close subject not as a close: neither is taken for the
// other, and the session stays open.
func TestCloseAndCallCannotBeSwapped(t *testing.T) {
	st := newStack(t, 2, nil, nil)
	s, err := Dial(context.Background(), Config{Conn: st.conn(), User: "alice", Cluster: "c1", Roots: st.roots})
	if err != nil {
		t.Fatal(err)
	}
	if code := rawSend(t, s, channel.KindClose, messages.CallSubject("c1", "alice"), []byte(messages.CloseMarker)); code != messages.CodeAuth {
		t.Errorf("a close on the call subject: %q, want %s", code, messages.CodeAuth)
	}
	if code := rawSend(t, s, channel.KindCall, messages.CloseSubject("c1", "alice"), []byte(messages.CloseMarker)); code != messages.CodeAuth {
		t.Errorf("a call on the close subject: %q, want %s", code, messages.CodeAuth)
	}
	if _, err := s.Call(context.Background(), []byte("still open")); err != nil {
		t.Fatalf("the session after the swaps: %v", err)
	}
}

// Once Close returns, no unit runs a call of the session, even one sealed
// before (the closed mark every call checks), and replaying the session's
// old open record does not reopen it (closed is final).
func TestClosedSessionStaysClosed(t *testing.T) {
	st := newStack(t, 3, nil, nil)
	nc := st.conn()
	s, err := Dial(context.Background(), Config{Conn: nc, User: "alice", Cluster: "c1", Roots: st.roots})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	stream, err := js.Stream(context.Background(), messages.SessionsStream("c1"))
	if err != nil {
		t.Fatal(err)
	}
	open, err := stream.GetLastMsgForSubject(context.Background(), messages.SessionSubject("c1", s.ID))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("closing again: %v", err)
	}
	// Straight after Close, before other units may have read the record:
	// every unit the queue group picks refuses.
	for range 9 {
		if code := rawSend(t, s, channel.KindCall, messages.CallSubject("c1", "alice"), []byte("after close")); code != messages.CodeNoSession {
			t.Fatalf("a call after close: %q, want %s", code, messages.CodeNoSession)
		}
	}
	// The old open record, replayed into the stream, reopens nothing.
	if _, err := js.Publish(context.Background(), messages.SessionSubject("c1", s.ID), open.Data); err != nil {
		t.Fatal(err)
	}
	marker, err := Dial(context.Background(), Config{Conn: nc, User: "alice", Cluster: "c1", Roots: st.roots})
	if err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(30 * time.Second); ; <-tick.C { // records are read in order: past the marker, past the replay
		all := true
		for _, u := range st.units {
			all = all && u.HasSession(marker.ID)
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the marker session did not reach every unit")
		}
	}
	for i, u := range st.units {
		if u.HasSession(s.ID) {
			t.Fatalf("unit %d reopened a closed session from a replayed record", i)
		}
	}
	if _, err := s.Call(context.Background(), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("the client after Close: %v, want %v", err, ErrClosed)
	}
}
