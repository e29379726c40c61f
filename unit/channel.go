package unit

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/leaderread"
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
		{Name: "handshake", Subject: messages.ClusterFilter(u.cfg.Cluster, messages.VerbHandshake), Handle: func(m service.Msg) ([]byte, *messages.Error) {
			if refusal := u.notServing(); refusal != nil {
				return nil, refusal
			}
			reply, refusal := ch.handshake(ctx, m)
			u.metrics.handshake(refusal == nil)
			return reply, refusal
		}},
		{Name: "call", Subject: messages.ClusterFilter(u.cfg.Cluster, messages.VerbCall), Handle: func(m service.Msg) ([]byte, *messages.Error) {
			if refusal := u.notServing(); refusal != nil {
				return nil, refusal
			}
			return ch.call(ctx, m)
		}},
		{Name: "close", Subject: messages.ClusterFilter(u.cfg.Cluster, messages.VerbClose), Handle: func(m service.Msg) ([]byte, *messages.Error) {
			if refusal := u.notServing(); refusal != nil {
				return nil, refusal
			}
			return ch.close(ctx, m)
		}},
	} {
		if err := svc.Add(ep); err != nil {
			return fmt.Errorf("unit: %w", err)
		}
	}
	// Ready only once the server knows the subscriptions: until then a
	// handshake sent here would find no responder.
	for failures := 0; ; failures++ {
		err := svc.Flush()
		if err == nil {
			break
		}
		wait := u.retryIn(failures)
		u.log.Warn("the NATS server has not confirmed the channel's subscriptions; trying again", "err", err, "retry_in", wait)
		if !backoff.Wait(ctx, wait) {
			return nil
		}
	}
	close(up)
	<-ctx.Done()
	return nil
}

// upkeep drops expired sessions and looks at the cluster's streams, until
// ctx is done. A look that fails is retried, sooner and sooner apart up to
// RetryMax; until one succeeds, calls are refused (streams.usable).
func (u *Unit) upkeep(ctx context.Context, st *streams) {
	every := min(max(u.cfg.SessionTTL/4, 250*time.Millisecond), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	look := time.NewTimer(lookEvery)
	defer look.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n := u.sessions.sweep(u.cfg.Now()); n > 0 {
				u.log.Debug("dropped expired sessions", "sessions", n)
			}
		case <-look.C:
			if err := st.look(ctx, u.cfg.Now(), u.log); err != nil {
				if ctx.Err() != nil {
					return
				}
				wait := u.retryIn(failures)
				if failures++; failures&(failures-1) == 0 { // the 1st, 2nd, 4th, 8th… failure
					u.log.Warn("looking at the cluster's streams failed: calls are refused until a look succeeds; trying again", "err", err, "retry_in", wait, "failures", failures)
				}
				look.Reset(wait)
				continue
			}
			if failures > 0 {
				u.log.Info("looked at the cluster's streams again: calls are taken", "failures", failures)
			}
			failures = 0
			look.Reset(lookEvery)
		}
	}
}

// lookEvery is how often a unit looks at its cluster's streams (a
// variable for a test).
var lookEvery = 30 * time.Second

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
	if err := c.st.watch.usable(); err != nil { // the stream the session's record goes to
		if errors.Is(err, channel.ErrTampered) {
			return nil, messages.Refusal(messages.CodeTampered, "%v", err)
		}
		return nil, messages.Refusal(messages.CodeOverloaded, "%v: retry", err)
	}
	id := channel.SessionID(m.Data)
	if _, ok := u.sessions.get(id); ok {
		return nil, messages.Refusal(messages.CodeReplay, "this hello opened session %x already", id)
	}
	// The key agreement first: a hello whose key share does not check out
	// takes no room among the nonces remembered.
	enc, secret, err := channel.Accept(h.KEM, h.PublicKey, m.Data)
	if err != nil {
		return nil, messages.Refusal(messages.CodeUnsupportedKEM, "%v", err)
	}
	defer clear(secret)
	switch u.hellos.Check(h.Nonce, now) {
	case replay.Seen:
		return nil, messages.Refusal(messages.CodeReplay, "this hello's nonce was used before")
	case replay.Full:
		return nil, messages.Refusal(messages.CodeOverloaded, "too many recent hellos to track replays")
	}
	if !u.sessions.reserve(user, u.cfg.Quota.Sessions) {
		return nil, messages.Refusal(messages.CodeQuota, "user %s holds %d live sessions in cluster %s, as many as a user may: close one, or wait until one expires", user, u.cfg.Quota.Sessions, u.cfg.Cluster)
	}
	reply, s, refusal := c.open(ctx, pair, m.Data, id, user, *token, now, enc, secret)
	if refusal != nil {
		u.sessions.unreserve(user)
		return nil, refusal
	}
	u.holds(id, s, true)
	return reply, nil
}

