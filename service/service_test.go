package service

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/messages"
)

func start(t *testing.T) *nats.Conn {
	t.Helper()
	srv, err := embednats.StartTemp("cohort-service-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func newService(t *testing.T, nc *nats.Conn, eps ...Endpoint) *Service {
	t.Helper()
	s, err := New(Config{Conn: nc, Name: "test-svc", Version: "1.0.0", Workers: 2, Queue: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	for _, e := range eps {
		if err := s.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

// A request naming as its reply anything but an inbox is answered nowhere,
// its discovery requests too; one naming an inbox is answered there.
func TestAnswersOnlyInboxes(t *testing.T) {
	nc := start(t)
	s := newService(t, nc, Endpoint{Name: "echo", Subject: "svc.echo", Handle: func(m Msg) ([]byte, *messages.Error) { return m.Data, nil }})
	watch, err := nc.SubscribeSync("$KV.>")
	if err != nil {
		t.Fatal(err)
	}
	others, err := nc.SubscribeSync("cohort.>")
	if err != nil {
		t.Fatal(err)
	}
	bad := []string{"$KV.bucket.root", "cohort.v1.events.x", "$JS.API.STREAM.PURGE.x", "_INBOX", "_INBOXES.x", "_R_"}
	for _, reply := range bad {
		for _, subject := range []string{"svc.echo", "$SRV.PING", "$SRV.INFO.test-svc", "$SRV.STATS.test-svc." + s.ID()} {
			if err := nc.PublishRequest(subject, reply, []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	// An answered request after them: the service has taken them all.
	if r, err := nc.Request("svc.echo", []byte("hi"), 5*time.Second); err != nil || string(r.Data) != "hi" {
		t.Fatalf("an inbox's request: %v %v", r, err)
	}
	// Discovery runs on subscriptions of its own: wait for their counts.
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for s.Refused() < int64(len(bad)*4) && time.Now().Before(deadline) {
		<-tick.C
	}
	if got := s.Refused(); got != int64(len(bad)*4) {
		t.Errorf("%d requests left unanswered for their reply subject, want %d", got, len(bad)*4)
	}
	for _, sub := range []*nats.Subscription{watch, others} {
		if m, err := sub.NextMsg(10 * time.Millisecond); err == nil {
			t.Errorf("an answer written to %s", m.Subject)
		}
	}
}

// Discovery answers as nats.go micro does, so that natscli reads it.
func TestDiscoveryIsMicros(t *testing.T) {
	nc := start(t)
	s := newService(t, nc, Endpoint{Name: "echo", Subject: "svc.echo", Handle: func(m Msg) ([]byte, *messages.Error) {
		return nil, messages.Refusal(messages.CodeMalformed, "no")
	}})
	if _, err := nc.Request("svc.echo", nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	r, err := nc.Request("$SRV.PING", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ping micro.Ping
	if err := json.Unmarshal(r.Data, &ping); err != nil || ping.Type != micro.PingResponseType || ping.Name != "test-svc" || ping.ID != s.ID() {
		t.Fatalf("ping: %+v %v", ping, err)
	}
	r, err = nc.Request("$SRV.STATS.test-svc", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	if err := json.Unmarshal(r.Data, &st); err != nil || len(st.Endpoints) != 1 || st.Endpoints[0].NumRequests != 1 || st.Endpoints[0].NumErrors != 1 {
		t.Fatalf("stats: %+v %v", st, err)
	}
	r, err = nc.Request("$SRV.INFO.test-svc."+s.ID(), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(r.Data, &info); err != nil || info.Type != micro.InfoResponseType || len(info.Endpoints) != 1 || info.Endpoints[0].QueueGroup != "test-svc" {
		t.Fatalf("info: %+v %v", info, err)
	}
}

// A handler's panic is its request's refusal; the service goes on.
func TestPanicIsARefusal(t *testing.T) {
	nc := start(t)
	newService(t, nc, Endpoint{Name: "boom", Subject: "svc.boom", Handle: func(m Msg) ([]byte, *messages.Error) {
		if string(m.Data) == "boom" {
			panic("boom")
		}
		return []byte("fine"), nil
	}})
	_, err := Request(t.Context(), nc, "svc.boom", []byte("boom"), 5*time.Second)
	if !errors.Is(err, &messages.Error{Code: messages.CodeInternal}) {
		t.Fatalf("a panicking handler: %v, want internal", err)
	}
	if r, err := Request(t.Context(), nc, "svc.boom", []byte("ok"), 5*time.Second); err != nil || string(r) != "fine" {
		t.Fatalf("after the panic: %q %v", r, err)
	}
}

// A full queue refuses at once, with the reason.
func TestFullQueueRefuses(t *testing.T) {
	nc := start(t)
	release := make(chan struct{})
	newService(t, nc, Endpoint{Name: "slow", Subject: "svc.slow", Handle: func(Msg) ([]byte, *messages.Error) { <-release; return nil, nil }})
	t.Cleanup(func() { close(release) }) // before the service's Stop, which waits for its workers
	overloaded := 0
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox + ".>")
	if err != nil {
		t.Fatal(err)
	}
	for range 20 { // 2 workers and a queue of 4 hold 6
		if err := nc.PublishRequest("svc.slow", inbox+".r", nil); err != nil {
			t.Fatal(err)
		}
	}
	for range 14 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(ErrorCodeHeader) == string(messages.CodeOverloaded) {
			overloaded++
		}
	}
	if overloaded != 14 {
		t.Errorf("%d of 14 refused as overloaded", overloaded)
	}
}

func TestStopTwice(t *testing.T) {
	s, err := New(Config{Conn: start(t), Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	s.Stop()
	s.Stop()
}

// An endpoint with a pool of its own holds its requests in flight together,
// and is answered while the shared pool is busy; Add after Stop refuses.
func TestEndpointPool(t *testing.T) {
	nc := start(t)
	release := make(chan struct{})
	entered := make(chan struct{}, 16)
	wait := Endpoint{Name: "store", Subject: "svc.store", Workers: 8, Handle: func(Msg) ([]byte, *messages.Error) {
		entered <- struct{}{}
		<-release
		return []byte("stored"), nil
	}}
	slow := Endpoint{Name: "slow", Subject: "svc.slow", Handle: func(Msg) ([]byte, *messages.Error) { <-release; return nil, nil }}
	fast := Endpoint{Name: "fast", Subject: "svc.fast", Workers: 1, Handle: func(Msg) ([]byte, *messages.Error) { return []byte("fast"), nil }}
	s := newService(t, nc, wait, slow, fast)
	for range 2 { // the shared pool's two workers
		if err := nc.PublishRequest("svc.slow", nc.NewInbox(), nil); err != nil {
			t.Fatal(err)
		}
	}
	for range 8 {
		if err := nc.PublishRequest("svc.store", nc.NewInbox(), nil); err != nil {
			t.Fatal(err)
		}
	}
	timeout := time.After(5 * time.Second)
	for i := range 8 {
		select {
		case <-entered:
		case <-timeout:
			t.Fatalf("%d requests in flight, want the pool's 8", i)
		}
	}
	if m, err := nc.Request("svc.fast", nil, 5*time.Second); err != nil || string(m.Data) != "fast" {
		t.Fatalf("the fast endpoint, beside a busy shared pool: %v %v", err, m)
	}
	close(release)
	s.Stop()
	if err := s.Add(Endpoint{Name: "late", Subject: "svc.late", Workers: 1, Handle: fast.Handle}); err == nil {
		t.Error("Add after Stop made a pool")
	}
}

// A handler that does not return holds Shutdown up only until its deadline:
// it returns an error naming the request still running, cancels the
// request's context, and the service publishes nothing after, the wedged
// request's late reply included. Stop and Shutdown again, and concurrently,
// are safe; once the handler returns, Shutdown reports the service stopped.
func TestShutdownWedged(t *testing.T) {
	nc := start(t)
	entered, release := make(chan context.Context, 1), make(chan struct{})
	s, err := New(Config{Conn: nc, Name: "wedged", Workers: 1, Queue: 4, StopTimeout: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	if err := s.Add(Endpoint{Name: "wedged", Subject: "svc.wedged", Handle: func(m Msg) ([]byte, *messages.Error) {
		entered <- m.Context()
		<-release
		return []byte("late"), nil
	}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	inbox := nc.NewInbox()
	replies, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest("svc.wedged", inbox, nil); err != nil {
		t.Fatal(err)
	}
	var reqCtx context.Context
	select {
	case reqCtx = <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached its handler")
	}
	if reqCtx.Err() != nil {
		t.Fatal("the request's context is done while the service serves")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	err = s.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 requests still running") {
		t.Fatalf("Shutdown with a wedged handler: %v", err)
	}
	if reqCtx.Err() == nil {
		t.Error("the wedged request's context is not done once Shutdown gave up")
	}

	// Again, and concurrently: each returns by its own deadline.
	s.Stop()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
			defer cancel()
			errs <- s.Shutdown(ctx)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("a concurrent Shutdown: %v", err)
		}
	}

	close(release)
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown once the handler returned: %v", err)
	}
	// Whatever the service published reached the server before this
	// round trip, and the replies' subscription before its answer.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, err := replies.Pending(); err != nil || n != 0 {
		t.Errorf("%d replies published after the service reported it stopped (%v)", n, err)
	}
}
