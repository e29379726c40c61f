package unit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/messages"
)

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

// read reads and checks the claim at subject, of session. A message that is not a
// unit's claim standing where it was written is an error wrapping
// channel.ErrTampered, returned with the message's revision only (for a
// unit to write over it).
func (c *cluster) read(ctx context.Context, session []byte, subject string) (*lastClaim, error) {
	msg, err := c.st.shard(session).stream.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		return nil, err
	}
	var claim messages.CallClaim
	at := &lastClaim{rev: msg.Sequence}
	if err := messages.Decode(msg.Data, messages.MaxCallClaim, &claim); err != nil {
		return at, fmt.Errorf("%w: the claim does not decode: %v", channel.ErrTampered, err)
	}
	var prev uint64
	h := msg.Header.Get(jetstream.ExpectedLastSubjSeqHeader)
	if h != "" {
		if prev, err = strconv.ParseUint(h, 10, 64); err != nil {
			return at, fmt.Errorf("%w: the claim's stored revision %q", channel.ErrTampered, h)
		}
	}
	if err := channel.CheckClaim(c.claimKey, subject, &claim, prev, h != ""); err != nil {
		return at, err
	}
	if claim.State == messages.ClaimClosed {
		return at, fmt.Errorf("%w: a closed mark on a call's subject", channel.ErrTampered)
	}
	return &lastClaim{claim: claim, rev: msg.Sequence}, nil
}

// claimed answers a message claimed before. The last claim comes back when
// it is another unit's, still running, for accept to judge its age.
func (c *cluster) claimed(ctx context.Context, session []byte, subject string, seq uint64) (*accepted, *messages.Error, *lastClaim) {
	last, err := c.read(ctx, session, subject)
	switch {
	case errors.Is(err, channel.ErrTampered):
		c.u.log.Warn("refusing a call whose claim was tampered with", "seq", seq, "err", err)
		return nil, messages.Refusal(messages.CodeTampered, "call %d of this session has a claim that no unit wrote (%v): it is not run", seq, err), nil
	case err != nil:
		return nil, messages.Refusal(messages.CodeOverloaded, "call %d of this session was taken already, and its claim could not be read: %v", seq, err), nil
	}
	a, refusal := judge(last, seq)
	if a == nil {
		return nil, refusal, last
	}
	return a, refusal, nil
}

// judge answers a message whose valid claim is last: "in progress" while it
// runs; once answered, refused as a replay with the answer it had (a retry
// by the user opens it; anybody else holds ciphertext they saw already, and
// nothing ran).
func judge(last *lastClaim, seq uint64) (*accepted, *messages.Error) {
	if last.claim.State == messages.ClaimRunning {
		return nil, messages.Refusal(messages.CodeInProgress, "call %d is being run by unit %s", seq, last.claim.Unit)
	}
	return &accepted{stored: last.claim.Answer}, messages.Refusal(messages.CodeReplay, "call %d of this session ran already, on unit %s", seq, last.claim.Unit)
}

// A call of a task free of side effects is not claimed: it runs, and its
// answer is stored where nothing is yet (answerFree). A close is claimed,
// and its unit renews the claim every claimRenew while it closes; a claim
// that stands without an answer (a close's, or a call's by a unit of a
// build that claimed such calls first) is taken over when this unit has
// seen the same revision of it for claimLease on its own clock (no clock is
// compared with another's): its unit died. A unit whose renewal finds its
// claim taken stops, and answers with what the taker stores.
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
	last, err := c.read(ctx, a.call.Session, a.subject)
	switch {
	case err == nil && last.claim.Unit != c.u.cfg.ID:
		return true, 0, nil
	case err == nil:
		rev = last.rev // this unit's own claim, written by an earlier attempt
	case errors.Is(err, channel.ErrTampered):
		c.u.log.Warn("a claim of this unit was written over by no unit: writing it again", "seq", a.call.Seq, "err", err)
		rev = last.rev
	default:
		return false, 0, err
	}
	rev, err = c.write(ctx, a.subject, state, rev, answer, callClaimTTL)
	return false, rev, err
}

// renewClaim keeps a's claim alive until stop is called (once or more);
// stop returns when renewing has stopped, after which a.claim is the claim's
// revision. Taken by another unit, it calls lost and renews no more.
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
					c.u.log.Warn("another unit took over a claim of this unit", "seq", a.call.Seq)
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
	stored, refusal, _ := c.claimed(ctx, a.call.Session, a.subject, a.call.Seq)
	return stored.storedAnswer(), refusal
}
