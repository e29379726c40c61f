package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/rate"
	"github.com/cohort-dev/cohort/streamcheck"
)

// StreamConfig sets the audit stream's limits. Zero fields take the defaults.
type StreamConfig struct {
	Replicas int           // default 1
	MaxAge   time.Duration // default 30 days
	MaxBytes int64         // default 1 GiB
}

// EnsureStream creates the audit stream, or takes the one there is; the
// manager calls it at start. No role may update the stream (package
// access). One made otherwise than it would be made is refused where it
// could lose, alter, copy or add events (package streamcheck: shorter
// limits among them, since it discards the oldest events at its limits);
// one whose limits keep more keeps them, and is reported.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig, log *slog.Logger) error {
	want := streamConfig(cfg)
	st, err := js.CreateStream(ctx, want)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		st, err = js.Stream(ctx, StreamName)
	}
	if err != nil {
		return fmt.Errorf("events: stream %s: %w", StreamName, err)
	}
	got := st.CachedInfo().Config
	if err := streamcheck.Check(got, want); err != nil {
		return fmt.Errorf("events: %w: an administrator must make it again", err)
	}
	if got.MaxAge != want.MaxAge || got.MaxBytes != want.MaxBytes || got.Replicas != want.Replicas {
		log.Warn("the audit stream keeps the limits it was made with", "stream", StreamName,
			"max_age", got.MaxAge, "max_bytes", got.MaxBytes, "replicas", got.Replicas)
	}
	return nil
}

// streamConfig is the audit stream's configuration, cfg's zero fields
// taking the defaults.
func streamConfig(cfg StreamConfig) jetstream.StreamConfig {
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = 30 * 24 * time.Hour
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 1 << 30
	}
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "cohort audit events: units joined, left, evicted or refused; certificates issued or refused; sessions opened and closed",
		Subjects:    []string{SubjectAll},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		MaxMsgSize:  MaxEventSize,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		AllowDirect: true, // operators read events with direct gets only
		DenyDelete:  true,
		DenyPurge:   true,
	}
}

// maxPending bounds the events in flight to JetStream.
const maxPending = 4096

// Publisher publishes events without blocking its caller. It is safe for
// concurrent use.
type Publisher struct {
	js       jetstream.JetStream
	source   string
	now      func() time.Time
	log      *slog.Logger
	dropped  atomic.Int64
	flushed  atomic.Int64 // dropped, as the last Flush reported it
	refusals *rate.Buckets
	held     atomic.Int64

	// The durable path (PublishDurable): a queue that one goroutine,
	// started with the first durable event and ended by Close, delivers
	// in order, retrying each until it is stored. mu orders enqueuing
	// against Close: no event enters the queue once Close has begun.
	mu        sync.Mutex
	closed    bool
	started   bool
	durable   chan durable
	done      chan struct{}
	life      context.Context // done once Close begins: cuts a try short
	end       context.CancelFunc
	delivered chan struct{} // closed when the goroutine has ended
	unsent    counter
	ids       string        // this publisher's random prefix of message ids
	seq       atomic.Uint64 // the next durable event's number
}

// counter counts the durable events not yet stored or dropped; Zero's
// channel is closed while there are none.
type counter struct {
	mu   sync.Mutex
	n    int
	zero chan struct{}
}

func (c *counter) Add() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		c.zero = make(chan struct{})
	}
	c.n++
}

func (c *counter) Done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n--; c.n == 0 {
		close(c.zero)
	}
}

// Zero returns a channel closed once no event is counted.
func (c *counter) Zero() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		done := make(chan struct{})
		close(done)
		return done
	}
	return c.zero
}

// durable is one event on the durable path.
type durable struct {
	subject, id string
	data        []byte
}

// Bounds of the durable path: the events it holds at once, how often it
// tries again while the stream takes none, and how long one try waits.
const (
	maxDurable  = 1024
	durableWait = 2 * time.Second
)

// durableBackoff spaces the tries of a durable event while the stream
// takes none.
var durableBackoff = backoff.Policy{Min: 500 * time.Millisecond, Max: 8 * time.Second}

// Limits of the refusals a publisher records from one source.
const (
	RefusalRate  = 1  // a second, for each kind of refusal from each source
	RefusalBurst = 10 // at once
	maxLimited   = 4096
)

// refusal marks the kinds of events that anyone who may ask can cause.
var refusal = map[string]bool{UnitJoinRefused: true, CertificateRefused: true, PolicyRefused: true, StateKeyRefused: true, RecoveryRefused: true}

