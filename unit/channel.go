package unit

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

const (
	defaultSessionTTL = time.Hour
	maxClockSkew      = 2 * time.Minute
)

// session is what a unit knows of a session: its keys, task and expiry, or
// that it was closed.
type session struct {
	keys    *channel.Keys
	task    string
	expires time.Time
	closed  bool
}

// sessionTable holds the sessions of the unit's cluster, keyed by id.
type sessionTable struct {
	mu sync.RWMutex
	m  map[[messages.SessionIDSize]byte]*session
}

func (t *sessionTable) get(id []byte) (*session, bool) {
	var k [messages.SessionIDSize]byte
	copy(k[:], id)
	t.mu.RLock()
	defer t.mu.RUnlock()
	s, ok := t.m[k]
	return s, ok
}

// put records a session and reports whether it was new.
func (t *sessionTable) put(id []byte, s *session) bool {
	var k [messages.SessionIDSize]byte
	copy(k[:], id)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[[messages.SessionIDSize]byte]*session)
	}
	old, had := t.m[k]
	if had && old.closed && !s.closed {
		return false // closed is final: a replayed open record cannot reopen a session
	}
	t.m[k] = s
	return !had
}

// holds records a session, and tells the observer when it is new.
func (u *Unit) holds(id []byte, s *session) {
	if u.sessions.put(id, s) && u.cfg.OnSession != nil {
		u.cfg.OnSession(id)
	}
}

// HasSession reports whether the unit holds a live session: known, not
// expired, not closed.
func (u *Unit) HasSession(id []byte) bool {
	s, ok := u.sessions.get(id)
	return ok && !s.closed && u.cfg.Now().Before(s.expires)
}

