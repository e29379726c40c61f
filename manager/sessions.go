package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

// Session records: how long they may live, and how long the manager waits
// for JetStream to store one. The store limit is shorter than a unit's wait
// for the manager (unit.Config.StoreTimeout), so that a unit hears why.
const (
	MaxSessionTTL     = 24 * time.Hour
	sessionStoreLimit = 2 * time.Second
)

// serveSession stores a session record a member hands in, and confirms only
// once JetStream has acknowledged it. The manager cannot read the record: it
// checks the shape, the sender's membership (on its own subject) and the
// expiry, and keeps it under the session's subject in the cluster's
// sessions stream, which the cluster's units made. An open record is
// created only where the session has none: the session id derives from the
// user's hello, so a hello sent again finds its record there and opens
// nothing. The message id is the record's hash, so that a unit's retry of
// the same record is stored once.
func (m *Manager) serveSession(ctx context.Context, req service.Msg) ([]byte, *messages.Error) {
	var r messages.SessionRecord
	if err := messages.Decode(req.Data, messages.MaxSessionRecord, &r); err != nil {
		return nil, service.DecodeRefusal("session record", err)
	}
	if r.Token == nil {
		return nil, messages.Refusal(messages.CodeUnknownUnit, "a session record must come from a member: unit and token")
	}
	if refusal := sender(req, messages.VerbSession, r.Cluster, r.Unit); refusal != nil {
		return nil, refusal
	}
	if _, _, ok := m.table.Lookup(r.Cluster, r.Unit, r.Token); !ok {
		return nil, messages.Refusal(messages.CodeUnknownUnit, "no member %s of cluster %s with that token", r.Unit, r.Cluster)
	}
	now := m.cfg.Now()
	if exp := time.Unix(0, r.Expires); !exp.After(now) || exp.Sub(now) > MaxSessionTTL {
		return nil, messages.Refusal(messages.CodeStale, "the session expires at %s: want within %v from now", exp.UTC().Format(time.RFC3339), MaxSessionTTL)
	}
	unitID := r.Unit
	r.Unit, r.Token = "", nil
	stored, err := messages.Marshal(&r)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the record failed")
	}
	sum := sha256.Sum256(stored)
	// The record lives until its session expires, and a little past it so
	// that units refuse the session as expired rather than unknown.
	opts := []jetstream.PublishOpt{
		jetstream.WithMsgID(hex.EncodeToString(sum[:16])),
		jetstream.WithMsgTTL(time.Until(time.Unix(0, r.Expires)) + time.Minute),
	}
	if !r.Closed {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(0))
	}
	ctx, cancel := context.WithTimeout(ctx, sessionStoreLimit)
	defer cancel()
	ack, err := m.js.Publish(ctx, messages.SessionSubject(r.Cluster, r.Session), stored, opts...)
	if err != nil {
		var apiErr *jetstream.APIError
		switch {
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
			return nil, messages.Refusal(messages.CodeReplay, "session %x has a record already: a hello sent again opens no session", r.Session)
		case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
			return nil, messages.Refusal(messages.CodeOverloaded, "cluster %s has no sessions stream yet (its units make it)", r.Cluster)
		}
		m.log.Warn("storing a session record failed", "cluster", r.Cluster, "err", err)
		return nil, messages.Refusal(messages.CodeOverloaded, "the session could not be stored: %v", err)
	}
	if !ack.Duplicate {
		kind := events.SessionOpened
		if r.Closed {
			kind = events.SessionClosed
		}
		m.events.Publish(events.Event{Kind: kind, Cluster: r.Cluster, Unit: unitID})
	}
	return encode(&messages.SessionAck{V: messages.Version, Sequence: ack.Sequence})
}
