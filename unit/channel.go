package unit

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/rate"
	"github.com/cohort-dev/cohort/replay"
	"github.com/cohort-dev/cohort/service"
)

const (
	defaultSessionTTL = time.Hour
	maxClockSkew      = 2 * time.Minute
)

// session is what a unit knows of a session: its keys, task, user and
// expiry, or that it was closed.
type session struct {
	keys    *channel.Keys
	task    string
	user    string
	expires time.Time
	closed  bool
}

// sessionTable holds the sessions of the unit's cluster, keyed by id, and
// how many live ones each user holds.
type sessionTable struct {
	mu      sync.RWMutex
	m       map[[messages.SessionIDSize]byte]*session
	perUser map[string]int // sessions not closed, reserved ones included
}

func key(id []byte) (k [messages.SessionIDSize]byte) {
	copy(k[:], id)
	return k
}

func (t *sessionTable) get(id []byte) (*session, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	s, ok := t.m[key(id)]
	return s, ok
}

// put records a session and reports whether it was new. A session given as
// reserved was counted for its user by reserve already.
func (t *sessionTable) put(id []byte, s *session, reserved bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m, t.perUser = map[[messages.SessionIDSize]byte]*session{}, map[string]int{}
	}
	k := key(id)
	old, had := t.m[k]
	if had && old.closed && !s.closed {
		if reserved {
			t.release(s.user)
		}
		return false // closed is final: a replayed open record cannot reopen a session
	}
	switch {
	case had && !old.closed && s.closed:
		t.release(old.user)
	case !had && !s.closed && !reserved:
		t.perUser[s.user]++
	case had && reserved:
		t.release(s.user) // learned from the stream before this unit's own store returned
	}
	t.m[k] = s
	return !had
}

// reserve counts a session about to be opened for user, if the user holds
// fewer than limit; release undoes it when the opening fails.
func (t *sessionTable) reserve(user string, limit int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.perUser == nil {
		t.m, t.perUser = map[[messages.SessionIDSize]byte]*session{}, map[string]int{}
	}
	if t.perUser[user] >= limit {
		return false
	}
	t.perUser[user]++
	return true
}

func (t *sessionTable) unreserve(user string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.release(user)
}

// release uncounts one session of user. Called with t.mu held.
func (t *sessionTable) release(user string) {
	if t.perUser[user] <= 1 {
		delete(t.perUser, user)
		return
	}
	t.perUser[user]--
}

// live is how many sessions user holds, reserved ones included.
func (t *sessionTable) live(user string) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.perUser[user]
}

// sweep drops the sessions expired at now, closed ones too (an expired
// session is refused as unknown, and its record expires from the stream a
// minute after it), and returns how many it dropped.
func (t *sessionTable) sweep(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for k, s := range t.m {
		if now.After(s.expires) {
			if !s.closed {
				t.release(s.user)
			}
			delete(t.m, k)
			n++
		}
	}
	return n
}

func (t *sessionTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}

// holds records a session, and tells the observer when it is new.
func (u *Unit) holds(id []byte, s *session, reserved bool) {
	if u.sessions.put(id, s, reserved) && u.cfg.OnSession != nil {
		u.cfg.OnSession(id)
	}
}

// HasSession reports whether the unit holds a live session: known, not
// expired, not closed.
func (u *Unit) HasSession(id []byte) bool {
	s, ok := u.sessions.get(id)
	return ok && !s.closed && u.cfg.Now().Before(s.expires)
}

// Sessions is how many sessions the unit holds in memory, closed and not yet
// swept ones included.
func (u *Unit) Sessions() int { return u.sessions.len() }

// LiveSessions is how many live sessions user holds in the unit's cluster,
// as far as the unit knows.
func (u *Unit) LiveSessions(user string) int { return u.sessions.live(user) }

// Quota bounds what one user may ask of a cluster. Zero fields take the
// defaults noted. Sessions is counted across the cluster (every unit holds
// every session); the rates are each unit's, so a cluster of n units takes
// at most n times them from one user.
type Quota struct {
	Sessions       int     // live sessions a user may hold in the cluster; default 1000
	Handshakes     float64 // handshakes a second; default 20
	HandshakeBurst float64 // handshakes at once; default 40
	Calls          float64 // calls (and closes) a second; default 500
	CallBurst      float64 // calls at once; default 1000
	// CallBytes bounds the bytes a user's calls and their answers add to
	// the cluster's claims, a second; default 1 MiB. CallBytesBurst at
	// once; default 8 MiB.
	CallBytes      float64
	CallBytesBurst float64
}

func (q *Quota) fill() {
	if q.Sessions <= 0 {
		q.Sessions = 1000
	}
	if q.Handshakes <= 0 {
		q.Handshakes = 20
	}
	if q.HandshakeBurst <= 0 {
		q.HandshakeBurst = 2 * q.Handshakes
	}
	if q.Calls <= 0 {
		q.Calls = 500
	}
	if q.CallBurst <= 0 {
		q.CallBurst = 2 * q.Calls
	}
	if q.CallBytes <= 0 {
		q.CallBytes = 1 << 20
	}
	if q.CallBytesBurst <= 0 {
		q.CallBytesBurst = max(8<<20, 2*q.CallBytes)
	}
}

