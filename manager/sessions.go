package manager

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

// Session records: limits of the stream that keeps them.
const (
	MaxSessionTTL     = 24 * time.Hour
	sessionsMaxBytes  = 1 << 30
	duplicatesWindow  = 2 * time.Minute
	sessionStoreLimit = 5 * time.Second
	callClaimTTL      = 5 * time.Minute
)

// ensureSessions creates the stream of session records, or updates its
// limits. A full stream refuses new records rather than drop acknowledged
// ones.
func (m *Manager) ensureSessions(ctx context.Context) error {
	_, err := m.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              messages.SessionsStream,
		Description:       "cohort session records: session keys sealed under their cluster's key, one subject a session",
		Subjects:          []string{messages.SubjectSessionsPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardNew,
		MaxAge:            MaxSessionTTL,
		MaxBytes:          sessionsMaxBytes,
		MaxMsgSize:        messages.MaxSessionRecord,
		MaxMsgsPerSubject: 1,
		Duplicates:        duplicatesWindow,
		AllowMsgTTL:       true, // each record lives as long as its session
		AllowDirect:       true, // units read a record by subject, which NATS permissions confine to their cluster
		Storage:           jetstream.FileStorage,
		Replicas:          m.cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("manager: stream %s: %w", messages.SessionsStream, err)
	}
	// Claims on calls: a call is run by the unit that creates its key.
	// Claims outlive the window in which a call's time is accepted, so a
	// replay is refused by its claim or by its age. The bucket is made as
	// nats.go makes a key-value bucket, but with purges and roll-ups denied:
	// a unit may write its own cluster's keys, and a roll-up would let it
	// erase every cluster's.
	_, err = m.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              "KV_" + messages.CallsBucket,
		Description:       "cohort call claims: which unit took each call of each session and its sealed answer, for five minutes",
		Subjects:          []string{"$KV." + messages.CallsBucket + ".>"},
		MaxMsgsPerSubject: 1,
		MaxAge:            callClaimTTL,
		MaxMsgSize:        messages.MaxCallClaim,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		MaxConsumers:      -1,
		Storage:           jetstream.FileStorage,
		Replicas:          m.cfg.Replicas,
		Discard:           jetstream.DiscardNew,
		Duplicates:        duplicatesWindow,
		AllowDirect:       true,
		DenyDelete:        true,
		DenyPurge:         true,
		AllowRollup:       false,
	})
	if err != nil {
		return fmt.Errorf("manager: bucket %s: %w", messages.CallsBucket, err)
	}
	return nil
}

// serveSession stores a session record a member hands in, and confirms only
// once JetStream has acknowledged it. The manager cannot read the record: it
// checks the shape, the sender's membership and the expiry, and keeps it
// under the session's subject with the session id as message id, so that a
// retry is stored once.
func (m *Manager) serveSession(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	var r messages.SessionRecord
	if err := messages.Decode(data, messages.MaxSessionRecord, &r); err != nil {
		return nil, service.DecodeRefusal("session record", err)
	}
	if r.Token == nil {
		return nil, messages.Refusal(messages.CodeUnknownUnit, "a session record must come from a member: unit and token")
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
	ctx, cancel := context.WithTimeout(ctx, sessionStoreLimit)
	defer cancel()
	msgID := hex.EncodeToString(r.Session)
	if r.Closed {
		msgID += ".closed"
	}
	// The record lives until its session expires, and a little past it so
	// that units refuse the session as expired rather than unknown.
	ttl := time.Until(time.Unix(0, r.Expires)) + time.Minute
	ack, err := m.js.Publish(ctx, messages.SessionSubject(r.Cluster, r.Session), stored, jetstream.WithMsgID(msgID), jetstream.WithMsgTTL(ttl))
	if err != nil {
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
