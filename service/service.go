// Package service is what cohort's NATS services share: endpoints on
// subscriptions (a queue group, or every instance), a bounded worker pool
// behind them, typed replies, and the discovery protocol of nats.go micro
// ($SRV.PING, $SRV.INFO, $SRV.STATS), so that `nats micro ls` and `nats
// micro stats` see cohort's services. It replaces micro itself because micro
// answers its discovery requests wherever a request points, which this
// package must not do.
//
// Guarantees:
//   - A service publishes only replies, and a reply only to a subject under
//     ReplyPrefixes: a requester's inbox in its own account (_INBOX.), or the
//     subject the NATS server maps a reply through to a requester in another
//     account (_R_.). A request naming any other reply subject (a stream's,
//     a bucket's, the JetStream API's, another service's) is answered
//     nowhere, discovery requests included, and counted (Refused). In a
//     deployment this is also the NATS server's rule: the connection a
//     service answers on holds a credential that may publish only there
//     (package access), and state is written over another connection.
//   - Load never grows memory or latency without bound: requests wait for a
//     worker in a queue of fixed size, and one that finds it full is
//     refused at once as "overloaded". An endpoint may refuse a request
//     before it is queued (Endpoint.Admit: a requester's rate), so that a
//     flood of what it refuses takes no place there.
//   - A handler's panic answers its request as internal, is logged with its
//     stack, and leaves the service serving.
//   - Stopping is bounded: Shutdown returns by its context's deadline (Stop
//     by Config.StopTimeout) even while a handler is wedged (on hardware, say),
//     and from then on the service publishes nothing.
package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/cohort-dev/cohort/messages"
)

// The headers of an error reply, as nats.go micro names them, so that micro
// clients and natscli read cohort's refusals.
const (
	ErrorHeader     = micro.ErrorHeader
	ErrorCodeHeader = micro.ErrorCodeHeader
)

// ReplyPrefixes are the only reply subjects a service answers to.
var ReplyPrefixes = []string{"_INBOX.", "_R_."}

// ReplyAllowed reports whether a service may answer to reply.
func ReplyAllowed(reply string) bool {
	for _, p := range ReplyPrefixes {
		if strings.HasPrefix(reply, p) && len(reply) > len(p) {
			return true
		}
	}
	return false
}

// Msg is what a handler sees of a request: the subject it came on, as the
// server delivered it (which names who asks, where permissions put the
// requester's identity in the subject), and its payload.
type Msg struct {
	Subject string
	Data    []byte
	// Header is the request's headers: among them, where a request crossed
	// a service import that shares its requester, the NATS server's stamp
	// of who sent it (Nats-Request-Info), which no sender can forge.
	Header nats.Header
	ctx    context.Context
}

// Context is the request's context: done once the service gives up on the
// requests still running (a Shutdown's deadline passed) or has stopped.
// Handlers pass it to what may block, the hardware above all, so that a
// wedged call ends with the service rather than holding its stop up.
// Stopping alone does not cancel it: the requests already routed to the
// instance are still answered.
func (m Msg) Context() context.Context {
	if m.ctx == nil {
		return context.Background()
	}
	return m.ctx
}

// Func decides one request: it returns the encoded reply, or a refusal.
// With both, the refusal's code travels in the headers and the reply as the
// payload (a replayed call refused, with the answer it had).
type Func func(Msg) ([]byte, *messages.Error)

// Config configures a Service. Zero fields take the defaults noted.
type Config struct {
	Conn *nats.Conn // required: the connection the service answers on
	// Name, Version, Description and Metadata are what discovery reports.
	// An empty Name turns discovery off (a unit's channel, which operators
	// do not discover).
	Name        string
	Version     string
	Description string
	Metadata    map[string]string
	QueueGroup  string // of the endpoints that use one; default Name
	Workers     int    // default 2 × GOMAXPROCS
	Queue       int    // requests waiting for a worker; default 1024
	// StopTimeout bounds Stop: how long it waits for the requests routed to
	// the instance to be answered; default DefaultStopTimeout.
	StopTimeout time.Duration
	Logger      *slog.Logger
}

// DefaultStopTimeout is Config.StopTimeout's default: the drain's 5 s, and
// time to answer what it brought.
const DefaultStopTimeout = 15 * time.Second