// Unlimited is a quota no load reaches: for benchmarks.
var Unlimited = Quota{Sessions: 1 << 30, Handshakes: 1e9, HandshakeBurst: 1e9, Calls: 1e9, CallBurst: 1e9, CallBytes: 1e15, CallBytesBurst: 1e15}

// maxQuotaUsers bounds the users whose rates a unit tracks at once.
const maxQuotaUsers = 1 << 16

// quotas are a unit's per-user buckets.
type quotas struct {
	handshakes, calls, bytes *rate.Buckets
}

func newQuotas(q Quota) *quotas {
	return &quotas{
		handshakes: rate.New(rate.Limit{Rate: q.Handshakes, Burst: q.HandshakeBurst}, maxQuotaUsers),
		calls:      rate.New(rate.Limit{Rate: q.Calls, Burst: q.CallBurst}, maxQuotaUsers),
		bytes:      rate.New(rate.Limit{Rate: q.CallBytes, Burst: q.CallBytesBurst}, maxQuotaUsers),
	}
}

// Limits of the cluster's streams, which its units make.
const (
	// SessionsMaxBytes bounds a cluster's session records: about 600,000
	// sessions, 600 users at their quota.
	SessionsMaxBytes = 256 << 20
	// CallsMaxBytes bounds a cluster's claims: one user at its quota of
	// call bytes on one unit stores at most 1 MiB a second for the claims'
	// five minutes, 300 MiB; this is fifty times that.
	CallsMaxBytes = 16 << 30
	// callClaimTTL is how long a claim is kept after its last write: longer
	// than the span in which a call's time is accepted (twice the clock skew
	// allowed), so that a call sent again is refused by its claim or by its
	// age. A closed mark is kept until its session expires.
	callClaimTTL = 5 * time.Minute
	// duplicatesWindow is JetStream's window for message ids.
	duplicatesWindow = 2 * time.Minute
	maxSessionTTL    = 24 * time.Hour
)

// streams are the cluster's two streams, as a unit uses them.
type streams struct {
	sessions jetstream.Stream
	calls    jetstream.Stream
	guard    callsGuard
}

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

// ensureStreams makes the cluster's streams, or takes the ones there are,
// retrying until ctx is done. A stream whose configuration could lose a
// claim or let a record be rolled up or purged is refused: no role may
// change a stream, and a unit does not serve over one it cannot trust.
func (u *Unit) ensureStreams(ctx context.Context) (*streams, error) {
	c := u.cfg.Cluster
	sessions := jetstream.StreamConfig{
		Name:              messages.SessionsStream(c),
		Description:       "cohort session records of cluster " + c + ": session keys sealed under the cluster's key, one subject a session",
		Subjects:          []string{messages.SessionsOfCluster(c)},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxAge:            maxSessionTTL,
		MaxBytes:          SessionsMaxBytes,
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
	calls := jetstream.StreamConfig{
		Name:              messages.CallsStream(c),
		Description:       "cohort call claims of cluster " + c + ": which unit took each call and its sealed answer, for five minutes; closed sessions, until they expire",
		Subjects:          []string{messages.ClaimsOfCluster(c)},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxAge:            maxSessionTTL + 2*time.Minute, // each message has its own TTL, within it
		AllowMsgTTL:       true,
		MaxBytes:          CallsMaxBytes,
		MaxMsgSize:        messages.MaxCallClaim,
		MaxMsgsPerSubject: 1,
		Duplicates:        duplicatesWindow,
		AllowDirect:       true,
		DenyDelete:        true,
		DenyPurge:         true,
		Storage:           jetstream.FileStorage,
		Replicas:          u.cfg.Replicas,
	}
	st := &streams{}
	for failures := 0; ; failures++ {
		var err error
		if st.sessions, err = u.ensureStream(ctx, sessions); err == nil {
			if st.calls, err = u.ensureStream(ctx, calls); err == nil {
				st.guard.bind(st.calls.CachedInfo())
				return st, nil
			}
		}
		if errors.Is(err, errUntrusted) {
			return nil, err
		}
		u.log.Debug("making the cluster's streams; retrying", "err", err)
		if !sleep(ctx, Backoff(failures, u.cfg.RetryMin, u.cfg.RetryMax)) {
			return nil, ctx.Err()
		}
	}
}

var errUntrusted = errors.New("the stream's configuration could lose what it keeps")

func (u *Unit) ensureStream(ctx context.Context, want jetstream.StreamConfig) (jetstream.Stream, error) {
	st, err := u.js.CreateStream(ctx, want)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		if st, err = u.js.Stream(ctx, want.Name); err != nil {
			return nil, err
		}
		if err := trusted(st.CachedInfo().Config, want); err != nil {
			return nil, fmt.Errorf("unit: stream %s: %w: %v; an administrator must make it again", want.Name, errUntrusted, err)
		}
		if got := st.CachedInfo().Config; got.MaxBytes != want.MaxBytes || got.Replicas != want.Replicas || got.MaxAge != want.MaxAge {
			u.log.Warn("a stream of the cluster keeps the limits it was made with", "stream", want.Name,
				"max_bytes", got.MaxBytes, "replicas", got.Replicas, "max_age", got.MaxAge)
		}
		return st, nil
	}
	return st, err
}

