package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig sets the audit stream's limits. Zero fields take the defaults.
type StreamConfig struct {
	Replicas int           // default 1
	MaxAge   time.Duration // default 30 days
	MaxBytes int64         // default 1 GiB
}

// EnsureStream creates the audit stream, or updates its limits. The issuer
// and every manager call it at start; the same settings make it idempotent.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) error {
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = 30 * 24 * time.Hour
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 1 << 30
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "cohort audit events: units joined, left, evicted or refused; certificates issued or refused",
		Subjects:    []string{SubjectAll},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		MaxMsgSize:  MaxEventSize,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("events: stream %s: %w", StreamName, err)
	}
	return nil
}

// maxPending bounds the events in flight to JetStream.
const maxPending = 4096

// Publisher publishes events without blocking its caller. It is safe for
// concurrent use.
type Publisher struct {
	js      jetstream.JetStream
	source  string
	now     func() time.Time
	log     *slog.Logger
	dropped atomic.Int64
}

// NewPublisher returns a publisher that signs its events as source.
func NewPublisher(nc *nats.Conn, source string, log *slog.Logger, now func() time.Time) (*Publisher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	p := &Publisher{source: source, now: now, log: log}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(maxPending),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			p.drop(m.Subject, err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	p.js = js
	return p, nil
}

// Publish stamps e with the time and the source and sends it.
func (p *Publisher) Publish(e Event) {
	e.V = Version
	e.Time = p.now().UTC()
	e.Source = p.source
	// What the event quotes comes from requests: keep it printable and within
	// the caps rather than lose the event.
	e.Addr = printable(e.Addr, 255)
	e.Reason = printable(e.Reason, MaxReason)
	data, err := e.Encode()
	if err != nil {
		p.drop(e.Subject(), err)
		return
	}
	if _, err := p.js.PublishAsync(e.Subject(), data, jetstream.WithStallWait(time.Millisecond)); err != nil {
		p.drop(e.Subject(), err)
	}
}

// Dropped is the number of events that could not be published.
func (p *Publisher) Dropped() int64 { return p.dropped.Load() }

// Flush waits until every event published so far is acknowledged, or ctx is
// done.
func (p *Publisher) Flush(ctx context.Context) error {
	select {
	case <-p.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *Publisher) drop(subject string, err error) {
	if n := p.dropped.Add(1); n&(n-1) == 0 { // log the 1st, 2nd, 4th, 8th… drop
		p.log.Warn("event not published", "subject", subject, "err", err, "dropped", n)
	}
}

// FollowConfig says which events to read.
type FollowConfig struct {
	Since  time.Duration // only events newer than this; 0 for all
	Follow bool          // keep waiting for new events
	Now    func() time.Time
}

// Follow calls fn for each event of the stream in order, until it has read
// every event there was when it started (or, with Follow, until ctx is done).
// A message that does not decode is passed to fn as an error.
func Follow(ctx context.Context, nc *nats.Conn, cfg FollowConfig, fn func(*Event, error) error) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	cc := jetstream.OrderedConsumerConfig{FilterSubjects: []string{SubjectAll}}
	if cfg.Since > 0 {
		now := time.Now
		if cfg.Now != nil {
			now = cfg.Now
		}
		start := now().Add(-cfg.Since)
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	cons, err := js.OrderedConsumer(ctx, StreamName, cc)
	if err != nil {
		return fmt.Errorf("events: open stream %s: %w", StreamName, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	if !cfg.Follow && info.NumPending == 0 {
		return nil
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return ctx.Err()
		}
		if err != nil {
			return fmt.Errorf("events: %w", err)
		}
		if err := fn(Decode(msg.Data())); err != nil {
			return err
		}
		if !cfg.Follow {
			if md, err := msg.Metadata(); err == nil && md.NumPending == 0 {
				return nil
			}
		}
	}
}

// printable replaces control characters and cuts s to at most n bytes, on a
// character boundary.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
