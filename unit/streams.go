package unit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/streamcheck"
)

// Limits of the cluster's streams, which its units make.
const (
	// DefaultSessionsMaxBytes bounds a cluster's session records by
	// default: about 600,000 sessions, 600 users at their quota.
	DefaultSessionsMaxBytes = 256 << 20
	// DefaultCallsMaxBytes bounds a cluster's claims by default: one user at
	// its quota of call bytes on one unit stores at most 1 MiB a second for
	// the claims' five minutes, 300 MiB; this is about seven times that.
	// JetStream reserves a stream's bound when it makes the stream, so every
	// cluster takes this much of the server's storage (max_file_store) at
	// once: Config.CallsMaxBytes raises it where the storage is there.
	DefaultCallsMaxBytes = 2 << 30
	// minStreamBytes is the least either bound may be set to.
	minStreamBytes = 16 << 20
	// callClaimTTL is how long a claim is kept after its last write: longer
	// than the span in which a call's time is accepted (twice the clock skew
	// allowed), so that a call sent again is refused by its claim or by its
	// age. A closed mark is kept until its session expires.
	callClaimTTL = 5 * time.Minute
	// duplicatesWindow is JetStream's window for message ids.
	duplicatesWindow = 2 * time.Minute
	maxSessionTTL    = 24 * time.Hour
)

// streams are the cluster's streams, as a unit uses them: its session
// records, and its claims and closed marks spread over
// messages.CallShards streams by session, which JetStream writes (and
// fsyncs) in parallel.
type streams struct {
	sessions jetstream.Stream
	watch    streamWatch // the sessions stream's
	calls    [messages.CallShards]*callShard
}

// callShard is one of a cluster's calls streams, with its watches.
type callShard struct {
	stream jetstream.Stream
	watch  streamWatch
	guard  callsGuard
}

// usable refuses a call (or close) of session before anything is written
// for it while a stream it depends on cannot be trusted, or was not seen
// at the last look.
func (s *streams) usable(session []byte) error {
	if err := s.watch.usable(); err != nil {
		return err
	}
	return s.shard(session).watch.usable()
}

// trusted refuses, as tampered with, a call of session whose streams were
// seen changed to what could lose what they keep.
func (s *streams) trusted(session []byte) error {
	if err := s.watch.trusted(); err != nil {
		return err
	}
	return s.shard(session).watch.trusted()
}

// errUnseen: a stream the unit depends on did not answer the last look,
// so whether it was changed or made again is not known: calls are refused
// (nothing written for them) until a look succeeds, which is retried.
var errUnseen = errors.New("unit: a stream of the cluster could not be looked at: whether it was changed or made again is not known")

// streamWatch is what the periodic looks at a stream found: whether the
// last look failed, and whether the stream was ever seen configured
// otherwise than the unit trusts (package streamcheck). A stream once seen
// so stays untrusted: what it allowed meanwhile (a roll-up, a republish) is
// not undone by a change back.
type streamWatch struct {
	mu        sync.Mutex
	want      jetstream.StreamConfig
	unseen    error // why the last look failed; nil if it succeeded
	untrusted error // the first deviation seen; nil if none
}

func (w *streamWatch) bind(want jetstream.StreamConfig) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.want = want
}

// failed records a look that did not get the stream's information.
func (w *streamWatch) failed(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.unseen = err
}

// looked checks the stream's configuration as a look found it; it returns
// the deviation when it is the first seen.
func (w *streamWatch) looked(info *jetstream.StreamInfo) (first error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.unseen = nil
	if w.untrusted != nil {
		return nil
	}
	if err := streamcheck.Check(info.Config, w.want); err != nil {
		w.untrusted = fmt.Errorf("%w: %w: %v", channel.ErrTampered, errUntrusted, err)
		return w.untrusted
	}
	return nil
}

func (w *streamWatch) usable() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.untrusted != nil {
		return w.untrusted
	}
	if w.unseen != nil {
		return fmt.Errorf("%w (%v)", errUnseen, w.unseen)
	}
	return nil
}

func (w *streamWatch) trusted() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.untrusted
}

// look takes a look at every stream of the cluster; it returns what
// failed. Between looks the watches keep what the last one found.
func (s *streams) look(ctx context.Context, now time.Time, log *slog.Logger) error {
	var errs []error
	see := func(st jetstream.Stream, w *streamWatch) *jetstream.StreamInfo {
		info, err := st.Info(ctx)
		if err != nil {
			w.failed(err)
			errs = append(errs, fmt.Errorf("stream %s: %w", st.CachedInfo().Config.Name, err))
			return nil
		}
		if err := w.looked(info); err != nil {
			log.Error("a stream of the cluster was changed after the unit took it: what depends on it is refused from now on", "err", err)
		}
		return info
	}
	see(s.sessions, &s.watch)
	for _, sh := range s.calls {
		if info := see(sh.stream, &sh.watch); info != nil {
			sh.guard.look(info, now)
		}
	}
	return errors.Join(errs...)
}