// trusted checks what a stream must hold to for a unit to serve over it.
func trusted(got, want jetstream.StreamConfig) error {
	switch {
	case len(got.Subjects) != 1 || got.Subjects[0] != want.Subjects[0]:
		return fmt.Errorf("subjects %v, want %v", got.Subjects, want.Subjects)
	case got.MaxMsgsPerSubject != want.MaxMsgsPerSubject:
		return fmt.Errorf("%d messages a subject, want %d", got.MaxMsgsPerSubject, want.MaxMsgsPerSubject)
	case !got.DenyDelete || !got.DenyPurge || got.AllowRollup:
		return errors.New("deletes, purges or roll-ups allowed")
	case got.Mirror != nil || len(got.Sources) > 0 || got.RePublish != nil || got.SubjectTransform != nil:
		return errors.New("a mirror, sources, republishing or a subject transform")
	case !got.AllowDirect || got.AllowMsgTTL != want.AllowMsgTTL:
		return errors.New("direct gets or message TTLs not as made")
	case got.MaxAge != 0 && got.MaxAge < want.MaxAge:
		return fmt.Errorf("messages kept %v, want at least %v", got.MaxAge, want.MaxAge)
	}
	return nil
}

// serveChannel answers the cluster's handshakes, calls and closes and
// follows its session records until ctx is done.
func (u *Unit) serveChannel(ctx context.Context, ck *issuerclient.ClusterKey) error {
	claimKey, err := channel.ClaimKey(ck.Key, u.cfg.Cluster, ck.Epoch)
	if err != nil {
		return fmt.Errorf("unit: %w", err)
	}
	st, err := u.ensureStreams(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	var parts sync.WaitGroup
	defer parts.Wait()
	parts.Go(func() {
		if err := u.followSessions(ctx, ck); err != nil {
			u.log.Error("following session records", "err", err)
		}
	})
	parts.Go(func() { u.upkeep(ctx, st) })
	svc, err := service.New(service.Config{
		Conn: u.cfg.Serve, QueueGroup: messages.UnitsQueuePrefix + u.cfg.Cluster, Workers: u.cfg.Workers, Queue: 1024, Logger: u.log,
	})
	if err != nil {
		return fmt.Errorf("unit: %w", err)
	}
	defer svc.Stop()
	ch := &cluster{u: u, ck: ck, claimKey: claimKey, st: st}
	for _, ep := range []service.Endpoint{
		{Name: "handshake", Subject: messages.ClusterFilter(u.cfg.Cluster, messages.VerbHandshake), Handle: func(m service.Msg) ([]byte, *messages.Error) { return ch.handshake(ctx, m) }},
		{Name: "call", Subject: messages.ClusterFilter(u.cfg.Cluster, messages.VerbCall), Handle: func(m service.Msg) ([]byte, *messages.Error) { return ch.call(ctx, m) }},
		{Name: "close", Subject: messages.ClusterFilter(u.cfg.Cluster, messages.VerbClose), Handle: func(m service.Msg) ([]byte, *messages.Error) { return ch.close(ctx, m) }},
	} {
		if err := svc.Add(ep); err != nil {
			return fmt.Errorf("unit: %w", err)
		}
	}
	if err := svc.Flush(); err != nil {
		u.log.Warn("flushing the channel's subscriptions", "err", err)
	}
	<-ctx.Done()
	return nil
}

// upkeep drops expired sessions and looks at the calls stream, until ctx
// is done.
func (u *Unit) upkeep(ctx context.Context, st *streams) {
	every := min(max(u.cfg.SessionTTL/4, 250*time.Millisecond), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	looked := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n := u.sessions.sweep(u.cfg.Now()); n > 0 {
			u.log.Debug("dropped expired sessions", "sessions", n)
		}
		if time.Since(looked) >= 30*time.Second {
			if info, err := st.calls.Info(ctx); err == nil {
				st.guard.look(info, u.cfg.Now())
			}
			looked = time.Now()
		}
	}
}

// cluster is what a unit's channel handlers share.
type cluster struct {
	u        *Unit
	ck       *issuerclient.ClusterKey
	claimKey []byte
	st       *streams
}

// handshake answers a user's hello: it agrees the session keys, seals the
// session record under the cluster key, has the manager store it, and only
// then answers.
func (c *cluster) handshake(ctx context.Context, m service.Msg) ([]byte, *messages.Error) {
	u := c.u
	user, ok := messages.UserOfSubject(m.Subject, u.cfg.Cluster, messages.VerbHandshake)
	if !ok {
		return nil, messages.Refusal(messages.CodeWrongSubject, "the subject %q names no user", m.Subject)
	}
	now := u.cfg.Now()
	if ok, _ := u.quotas.handshakes.Take(user, 1, now); !ok {
		return nil, messages.Refusal(messages.CodeRateLimited, "user %s opens sessions faster than %g a second on this unit (%g at once)", user, u.cfg.Quota.Handshakes, u.cfg.Quota.HandshakeBurst)
	}
	var h messages.Hello
	if err := messages.Decode(m.Data, messages.MaxHello, &h); err != nil {
		return nil, service.DecodeRefusal("hello", err)
	}
	pair := u.pair.Load()
	switch {
	case h.Cluster != u.cfg.Cluster:
		return nil, messages.Refusal(messages.CodeWrongCluster, "this unit serves cluster %q, the hello names %q", u.cfg.Cluster, h.Cluster)
	case h.Task != "" && h.Task != pair.Task:
		return nil, messages.Refusal(messages.CodeWrongTask, "this cluster runs task %q, the hello expects %q", pair.Task, h.Task)
	}
	if skew := now.Sub(time.Unix(0, h.Time)); skew > maxClockSkew || skew < -maxClockSkew {
		return nil, messages.Refusal(messages.CodeStale, "hello time is %v off", skew.Round(time.Millisecond))
	}
	token := u.token.Load()
	if token == nil {
		return nil, messages.Refusal(messages.CodeNotReady, "this unit has not joined its cluster yet")
	}
	id := channel.SessionID(m.Data)
	if _, ok := u.sessions.get(id); ok {
		return nil, messages.Refusal(messages.CodeReplay, "this hello opened session %x already", id)
	}
	switch u.hellos.Check(h.Nonce, now) {
	case replay.Seen:
		return nil, messages.Refusal(messages.CodeReplay, "this hello's nonce was used before")
	case replay.Full:
		return nil, messages.Refusal(messages.CodeOverloaded, "too many recent hellos to track replays")
	}
	if !u.sessions.reserve(user, u.cfg.Quota.Sessions) {
		return nil, messages.Refusal(messages.CodeQuota, "user %s holds %d live sessions in cluster %s, as many as a user may: close one, or wait until one expires", user, u.cfg.Quota.Sessions, u.cfg.Cluster)
	}
	reply, s, refusal := c.open(ctx, pair, &h, m.Data, id, user, *token, now)
	if refusal != nil {
		u.sessions.unreserve(user)
		return nil, refusal
	}
	u.holds(id, s, true)
	return reply, nil
}

// open agrees a session's keys and has its record stored.
func (c *cluster) open(ctx context.Context, pair *issuerclient.Pair, h *messages.Hello, hello, id []byte, user string, token []byte, now time.Time) ([]byte, *session, *messages.Error) {
	u := c.u
	enc, secret, err := channel.Accept(h.KEM, h.PublicKey, hello)
	if err != nil {
		return nil, nil, messages.Refusal(messages.CodeUnsupportedKEM, "%v", err)
	}
	expires := now.Add(u.cfg.SessionTTL)
	body, err := messages.Marshal(&messages.HelloReplyBody{
		V: messages.Version, Session: id, Enc: enc, Unit: u.cfg.ID, Expires: expires.UnixNano(), Chain: pair.Chain[:len(pair.Chain)-1],
	})
	if err != nil {
		return nil, nil, messages.Refusal(messages.CodeInternal, "encoding the reply failed")
	}
	tr := channel.Transcript(hello, body)
	keys, err := channel.DeriveKeys(secret, tr)
	clear(secret)
	if err != nil {
		return nil, nil, messages.Refusal(messages.CodeInternal, "deriving the keys failed")
	}
	sig, err := ecdsa.SignASN1(rand.Reader, pair.Key, tr[:])
	if err != nil {
		return nil, nil, messages.Refusal(messages.CodeInternal, "signing the transcript failed")
	}
	plain, err := messages.Marshal(&messages.SessionKeys{V: messages.Version, C2S: keys.C2S, S2C: keys.S2C, Task: pair.Task, User: user, Expires: expires.UnixNano()})
	if err != nil {
		return nil, nil, messages.Refusal(messages.CodeInternal, "encoding the session failed")
	}
	sealed, err := channel.SealRecord(c.ck.Key, c.ck.Epoch, u.cfg.Cluster, id, plain)
	clear(plain)
	if err != nil {
		return nil, nil, messages.Refusal(messages.CodeInternal, "sealing the session failed")
	}
	if refusal := c.store(ctx, &messages.SessionRecord{
		V: messages.Version, Cluster: u.cfg.Cluster, Session: id, Epoch: c.ck.Epoch, Expires: expires.UnixNano(),
		Sealed: sealed, Unit: u.cfg.ID, Token: token,
	}); refusal != nil {
		return nil, nil, refusal
	}
	reply, err := messages.Marshal(&messages.HelloReply{V: messages.Version, Body: body, Signature: sig})
	if err != nil {
		return nil, nil, messages.Refusal(messages.CodeInternal, "encoding the reply failed")
	}
	return reply, &session{keys: keys, task: pair.Task, user: user, expires: expires}, nil
}

// store has the manager store a session record durably. It waits less than
// a user does for the handshake, so that the user hears the reason.
func (c *cluster) store(ctx context.Context, r *messages.SessionRecord) *messages.Error {
	u := c.u
	rec, err := messages.Marshal(r)
	if err != nil {
		return messages.Refusal(messages.CodeInternal, "encoding the session record failed")
	}
	ackData, err := service.Request(ctx, u.cfg.Conn, messages.ManagerSubject(messages.VerbSession, u.cfg.Cluster, u.cfg.ID), rec, u.cfg.StoreTimeout)
	var refusal *messages.Error
	switch {
	case errors.As(err, &refusal):
		return refusal // the manager's reason, a replayed hello's among them
	case err != nil:
		return messages.Refusal(messages.CodeOverloaded, "the session could not be stored durably: the manager did not confirm within %v: %v", u.cfg.StoreTimeout, err)
	}
	var ack messages.SessionAck
	if err := messages.Decode(ackData, messages.MaxSessionAck, &ack); err != nil {
		return messages.Refusal(messages.CodeInternal, "the manager's acknowledgement does not decode")
	}
	return nil
}

// followSessions reads the cluster's session records from the stream, from
// the oldest kept, and opens each under the cluster key: a unit that joins
// later holds the sessions opened before.
func (u *Unit) followSessions(ctx context.Context, ck *issuerclient.ClusterKey) error {
	var cons jetstream.Consumer
	var err error
	for failures := 0; ; failures++ {
		cons, err = u.js.OrderedConsumer(ctx, messages.SessionsStream(u.cfg.Cluster), jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{messages.SessionsOfCluster(u.cfg.Cluster)},
		})
		if err == nil {
			break
		}
		u.log.Debug("following session records; retrying", "err", err)
		if !sleep(ctx, Backoff(failures, u.cfg.RetryMin, u.cfg.RetryMax)) {
			return nil
		}
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) { u.learn(ck, msg.Data()) })
	if err != nil {
		return fmt.Errorf("unit: follow session records: %w", err)
	}
	<-ctx.Done()
	cc.Stop()
	return nil
}