// serveChannel answers the cluster's handshakes and follows its session
// records until ctx is done.
func (u *Unit) serveChannel(ctx context.Context, ck *issuerclient.ClusterKey) error {
	sub, err := u.cfg.Conn.QueueSubscribe(messages.HandshakeSubject(u.cfg.Cluster), messages.UnitsQueuePrefix+u.cfg.Cluster, u.pool.MsgHandler(func(data []byte) ([]byte, *messages.Error) {
		return u.handshake(ctx, ck, data)
	}))
	if err != nil {
		return fmt.Errorf("unit: subscribe to handshakes: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	var follow sync.WaitGroup
	defer follow.Wait()
	follow.Go(func() {
		if err := u.followSessions(ctx, ck); err != nil {
			u.log.Error("following session records", "err", err)
		}
	})
	calls, err := u.callsBucket(ctx)
	if err != nil {
		return nil // ctx is done
	}
	csub, err := u.cfg.Conn.QueueSubscribe(messages.CallSubject(u.cfg.Cluster), messages.UnitsQueuePrefix+u.cfg.Cluster, u.pool.MsgHandler(func(data []byte) ([]byte, *messages.Error) {
		return u.call(ctx, ck, calls, data)
	}))
	if err != nil {
		return fmt.Errorf("unit: subscribe to calls: %w", err)
	}
	defer func() { _ = csub.Unsubscribe() }()
	xsub, err := u.cfg.Conn.QueueSubscribe(messages.CloseSubject(u.cfg.Cluster), messages.UnitsQueuePrefix+u.cfg.Cluster, u.pool.MsgHandler(func(data []byte) ([]byte, *messages.Error) {
		return u.close(ctx, ck, calls, data)
	}))
	if err != nil {
		return fmt.Errorf("unit: subscribe to closes: %w", err)
	}
	defer func() { _ = xsub.Unsubscribe() }()
	if err := u.cfg.Conn.Flush(); err != nil {
		u.log.Warn("flushing the channel's subscriptions", "err", err)
	}
	<-ctx.Done()
	return nil
}

// handshake answers a user's hello: it agrees the session keys, seals the
// session record under the cluster key, has the manager store it, and only
// then answers.
func (u *Unit) handshake(ctx context.Context, ck *issuerclient.ClusterKey, data []byte) ([]byte, *messages.Error) {
	var h messages.Hello
	if err := messages.Decode(data, messages.MaxHello, &h); err != nil {
		return nil, messages.Refusal(messages.CodeMalformed, "hello: %v", err)
	}
	pair := u.pair.Load()
	switch {
	case h.Cluster != u.cfg.Cluster:
		return nil, messages.Refusal(messages.CodeWrongCluster, "this unit serves cluster %q, the hello names %q", u.cfg.Cluster, h.Cluster)
	case h.Task != "" && h.Task != pair.Task:
		return nil, messages.Refusal(messages.CodeWrongTask, "this cluster runs task %q, the hello expects %q", pair.Task, h.Task)
	}
	now := u.cfg.Now()
	if skew := now.Sub(time.Unix(0, h.Time)); skew > maxClockSkew || skew < -maxClockSkew {
		return nil, messages.Refusal(messages.CodeStale, "hello time is %v off", skew.Round(time.Millisecond))
	}
	token := u.token.Load()
	if token == nil {
		return nil, messages.Refusal(messages.CodeNotReady, "this unit has not joined its cluster yet")
	}
	enc, secret, err := channel.Accept(h.KEM, h.PublicKey, data)
	if err != nil {
		return nil, messages.Refusal(messages.CodeUnsupportedKEM, "%v", err)
	}
	id, err := channel.NewSessionID(rand.Reader)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "drawing a session id failed")
	}
	expires := now.Add(u.cfg.SessionTTL)
	body, err := messages.Marshal(&messages.HelloReplyBody{
		V: messages.Version, Session: id, Enc: enc, Unit: u.cfg.ID, Expires: expires.UnixNano(), Chain: pair.Chain[:len(pair.Chain)-1],
	})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the reply failed")
	}
	tr := channel.Transcript(data, body)
	keys, err := channel.DeriveKeys(secret, tr)
	clear(secret)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "deriving the keys failed")
	}
	sig, err := ecdsa.SignASN1(rand.Reader, pair.Key, tr[:])
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "signing the transcript failed")
	}
	plain, err := messages.Marshal(&messages.SessionKeys{V: messages.Version, C2S: keys.C2S, S2C: keys.S2C, Task: pair.Task, Expires: expires.UnixNano()})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the session failed")
	}
	sealed, err := channel.SealRecord(ck.Key, ck.Epoch, u.cfg.Cluster, id, plain)
	clear(plain)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "sealing the session failed")
	}
	rec, err := messages.Marshal(&messages.SessionRecord{
		V: messages.Version, Cluster: u.cfg.Cluster, Session: id, Epoch: ck.Epoch, Expires: expires.UnixNano(),
		Sealed: sealed, Unit: u.cfg.ID, Token: *token,
	})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the session record failed")
	}
	ackData, err := service.Request(ctx, u.cfg.Conn, messages.SubjectSession, rec, u.cfg.Timeout)
	if err != nil {
		return nil, messages.Refusal(messages.CodeOverloaded, "the session could not be stored durably: %v", err)
	}
	var ack messages.SessionAck
	if err := messages.Decode(ackData, messages.MaxSessionAck, &ack); err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "the manager's acknowledgement does not decode")
	}
	u.holds(id, &session{keys: keys, task: pair.Task, expires: expires})
	reply, err := messages.Marshal(&messages.HelloReply{V: messages.Version, Body: body, Signature: sig})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the reply failed")
	}
	return reply, nil
}

// followSessions reads the cluster's session records from the stream, from
// the oldest kept, and opens each under the cluster key: a unit that joins
// later holds the sessions opened before.
func (u *Unit) followSessions(ctx context.Context, ck *issuerclient.ClusterKey) error {
	var cons jetstream.Consumer
	var err error
	for failures := 0; ; failures++ {
		cons, err = u.js.OrderedConsumer(ctx, messages.SessionsStream, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{messages.SessionsOfCluster(u.cfg.Cluster)},
		})
		if err == nil {
			break
		}
		u.log.Debug("following session records; retrying", "err", err) // the manager creates the stream
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
// not this cluster's and is ignored.
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
	err = messages.Decode(plain, 256, &k)
	clear(plain)
	if err != nil {
		u.log.Warn("a session record does not decode", "err", err)
		return
	}
	expires := time.Unix(0, k.Expires)
	if k.Closed {
		u.sessions.put(r.Session, &session{task: k.Task, expires: expires, closed: true})
		return
	}
	if !u.cfg.Now().Before(expires) {
		return
	}
	u.holds(r.Session, &session{keys: &channel.Keys{C2S: k.C2S, S2C: k.S2C}, task: k.Task, expires: expires})
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
	claim   uint64 // the claim's revision, to store the answer under
	lost    bool   // another unit took the claim over while this one ran it
	stored  []byte // an answer given before: send it again, run nothing
}

