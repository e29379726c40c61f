package events

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/streamcheck"
	"github.com/cohort-dev/cohort/streamcheck/streamchecktest"
)

// A flood of refusals is recorded up to its limit; the next one recorded,
// once the limit allows, says how many were not. Other events are not
// limited. Follow reads them all back, in order, and stops.
func TestRefusalsAreLimited(t *testing.T) {
	srv, err := embednats.StartTemp("cohort-events-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx := context.Background()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureStream(ctx, js, StreamConfig{}, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	p, err := NewPublisher(nc, "manager/test", nil, clock)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		p.Publish(Event{Kind: UnitJoinRefused, Cluster: "c1", Unit: "u1", Code: "malformed", Reason: "garbage"})
	}
	for range 20 {
		p.Publish(Event{Kind: UnitJoined, Cluster: "c1", Unit: "u1"})
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	p.Publish(Event{Kind: UnitJoinRefused, Cluster: "c1", Unit: "u1", Code: "malformed", Reason: "garbage"})
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := p.Suppressed(); got != 100-RefusalBurst {
		t.Errorf("%d refusals not recorded, want %d", got, 100-RefusalBurst)
	}
	refused, joined, noted := 0, 0, ""
	if err := Follow(ctx, nc, FollowConfig{}, func(e *Event, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		switch e.Kind {
		case UnitJoinRefused:
			refused++
			if strings.Contains(e.Reason, "not recorded") {
				noted = e.Reason
			}
		case UnitJoined:
			joined++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if refused != RefusalBurst+1 || joined != 20 || !strings.HasPrefix(noted, "(90 more like it not recorded)") {
		t.Errorf("%d refusals and %d joins recorded, noted %q", refused, joined, noted)
	}
	// Since: nothing newer than an hour from now.
	n := 0
	if err := Follow(ctx, nc, FollowConfig{Since: time.Millisecond, Now: func() time.Time { return time.Now().Add(time.Hour) }}, func(*Event, error) error { n++; return nil }); err != nil || n != 0 {
		t.Errorf("events since an hour from now: %d, %v", n, err)
	}
}

// A lifecycle event published before any manager made the audit stream is
// stored once the stream is made, exactly once and in order; Close is safe
// twice, and a durable event published after it is dropped and counted.
func TestDurableEventsWaitForTheStream(t *testing.T) {
	srv, err := embednats.StartTemp("cohort-events-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p, err := NewPublisher(nc, "issuer", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.PublishDurable(Event{Kind: IssuerGenesis, Policy: 1, Root: strings.Repeat("ab", 32)})
	p.PublishDurable(Event{Kind: PolicyApplied, Policy: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Nothing takes them yet: a flush bounded by a short deadline ends with it.
	short, stop := context.WithTimeout(ctx, 100*time.Millisecond)
	if err := p.Flush(short); err == nil {
		t.Fatal("the events were stored before there was a stream")
	}
	stop()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureStream(ctx, js, StreamConfig{}, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var kinds []string
	if err := Follow(ctx, nc, FollowConfig{}, func(e *Event, err error) error {
		if err != nil {
			return err
		}
		kinds = append(kinds, e.Kind)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(kinds, ",") != IssuerGenesis+","+PolicyApplied {
		t.Errorf("stored %v, want the genesis, then the update, once each", kinds)
	}
	p.Close()
	p.Close()
	p.PublishDurable(Event{Kind: IssuerStopped})
	if p.Dropped() != 1 {
		t.Errorf("%d events dropped, want the one published after Close", p.Dropped())
	}
}

// Every untrusted setting of the audit stream, made by whoever holds the
// manager's credential or runs NATS before the manager takes the stream, is
// refused, and named.
func TestUntrustedStreamSettingsAreRefused(t *testing.T) {
	_, js, ctx := streamchecktest.Server(t)
	cfg := StreamConfig{MaxBytes: 16 << 20}
	want, log := streamConfig(cfg), slog.New(slog.DiscardHandler)
	for _, m := range streamchecktest.Mutations() {
		if !m.Applies(want) {
			continue
		}
		t.Run(m.Setting, func(t *testing.T) {
			defer func() {
				if err := streamchecktest.Remove(ctx, js, StreamName); err != nil {
					t.Fatal(err)
				}
			}()
			if err := m.Make(ctx, js, want); err != nil {
				t.Fatalf("making the stream: %v", err)
			}
			var serr *streamcheck.Error
			if err := EnsureStream(ctx, js, cfg, log); !errors.As(err, &serr) || !slices.Contains(serr.Settings(), m.Setting) {
				t.Fatalf("EnsureStream: %v; want the stream refused, naming %s", err, m.Setting)
			}
		})
	}
	if err := EnsureStream(ctx, js, cfg, log); err != nil {
		t.Fatalf("the stream as made: %v", err)
	}
	// Made with more room than asked for, it is taken.
	if err := EnsureStream(ctx, js, StreamConfig{MaxBytes: 8 << 20, MaxAge: time.Hour}, log); err != nil {
		t.Fatalf("a stream that keeps more than asked: %v", err)
	}
}

// Flush reports the events that were not published: here, with no stream
// to take them.
func TestFlushReportsDrops(t *testing.T) {
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
	p, err := NewPublisher(nc, "manager/test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.Publish(Event{Kind: UnitJoined, Cluster: "c1", Unit: "u1"})
	if err := p.Flush(ctx); err == nil || !strings.Contains(err.Error(), "1 events not published") {
		t.Fatalf("a flush after an event was not published: %v", err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("a flush with nothing more dropped: %v", err)
	}
}