// learn opens a stored session record; one that does not open or decode is
// not a record of this cluster's units, and is ignored.
func (u *Unit) learn(ck *issuerclient.ClusterKey, data []byte) {
	var r messages.SessionRecord
	if err := messages.Decode(data, messages.MaxSessionRecord, &r); err != nil || r.Cluster != u.cfg.Cluster || r.Epoch != ck.Epoch {
		u.log.Debug("ignoring a session record", "err", err)
		return
	}
	plain, err := channel.OpenRecord(ck.Key, ck.Epoch, r.Cluster, r.Session, r.Sealed)
	if err != nil {
		u.log.Warn("a session record does not open under the cluster key", "err", err)
		return
	}
	var k messages.SessionKeys
	err = messages.Decode(plain, messages.MaxSessionKeys, &k)
	clear(plain)
	if err != nil {
		u.log.Warn("a session record does not decode", "err", err)
		return
	}
	expires := time.Unix(0, k.Expires)
	if !u.cfg.Now().Before(expires) {
		return
	}
	if k.Closed {
		u.sessions.put(r.Session, &session{task: k.Task, user: k.User, expires: expires, closed: true}, false)
		return
	}
	u.holds(r.Session, &session{keys: &channel.Keys{C2S: k.C2S, S2C: k.S2C}, task: k.Task, user: k.User, expires: expires}, false)
}

