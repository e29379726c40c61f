package streamcheck_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/streamcheck"
	"github.com/cohort-dev/cohort/streamcheck/streamchecktest"
)

// wanted are streams as cohort makes them: one that keeps a record's
// history and discards nothing, one with message TTLs, and one that
// discards its oldest messages at its bounds.
var wanted = map[string]jetstream.StreamConfig{
	"state": {Name: "KV_state", Subjects: []string{"$KV.state.>"}, MaxMsgsPerSubject: 8, Discard: jetstream.DiscardNew,
		Storage: jetstream.FileStorage, Replicas: 1, AllowDirect: true, DenyDelete: true, DenyPurge: true},
	"calls": {Name: "calls", Subjects: []string{"calls.c1.0.>"}, MaxMsgsPerSubject: 1, Discard: jetstream.DiscardNew, MaxAge: time.Hour,
		MaxBytes: 1 << 20, AllowMsgTTL: true, Storage: jetstream.FileStorage, AllowDirect: true, DenyDelete: true, DenyPurge: true},
	"events": {Name: "events", Subjects: []string{"events.>"}, Discard: jetstream.DiscardOld, MaxAge: 30 * 24 * time.Hour,
		MaxBytes: 1 << 30, Replicas: 3, Storage: jetstream.FileStorage, AllowDirect: true, DenyDelete: true, DenyPurge: true},
}

// Every setting that can lose, alter, copy or add a message is refused, and
// named; what cannot is not.
func TestCheck(t *testing.T) {
	type edit = func(*jetstream.StreamConfig)
	refused := map[string]edit{
		"name":                 func(c *jetstream.StreamConfig) { c.Name = "other" },
		"subjects":             func(c *jetstream.StreamConfig) { c.Subjects = append(c.Subjects, "x.>") },
		"retention":            func(c *jetstream.StreamConfig) { c.Retention = jetstream.WorkQueuePolicy },
		"storage":              func(c *jetstream.StreamConfig) { c.Storage = jetstream.MemoryStorage },
		"persist_mode":         func(c *jetstream.StreamConfig) { c.PersistMode = jetstream.AsyncPersistMode },
		"num_replicas":         func(c *jetstream.StreamConfig) { c.Replicas = max(c.Replicas, 1) - 1 },
		"discard":              func(c *jetstream.StreamConfig) { c.Discard = 1 - c.Discard },
		"max_msgs_per_subject": func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = max(c.MaxMsgsPerSubject, 0) + 3 },
		"max_age":              func(c *jetstream.StreamConfig) { c.MaxAge = time.Second },
		"deny_delete":          func(c *jetstream.StreamConfig) { c.DenyDelete = false },
		"deny_purge":           func(c *jetstream.StreamConfig) { c.DenyPurge = false },
		"allow_rollup_hdrs":    func(c *jetstream.StreamConfig) { c.AllowRollup = true },
		"allow_direct":         func(c *jetstream.StreamConfig) { c.AllowDirect = false },
		"mirror":               func(c *jetstream.StreamConfig) { c.Mirror = &jetstream.StreamSource{Name: "o"} },
		"sources":              func(c *jetstream.StreamConfig) { c.Sources = []*jetstream.StreamSource{{Name: "o"}} },
		"republish":            func(c *jetstream.StreamConfig) { c.RePublish = &jetstream.RePublish{Source: ">", Destination: "x.>"} },
		"subject_transform": func(c *jetstream.StreamConfig) {
			c.SubjectTransform = &jetstream.SubjectTransformConfig{Destination: "x.>"}
		},
		"sealed":                    func(c *jetstream.StreamConfig) { c.Sealed = true },
		"allow_msg_ttl":             func(c *jetstream.StreamConfig) { c.AllowMsgTTL = !c.AllowMsgTTL },
		"subject_delete_marker_ttl": func(c *jetstream.StreamConfig) { c.SubjectDeleteMarkerTTL = time.Minute },
		"allow_msg_counter":         func(c *jetstream.StreamConfig) { c.AllowMsgCounter = true },
		"allow_atomic":              func(c *jetstream.StreamConfig) { c.AllowAtomicPublish = true },
		"allow_batched":             func(c *jetstream.StreamConfig) { c.AllowBatchPublish = true },
		"allow_msg_schedules":       func(c *jetstream.StreamConfig) { c.AllowMsgSchedules = true },
		"no_ack":                    func(c *jetstream.StreamConfig) { c.NoAck = true },
	}
	// Bounds on the stream's messages and bytes matter where the oldest
	// are discarded.
	bounds := map[string]edit{
		"max_msgs":  func(c *jetstream.StreamConfig) { c.MaxMsgs = 10 },
		"max_bytes": func(c *jetstream.StreamConfig) { c.MaxBytes = 1 << 10 },
	}
	harmless := map[string]edit{
		"description":             func(c *jetstream.StreamConfig) { c.Description = "x" },
		"metadata":                func(c *jetstream.StreamConfig) { c.Metadata = map[string]string{"_nats.level": "1"} },
		"max_msg_size":            func(c *jetstream.StreamConfig) { c.MaxMsgSize = 1 },
		"max_consumers":           func(c *jetstream.StreamConfig) { c.MaxConsumers = 1 },
		"duplicate_window":        func(c *jetstream.StreamConfig) { c.Duplicates = time.Second },
		"discard_new_per_subject": func(c *jetstream.StreamConfig) { c.DiscardNewPerSubject = true },
		"compression":             func(c *jetstream.StreamConfig) { c.Compression = jetstream.S2Compression },
		"first_seq":               func(c *jetstream.StreamConfig) { c.FirstSeq = 1000 },
		"placement":               func(c *jetstream.StreamConfig) { c.Placement = &jetstream.Placement{Cluster: "x"} },
		"more replicas":           func(c *jetstream.StreamConfig) { c.Replicas = 5 },
		"longer max_age":          func(c *jetstream.StreamConfig) { c.MaxAge *= 2 },
		"no max_age":              func(c *jetstream.StreamConfig) { c.MaxAge = 0 },
		"subjects in another order": func(c *jetstream.StreamConfig) {
			c.Subjects = append(c.Subjects, "y.>")
			slices.Reverse(c.Subjects)
		},
	}
	for name, want := range wanted {
		t.Run(name, func(t *testing.T) {
			if err := streamcheck.Check(want, want); err != nil {
				t.Fatalf("the stream as wanted: %v", err)
			}
			refuse := func(setting string, e edit) {
				got := want
				got.Subjects = slices.Clone(want.Subjects)
				e(&got)
				var serr *streamcheck.Error
				if err := streamcheck.Check(got, want); !errors.As(err, &serr) || !slices.Contains(serr.Settings(), setting) {
					t.Errorf("%s: %v, want a refusal naming it", setting, err)
				}
			}
			for setting, e := range refused {
				if setting == "num_replicas" && want.Replicas <= 1 {
					continue // no fewer than one
				}
				refuse(setting, e)
			}
			for setting, e := range bounds {
				if want.Discard == jetstream.DiscardOld {
					refuse(setting, e)
				} else if got := want; true {
					e(&got)
					if err := streamcheck.Check(got, want); err != nil {
						t.Errorf("%s where new messages are discarded: %v", setting, err)
					}
				}
			}
			for setting, e := range harmless {
				got := want
				got.Subjects = slices.Clone(want.Subjects)
				if setting == "subjects in another order" {
					want := want
					want.Subjects = append(slices.Clone(want.Subjects), "y.>")
					e(&got)
					if err := streamcheck.Check(got, want); err != nil {
						t.Errorf("%s: %v", setting, err)
					}
					continue
				}
				e(&got)
				if err := streamcheck.Check(got, want); err != nil {
					t.Errorf("%s: %v", setting, err)
				}
			}
		})
	}
	// Deletes denied where they were not asked to be, and JetStream's two
	// spellings of no limit, pass.
	want := jetstream.StreamConfig{Name: "s", Subjects: []string{"s"}, MaxMsgsPerSubject: 0, MaxBytes: 0}
	got := want
	got.DenyDelete, got.DenyPurge, got.MaxMsgsPerSubject, got.MaxBytes, got.MaxMsgs, got.Replicas = true, true, -1, -1, -1, 1
	if err := streamcheck.Check(got, want); err != nil {
		t.Fatal(err)
	}
	// Every deviation is named at once.
	got = wanted["state"]
	got.AllowRollup, got.DenyPurge, got.RePublish = true, false, &jetstream.RePublish{Destination: "x"}
	var serr *streamcheck.Error
	if err := streamcheck.Check(got, wanted["state"]); !errors.As(err, &serr) || len(serr.Deviations) != 3 {
		t.Fatalf("three deviations: %v", err)
	}
}