// shard is the calls stream of a session's claims and closed mark.
func (s *streams) shard(session []byte) *callShard { return s.calls[messages.CallShard(session)] }

// callsGuard watches the calls stream for signs that it was made again,
// which loses its claims: a claim stored at a sequence the stream had
// passed before, or a creation time that moved. From then on a call sent
// before the stream was made again, give or take the clock skew allowed, is
// not run: its claim may be lost.
type callsGuard struct {
	mu        sync.Mutex
	floor     uint64    // a sequence the stream had passed: every new claim is above it
	next      uint64    // the last sequence at the last look, the floor after the next
	created   time.Time // the stream's creation time as first seen
	recreated time.Time // when it was seen made again; zero if never
}

// bind starts the watch on the stream's first look.
func (g *callsGuard) bind(info *jetstream.StreamInfo) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.floor, g.next, g.created = info.State.LastSeq, info.State.LastSeq, info.Created
}

// look takes a later look at the stream. The floor lags a look behind, so
// that a claim written before this look and checked after it is above it.
func (g *callsGuard) look(info *jetstream.StreamInfo, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !info.Created.Equal(g.created) {
		g.created, g.recreated, g.floor, g.next = info.Created, now, 0, info.State.LastSeq
		return
	}
	g.floor, g.next = g.next, info.State.LastSeq
}

// check judges a claim stored at seq at now, for a call sent at sent.
func (g *callsGuard) check(seq uint64, sent, now time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if floor := g.floor; seq <= floor {
		g.recreated, g.floor, g.next = now, 0, seq
		return fmt.Errorf("%w: the calls stream stored a claim at sequence %d, below sequence %d it had passed: it was made again, and lost its claims", channel.ErrTampered, seq, floor)
	}
	if !g.recreated.IsZero() && sent.Before(g.recreated.Add(maxClockSkew)) {
		return fmt.Errorf("%w: the calls stream was made again at %s, and this call was sent at %s: its claim may be lost", channel.ErrTampered, g.recreated.UTC().Format(time.RFC3339), sent.UTC().Format(time.RFC3339))
	}
	return nil
}

// sessionsStream is the configuration of the cluster's sessions stream.
func (u *Unit) sessionsStream() jetstream.StreamConfig {
	c := u.cfg.Cluster
	return jetstream.StreamConfig{
		Name:              messages.SessionsStream(c),
		Description:       "cohort session records of cluster " + c + ": session keys sealed under the cluster's key, one subject a session",
		Subjects:          []string{messages.SessionsOfCluster(c)},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxAge:            maxSessionTTL,
		MaxBytes:          u.cfg.SessionsMaxBytes,
		MaxMsgSize:        messages.MaxSessionRecord,
		MaxMsgsPerSubject: 1,
		Duplicates:        duplicatesWindow,
		AllowMsgTTL:       true, // each record lives as long as its session
		AllowDirect:       true,
		DenyDelete:        true,
		DenyPurge:         true,
		Storage:           jetstream.FileStorage,
		Replicas:          u.cfg.Replicas,
	}
}

// callsStream is the configuration of the cluster's calls stream k.
func (u *Unit) callsStream(k int) jetstream.StreamConfig {
	c := u.cfg.Cluster
	return jetstream.StreamConfig{
		Name:              messages.CallsStream(c, k),
		Description:       fmt.Sprintf("cohort call claims of cluster %s, shard %d of %d: which unit took each call and its sealed answer, for five minutes; closed sessions, until they expire", c, k, messages.CallShards),
		Subjects:          []string{messages.ClaimsOfShard(c, k)},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxAge:            maxSessionTTL + 2*time.Minute, // each message has its own TTL, within it
		AllowMsgTTL:       true,
		MaxBytes:          u.cfg.CallsMaxBytes / messages.CallShards,
		MaxMsgSize:        messages.MaxCallClaim,
		MaxMsgsPerSubject: 1,
		Duplicates:        duplicatesWindow,
		AllowDirect:       true,
		DenyDelete:        true,
		DenyPurge:         true,
		Storage:           jetstream.FileStorage,
		Replicas:          u.cfg.Replicas,
	}
}