// App is a task's code: it answers one call of a session. What it returns
// is encrypted to the user; it must not block past ctx. An error reaches the
// user only as "the task failed" (refusals travel in the clear) and is
// logged by the unit: it must not hold secrets; put what the user should
// learn in the answer instead.
type App func(ctx context.Context, task string, request []byte) ([]byte, error)

// echo is the demo task's App.
func (u *Unit) echo(_ context.Context, task string, request []byte) ([]byte, error) {
	return fmt.Appendf(nil, "unit %s of task %s heard: %s", u.cfg.ID, task, request), nil
}

// accepted is a call or a close that authenticated and is this unit's to
// run, or one that ran already, whose stored answer is to be sent again.
type accepted struct {
	call    *messages.Call
	session *session
	request []byte
	subject string // the claim's
	claim   uint64 // the claim's revision, to store the answer over
	lost    bool   // another unit took the claim over while this one ran it
	stored  []byte // an answer given before: send it again, run nothing
}

// accept takes a call or a close off the wire: it finds the session
// (fetching its record from the stream if this unit has not seen it),
// checks that it is the asking user's, authenticates the message as the
// kind expected, checks its time, and claims it. A message claimed before
// is never run again: its stored answer is returned, or, while another unit
// still runs it, "in progress"; one whose claim does not authenticate is
// refused as tampered. A call claimed after the session's close is refused.
func (c *cluster) accept(ctx context.Context, m service.Msg, verb string, kind channel.Kind) (*accepted, *messages.Error) {
	u := c.u
	user, ok := messages.UserOfSubject(m.Subject, u.cfg.Cluster, verb)
	if !ok {
		return nil, messages.Refusal(messages.CodeWrongSubject, "the subject %q names no user", m.Subject)
	}
	now := u.cfg.Now()
	if ok, _ := u.quotas.calls.Take(user, 1, now); !ok {
		return nil, messages.Refusal(messages.CodeRateLimited, "user %s calls faster than %g a second on this unit (%g at once)", user, u.cfg.Quota.Calls, u.cfg.Quota.CallBurst)
	}
	if ok, _ := u.quotas.bytes.Take(user, float64(len(m.Data)), now); !ok {
		return nil, messages.Refusal(messages.CodeRateLimited, "user %s sends more than %g bytes a second of calls and answers on this unit", user, u.cfg.Quota.CallBytes)
	}
	var call messages.Call
	if err := messages.Decode(m.Data, messages.MaxCall, &call); err != nil {
		return nil, service.DecodeRefusal(kindName(kind), err)
	}
	s, ok := u.sessions.get(call.Session)
	if !ok && u.fetchSession(ctx, c.ck, c.st, call.Session) {
		s, ok = u.sessions.get(call.Session)
	}
	switch {
	case !ok || s.user != user:
		// Another user's session is refused as unknown: its id tells nothing.
		return nil, messages.Refusal(messages.CodeNoSession, "no session %x of user %s in cluster %s", call.Session, user, u.cfg.Cluster)
	case s.closed:
		return nil, messages.Refusal(messages.CodeNoSession, "session %x was closed", call.Session)
	case !now.Before(s.expires):
		return nil, messages.Refusal(messages.CodeNoSession, "session %x expired at %s", call.Session, s.expires.UTC().Format(time.RFC3339))
	}
	request, err := channel.OpenCall(s.keys, kind, call.Session, call.Seq, call.Time, call.Ciphertext)
	if err != nil {
		return nil, messages.Refusal(messages.CodeAuth, "the message does not authenticate under the session's key as a %s", kindName(kind))
	}
	sent := time.Unix(0, call.Time)
	if skew := now.Sub(sent); skew > maxClockSkew || skew < -maxClockSkew {
		return nil, messages.Refusal(messages.CodeStale, "the call was sent %v from now, more than %v", skew.Round(time.Millisecond), maxClockSkew)
	}
	subject := messages.ClaimSubject(u.cfg.Cluster, call.Session, call.Seq)
	a := &accepted{call: &call, session: s, request: request, subject: subject}
	rev, err := c.write(ctx, subject, messages.ClaimRunning, 0, nil, callClaimTTL)
	switch {
	case wrongRevision(err):
		// Claimed before: judge what is there.
		a, refusal, last := c.claimed(ctx, subject, call.Seq)
		if refusal == nil || last == nil || !(u.cfg.SideEffectFree || kind == channel.KindClose) || !u.stale.expired(subject, last.rev, now) {
			return a, refusal
		}
		// The unit that claimed the call stopped renewing its claim before
		// it answered: it died. A task free of side effects (and a close)
		// may be run again: take it over, once; the revision decides
		// between units that try at the same time.
		if rev, err = c.write(ctx, subject, messages.ClaimRunning, last.rev, nil, callClaimTTL); err != nil {
			return nil, refusal
		}
		u.log.Info("took over a call whose unit stopped renewing its claim", "seq", call.Seq)
	case err != nil:
		return nil, messages.Refusal(messages.CodeOverloaded, "the call could not be claimed: %v", err)
	}
	if err := c.st.guard.check(rev, sent, now); err != nil {
		u.log.Warn("refusing a call: the calls stream looks made again", "err", err)
		return nil, messages.Refusal(messages.CodeTampered, "%v", err)
	}
	a.claim = rev
	if kind == channel.KindCall {
		_, err := c.st.calls.GetLastMsgForSubject(ctx, messages.ClosedSubject(u.cfg.Cluster, call.Session))
		switch {
		case err == nil:
			// Any message there closes the session: a mark that does not
			// authenticate fails closed.
			u.sessions.put(call.Session, &session{task: s.task, user: s.user, expires: s.expires, closed: true}, false)
			return nil, messages.Refusal(messages.CodeNoSession, "session %x was closed", call.Session)
		case !errors.Is(err, jetstream.ErrMsgNotFound):
			return nil, messages.Refusal(messages.CodeOverloaded, "whether the session was closed could not be read: %v", err)
		}
	}
	return a, nil
}