// NewPublisher returns a publisher that signs its events as source.
func NewPublisher(nc *nats.Conn, source string, log *slog.Logger, now func() time.Time) (*Publisher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	p := &Publisher{source: source, now: now, log: log, refusals: rate.New(rate.Limit{Rate: RefusalRate, Burst: RefusalBurst}, maxLimited),
		durable: make(chan durable, maxDurable), done: make(chan struct{}), delivered: make(chan struct{}), ids: newIDPrefix()}
	p.life, p.end = context.WithCancel(context.Background())
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

// Publish stamps e with the time and the source and sends it. A refusal
// beyond its kind's limit is counted, not sent; the next one sent says how
// many were not.
func (p *Publisher) Publish(e Event) {
	subject, data, ok := p.prepare(e)
	if !ok {
		return
	}
	if _, err := p.js.PublishAsync(subject, data, jetstream.WithStallWait(time.Millisecond)); err != nil {
		p.drop(subject, err)
	}
}

// PublishDurable sends e as Publish does, but keeps it until the stream has
// stored it: an event of the trust lifecycle, published before any manager
// made the stream or while JetStream does not answer, is tried again until
// it is stored, as long as the publisher is not closed. It is stored once:
// its message id is the hash of the stamped event, which JetStream
// deduplicates. Events are delivered in the order published.
func (p *Publisher) PublishDurable(e Event) {
	subject, data, ok := p.prepare(e)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.drop(subject, errors.New("publisher closed"))
		return
	}
	if !p.started {
		p.started = true
		go p.deliver()
	}
	p.unsent.Add()
	select {
	case p.durable <- durable{subject: subject, id: fmt.Sprintf("%s-%d", p.ids, p.seq.Add(1)), data: data}:
	default:
		p.unsent.Done()
		p.drop(subject, fmt.Errorf("%d lifecycle events wait for the audit stream already", maxDurable))
	}
}

// deliver stores the durable events in order, each tried until it is
// stored or the publisher is closed.
func (p *Publisher) deliver() {
	defer close(p.delivered)
	for {
		select {
		case <-p.done:
			return
		case d := <-p.durable:
			for failures := 0; ; failures++ {
				ctx, cancel := context.WithTimeout(p.life, durableWait)
				_, err := p.js.Publish(ctx, d.subject, d.data, jetstream.WithMsgID(d.id))
				cancel()
				if err == nil {
					break
				}
				if n := failures + 1; n&(n-1) == 0 { // the 1st, 2nd, 4th, 8th… try: the waits it reports double
					p.log.Warn("lifecycle event waits for the audit stream (no manager has made it, or JetStream does not answer); trying again", "subject", d.subject, "err", err, "tries", failures+1)
				}
				t := time.NewTimer(durableBackoff.Delay(failures))
				select {
				case <-p.done:
					t.Stop()
					p.drop(d.subject, err)
					p.unsent.Done()
					return
				case <-t.C:
				}
			}
			p.unsent.Done()
		}
	}
}

// Close stops the durable path; events it still holds are dropped (and
// counted). Call Flush first to wait for them. Safe to call twice.
func (p *Publisher) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	started := p.started
	close(p.done)
	p.end()
	p.mu.Unlock()
	if started {
		<-p.delivered
	}
	for {
		select {
		case d := <-p.durable:
			p.drop(d.subject, errors.New("publisher closed"))
			p.unsent.Done()
		default:
			return
		}
	}
}

// prepare stamps e with the time and the source, applies the refusals'
// limit and encodes it; ok is false when it is not to be sent.
func (p *Publisher) prepare(e Event) (subject string, data []byte, ok bool) {
	e.V = Version
	e.Time = p.now().UTC()
	e.Source = p.source
	if refusal[e.Kind] {
		ok, suppressed := p.refusals.Take(e.Kind+"\x00"+e.Code+"\x00"+e.Cluster+"\x00"+e.Unit+"\x00"+e.Task, 1, e.Time)
		if !ok {
			p.held.Add(1)
			return "", nil, false
		}
		if suppressed > 0 {
			e.Reason = fmt.Sprintf("(%d more like it not recorded) %s", suppressed, e.Reason)
		}
	}
	// What the event quotes comes from requests: keep it printable and within
	// the caps rather than lose the event.
	e.Addr = printable(e.Addr, 255)
	e.Reason = printable(e.Reason, MaxReason)
	data, err := e.Encode()
	if err != nil {
		p.drop(e.Subject(), err)
		return "", nil, false
	}
	return e.Subject(), data, true
}

// Dropped is the number of events that could not be published.
func (p *Publisher) Dropped() int64 { return p.dropped.Load() }