// Every mutation of streamchecktest is one the server takes (an attacker
// can make it), and Check refuses it, naming its setting: the places that
// check their streams run them against their own.
func TestMutationsAreMadeAndRefused(t *testing.T) {
	_, js, ctx := streamchecktest.Server(t)
	for name, want := range wanted {
		want.Replicas = 1 // one server
		want.MaxBytes = min(want.MaxBytes, 16<<20)
		for k, m := range streamchecktest.Mutations() {
			if !m.Applies(want) {
				continue
			}
			t.Run(name+"/"+m.Setting, func(t *testing.T) {
				want := want
				want.Name = fmt.Sprintf("%s_%d", want.Name, k)
				defer func() {
					if err := streamchecktest.Remove(ctx, js, want.Name); err != nil {
						t.Fatal(err)
					}
				}()
				if err := m.Make(ctx, js, want); err != nil {
					t.Fatalf("the server does not take the stream: %v", err)
				}
				st, err := js.Stream(ctx, want.Name)
				if err != nil {
					t.Fatal(err)
				}
				var serr *streamcheck.Error
				if err := streamcheck.Check(st.CachedInfo().Config, want); !errors.As(err, &serr) || !slices.Contains(serr.Settings(), m.Setting) {
					t.Fatalf("%v, want a refusal naming %s", err, m.Setting)
				}
			})
		}
		// And the stream as wanted, as the server reports it, passes.
		st, err := js.CreateStream(ctx, want)
		if err != nil {
			t.Fatal(err)
		}
		if err := streamcheck.Check(st.CachedInfo().Config, want); err != nil {
			t.Fatalf("%s as wanted: %v", name, err)
		}
		if err := js.DeleteStream(ctx, want.Name); err != nil {
			t.Fatal(err)
		}
	}
}