// ensureStreams makes the cluster's streams, or takes the ones there are,
// retrying until ctx is done. A stream whose configuration could lose a
// claim or let a record be rolled up or purged is refused: no role may
// change a stream, and a unit does not serve over one it cannot trust.
func (u *Unit) ensureStreams(ctx context.Context) (st *streams, err error) {
	c, sessions, calls := u.cfg.Cluster, u.sessionsStream(), u.callsStream
	st = &streams{}
	for failures := 0; ; failures++ {
		st.sessions, err = u.ensureStream(ctx, sessions)
		st.watch.bind(sessions)
		for k := 0; err == nil && k < messages.CallShards; k++ {
			if st.calls[k] == nil {
				var shard jetstream.Stream
				if shard, err = u.ensureStream(ctx, calls(k)); err == nil {
					st.calls[k] = &callShard{stream: shard}
					st.calls[k].watch.bind(calls(k))
					st.calls[k].guard.bind(shard.CachedInfo())
				}
			}
		}
		if err == nil {
			return st, nil
		}
		if errors.Is(err, errUntrusted) {
			return nil, err
		}
		// A stream of another build over the same subjects, JetStream not
		// ready yet, or not the storage to reserve: say why, then retry.
		// Shards made already are kept: the next attempt makes the rest.
		if overlaps(err) {
			err = fmt.Errorf("%w: a stream over the cluster's claims is there already, most likely %s, the one calls stream of a cohort from before they were spread over %d: "+
				"stop the cluster's units of that build, then remove it as the cluster's account (nats stream rm %s); the sessions stream keeps which sessions were closed",
				err, messages.LegacyCallsStream(c), messages.CallShards, messages.LegacyCallsStream(c))
		} else if isInsufficientStorage(err) {
			err = fmt.Errorf("%w: the NATS server cannot reserve the cluster's streams (%d bytes of session records, %d of call claims, each times %d replicas): give its JetStream more storage (max_file_store) or make the bounds smaller (cohort unit --sessions-max-bytes, --calls-max-bytes)",
				err, u.cfg.SessionsMaxBytes, u.cfg.CallsMaxBytes, u.cfg.Replicas)
		}
		u.log.Warn("making the cluster's streams failed; retrying", "err", err)
		if !backoff.Wait(ctx, u.retryIn(failures)) {
			return nil, ctx.Err()
		}
	}
}

var errUntrusted = errors.New("the stream's configuration could lose what it keeps")

// JetStream's codes for a stream whose bytes it cannot reserve, which
// nats.go names no sentinel for (nats-server's JSInsufficientResourcesErr
// and JSStorageResourcesExceededErr).
const (
	jsInsufficientResources    jetstream.ErrorCode = 10023
	jsStorageResourcesExceeded jetstream.ErrorCode = 10047
)

// jsSubjectOverlap is JetStream's code for a stream whose subjects overlap
// another's (nats-server's JSStreamSubjectOverlapErr).
const jsSubjectOverlap jetstream.ErrorCode = 10065

// overlaps tells JetStream's refusal of a stream whose subjects another
// stream holds.
func overlaps(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && api.ErrorCode == jsSubjectOverlap
}

// isInsufficientStorage tells JetStream's refusal to reserve a stream's
// bytes.
func isInsufficientStorage(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jsInsufficientResources || api.ErrorCode == jsStorageResourcesExceeded)
}

// ensureStream takes the stream there is, if it can be trusted, or makes
// it. It looks first: JetStream would judge a stream's making against its
// storage before it saw that the stream is there already.
func (u *Unit) ensureStream(ctx context.Context, want jetstream.StreamConfig) (jetstream.Stream, error) {
	st, err := u.js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = u.js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // another unit made it meanwhile
			st, err = u.js.Stream(ctx, want.Name)
		}
	}
	if err == nil {
		if err := streamcheck.Check(st.CachedInfo().Config, want); err != nil {
			return nil, fmt.Errorf("unit: stream %s: %w: %v; an administrator must make it again", want.Name, errUntrusted, err)
		}
		// Limits that passed the check but differ keep what the stream
		// promised: more replicas or a longer age, or a bound that refuses
		// writes sooner or later.
		if got := st.CachedInfo().Config; got.MaxBytes != want.MaxBytes || got.Replicas != want.Replicas || got.MaxAge != want.MaxAge {
			u.log.Warn("a stream of the cluster keeps the limits it was made with", "stream", want.Name,
				"max_bytes", got.MaxBytes, "replicas", got.Replicas, "max_age", got.MaxAge)
		}
		return st, nil
	}
	return st, err
}