// write stores a claim of this unit at subject over revision prev (0: the
// first message the subject ever holds), kept for ttl, and returns its
// revision. JetStream enforces prev and keeps it with the message, and the
// MAC binds it: the claim cannot be written anywhere else.
func (c *cluster) write(ctx context.Context, subject string, state uint8, prev uint64, answer []byte, ttl time.Duration) (uint64, error) {
	cl := messages.CallClaim{V: messages.Version, Unit: c.u.cfg.ID, State: state, Prev: prev, Answer: answer}
	channel.SignClaim(c.claimKey, subject, &cl)
	data, err := messages.Marshal(&cl)
	if err != nil {
		return 0, err
	}
	ack, err := c.u.js.Publish(ctx, subject, data, jetstream.WithExpectLastSequencePerSubject(prev), jetstream.WithMsgTTL(ttl))
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// lastClaim is the last message of a claim's subject, checked.
type lastClaim struct {
	claim messages.CallClaim
	rev   uint64
}

// read reads and checks the claim at subject. A message that is not a
// unit's claim standing where it was written is an error wrapping
// channel.ErrTampered.
func (c *cluster) read(ctx context.Context, subject string) (*lastClaim, error) {
	msg, err := c.st.calls.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		return nil, err
	}
	last := &lastClaim{rev: msg.Sequence}
	if err := messages.Decode(msg.Data, messages.MaxCallClaim, &last.claim); err != nil {
		return nil, fmt.Errorf("%w: the claim does not decode: %v", channel.ErrTampered, err)
	}
	var prev uint64
	h := msg.Header.Get(jetstream.ExpectedLastSubjSeqHeader)
	if h != "" {
		if prev, err = strconv.ParseUint(h, 10, 64); err != nil {
			return nil, fmt.Errorf("%w: the claim's stored revision %q", channel.ErrTampered, h)
		}
	}
	if err := channel.CheckClaim(c.claimKey, subject, &last.claim, prev, h != ""); err != nil {
		return nil, err
	}
	if last.claim.State == messages.ClaimClosed {
		return nil, fmt.Errorf("%w: a closed mark on a call's subject", channel.ErrTampered)
	}
	return last, nil
}