// Endpoint is one subject a service answers.
type Endpoint struct {
	Name    string // in discovery and stats
	Subject string // may hold wildcards
	// EveryInstance subscribes without the queue group, so that every
	// instance of the service hears each request (the manager's heartbeats).
	EveryInstance bool
	// Inline decides requests on the subscription's goroutine, one at a
	// time, rather than in the pool: for cheap requests, in order.
	Inline bool
	// Workers, when above zero, gives the endpoint a pool of its own of
	// that many workers, with a queue of Config.Queue: for requests that
	// mostly wait (on a durable write, say), which in the shared pool would
	// hold the workers the others compute with, and would be too few to
	// keep the writes in flight that a store commits together.
	Workers int
	// Admit, if set, is asked on the subscription's goroutine, before the
	// request is queued, whether to take it: a refusal is answered at
	// once, and the request takes no place in the queue and no worker. For
	// a cheap check that sheds a flood (a requester's rate), so that what
	// it refuses never waits before, or crowds out, what it takes.
	Admit  func(Msg) *messages.Error
	Handle Func
}

// Service is a running NATS service.
type Service struct {
	cfg     Config
	log     *slog.Logger
	id      string
	started time.Time
	jobs    chan job
	done    chan struct{} // closed once the drain is over: workers go when the queue is empty
	workers sync.WaitGroup
	stop    sync.Once
	halted  chan struct{} // closed once every worker has returned
	refused atomic.Int64
	running atomic.Int64 // requests a handler is deciding

	// ctx is every request's context, cancelled when a Shutdown gives up or
	// once the workers have stopped.
	ctx    context.Context
	cancel context.CancelFunc

	// gone is set when Shutdown returns: nothing is published after, so a
	// handler that outlives its service answers nobody. Publishing holds
	// the read lock, so that none is under way once gone is set.
	sendMu sync.RWMutex
	gone   bool

	mu        sync.Mutex
	stopped   bool // a Shutdown began: no more workers
	subs      []*nats.Subscription
	endpoints []*endpoint
}

type endpoint struct {
	Endpoint
	queue    string
	jobs     chan job // the service's, or the endpoint's own pool's
	requests atomic.Int64
	errors   atomic.Int64
	nanos    atomic.Int64
	lastErr  atomic.Pointer[string]
}

type job struct {
	ep  *endpoint
	req Msg
	to  string
}

