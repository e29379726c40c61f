// Package service is the plumbing cohort's NATS services share on top of
// nats.go micro: a bounded worker pool behind an endpoint, and typed replies.
//
// A micro endpoint calls its handler on one goroutine, one request at a time.
// Pool hands requests to a fixed number of workers through a bounded queue;
// when the queue is full the request is refused at once with "overloaded",
// so that load never grows memory or latency without bound.
package service

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/cohort-dev/cohort/messages"
)

// Func decides one request: it returns the encoded reply, or a refusal.
// With both, the refusal's code travels in the headers and the reply as the
// payload (a replayed call refused, with the answer it had).
type Func func(data []byte) ([]byte, *messages.Error)

// Pool is a bounded worker pool serving one or more endpoints.
//
// A micro.Request must not be used once its handler has returned (micro
// reads it again then), so the pool's handler copies what a worker needs, the
// payload and the reply subject, and the worker answers with a plain publish
// carrying micro's own error headers. The queue is never closed: workers stop
// on a signal, and a handler still running while the service drains after
// Close drops its request, which the requester's timeout and retry cover.
type Pool struct {
	nc      *nats.Conn
	jobs    chan job
	done    chan struct{}
	workers sync.WaitGroup
	log     *slog.Logger
	once    sync.Once
}

type job struct {
	data   []byte
	reply  string
	decide Func
}

// NewPool starts workers that answer on nc until Close.
func NewPool(nc *nats.Conn, workers, queue int, log *slog.Logger) *Pool {
	p := &Pool{nc: nc, jobs: make(chan job, queue), done: make(chan struct{}), log: log}
	for range workers {
		p.workers.Go(func() {
			for {
				select {
				case <-p.done:
					return
				case j := <-p.jobs:
					reply, refusal := j.decide(j.data)
					p.send(j.reply, reply, refusal)
				}
			}
		})
	}
	return p
}

// Handler returns a micro handler that queues requests for decide, or
// refuses them at once as overloaded when the queue is full.
func (p *Pool) Handler(decide Func) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		select {
		case <-p.done:
			return
		case p.jobs <- job{data: req.Data(), reply: req.Reply(), decide: decide}:
		default:
			RespondError(req, messages.Refusal(messages.CodeOverloaded, "the service's queue of %d requests is full", cap(p.jobs)), p.log)
		}
	})
}

// MsgHandler is Handler for a plain NATS subscription (a queue group that
// is not a micro endpoint).
func (p *Pool) MsgHandler(decide Func) nats.MsgHandler {
	return func(m *nats.Msg) {
		select {
		case <-p.done:
			return
		case p.jobs <- job{data: m.Data, reply: m.Reply, decide: decide}:
		default:
			p.send(m.Reply, nil, messages.Refusal(messages.CodeOverloaded, "the service's queue of %d requests is full", cap(p.jobs)))
		}
	}
}

func (p *Pool) send(subject string, reply []byte, refusal *messages.Error) {
	if subject == "" {
		return // published, not requested: nobody to answer
	}
	msg := nats.NewMsg(subject)
	msg.Data = reply
	if refusal != nil {
		if reply == nil {
			msg.Data, _ = messages.Marshal(refusal)
		}
		msg.Header.Set(micro.ErrorHeader, refusal.Reason)
		msg.Header.Set(micro.ErrorCodeHeader, string(refusal.Code))
	}
	if err := p.nc.PublishMsg(msg); err != nil {
		p.log.Warn("respond", "err", err)
	}
}

// Close stops the workers; requests still queued are dropped. Safe to call
// twice.
func (p *Pool) Close() {
	p.once.Do(func() {
		close(p.done)
		p.workers.Wait()
	})
}

// Respond encodes m and sends it as the reply.
func Respond(req micro.Request, m any, log *slog.Logger) {
	b, err := messages.Marshal(m)
	if err != nil {
		RespondError(req, messages.Refusal(messages.CodeInternal, "encoding the reply failed"), log)
		return
	}
	if err := req.Respond(b); err != nil {
		log.Warn("respond", "err", err)
	}
}

// RespondError sends a typed refusal as a micro error reply: the code in the
// Nats-Service-Error-Code header, the encoded messages.Error as the payload.
func RespondError(req micro.Request, e *messages.Error, log *slog.Logger) {
	b, _ := messages.Marshal(e)
	if err := req.Error(string(e.Code), e.Reason, b); err != nil {
		log.Warn("respond", "err", err)
	}
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

// Stop stops a micro service and logs a failure; for deferred calls.
func Stop(svc micro.Service, log *slog.Logger) {
	if err := svc.Stop(); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("stop service", "err", err)
	}
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
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, messages.DecodeError(code, msg.Data)
	}
	return msg.Data, nil
}