// claimed answers a message claimed before. The last claim comes back when
// it is another unit's, still running, for accept to judge its age.
func (c *cluster) claimed(ctx context.Context, subject string, seq uint64) (*accepted, *messages.Error, *lastClaim) {
	last, err := c.read(ctx, subject)
	switch {
	case errors.Is(err, channel.ErrTampered):
		c.u.log.Warn("refusing a call whose claim was tampered with", "seq", seq, "err", err)
		return nil, messages.Refusal(messages.CodeTampered, "call %d of this session has a claim that no unit wrote (%v): it is not run", seq, err), nil
	case err != nil:
		return nil, messages.Refusal(messages.CodeOverloaded, "call %d of this session was taken already, and its claim could not be read: %v", seq, err), nil
	}
	if last.claim.State == messages.ClaimRunning {
		return nil, messages.Refusal(messages.CodeInProgress, "call %d is being run by unit %s", seq, last.claim.Unit), last
	}
	// Refused as a replay, with the answer it had: a retry by the user opens
	// it; anybody else holds ciphertext they saw already, and nothing ran.
	return &accepted{stored: last.claim.Answer}, messages.Refusal(messages.CodeReplay, "call %d of this session ran already, on unit %s", seq, last.claim.Unit), nil
}

// A unit that runs a task free of side effects renews its claim every
// claimRenew while it runs the call; another unit takes the call over when
// it has seen the same revision of the claim, without an answer, for
// claimLease on its own clock (no clock is compared with another's). A unit
// whose renewal finds its claim taken stops the task and answers with what
// the taker stores.
//
// A task not declared free of side effects has no takeover: its claim is
// final, and a call whose unit died before answering is never run again.
const (
	claimRenew = time.Second
	claimLease = 3 * time.Second
	maxStale   = 4096 // claims watched at once; beyond, the oldest are forgotten
)

// staleClaims remembers when this unit first saw each claim in progress at
// a revision. Its zero value is ready.
type staleClaims struct {
	mu   sync.Mutex
	seen map[string]staleSeen
}

type staleSeen struct {
	rev uint64
	at  time.Time
}

// expired reports whether key has been at revision rev for claimLease,
// as far as this unit has seen; it starts the watch otherwise.
func (s *staleClaims) expired(key string, rev uint64, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]staleSeen{}
	}
	e, ok := s.seen[key]
	if ok && e.rev == rev {
		if now.Sub(e.at) < claimLease {
			return false
		}
		delete(s.seen, key)
		return true
	}
	if len(s.seen) >= maxStale {
		for k, v := range s.seen {
			if now.Sub(v.at) > 4*claimLease || len(s.seen) >= maxStale {
				delete(s.seen, k)
			}
		}
	}
	s.seen[key] = staleSeen{rev: rev, at: now}
	return false
}

// wrongRevision reports whether a write failed because the subject moved
// on: a claim was there, or another was written.
func wrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// overwrite is what a unit whose write over its own claim failed does: it
// reads the claim. Another unit's valid claim means the call was taken
// over (true). Anything else stands where this unit's claim stood and is
// none of a unit's: this unit writes over it, so that its claim, and later
// its answer, are the ones kept (false, the new revision).
func (c *cluster) overwrite(ctx context.Context, a *accepted, state uint8, answer []byte) (taken bool, rev uint64, err error) {
	last, err := c.read(ctx, a.subject)
	switch {
	case err == nil && last.claim.Unit != c.u.cfg.ID:
		return true, 0, nil
	case err == nil:
		rev = last.rev // this unit's own claim, written by an earlier attempt
	case errors.Is(err, channel.ErrTampered):
		msg, gerr := c.st.calls.GetLastMsgForSubject(ctx, a.subject)
		if gerr != nil {
			return false, 0, gerr
		}
		c.u.log.Warn("a claim of this unit was written over by no unit: writing it again", "seq", a.call.Seq, "err", err)
		rev = msg.Sequence
	default:
		return false, 0, err
	}
	rev, err = c.write(ctx, a.subject, state, rev, answer, callClaimTTL)
	return false, rev, err
}

// renewClaim keeps a's claim alive until stop is called (once or more);
// stop returns when renewing has stopped, after which a.claim is the claim's
// revision and a.lost says whether another unit took the claim. Taken, it
// calls lost (to stop the task) and renews no more.
func (c *cluster) renewClaim(ctx context.Context, a *accepted, lost func()) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(claimRenew)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rev, err := c.write(ctx, a.subject, messages.ClaimRunning, a.claim, nil, callClaimTTL)
			if wrongRevision(err) {
				var taken bool
				if taken, rev, err = c.overwrite(ctx, a, messages.ClaimRunning, nil); taken {
					c.u.log.Warn("another unit took over a call this unit runs: stopping it", "seq", a.call.Seq)
					a.lost = true
					lost()
					return
				}
			}
			if err != nil {
				c.u.log.Warn("renewing a call's claim failed", "seq", a.call.Seq, "err", err)
				continue
			}
			a.claim = rev
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-stopped }) }
}

// takenFrom answers a call whose claim another unit took over from this
// one: with that unit's stored answer, or "in progress".
func (c *cluster) takenFrom(ctx context.Context, a *accepted) ([]byte, *messages.Error) {
	stored, refusal, _ := c.claimed(ctx, a.subject, a.call.Seq)
	return stored.storedAnswer(), refusal
}

func kindName(k channel.Kind) string {
	if k == channel.KindClose {
		return "close"
	}
	return "call"
}