// New starts a service's workers and, with a Name, its discovery endpoints.
// Add its endpoints, then Flush, before telling anyone to ask.
func New(cfg Config) (*Service, error) {
	if cfg.Conn == nil {
		return nil, errors.New("service: Config.Conn is required")
	}
	if cfg.QueueGroup == "" {
		cfg.QueueGroup = cfg.Name
	}
	if cfg.QueueGroup == "" {
		return nil, errors.New("service: Config.Name or Config.QueueGroup is required")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 1024
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	idb := make([]byte, 11)
	if _, err := rand.Read(idb); err != nil {
		return nil, fmt.Errorf("service: draw id: %w", err)
	}
	s := &Service{
		cfg: cfg, log: cfg.Logger, id: strings.ToUpper(hex.EncodeToString(idb)), started: time.Now().UTC(),
		jobs: make(chan job, cfg.Queue), done: make(chan struct{}), halted: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.startWorkers(cfg.Workers, s.jobs)
	if cfg.Name != "" {
		if err := s.discovery(); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

// startWorkers starts n workers on jobs; they go once Stop closes done.
func (s *Service) startWorkers(n int, jobs chan job) {
	for range n {
		s.workers.Go(func() {
			for {
				select {
				case <-s.done:
					// Stopping: the subscriptions are drained, so nothing
					// more comes; answer what is queued, then go.
					for {
						select {
						case j := <-jobs:
							s.serve(j.ep, j.req, j.to)
						default:
							return
						}
					}
				case j := <-jobs:
					s.serve(j.ep, j.req, j.to)
				}
			}
		})
	}
}

// ID is this instance's id in discovery.
func (s *Service) ID() string { return s.id }

// Refused counts the requests left unanswered because their reply subject
// is not one a service answers to.
func (s *Service) Refused() int64 { return s.refused.Load() }

// Add subscribes an endpoint.
func (s *Service) Add(e Endpoint) error {
	if e.Name == "" || e.Subject == "" || e.Handle == nil {
		return errors.New("service: an endpoint needs a name, a subject and a handler")
	}
	ep := &endpoint{Endpoint: e, jobs: s.jobs}
	if e.Workers > 0 && !e.Inline {
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			return errors.New("service: stopped")
		}
		ep.jobs = make(chan job, s.cfg.Queue)
		s.startWorkers(e.Workers, ep.jobs)
		s.mu.Unlock()
	}
	if !e.EveryInstance {
		ep.queue = s.cfg.QueueGroup
	}
	handler := func(m *nats.Msg) {
		req := Msg{Subject: m.Subject, Data: m.Data, Header: m.Header, ctx: s.ctx}
		if !s.replyTo(m.Reply) {
			return
		}
		if ep.Admit != nil {
			if refusal := s.admit(ep, req); refusal != nil {
				ep.requests.Add(1)
				s.fail(ep, refusal)
				s.send(m.Reply, nil, refusal)
				return
			}
		}
		if ep.Inline {
			s.serve(ep, req, m.Reply)
			return
		}
		select {
		case <-s.done:
		case ep.jobs <- job{ep: ep, req: req, to: m.Reply}:
		default:
			busy := messages.Refusal(messages.CodeOverloaded, "the service's queue of %d requests is full", cap(ep.jobs))
			ep.requests.Add(1)
			s.fail(ep, busy)
			s.send(m.Reply, nil, busy)
		}
	}
	var sub *nats.Subscription
	var err error
	if ep.queue == "" {
		sub, err = s.cfg.Conn.Subscribe(e.Subject, handler)
	} else {
		sub, err = s.cfg.Conn.QueueSubscribe(e.Subject, ep.queue, handler)
	}
	if err != nil {
		return fmt.Errorf("service: subscribe to %s: %w", e.Subject, err)
	}
	s.mu.Lock()
	s.subs = append(s.subs, sub)
	s.endpoints = append(s.endpoints, ep)
	s.mu.Unlock()
	return nil
}

// Flush waits until the server knows every subscription.
func (s *Service) Flush() error { return s.cfg.Conn.Flush() }

// replyTo reports whether a request is to be answered: it has a reply
// subject, and one a service may answer to.
func (s *Service) replyTo(reply string) bool {
	if reply == "" {
		return false // published, not requested: nobody to answer
	}
	if ReplyAllowed(reply) {
		return true
	}
	if n := s.refused.Add(1); n&(n-1) == 0 { // the 1st, 2nd, 4th, 8th…
		s.log.Warn("a request names a reply subject that is no inbox: not answered", "reply", printable(reply), "refused", n)
	}
	return false
}

// serve decides one request and answers it; a panic is the request's
// refusal, not the service's end.
func (s *Service) serve(ep *endpoint, req Msg, to string) {
	start := time.Now()
	s.running.Add(1)
	reply, refusal := s.decide(ep, req)
	s.running.Add(-1)
	ep.requests.Add(1)
	ep.nanos.Add(int64(time.Since(start)))
	if refusal != nil {
		s.fail(ep, refusal)
	}
	s.send(to, reply, refusal)
}

func (s *Service) decide(ep *endpoint, req Msg) (reply []byte, refusal *messages.Error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("a handler panicked", "endpoint", ep.Name, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			reply, refusal = nil, messages.Refusal(messages.CodeInternal, "the service failed")
		}
	}()
	return ep.Handle(req)
}

// admit asks an endpoint's Admit; a panic refuses the request as
// internal, as a handler's does.
func (s *Service) admit(ep *endpoint, req Msg) (refusal *messages.Error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("an admission check panicked", "endpoint", ep.Name, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			refusal = messages.Refusal(messages.CodeInternal, "the service failed")
		}
	}()
	return ep.Admit(req)
}

func (s *Service) fail(ep *endpoint, e *messages.Error) {
	ep.errors.Add(1)
	msg := string(e.Code) + ":" + e.Reason
	ep.lastErr.Store(&msg)
}

func (s *Service) send(to string, reply []byte, refusal *messages.Error) {
	msg := nats.NewMsg(to)
	msg.Data = reply
	if refusal != nil {
		if reply == nil {
			msg.Data, _ = messages.Marshal(refusal)
		}
		msg.Header.Set(ErrorHeader, refusal.Reason)
		msg.Header.Set(ErrorCodeHeader, string(refusal.Code))
	}
	s.publish(msg)
}

// publish sends a reply, unless a Shutdown has returned.
func (s *Service) publish(msg *nats.Msg) {
	s.sendMu.RLock()
	defer s.sendMu.RUnlock()
	if s.gone {
		return
	}
	if err := s.cfg.Conn.PublishMsg(msg); err != nil {
		s.log.Warn("respond", "err", err)
	}
}

// Stop is Shutdown bounded by Config.StopTimeout, for callers that stop on
// their way out (defer svc.Stop()) and have no deadline of their own: an
// error is logged, not returned. Safe to call twice, and concurrently.
func (s *Service) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StopTimeout)
	defer cancel()
	_ = s.Shutdown(ctx)
}

