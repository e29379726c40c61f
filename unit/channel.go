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
	"github.com/cohort-dev/cohort/replay"
	"github.com/cohort-dev/cohort/service"
)

const (
	defaultSessionTTL = time.Hour
	maxClockSkew      = 2 * time.Minute
)

// serveChannel answers the cluster's handshakes, calls and closes and
// follows its session records until ctx is done. It closes up once the
// server knows its subscriptions.
func (u *Unit) serveChannel(ctx context.Context, ck *issuerclient.ClusterKey, up chan<- struct{}) error {
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
	close(up)
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
