// Package streamchecktest makes streams as an attacker would: the stream
// cohort wants, with one setting that package streamcheck refuses, made on
// a real JetStream server where cohort will look for its stream. Each place
// that checks a stream runs every mutation against its own stream.
package streamchecktest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/embednats"
)

// Origin is the stream from which the attacker's mirror or source of
// stream name takes its messages.
func Origin(name string) string { return name + "_attacker_origin" }

// Mutation is one untrusted setting.
type Mutation struct {
	// Setting is the setting's name in JetStream's API, which the refusal
	// must name.
	Setting string
	// Applies reports whether the setting makes a stream wanted as want
	// untrusted: a tighter bound on messages or bytes matters only where
	// the oldest are discarded.
	Applies func(want jetstream.StreamConfig) bool
	// Make makes the stream in place of want, as whoever holds a
	// credential of its account (or runs NATS) could before cohort binds
	// it.
	Make func(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error
}

func always(jetstream.StreamConfig) bool { return true }

func create(ctx context.Context, js jetstream.JetStream, c jetstream.StreamConfig) error {
	_, err := js.CreateStream(ctx, c)
	return err
}

// edited is a mutation that makes the stream with one edit.
func edited(setting string, edit func(*jetstream.StreamConfig)) Mutation {
	return Mutation{Setting: setting, Applies: always, Make: func(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
		c := want
		c.Subjects = append([]string(nil), want.Subjects...)
		edit(&c)
		return create(ctx, js, c)
	}}
}

func origin(ctx context.Context, js jetstream.JetStream, name string) error {
	return create(ctx, js, jetstream.StreamConfig{Name: Origin(name), Subjects: []string{"attacker.origin." + name + ".>"}, Storage: jetstream.MemoryStorage})
}

// shorter is a limit below want's, where 0 and below is none.
func shorter(want int64, unit int64) int64 {
	if want <= 0 {
		return unit
	}
	return max(want/2, 1)
}

// Mutations returns one mutation for every setting streamcheck refuses that
// a single server can hold (fewer replicas than one cannot be made there).
func Mutations() []Mutation {
	ms := []Mutation{
		edited("subjects", func(c *jetstream.StreamConfig) { c.Subjects = append(c.Subjects, "attacker.extra.>") }),
		edited("retention", func(c *jetstream.StreamConfig) { c.Retention = jetstream.InterestPolicy }),
		edited("storage", func(c *jetstream.StreamConfig) { c.Storage = jetstream.MemoryStorage }),
		edited("persist_mode", func(c *jetstream.StreamConfig) { c.PersistMode = jetstream.AsyncPersistMode }),
		edited("discard", func(c *jetstream.StreamConfig) {
			if c.Discard == jetstream.DiscardNew {
				c.Discard = jetstream.DiscardOld
			} else {
				c.Discard = jetstream.DiscardNew
			}
		}),
		edited("max_msgs_per_subject", func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = max(c.MaxMsgsPerSubject, 0) + 2 }),
		edited("max_age", func(c *jetstream.StreamConfig) {
			c.MaxAge = time.Duration(shorter(int64(c.MaxAge), int64(time.Hour)))
			c.Duplicates = min(c.Duplicates, c.MaxAge)
		}),
		edited("deny_delete", func(c *jetstream.StreamConfig) { c.DenyDelete = false }),
		edited("deny_purge", func(c *jetstream.StreamConfig) { c.DenyPurge = false }),
		edited("allow_rollup_hdrs", func(c *jetstream.StreamConfig) {
			c.AllowRollup, c.DenyPurge = true, false // JetStream's condition for roll-ups
		}),
		edited("allow_direct", func(c *jetstream.StreamConfig) { c.AllowDirect = false }),
		edited("republish", func(c *jetstream.StreamConfig) {
			c.RePublish = &jetstream.RePublish{Source: ">", Destination: "attacker.republished.>"}
		}),
		edited("subject_transform", func(c *jetstream.StreamConfig) {
			c.SubjectTransform = &jetstream.SubjectTransformConfig{Source: ">", Destination: "attacker.moved.>"}
			c.Subjects = append(c.Subjects, "attacker.moved.>")
		}),
		edited("allow_msg_ttl", func(c *jetstream.StreamConfig) {
			if c.AllowMsgTTL = !c.AllowMsgTTL; !c.AllowMsgTTL {
				c.SubjectDeleteMarkerTTL = 0
			}
		}),
		edited("subject_delete_marker_ttl", func(c *jetstream.StreamConfig) {
			c.AllowMsgTTL, c.SubjectDeleteMarkerTTL = true, time.Minute
		}),
		edited("allow_msg_counter", func(c *jetstream.StreamConfig) {
			// A counter stream takes no TTLs and discards old messages.
			c.AllowMsgCounter, c.AllowMsgTTL, c.SubjectDeleteMarkerTTL, c.Discard = true, false, 0, jetstream.DiscardOld
		}),
		edited("allow_atomic", func(c *jetstream.StreamConfig) { c.AllowAtomicPublish = true }),
		edited("allow_batched", func(c *jetstream.StreamConfig) { c.AllowBatchPublish = true }),
		edited("allow_msg_schedules", func(c *jetstream.StreamConfig) {
			c.AllowMsgSchedules, c.AllowMsgTTL, c.Discard = true, true, jetstream.DiscardOld
		}),
		edited("no_ack", func(c *jetstream.StreamConfig) { c.NoAck = true }),
		{Setting: "max_msgs", Applies: discardsOld, Make: func(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
			c := want
			c.MaxMsgs = shorter(want.MaxMsgs, 10)
			return create(ctx, js, c)
		}},
		{Setting: "max_bytes", Applies: discardsOld, Make: func(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
			c := want
			c.MaxBytes = shorter(want.MaxBytes, 1<<20)
			return create(ctx, js, c)
		}},
		{Setting: "sealed", Applies: always, Make: func(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
			// Only a stream there already can be sealed.
			if err := create(ctx, js, want); err != nil {
				return err
			}
			c := want
			c.Sealed = true
			_, err := js.UpdateStream(ctx, c)
			return err
		}},
		{Setting: "mirror", Applies: always, Make: func(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
			if err := origin(ctx, js, want.Name); err != nil {
				return err
			}
			c := want
			c.Subjects, c.Mirror = nil, &jetstream.StreamSource{Name: Origin(want.Name)}
			c.AllowMsgTTL, c.SubjectDeleteMarkerTTL = false, 0 // a mirror takes the origin's
			return create(ctx, js, c)
		}},
		{Setting: "sources", Applies: always, Make: func(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
			if err := origin(ctx, js, want.Name); err != nil {
				return err
			}
			c := want
			c.Sources = []*jetstream.StreamSource{{Name: Origin(want.Name)}}
			return create(ctx, js, c)
		}},
	}
	return ms
}

func discardsOld(want jetstream.StreamConfig) bool { return want.Discard == jetstream.DiscardOld }

// Keep makes a stream that holds the account's storage directory while a
// test makes and removes others.
func Keep(ctx context.Context, js jetstream.JetStream) error {
	return create(ctx, js, jetstream.StreamConfig{Name: "streamchecktest_keep", Subjects: []string{"streamchecktest.keep"}})
}

// Remove removes the stream and the attacker's origin, if they are there.
func Remove(ctx context.Context, js jetstream.JetStream, name string) error {
	for _, s := range []string{name, Origin(name)} {
		if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("remove stream %s: %w", s, err)
		}
	}
	return nil
}

// Server starts an embedded JetStream server for the test, with Keep's
// stream made, and returns a connection to it, its JetStream, and a context
// that ends with the test, or after a minute.
func Server(t testing.TB) (*nats.Conn, jetstream.JetStream, context.Context) {
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
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	if err := Keep(ctx, js); err != nil {
		t.Fatal(err)
	}
	return nc, js, ctx
}