// Shutdown stops the service. It drains every subscription, so that the
// requests the server already routed to this instance still reach it (for
// up to 5 s; no more come, and any that still do go unanswered), and lets
// the workers answer every request queued before they go. It returns nil
// once every worker has returned.
//
// When ctx is done first, it returns an error wrapping ctx.Err() that names
// how many requests were still running and queued, and logs it; it cancels
// their Msg.Context, and leaves them to finish on their own: from then on
// the service publishes nothing, so their replies go nowhere (a requester
// of a queue group retries on another instance). Whatever the handlers use
// after Shutdown returns (a store, the connection) must stand it.
//
// Safe to call twice, and concurrently: the first call starts the stop, and
// each waits for it by its own ctx.
func (s *Service) Shutdown(ctx context.Context) error {
	s.stop.Do(func() { go s.halt() })
	select {
	case <-s.halted:
		s.silence()
		return nil
	case <-ctx.Done():
	}
	select {
	case <-s.halted: // at the same moment: stopped all the same
		s.silence()
		return nil
	default:
	}
	running, queued := s.running.Load(), s.queued()
	s.silence()
	s.cancel()
	err := fmt.Errorf("service: stopped with %d requests still running and %d queued: %w", running, queued, ctx.Err())
	s.log.Warn("service stopped before its requests were answered: they finish on their own, unanswered",
		"name", s.cfg.Name, "queue_group", s.cfg.QueueGroup, "running", running, "queued", queued, "err", ctx.Err())
	return err
}

// silence makes sure nothing is published from now on, nor under way.
func (s *Service) silence() {
	s.sendMu.Lock()
	s.gone = true
	s.sendMu.Unlock()
}

// queued counts the requests waiting for a worker, in every pool.
func (s *Service) queued() int {
	n := len(s.jobs)
	for _, ep := range s.snapshot() {
		if ep.jobs != s.jobs {
			n += len(ep.jobs)
		}
	}
	return n
}

// halt is the stop that Shutdown starts: drain, then let the workers answer
// what is queued and go. It ends when the last worker returns, which a
// wedged handler may put off indefinitely; its wait for the drain ends early
// when a Shutdown gives up.
func (s *Service) halt() {
	defer close(s.halted)
	defer s.cancel()
	s.mu.Lock()
	subs := s.subs
	s.subs = nil
	s.stopped = true
	s.mu.Unlock()
	// Drain, not unsubscribe: the requests the server already routed
	// to this instance (of a queue group, none other gets them) are
	// still answered.
	var closed []<-chan nats.SubStatus
	for _, sub := range subs {
		ch := sub.StatusChanged(nats.SubscriptionClosed)
		if err := sub.Drain(); err != nil {
			if !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
				s.log.Debug("drain", "subject", sub.Subject, "err", err)
			}
			continue
		}
		closed = append(closed, ch)
	}
	deadline := time.NewTimer(drainTimeout)
	defer deadline.Stop()
wait:
	for _, ch := range closed {
		select {
		case <-ch:
		case <-s.ctx.Done():
			break wait // a Shutdown gave up
		case <-deadline.C:
			s.log.Warn("requests still arriving after the drain timeout; stopping anyway", "timeout", drainTimeout)
			break wait
		}
	}
	close(s.done)
	s.workers.Wait()
}