// Suppressed is the number of refusals not recorded beyond their limit.
func (p *Publisher) Suppressed() int64 { return p.held.Load() }

// Flush waits until every event published so far is acknowledged (the
// durable ones stored), or ctx is done. It returns ctx's error, or, once
// they are, an error counting the events not published since the last
// Flush: an acknowledgement may be JetStream's refusal, and a publish may
// not have been tried at all.
func (p *Publisher) Flush(ctx context.Context) error {
	for _, c := range []<-chan struct{}{p.js.PublishAsyncComplete(), p.unsent.Zero()} {
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	dropped := p.dropped.Load()
	if before := p.flushed.Swap(dropped); dropped > before {
		return fmt.Errorf("events: %d events not published since the last flush (%d in all)", dropped-before, dropped)
	}
	return nil
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
	// Poll is how often a follower asks for new events; default 250ms.
	Poll time.Duration
	// APIPrefix is where the connection reaches the JetStream API of the
	// stream's account; default "$JS.API". An operator's connection reaches
	// the manager's at access.APIPrefix("manager").
	APIPrefix string
	Now       func() time.Time
}

// followBatch is how many events one direct get returns at most.
const followBatch = 256

// Follow calls fn for each event of the stream in order, until it has read
// every event there was when it started (or, with Follow, until ctx is done).
// A message that does not decode is passed to fn as an error.
//
// It reads with batched direct gets, the only way operators may read the
// stream: a direct get answers its requester and creates nothing (no
// consumer, which could be made to deliver elsewhere).
func Follow(ctx context.Context, nc *nats.Conn, cfg FollowConfig, fn func(*Event, error) error) error {
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.APIPrefix == "" {
		cfg.APIPrefix = "$JS.API"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	req := directGet{Batch: followBatch, NextFor: SubjectAll, Seq: 1}
	if cfg.Since > 0 {
		start := cfg.Now().Add(-cfg.Since).UTC()
		req.StartTime, req.Seq = &start, 0
	}
	poll := time.NewTicker(cfg.Poll)
	defer poll.Stop()
	for {
		n, next, pending, err := getBatch(ctx, nc, cfg.APIPrefix, req, fn)
		if err != nil {
			return err
		}
		if n > 0 {
			req.Seq, req.StartTime = next, nil
		}
		if pending > 0 {
			continue // more is there already
		}
		if !cfg.Follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-poll.C:
		}
	}
}

// directGet is JetStream's direct get request.
type directGet struct {
	Seq       uint64     `json:"seq,omitempty"`
	NextFor   string     `json:"next_by_subj,omitempty"`
	Batch     int        `json:"batch,omitempty"`
	StartTime *time.Time `json:"start_time,omitempty"`
}

// getBatch asks for one batch and hands each event to fn; it returns how
// many messages came, the sequence after the last, and how many more the
// stream holds after it.
func getBatch(ctx context.Context, nc *nats.Conn, prefix string, req directGet, fn func(*Event, error) error) (n int, next, pending uint64, err error) {
	body, err := json.Marshal(req)
	if err != nil {
		return 0, 0, 0, err
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("events: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(prefix+".DIRECT.GET."+StreamName, inbox, body); err != nil {
		return 0, 0, 0, fmt.Errorf("events: %w", err)
	}
	next = req.Seq
	for {
		wait, cancel := context.WithTimeout(ctx, 5*time.Second)
		msg, err := sub.NextMsgWithContext(wait)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return n, next, 0, ctx.Err()
			}
			return n, next, 0, fmt.Errorf("events: reading stream %s: %w", StreamName, err)
		}
		if status := msg.Header.Get("Status"); status != "" {
			switch status {
			case "204", "404": // the batch's end; no (more) events
				return n, next, pending, nil
			}
			return n, next, 0, fmt.Errorf("events: reading stream %s: status %s %s", StreamName, status, msg.Header.Get("Description"))
		}
		seq, err := strconv.ParseUint(msg.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil {
			return n, next, 0, fmt.Errorf("events: a message of stream %s without its sequence", StreamName)
		}
		pending, _ = strconv.ParseUint(msg.Header.Get("Nats-Num-Pending"), 10, 64)
		n, next = n+1, seq+1
		if err := fn(Decode(msg.Data)); err != nil {
			return n, next, 0, err
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

// newIDPrefix draws a publisher's prefix of message ids: with the event's
// number, an id no other event shares, so that JetStream stores a retried
// event once (within the stream's duplicates window) and two alike events
// twice.
func newIDPrefix() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
	return hex.EncodeToString(b[:])
}