// open derives a session's keys from the agreed secret and has its record
// stored.
func (c *cluster) open(ctx context.Context, pair *issuerclient.Pair, hello, id []byte, user string, token []byte, now time.Time, enc, secret []byte) ([]byte, *session, *messages.Error) {
	u := c.u
	expires := now.Add(u.cfg.SessionTTL)
	body, err := messages.Marshal(&messages.HelloReplyBody{
		V: messages.Version, Session: id, Enc: enc, Unit: u.cfg.ID, Expires: expires.UnixNano(), Chain: pair.Chain[:len(pair.Chain)-1],
	})
	if err != nil {
		return nil, nil, messages.Refusal(messages.CodeInternal, "encoding the reply failed")
	}
	tr := channel.Transcript(hello, body)
	keys, err := channel.DeriveKeys(secret, tr)
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
		if !backoff.Wait(ctx, u.retryIn(failures)) {
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
// is encrypted to the user; it must return once ctx is done (the call's
// deadline, Config.CallTimeout). An error reaches the user only as "the task
// failed" (refusals travel in the clear) and is logged by the unit: it must
// not hold secrets; put what the user should learn in the answer instead. A
// panic is contained the same way: the call fails with "the task failed",
// the panic is logged with its stack but not its value (which may quote the
// request), counted in cohort_unit_task_panics_total, and the unit goes on.
// A panic on a goroutine the App starts itself cannot be contained: it ends
// the process, as in any Go program.
type App func(ctx context.Context, call Call) ([]byte, error)

// Call is one call of a session, as the App sees it. Its fields are the
// App's to keep.
type Call struct {
	Task    string // the task the session was opened with
	User    string // who calls: the user the NATS server let publish it
	Session []byte // the session's id
	Seq     uint64 // the call's sequence number in its session
	Data    []byte // the request, decrypted
}

// echo is the demo task's App.
func (u *Unit) echo(_ context.Context, c Call) ([]byte, error) {
	return fmt.Appendf(nil, "unit %s of task %s heard: %s", u.cfg.ID, c.Task, c.Data), nil
}

// errPanicked is the error of an App that panicked.
var errPanicked = errors.New("the task panicked")

// runApp runs the App over one call, containing a panic to that call.
func (u *Unit) runApp(ctx context.Context, c Call) (answer []byte, err error) {
	start := time.Now()
	defer func() {
		u.metrics.task(time.Since(start))
		if r := recover(); r != nil {
			u.metrics.panicked()
			u.log.Error("the task panicked on a call: that call fails, the unit goes on",
				"panic", panicText(r), "user", c.User, "seq", c.Seq, "stack", stack(debug.Stack()))
			answer, err = nil, errPanicked
		}
	}()
	return u.cfg.App(ctx, c)
}

// panicText says what a panic was without quoting a value the task made,
// which may hold the request: a runtime error's message is the runtime's
// own (an index out of range, a nil dereference); any other value is named
// by its type only.
func panicText(r any) string {
	if re, ok := r.(runtime.Error); ok {
		return re.Error()
	}
	return fmt.Sprintf("a %T (its value is not logged: it may quote the request)", r)
}

// stack is a goroutine's stack trace without the argument words of its
// frames, which may be the request's bytes read as integers.
func stack(trace []byte) string {
	lines := strings.Split(string(trace), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "\t") || !strings.HasSuffix(l, ")") {
			continue
		}
		depth := 0
		for j := len(l) - 1; j >= 0; j-- {
			switch l[j] {
			case ')':
				depth++
			case '(':
				depth--
			}
			if depth == 0 {
				lines[i] = l[:j] + "(...)"
				break
			}
		}
	}
	return strings.Join(lines, "\n")
}

// accepted is a call or a close that authenticated and is this unit's to
// run, or one that ran already, whose stored answer is to be sent again.
type accepted struct {
	call    *messages.Call
	session *session
	request []byte
	subject string // the claim's
	claim   uint64 // the claim's revision, to store the answer over; 0 for a call that ran unclaimed
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
	// Nothing is written for a call while its streams cannot be trusted,
	// or were not seen at the last look.
	if err := c.st.usable(call.Session); err != nil {
		if errors.Is(err, channel.ErrTampered) {
			return nil, messages.Refusal(messages.CodeTampered, "%v", err)
		}
		return nil, messages.Refusal(messages.CodeOverloaded, "%v: retry", err)
	}
	if kind == channel.KindCall && u.cfg.SideEffectFree {
		// No claim: the call runs, and its answer is stored where no answer
		// is yet (answerFree), one durable write a call. A call sent again
		// while it runs may run twice, which the declaration makes harmless.
		return a, c.checkOpen(ctx, a)
	}
	rev, err := c.write(ctx, subject, messages.ClaimRunning, 0, nil, callClaimTTL)
	switch {
	case wrongRevision(err):
		// Claimed before: judge what is there.
		u.metrics.conflict()
		a, refusal, last := c.claimed(ctx, call.Session, subject, call.Seq)
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
	if err := c.st.trusted(call.Session); err != nil {
		u.log.Warn("refusing a call: a stream of the cluster was changed", "err", err)
		return nil, messages.Refusal(messages.CodeTampered, "%v", err)
	}
	if err := c.st.shard(call.Session).guard.check(rev, sent, now); err != nil {
		u.log.Warn("refusing a call: the calls stream looks made again", "err", err)
		return nil, messages.Refusal(messages.CodeTampered, "%v", err)
	}
	a.claim = rev
	if kind == channel.KindCall {
		if refusal := c.checkOpen(ctx, a); refusal != nil {
			return nil, refusal
		}
	}
	return a, nil
}

// checkOpen refuses a call of a session whose closed mark is in the calls
// stream: checked after the claim, it keeps a call claimed after the close
// from running.
func (c *cluster) checkOpen(ctx context.Context, a *accepted) *messages.Error {
	u, s := c.u, a.session
	_, err := c.st.shard(a.call.Session).stream.GetLastMsgForSubject(ctx, messages.ClosedSubject(u.cfg.Cluster, a.call.Session))
	switch {
	case err == nil:
		// Any message there closes the session: a mark that does not
		// authenticate fails closed.
		u.sessions.put(a.call.Session, &session{task: s.task, user: s.user, expires: s.expires, closed: true}, false)
		return messages.Refusal(messages.CodeNoSession, "session %x was closed", a.call.Session)
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return messages.Refusal(messages.CodeOverloaded, "whether the session was closed could not be read: %v", err)
	}
	return nil
}

func kindName(k channel.Kind) string {
	if k == channel.KindClose {
		return "close"
	}
	return "call"
}

// call serves one call and counts its outcome.
func (c *cluster) call(ctx context.Context, m service.Msg) ([]byte, *messages.Error) {
	start := time.Now()
	reply, refusal, outcome := c.runCall(ctx, m)
	c.u.metrics.call(outcome, time.Since(start))
	return reply, refusal
}

// runCall serves one call: it runs the task, encrypts the answer under this
// unit's own answer key, and stores it with the claim.
func (c *cluster) runCall(ctx context.Context, m service.Msg) ([]byte, *messages.Error, string) {
	u := c.u
	a, refusal := c.accept(ctx, m, messages.VerbCall, channel.KindCall)
	switch {
	case refusal != nil:
		return a.storedAnswer(), refusal, outcomeRefused
	case a.stored != nil:
		return a.stored, nil, outcomeResent
	}
	actx, cancel := context.WithTimeout(ctx, u.cfg.CallTimeout)
	answer, err := u.runApp(actx, Call{Task: a.session.task, User: a.session.user, Session: a.call.Session, Seq: a.call.Seq, Data: a.request})
	cancel()
	if errors.Is(err, errPanicked) {
		return nil, messages.Refusal(messages.CodeInternal, "the task failed"), outcomePanicked
	}
	if err != nil {
		// The error stays here: a refusal travels in the clear, and a task's
		// error may quote what the user sent.
		u.log.Warn("the task failed a call", "err", err, "user", a.session.user, "seq", a.call.Seq)
		return nil, messages.Refusal(messages.CodeInternal, "the task failed"), outcomeFailed
	}
	if u.cfg.SideEffectFree {
		return c.answerFree(ctx, a, answer)
	}
	reply, refusal := c.answer(ctx, a, channel.KindCall, answer)
	return reply, refusal, outcomeAnswered
}

func (a *accepted) storedAnswer() []byte {
	if a == nil {
		return nil
	}
	return a.stored
}

// seal encrypts an answer to the user and encodes the reply, charged to the
// user's byte quota.
func (c *cluster) seal(a *accepted, kind channel.Kind, answer []byte) ([]byte, *messages.Error) {
	u := c.u
	ct, err := channel.SealAnswer(a.session.keys, kind, u.cfg.ID, a.call.Session, a.call.Seq, answer)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encrypting the answer failed")
	}
	out, err := messages.Marshal(&messages.CallReply{V: messages.Version, Unit: u.cfg.ID, Ciphertext: ct})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the answer failed")
	}
	u.quotas.bytes.Charge(a.session.user, float64(len(out)), u.cfg.Now())
	return out, nil
}