// call serves one call: it runs the task, encrypts the answer under this
// unit's own answer key, and stores it with the claim.
func (c *cluster) call(ctx context.Context, m service.Msg) ([]byte, *messages.Error) {
	u := c.u
	a, refusal := c.accept(ctx, m, messages.VerbCall, channel.KindCall)
	if refusal != nil || a.stored != nil {
		return a.storedAnswer(), refusal
	}
	actx, cancel := context.WithTimeout(ctx, u.cfg.CallTimeout)
	stopRenewing := func() {}
	if u.cfg.SideEffectFree {
		stopRenewing = c.renewClaim(actx, a, cancel)
	}
	answer, err := u.cfg.App(actx, a.session.task, a.request)
	stopRenewing()
	cancel()
	if a.lost {
		return c.takenFrom(ctx, a)
	}
	if err != nil {
		// The error stays here: a refusal travels in the clear, and a task's
		// error may quote what the user sent.
		u.log.Warn("the task failed a call", "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "the task failed")
	}
	return c.answer(ctx, a, channel.KindCall, answer)
}

func (a *accepted) storedAnswer() []byte {
	if a == nil {
		return nil
	}
	return a.stored
}

// answer encrypts an answer, stores it with the claim so that a retry gets
// it rather than a second run, and returns it.
func (c *cluster) answer(ctx context.Context, a *accepted, kind channel.Kind, answer []byte) ([]byte, *messages.Error) {
	u := c.u
	call := a.call
	ct, err := channel.SealAnswer(a.session.keys, kind, u.cfg.ID, call.Session, call.Seq, answer)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encrypting the answer failed")
	}
	out, err := messages.Marshal(&messages.CallReply{V: messages.Version, Unit: u.cfg.ID, Ciphertext: ct})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the answer failed")
	}
	u.quotas.bytes.Charge(a.session.user, float64(len(out)), u.cfg.Now())
	_, err = c.write(ctx, a.subject, messages.ClaimAnswered, a.claim, out, callClaimTTL)
	if wrongRevision(err) {
		var taken bool
		if taken, _, err = c.overwrite(ctx, a, messages.ClaimAnswered, out); taken {
			// Another unit took the call over: its answer is the one kept.
			return c.takenFrom(ctx, a)
		}
	}
	if err != nil {
		u.log.Warn("storing an answer with its claim failed: a retry of the call will hear in_progress", "err", err)
	}
	return out, nil
}

// close closes a session for the whole cluster. It stores a sealed closed
// record durably through the manager (for every unit's table) and a closed
// mark in the calls stream (which every call checks after its claim) before
// it answers: once the user hears "closed", no unit runs a call of the
// session.
func (c *cluster) close(ctx context.Context, m service.Msg) ([]byte, *messages.Error) {
	u := c.u
	a, refusal := c.accept(ctx, m, messages.VerbClose, channel.KindClose)
	if refusal != nil || a.stored != nil {
		return a.storedAnswer(), refusal
	}
	stopRenewing := c.renewClaim(ctx, a, func() {}) // a close runs twice harmlessly
	defer stopRenewing()
	call, s := a.call, a.session
	if string(a.request) != messages.CloseMarker {
		return nil, messages.Refusal(messages.CodeMalformed, "a close carries the close marker")
	}
	token := u.token.Load()
	if token == nil {
		return nil, messages.Refusal(messages.CodeNotReady, "this unit has not joined its cluster yet")
	}
	plain, err := messages.Marshal(&messages.SessionKeys{V: messages.Version, Task: s.task, User: s.user, Expires: s.expires.UnixNano(), Closed: true})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the closed session failed")
	}
	sealed, err := channel.SealRecord(c.ck.Key, c.ck.Epoch, u.cfg.Cluster, call.Session, plain)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "sealing the closed session failed")
	}
	if refusal := c.store(ctx, &messages.SessionRecord{
		V: messages.Version, Cluster: u.cfg.Cluster, Session: call.Session, Epoch: c.ck.Epoch, Expires: s.expires.UnixNano(),
		Sealed: sealed, Closed: true, Unit: u.cfg.ID, Token: *token,
	}); refusal != nil {
		return nil, refusal
	}
	// The mark is created once, and kept as long as the session could be
	// called: a second close (or a retry) finds it there, which is as good.
	closedSubject := messages.ClosedSubject(u.cfg.Cluster, call.Session)
	if _, err := c.write(ctx, closedSubject, messages.ClaimClosed, 0, nil, time.Until(s.expires)+2*time.Minute); err != nil && !wrongRevision(err) {
		return nil, messages.Refusal(messages.CodeOverloaded, "the close could not be marked: %v", err)
	}
	u.sessions.put(call.Session, &session{task: s.task, user: s.user, expires: s.expires, closed: true}, false)
	stopRenewing() // a.claim is read from here on
	return c.answer(ctx, a, channel.KindClose, []byte(closedAnswer))
}

// closedAnswer is what a close answers.
const closedAnswer = "closed"

// fetchSession reads one session's record from the stream, for a session the
// unit has not seen yet.
func (u *Unit) fetchSession(ctx context.Context, ck *issuerclient.ClusterKey, st *streams, id []byte) bool {
	m, err := st.sessions.GetLastMsgForSubject(ctx, messages.SessionSubject(u.cfg.Cluster, id))
	if err != nil { // jetstream.ErrMsgNotFound: no such session
		return false
	}
	u.learn(ck, m.Data)
	return u.HasSession(id)
}
