// Package streamcheck decides whether a JetStream stream may be trusted
// with what cohort keeps in it. NATS is not trusted, and whoever runs it or
// holds a credential of the stream's account may make the stream before
// cohort does, or change it later, so that JetStream itself loses, changes,
// copies or adds messages behind cohort's back: roll-ups, purges and
// deletes, limits that drop messages, mirrors and sources, republishing,
// subject transforms, and the like.
//
// Check guarantees this much: a stream whose configuration passes keeps
// every message written to it under the subjects cohort made it with, in
// the storage and at least the replicas asked for, for at least as long and
// as many as the configuration cohort asked for promises; it takes messages
// only from publishers (no mirror, source or transform), sends copies
// nowhere, holds to the deny-delete and deny-purge it was made with and
// takes no roll-up, and has none of JetStream's write paths (message
// counters, atomic or fast batches, schedules, TTLs, delete markers) that
// cohort did not ask for. It says nothing of other streams of the account,
// which may republish onto this stream's subjects, or mirror it with direct
// gets: those are the account's, and cohort's accounts hold only cohort's
// streams.
//
// The settings it does not compare cannot lose, alter or add a message;
// each is named, with why, in Check.
package streamcheck

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Deviation is one setting of a stream that is less safe than wanted. Setting
// is the setting's name in JetStream's API (as `nats stream info --json`
// shows it).
type Deviation struct {
	Setting   string
	Got, Want string
}

func (d Deviation) String() string { return fmt.Sprintf("%s is %s, want %s", d.Setting, d.Got, d.Want) }

// Error is a stream's refusal: every setting in which it deviates.
type Error struct {
	Stream     string
	Deviations []Deviation
}

func (e *Error) Error() string {
	parts := make([]string, len(e.Deviations))
	for k, d := range e.Deviations {
		parts[k] = d.String()
	}
	return fmt.Sprintf("stream %s: %s", e.Stream, strings.Join(parts, "; "))
}

// Settings names the settings that deviate.
func (e *Error) Settings() []string {
	s := make([]string, len(e.Deviations))
	for k, d := range e.Deviations {
		s[k] = d.Setting
	}
	return s
}