// drainTimeout bounds how long Stop waits for the requests already routed
// to this instance.
const drainTimeout = 5 * time.Second

// The discovery protocol: micro's subjects and replies.
const srvPrefix = "$SRV."

func (s *Service) identity() micro.ServiceIdentity {
	md := s.cfg.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return micro.ServiceIdentity{Name: s.cfg.Name, ID: s.id, Version: s.cfg.Version, Metadata: md}
}

func (s *Service) discovery() error {
	verbs := map[string]func() any{
		"PING": func() any { return &micro.Ping{ServiceIdentity: s.identity(), Type: micro.PingResponseType} },
		"INFO": func() any {
			info := &micro.Info{ServiceIdentity: s.identity(), Type: micro.InfoResponseType, Description: s.cfg.Description, Endpoints: []micro.EndpointInfo{}}
			for _, ep := range s.snapshot() {
				info.Endpoints = append(info.Endpoints, micro.EndpointInfo{Name: ep.Name, Subject: ep.Subject, QueueGroup: ep.queue, Metadata: map[string]string{}})
			}
			return info
		},
		"STATS": func() any {
			st := &micro.Stats{ServiceIdentity: s.identity(), Type: micro.StatsResponseType, Started: s.started, Endpoints: []*micro.EndpointStats{}}
			for _, ep := range s.snapshot() {
				n := ep.requests.Load()
				es := &micro.EndpointStats{Name: ep.Name, Subject: ep.Subject, QueueGroup: ep.queue, NumRequests: int(n),
					NumErrors: int(ep.errors.Load()), ProcessingTime: time.Duration(ep.nanos.Load())}
				if n > 0 {
					es.AverageProcessingTime = es.ProcessingTime / time.Duration(n)
				}
				if e := ep.lastErr.Load(); e != nil {
					es.LastError = *e
				}
				st.Endpoints = append(st.Endpoints, es)
			}
			return st
		},
	}
	for verb, answer := range verbs {
		for _, subject := range []string{srvPrefix + verb, srvPrefix + verb + "." + s.cfg.Name, srvPrefix + verb + "." + s.cfg.Name + "." + s.id} {
			sub, err := s.cfg.Conn.Subscribe(subject, func(m *nats.Msg) {
				if !s.replyTo(m.Reply) {
					return
				}
				b, err := json.Marshal(answer())
				if err != nil {
					return
				}
				s.publish(&nats.Msg{Subject: m.Reply, Data: b})
			})
			if err != nil {
				return fmt.Errorf("service: subscribe to %s: %w", subject, err)
			}
			s.mu.Lock()
			s.subs = append(s.subs, sub)
			s.mu.Unlock()
		}
	}
	return nil
}

func (s *Service) snapshot() []*endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*endpoint(nil), s.endpoints...)
}

// printable quotes what a request named, cut short, for a log line.
func printable(s string) string {
	if len(s) > 128 {
		s = s[:128] + "…"
	}
	return fmt.Sprintf("%q", s)
}

// DecodeRefusal maps an error from messages.Decode to the refusal a service
// answers with.
func DecodeRefusal(what string, err error) *messages.Error {
	code := messages.CodeMalformed
	switch {
	case errors.Is(err, messages.ErrTooLarge):
		code = messages.CodeTooLarge
	case errors.Is(err, messages.ErrVersion):
		code = messages.CodeVersion
	}
	return messages.Refusal(code, "%s: %v", what, err)
}

// Encode encodes a reply, or refuses as internal when it cannot.
func Encode(m any) ([]byte, *messages.Error) {
	b, err := messages.Marshal(m)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the reply failed")
	}
	return b, nil
}

// Request sends a request and returns the reply's payload, or the service's
// typed refusal (*messages.Error) when the reply carries one. It waits at
// most timeout.
func Request(ctx context.Context, nc *nats.Conn, subject string, data []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return nil, err
	}
	if code := msg.Header.Get(ErrorCodeHeader); code != "" {
		return nil, messages.DecodeError(code, msg.Data)
	}
	return msg.Data, nil
}