// accept takes a call or a close off the wire: it finds the session
// (fetching its record from the stream if this unit has not seen it),
// authenticates the message as the kind expected, checks its time, and
// claims it in the calls bucket. A message claimed before is never run
// again: its stored answer is returned, or, while another unit still runs
// it, "in progress". A call claimed after the session's close is refused.
func (u *Unit) accept(ctx context.Context, ck *issuerclient.ClusterKey, calls jetstream.KeyValue, kind channel.Kind, data []byte) (*accepted, *messages.Error) {
	var c messages.Call
	if err := messages.Decode(data, messages.MaxCall, &c); err != nil {
		return nil, messages.Refusal(messages.CodeMalformed, "call: %v", err)
	}
	s, ok := u.sessions.get(c.Session)
	if !ok && u.fetchSession(ctx, ck, c.Session) {
		s, ok = u.sessions.get(c.Session)
	}
	now := u.cfg.Now()
	switch {
	case !ok:
		return nil, messages.Refusal(messages.CodeNoSession, "no session %x in cluster %s", c.Session, u.cfg.Cluster)
	case s.closed:
		return nil, messages.Refusal(messages.CodeNoSession, "session %x was closed", c.Session)
	case !now.Before(s.expires):
		return nil, messages.Refusal(messages.CodeNoSession, "session %x expired at %s", c.Session, s.expires.UTC().Format(time.RFC3339))
	}
	request, err := channel.OpenCall(s.keys, kind, c.Session, c.Seq, c.Time, c.Ciphertext)
	if err != nil {
		return nil, messages.Refusal(messages.CodeAuth, "the message does not authenticate under the session's key as a %s", kindName(kind))
	}
	if skew := now.Sub(time.Unix(0, c.Time)); skew > maxClockSkew || skew < -maxClockSkew {
		return nil, messages.Refusal(messages.CodeStale, "the call was sent %v from now, more than %v", skew.Round(time.Millisecond), maxClockSkew)
	}
	key := callKey(u.cfg.Cluster, c.Session, c.Seq)
	mine, _ := messages.Marshal(&messages.CallClaim{V: messages.Version, Unit: u.cfg.ID})
	rev, err := calls.Create(ctx, key, mine)
	if errors.Is(err, jetstream.ErrKeyExists) {
		var e jetstream.KeyValueEntry
		var refusal *messages.Error
		var a *accepted
		if a, refusal, e = u.claimed(ctx, calls, key, c.Seq); e == nil || !u.stale.expired(key, e.Revision(), now) {
			return a, refusal
		}
		// The unit that claimed the call stopped renewing its claim before
		// it answered: it died. Take the call over, once: the revision
		// decides between units that try at the same time.
		if rev, err = calls.Update(ctx, key, mine, e.Revision()); err != nil {
			return nil, refusal
		}
		u.log.Info("took over a call whose unit stopped renewing its claim", "seq", c.Seq)
	} else if err != nil {
		return nil, messages.Refusal(messages.CodeOverloaded, "the call could not be claimed: %v", err)
	}
	if kind == channel.KindCall {
		if _, err := calls.Get(ctx, closedKey(u.cfg.Cluster, c.Session)); err == nil {
			u.sessions.put(c.Session, &session{task: s.task, expires: s.expires, closed: true})
			return nil, messages.Refusal(messages.CodeNoSession, "session %x was closed", c.Session)
		}
	}
	return &accepted{call: &c, session: s, request: request, claim: rev}, nil
}

// claimed answers a message another unit, or this one, claimed before. A
// claim without an answer comes back too, for accept to judge its age.
func (u *Unit) claimed(ctx context.Context, calls jetstream.KeyValue, key string, seq uint64) (*accepted, *messages.Error, jetstream.KeyValueEntry) {
	e, err := calls.Get(ctx, key)
	if err != nil {
		return nil, messages.Refusal(messages.CodeReplay, "call %d of this session was taken already", seq), nil
	}
	var cl messages.CallClaim
	if err := messages.Decode(e.Value(), messages.MaxCallClaim, &cl); err != nil {
		return nil, messages.Refusal(messages.CodeReplay, "call %d of this session was taken already", seq), nil
	}
	if len(cl.Answer) == 0 {
		return nil, messages.Refusal(messages.CodeInProgress, "call %d is being run by unit %s", seq, cl.Unit), e
	}
	// Refused as a replay, with the answer it had: a retry by the user opens
	// it; anybody else holds ciphertext they saw already, and nothing ran.
	return &accepted{stored: cl.Answer}, messages.Refusal(messages.CodeReplay, "call %d of this session ran already, on unit %s", seq, cl.Unit), nil
}