// Check compares got, a stream's configuration as the server reports it
// (jetstream.StreamInfo.Config), with want, the configuration cohort makes
// that stream with. It returns an *Error naming every setting in which got
// is less safe than want, or nil.
//
// Where the safe direction is clear, only a deviation in the unsafe one is
// refused (a longer max age, more replicas, or deletes denied where they
// were not asked to be pass); elsewhere any difference is.
func Check(got, want jetstream.StreamConfig) error {
	var d []Deviation
	add := func(setting string, g, w any) {
		d = append(d, Deviation{Setting: setting, Got: fmt.Sprint(g), Want: fmt.Sprint(w)})
	}

	// Where messages come from and what they are stored under.
	if got.Name != want.Name {
		add("name", got.Name, want.Name)
	}
	// Other subjects take messages cohort never sent there (a subject of a
	// peer, of another stream) or leave some of cohort's unkept.
	if !sameSet(got.Subjects, want.Subjects) {
		add("subjects", got.Subjects, want.Subjects)
	}
	// A mirror takes its messages from another stream (and nats.go's
	// key-value then writes to the origin's bucket); sources add another
	// stream's messages; a transform stores a message under another
	// subject than it was sent to.
	if !reflect.DeepEqual(got.Mirror, want.Mirror) {
		add("mirror", describe(got.Mirror), describe(want.Mirror))
	}
	if !sameSources(got.Sources, want.Sources) {
		add("sources", describe(got.Sources), describe(want.Sources))
	}
	if !reflect.DeepEqual(got.SubjectTransform, want.SubjectTransform) {
		add("subject_transform", describe(got.SubjectTransform), describe(want.SubjectTransform))
	}
	// Republishing copies every stored message onto other subjects: to
	// their subscribers, and into any stream that holds them.
	if !reflect.DeepEqual(got.RePublish, want.RePublish) {
		add("republish", describe(got.RePublish), describe(want.RePublish))
	}

	// What removes messages.
	// Interest and work-queue retention remove a message once consumers
	// (anybody's) have it.
	if got.Retention != want.Retention {
		add("retention", got.Retention, want.Retention)
	}
	// Memory storage loses every message, acknowledged or not, when the
	// server restarts; asynchronous persistence loses acknowledged ones
	// when it crashes.
	if got.Storage != want.Storage {
		add("storage", got.Storage, want.Storage)
	}
	if got.PersistMode != want.PersistMode {
		add("persist_mode", got.PersistMode, want.PersistMode)
	}
	// Fewer replicas keep an acknowledged write on fewer servers than
	// cohort was told to count on. More are harmless.
	if replicas(got.Replicas) < replicas(want.Replicas) {
		add("num_replicas", replicas(got.Replicas), atLeast(int64(replicas(want.Replicas))))
	}
	// Discarding old messages drops stored ones when a limit is reached;
	// discarding new ones refuses the write, which the writer sees.
	if got.Discard != want.Discard {
		add("discard", got.Discard, want.Discard)
	}
	// A subject's history: fewer drops what cohort reads back, more keeps
	// what it meant to replace (a stream cohort makes with one message a
	// subject keeps no history to read an older one from).
	if unlimited(got.MaxMsgsPerSubject) != unlimited(want.MaxMsgsPerSubject) {
		add("max_msgs_per_subject", got.MaxMsgsPerSubject, want.MaxMsgsPerSubject)
	}
	// Age removes messages whatever the discard policy.
	if tighter(int64(got.MaxAge), int64(want.MaxAge)) {
		add("max_age", age(got.MaxAge), atLeast(int64(want.MaxAge), age(want.MaxAge)))
	}
	// The stream's bounds drop stored messages only where the oldest are
	// discarded (the discard policy is compared above); where new ones are,
	// a tighter bound refuses writes, which their writers see: harmless.
	if got.Discard == jetstream.DiscardOld || want.Discard == jetstream.DiscardOld {
		if tighter(got.MaxMsgs, want.MaxMsgs) {
			add("max_msgs", got.MaxMsgs, atLeast(want.MaxMsgs))
		}
		if tighter(got.MaxBytes, want.MaxBytes) {
			add("max_bytes", got.MaxBytes, atLeast(want.MaxBytes))
		}
	}
	// The API's deletes and purges, and roll-ups (a publish that empties a
	// subject, or the stream, but for itself).
	if want.DenyDelete && !got.DenyDelete {
		add("deny_delete", got.DenyDelete, want.DenyDelete)
	}
	if want.DenyPurge && !got.DenyPurge {
		add("deny_purge", got.DenyPurge, want.DenyPurge)
	}
	if got.AllowRollup && !want.AllowRollup {
		add("allow_rollup_hdrs", got.AllowRollup, want.AllowRollup)
	}
	// Message TTLs let a write say when it goes; delete markers are
	// messages the server writes onto a subject. Without TTLs cohort's
	// writes that carry one are refused, so either way round it is not the
	// stream cohort made.
	if got.AllowMsgTTL != want.AllowMsgTTL {
		add("allow_msg_ttl", got.AllowMsgTTL, want.AllowMsgTTL)
	}
	if got.SubjectDeleteMarkerTTL != want.SubjectDeleteMarkerTTL {
		add("subject_delete_marker_ttl", age(got.SubjectDeleteMarkerTTL), age(want.SubjectDeleteMarkerTTL))
	}

	// Other ways of writing, which cohort's reasoning about what a stored
	// message is (who wrote it, under what condition) does not cover:
	// counters the server sums, batches committed whole, messages the
	// server publishes later from a schedule. A sealed stream takes no
	// write and applies no limit: not the stream cohort made either.
	for _, f := range []struct {
		setting   string
		got, want bool
	}{
		{"allow_msg_counter", got.AllowMsgCounter, want.AllowMsgCounter},
		{"allow_atomic", got.AllowAtomicPublish, want.AllowAtomicPublish},
		{"allow_batched", got.AllowBatchPublish, want.AllowBatchPublish},
		{"allow_msg_schedules", got.AllowMsgSchedules, want.AllowMsgSchedules},
		{"sealed", got.Sealed, want.Sealed},
		// Without acknowledgements, one that anybody else sends to a
		// writer's inbox is the only one it hears.
		{"no_ack", got.NoAck, want.NoAck},
	} {
		if f.got && !f.want {
			add(f.setting, f.got, f.want)
		}
	}
	// cohort reads with direct gets: without them its reads fail, and with
	// them where not asked for, any replica, however far behind, answers.
	if got.AllowDirect != want.AllowDirect {
		add("allow_direct", got.AllowDirect, want.AllowDirect)
	}

	// Not compared, as they cannot lose, alter or add a message:
	// description, metadata and template_owner (labels); max_msg_size (a
	// smaller one refuses writes, a larger one is bounded by every reader);
	// discard_new_per_subject (refuses writes); max_consumers and
	// consumer_limits (cohort's own readers fail, they do not misread);
	// duplicate_window (cohort relies on message ids to store a retried
	// write once, never for what it trusts: a record that must be new is
	// written on the condition that its subject is empty); placement and
	// compression (where and how it is kept); first_seq (a sequence anyone
	// who may write can reach by writing); mirror_direct (meaningful only
	// with a mirror, refused above).
	if len(d) == 0 {
		return nil
	}
	return &Error{Stream: want.Name, Deviations: d}
}

// replicas is a stream's replicas, 0 being JetStream's default of 1.
func replicas(n int) int { return max(n, 1) }

// unlimited makes JetStream's two spellings of no limit, 0 and -1, one.
func unlimited(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

// tighter reports whether the limit got keeps less than want, where zero
// and below is no limit.
func tighter(got, want int64) bool {
	return got > 0 && (want <= 0 || got < want)
}

// atLeast says what a limit must be: at least want, where 0 and below is
// none; shown, if given, as it reads.
func atLeast(want int64, shown ...string) string {
	if want <= 0 {
		return "unlimited"
	}
	if len(shown) > 0 {
		return "at least " + shown[0]
	}
	return fmt.Sprintf("at least %d", want)
}

func age(d time.Duration) string {
	if d <= 0 {
		return "unlimited"
	}
	return d.String()
}

// describe prints what a pointer, or a slice of them, points to.
func describe(v any) string {
	rv := reflect.ValueOf(v)
	switch {
	case rv.Kind() == reflect.Pointer && rv.IsNil(), rv.Kind() == reflect.Slice && rv.Len() == 0:
		return "none"
	case rv.Kind() == reflect.Slice:
		parts := make([]string, rv.Len())
		for k := range parts {
			parts[k] = describe(rv.Index(k).Interface())
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	return fmt.Sprintf("%+v", rv.Elem().Interface())
}

// sameSources compares two lists of sources, none and empty alike.
func sameSources(a, b []*jetstream.StreamSource) bool {
	return len(a) == 0 && len(b) == 0 || reflect.DeepEqual(a, b)
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}