// answer encrypts an answer, stores it with the claim so that a retry gets
// it rather than a second run, and returns it.
func (c *cluster) answer(ctx context.Context, a *accepted, kind channel.Kind, answer []byte) ([]byte, *messages.Error) {
	u := c.u
	out, refusal := c.seal(a, kind, answer)
	if refusal != nil {
		return nil, refusal
	}
	_, err := c.write(ctx, a.subject, messages.ClaimAnswered, a.claim, out, callClaimTTL)
	if wrongRevision(err) {
		var taken bool
		if taken, _, err = c.overwrite(ctx, a, messages.ClaimAnswered, out); taken {
			// Another unit took the call over: its answer is the one kept.
			return c.takenFrom(ctx, a)
		}
	}
	if err != nil {
		u.log.Warn("storing an answer with its claim failed: a retry of the call will hear in_progress", "err", err)
	} else {
		c.stored(a)
	}
	return out, nil
}

// stored tells Config.OnAnswer that a's answer is stored.
func (c *cluster) stored(a *accepted) {
	if f := c.u.cfg.OnAnswer; f != nil && a.call != nil {
		f(a.call.Session, a.call.Seq)
	}
}

// answerFree stores the answer of a call that ran unclaimed (a task free of
// side effects) where the call's subject holds nothing yet, the call's one
// durable write, and returns it. The first answer stored is the call's: if
// another unit's is there (the call sent again, run twice), that one is
// returned in place of this one, so that every retry hears the same. A
// claim still running, of a unit of a build that claims first, is taken
// over once this unit has seen it unchanged for claimLease (its unit died),
// and heard as "in progress" until then.
func (c *cluster) answerFree(ctx context.Context, a *accepted, answer []byte) ([]byte, *messages.Error, string) {
	u := c.u
	out, refusal := c.seal(a, channel.KindCall, answer)
	if refusal != nil {
		return nil, refusal, outcomeFailed
	}
	rev, err := c.write(ctx, a.subject, messages.ClaimAnswered, 0, out, callClaimTTL)
	switch {
	case err == nil:
		if err := c.st.shard(a.call.Session).guard.check(rev, time.Unix(0, a.call.Time), u.cfg.Now()); err != nil {
			// A retry may run the call again, which the task allows.
			u.log.Warn("the calls stream looks made again", "err", err)
		}
		c.stored(a)
		return out, nil, outcomeAnswered
	case !wrongRevision(err):
		u.log.Warn("storing an answer failed: a retry of the call runs it again", "err", err)
		return out, nil, outcomeAnswered
	}
	// Something is there: an answer (this unit's or another's) is the
	// call's; anything else is written over once it may be.
	var over uint64
	last, err := c.read(ctx, a.call.Session, a.subject)
	switch {
	case errors.Is(err, channel.ErrTampered):
		u.log.Warn("a call's subject holds what no unit wrote: writing its answer over it", "seq", a.call.Seq, "err", err)
		over = last.rev
	case err != nil:
		return nil, messages.Refusal(messages.CodeOverloaded, "call %d of this session was answered already, and its answer could not be read: %v", a.call.Seq, err), outcomeRefused
	case last.claim.State == messages.ClaimRunning && (last.claim.Unit == u.cfg.ID || u.stale.expired(a.subject, last.rev, u.cfg.Now())):
		u.log.Info("answering a call whose claim no unit renews", "seq", a.call.Seq, "claimed_by", last.claim.Unit)
		over = last.rev
	default:
		stored, refusal := judge(last, a.call.Seq)
		return stored.storedAnswer(), refusal, outcomeResent
	}
	if _, err := c.write(ctx, a.subject, messages.ClaimAnswered, over, out, callClaimTTL); err != nil {
		stored, refusal, _ := c.claimed(ctx, a.call.Session, a.subject, a.call.Seq)
		return stored.storedAnswer(), refusal, outcomeResent
	}
	c.stored(a)
	return out, nil, outcomeAnswered
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
	subject := messages.SessionSubject(u.cfg.Cluster, id)
	m, err := st.sessions.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// A replica may lag the record its leader acknowledged a moment
		// ago: a miss counts only once the leader misses too.
		leader, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
		m, err = leaderread.Last(leader, u.cfg.Conn, st.sessions.CachedInfo().Config.Name, subject)
		cancel()
	}
	if err != nil { // jetstream.ErrMsgNotFound: no such session
		return false
	}
	u.learn(ck, m.Data)
	return u.HasSession(id)
}