// A unit renews its claim on a call every claimRenew while it runs the
// call; another unit takes the call over when it has seen the same revision
// of the claim, without an answer, for claimLease on its own clock (no
// clock is compared with another's). A unit whose renewal finds its claim
// taken stops the task and answers with what the taker stores.
//
// The guarantee is at most once while JetStream takes writes. A unit that
// cannot renew for claimLease (its link to NATS, or a stream's leader, gone
// that long) while its task still runs may see the call run a second time
// elsewhere: the task's context is cancelled when it learns of it.
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

// wrongRevision reports whether a write failed because the key moved on:
// another unit took the claim.
func wrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}

// renewClaim keeps a's claim alive until stop is called (once or more);
// stop returns when renewing has stopped, after which a.claim is the claim's revision and
// a.lost says whether another unit took the claim. Taken, it calls lost
// (to stop the task) and renews no more.
func (u *Unit) renewClaim(ctx context.Context, calls jetstream.KeyValue, a *accepted, lost func()) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	key := callKey(u.cfg.Cluster, a.call.Session, a.call.Seq)
	mine, _ := messages.Marshal(&messages.CallClaim{V: messages.Version, Unit: u.cfg.ID})
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
				rev, err := calls.Update(ctx, key, mine, a.claim)
				switch {
				case err == nil:
					a.claim = rev
				case wrongRevision(err):
					u.log.Warn("another unit took over a call this unit runs: stopping it", "seq", a.call.Seq)
					a.lost = true
					lost()
					return
				default:
					u.log.Warn("renewing a call's claim failed", "seq", a.call.Seq, "err", err)
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-stopped }) }
}

// takenFrom answers a call whose claim another unit took over from this
// one: with that unit's stored answer, or "in progress".
func (u *Unit) takenFrom(ctx context.Context, calls jetstream.KeyValue, a *accepted) ([]byte, *messages.Error) {
	stored, refusal, _ := u.claimed(ctx, calls, callKey(u.cfg.Cluster, a.call.Session, a.call.Seq), a.call.Seq)
	return stored.storedAnswer(), refusal
}

// callKey is a call's key in the calls bucket. Keys begin with the cluster,
// so that NATS permissions confine a unit to its own cluster's claims.
func callKey(cluster string, session []byte, seq uint64) string {
	return fmt.Sprintf("%s.%x.%d", cluster, session, seq)
}

// closedKey marks a closed session in the calls bucket.
func closedKey(cluster string, session []byte) string {
	return fmt.Sprintf("%s.%x.closed", cluster, session)
}

func kindName(k channel.Kind) string {
	if k == channel.KindClose {
		return "close"
	}
	return "call"
}

// call serves one call: it runs the task, encrypts the answer under this
// unit's own answer key, and stores it with the claim.
func (u *Unit) call(ctx context.Context, ck *issuerclient.ClusterKey, calls jetstream.KeyValue, data []byte) ([]byte, *messages.Error) {
	a, refusal := u.accept(ctx, ck, calls, channel.KindCall, data)
	if refusal != nil || a.stored != nil {
		return a.storedAnswer(), refusal
	}
	actx, cancel := context.WithTimeout(ctx, u.cfg.CallTimeout)
	stopRenewing := u.renewClaim(actx, calls, a, cancel)
	answer, err := u.cfg.App(actx, a.session.task, a.request)
	stopRenewing()
	cancel()
	if a.lost {
		return u.takenFrom(ctx, calls, a)
	}
	if err != nil {
		// The error stays here: a refusal travels in the clear, and a task's
		// error may quote what the user sent.
		u.log.Warn("the task failed a call", "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "the task failed")
	}
	return u.answer(ctx, calls, a, channel.KindCall, answer)
}

func (a *accepted) storedAnswer() []byte {
	if a == nil {
		return nil
	}
	return a.stored
}

// answer encrypts an answer, stores it with the claim so that a retry gets
// it rather than a second run, and returns it.
func (u *Unit) answer(ctx context.Context, calls jetstream.KeyValue, a *accepted, kind channel.Kind, answer []byte) ([]byte, *messages.Error) {
	c := a.call
	ct, err := channel.SealAnswer(a.session.keys, kind, u.cfg.ID, c.Session, c.Seq, answer)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encrypting the answer failed")
	}
	out, err := messages.Marshal(&messages.CallReply{V: messages.Version, Unit: u.cfg.ID, Ciphertext: ct})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the answer failed")
	}
	done, _ := messages.Marshal(&messages.CallClaim{V: messages.Version, Unit: u.cfg.ID, Answer: out})
	if _, err := calls.Update(ctx, callKey(u.cfg.Cluster, c.Session, c.Seq), done, a.claim); wrongRevision(err) {
		// Another unit took the call over: its answer is the one kept.
		return u.takenFrom(ctx, calls, a)
	} else if err != nil {
		u.log.Warn("storing an answer with its claim failed: a retry of the call will hear in_progress", "err", err)
	}
	return out, nil
}

