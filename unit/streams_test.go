package unit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/streamcheck/streamchecktest"
)

// streamsUnit is a unit with just what making its cluster's streams takes,
// on a fresh embedded server.
func streamsUnit(t *testing.T) (*Unit, jetstream.JetStream) {
	t.Helper()
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	u := &Unit{js: js, log: slog.New(slog.DiscardHandler), cfg: Config{
		Cluster: "c1", Replicas: 1, SessionsMaxBytes: minStreamBytes, CallsMaxBytes: minStreamBytes * messages.CallShards,
		RetryMin: time.Millisecond, RetryMax: 10 * time.Millisecond,
	}}
	return u, js
}

// Every untrusted setting of a cluster's stream, made by whoever holds the
// cluster's credential or runs NATS before a unit takes the stream, is
// refused, and named: on the sessions stream and on a calls stream.
func TestUntrustedStreamSettingsAreRefused(t *testing.T) {
	u, js := streamsUnit(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := streamchecktest.Keep(ctx, js); err != nil {
		t.Fatal(err)
	}
	// A cluster of its own for each mutation (see package streamchecktest).
	k := 0
	for _, stream := range []string{"sessions", "calls"} {
		for _, m := range streamchecktest.Mutations() {
			k++
			u.cfg.Cluster = fmt.Sprintf("c%d", k)
			want := u.sessionsStream()
			if stream == "calls" {
				want = u.callsStream(2)
			}
			if !m.Applies(want) {
				continue
			}
			t.Run(stream+"/"+m.Setting, func(t *testing.T) {
				defer func() {
					for _, name := range append([]string{u.sessionsStream().Name}, callsNames(u)...) {
						if err := streamchecktest.Remove(ctx, js, name); err != nil {
							t.Fatal(err)
						}
					}
				}()
				if err := m.Make(ctx, js, want); err != nil {
					t.Fatalf("making the stream: %v", err)
				}
				st, err := u.ensureStreams(ctx)
				if !errors.Is(err, errUntrusted) || !strings.Contains(err.Error(), m.Setting) {
					t.Fatalf("ensureStreams: %v, %v; want the stream refused, naming %s", st, err, m.Setting)
				}
			})
		}
	}
	u.cfg.Cluster = "made"
	if _, err := u.ensureStreams(ctx); err != nil {
		t.Fatalf("the streams as the unit makes them: %v", err)
	}
}

func callsNames(u *Unit) []string {
	var names []string
	for k := range messages.CallShards {
		names = append(names, u.callsStream(k).Name)
	}
	return names
}

// A stream changed after the unit took it is seen at the next look, and
// the unit refuses calls over it from then on, as tampered with, even once
// it is changed back; a look that cannot see a stream refuses calls (as
// unseen, to retry) until a look sees it again.
func TestStreamsAreWatched(t *testing.T) {
	u, js := streamsUnit(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := u.ensureStreams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	session := []byte("a session id of sixteen bytes.")
	shard := messages.CallShard(session)
	if err := st.look(ctx, g0, u.log); err != nil {
		t.Fatal(err)
	}
	if err := st.usable(session); err != nil {
		t.Fatalf("streams as made: %v", err)
	}

	// Unseen: the calls stream's information cannot be had.
	cfg := u.callsStream(shard)
	if err := js.DeleteStream(ctx, cfg.Name); err != nil {
		t.Fatal(err)
	}
	if err := st.look(ctx, g0, u.log); err == nil {
		t.Fatal("a look at a stream that is not there succeeded")
	}
	if err := st.usable(session); !errors.Is(err, errUnseen) {
		t.Fatalf("after a failed look: %v, want errUnseen", err)
	}
	if err := st.trusted(session); err != nil {
		t.Fatalf("unseen is not tampered with: %v", err)
	}
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := st.look(ctx, g0, u.log); err != nil {
		t.Fatal(err)
	}
	if err := st.usable(session); err != nil {
		t.Fatalf("seen again: %v", err)
	}

	// Changed: republishing added to the sessions stream, then taken away.
	sessions := u.sessionsStream()
	changed := sessions
	changed.RePublish = &jetstream.RePublish{Source: ">", Destination: "attacker.republished.>"}
	if _, err := js.UpdateStream(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if err := st.look(ctx, g0, u.log); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{st.usable(session), st.trusted(session)} {
		if !errors.Is(err, channel.ErrTampered) || !strings.Contains(err.Error(), "republish") {
			t.Fatalf("after the sessions stream was changed: %v, want it refused as tampered with, naming republish", err)
		}
	}
	if _, err := js.UpdateStream(ctx, sessions); err != nil {
		t.Fatal(err)
	}
	if err := st.look(ctx, g0, u.log); err != nil {
		t.Fatal(err)
	}
	if err := st.usable(session); !errors.Is(err, channel.ErrTampered) {
		t.Fatalf("changed back: %v, want still refused", err)
	}
}

// The watch of one stream, as looks find it.
func TestStreamWatch(t *testing.T) {
	want := jetstream.StreamConfig{Name: "s", Subjects: []string{"s.>"}, DenyDelete: true, DenyPurge: true, AllowDirect: true}
	var w streamWatch
	w.bind(want)
	if err := w.usable(); err != nil {
		t.Fatal(err)
	}
	w.failed(errors.New("timeout"))
	if err := w.usable(); !errors.Is(err, errUnseen) {
		t.Fatalf("after a failed look: %v", err)
	}
	if err := w.looked(&jetstream.StreamInfo{Config: want}); err != nil || w.usable() != nil {
		t.Fatalf("seen again: %v, %v", err, w.usable())
	}
	bad := want
	bad.DenyDelete = false
	if err := w.looked(&jetstream.StreamInfo{Config: bad}); !errors.Is(err, channel.ErrTampered) || !strings.Contains(err.Error(), "deny_delete") {
		t.Fatalf("a deviation: %v", err)
	}
	if err := w.looked(&jetstream.StreamInfo{Config: bad}); err != nil {
		t.Fatalf("the same deviation is reported once: %v", err)
	}
	if err := w.looked(&jetstream.StreamInfo{Config: want}); err != nil || !errors.Is(w.usable(), channel.ErrTampered) {
		t.Fatalf("changed back: %v, %v; want still untrusted", err, w.usable())
	}
}

// upkeep looks at the streams again, sooner, after a look that failed:
// calls are refused while a stream cannot be seen, and taken again once it
// is seen.
func TestUpkeepLooksAgainAfterAFailedLook(t *testing.T) {
	u, js := streamsUnit(t)
	u.cfg.Now = time.Now
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := u.ensureStreams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func(every time.Duration) { lookEvery = every }(lookEvery)
	lookEvery = 20 * time.Millisecond
	running, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); u.upkeep(running, st) }()
	defer func() { stop(); <-done }() // before lookEvery is restored

	session := []byte("a session id of sixteen bytes.")
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for !cond() {
			select {
			case <-ctx.Done():
				t.Fatalf("%s: not before the test's deadline", what)
			case <-tick.C:
			}
		}
	}
	cfg := u.callsStream(messages.CallShard(session))
	if err := js.DeleteStream(ctx, cfg.Name); err != nil {
		t.Fatal(err)
	}
	waitUntil("calls refused while the stream cannot be seen", func() bool { return errors.Is(st.usable(session), errUnseen) })
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	waitUntil("calls taken once it is seen again", func() bool { return st.usable(session) == nil })
}