// close closes a session for the whole cluster. It stores a sealed closed
// record durably through the manager (for every unit's table) and a closed
// mark in the calls bucket (which every call checks after its claim) before
// it answers: once the user hears "closed", no unit runs a call of the
// session.
func (u *Unit) close(ctx context.Context, ck *issuerclient.ClusterKey, calls jetstream.KeyValue, data []byte) ([]byte, *messages.Error) {
	a, refusal := u.accept(ctx, ck, calls, channel.KindClose, data)
	if refusal != nil || a.stored != nil {
		return a.storedAnswer(), refusal
	}
	stopRenewing := u.renewClaim(ctx, calls, a, func() {}) // a close runs twice harmlessly
	defer stopRenewing()
	c, s := a.call, a.session
	if string(a.request) != messages.CloseMarker {
		return nil, messages.Refusal(messages.CodeMalformed, "a close carries the close marker")
	}
	token := u.token.Load()
	if token == nil {
		return nil, messages.Refusal(messages.CodeNotReady, "this unit has not joined its cluster yet")
	}
	plain, err := messages.Marshal(&messages.SessionKeys{V: messages.Version, Task: s.task, Expires: s.expires.UnixNano(), Closed: true})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the closed session failed")
	}
	sealed, err := channel.SealRecord(ck.Key, ck.Epoch, u.cfg.Cluster, c.Session, plain)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "sealing the closed session failed")
	}
	rec, err := messages.Marshal(&messages.SessionRecord{
		V: messages.Version, Cluster: u.cfg.Cluster, Session: c.Session, Epoch: ck.Epoch, Expires: s.expires.UnixNano(),
		Sealed: sealed, Closed: true, Unit: u.cfg.ID, Token: *token,
	})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the closed record failed")
	}
	if _, err := service.Request(ctx, u.cfg.Conn, messages.SubjectSession, rec, u.cfg.Timeout); err != nil {
		return nil, messages.Refusal(messages.CodeOverloaded, "the close could not be stored durably: %v", err)
	}
	if _, err := calls.Put(ctx, closedKey(u.cfg.Cluster, c.Session), []byte(u.cfg.ID)); err != nil {
		return nil, messages.Refusal(messages.CodeOverloaded, "the close could not be marked: %v", err)
	}
	u.sessions.put(c.Session, &session{task: s.task, expires: s.expires, closed: true})
	stopRenewing() // a.claim is read from here on
	return u.answer(ctx, calls, a, channel.KindClose, []byte(closedAnswer))
}

// closedAnswer is what a close answers.
const closedAnswer = "closed"

// fetchSession reads one session's record from the stream, for a session the
// unit has not seen yet.
func (u *Unit) fetchSession(ctx context.Context, ck *issuerclient.ClusterKey, id []byte) bool {
	st, err := u.js.Stream(ctx, messages.SessionsStream)
	if err != nil {
		return false
	}
	m, err := st.GetLastMsgForSubject(ctx, messages.SessionSubject(u.cfg.Cluster, id))
	if err != nil { // jetstream.ErrMsgNotFound: no such session
		return false
	}
	u.learn(ck, m.Data)
	return u.HasSession(id)
}

// callsBucket opens the calls bucket, which the manager creates.
func (u *Unit) callsBucket(ctx context.Context) (jetstream.KeyValue, error) {
	for failures := 0; ; failures++ {
		kv, err := u.js.KeyValue(ctx, messages.CallsBucket)
		if err == nil {
			return kv, nil
		}
		if !sleep(ctx, Backoff(failures, u.cfg.RetryMin, u.cfg.RetryMax)) {
			return nil, ctx.Err()
		}
	}
}
