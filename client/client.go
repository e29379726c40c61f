// Package client is the user's side of the cluster channel: one handshake
// with any unit of a cluster opens a session that every unit of the cluster
// can serve.
//
// Dial sends a hello to the cluster's handshake subject, under the user's
// name (which the NATS server lets only that user's credential publish
// to); exactly one unit answers (a queue group). The client checks the unit's certificate chain
// against the user's root (from `cohort trust`), that the certificate names
// the expected task and covers the cluster, and the unit's signature over the
// transcript, before it derives the session keys. The unit answered only
// after the manager confirmed durable storage of the sealed session record,
// so the session outlives that unit.
package client

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

// ErrUnauthentic: the unit's answer does not check out.
var ErrUnauthentic = errors.New("client: the unit's answer is not authentic")

// Config says which cluster to open a session with and how to recognise it.
type Config struct {
	Conn *nats.Conn // required
	// User is the user's name, the one its NATS credential is for
	// (access.Grant.Name). Units hold a session for this user only, and
	// count it against this user's quota. Default: the user whose inbox
	// prefix Conn has (a connection made by Connect).
	User    string
	Cluster string         // required
	Roots   *x509.CertPool // required: the issuer's root
	Task    string         // the task the cluster must run; empty accepts any
	KEM     uint16         // default ML-KEM-768 + X25519
	Timeout time.Duration  // per request; default 5s
	// CallTimeout is how long one attempt of a call waits for an answer
	// before it is sent again (to whichever unit the queue group picks);
	// default 1s. Retries is how many attempts a call makes; default 12.
	// The pauses between attempts grow to CallTimeout, so that the default
	// budget outlasts a unit's death with a call claimed (its 3 s lease)
	// and JetStream's longest leader election (9 s) after a NATS server dies.
	CallTimeout time.Duration
	Retries     int
	Now         func() time.Time
}

// Session is an open session with a cluster.
type Session struct {
	ID      []byte
	Cluster string
	Task    string
	Unit    string // the unit that did the handshake
	Expires time.Time
	keys    *channel.Keys
	cfg     Config
	seq     atomic.Uint64
	closed  atomic.Bool
}

// Dial opens a session with the cluster.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.Conn == nil || cfg.Roots == nil || !messages.ValidTaskName(cfg.Cluster) {
		return nil, errors.New("client: Config.Conn, Roots and a valid Cluster are required")
	}
	if cfg.User == "" {
		if cfg.User = inboxUser(cfg.Conn); cfg.User == "" {
			return nil, errors.New("client: Config.User is required, unless Conn is a user's connection (Connect)")
		}
	}
	if !messages.ValidUserName(cfg.User) {
		return nil, fmt.Errorf("client: Config.User %q is not a valid user name: the name the user's NATS credential is for", cfg.User)
	}
	if cfg.KEM == 0 {
		cfg.KEM = messages.KEMMLKEM768X25519
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 12
	}
	for try := 0; ; try++ {
		// A fresh hello each time: a hello sent again is a replay.
		c, hello, err := newHello(cfg)
		if err != nil {
			return nil, err
		}
		reply, err := service.Request(ctx, cfg.Conn, messages.HandshakeSubject(cfg.Cluster, cfg.User), hello, cfg.Timeout)
		// A unit that has not joined yet: the queue group may pick another.
		if errors.Is(err, &messages.Error{Code: messages.CodeNotReady}) && try < 3 {
			continue
		}
		if err != nil {
			if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
				if hint := inboxHint(cfg.Conn, cfg.User); hint != "" {
					return nil, fmt.Errorf("client: handshake with cluster %s: %w: %s", cfg.Cluster, err, hint)
				}
			}
			return nil, fmt.Errorf("client: handshake with cluster %s: %w", cfg.Cluster, err)
		}
		return finish(cfg, c, hello, reply)
	}
}

// newHello makes a hello: a fresh ephemeral key and nonce.
func newHello(cfg Config) (*channel.Client, []byte, error) {
	c, pub, err := channel.NewClient(cfg.KEM)
	if err != nil {
		return nil, nil, err
	}
	nonce := make([]byte, messages.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, err
	}
	hello, err := messages.Marshal(&messages.Hello{
		V: messages.Version, Cluster: cfg.Cluster, Task: cfg.Task, KEM: cfg.KEM, PublicKey: pub, Nonce: nonce, Time: cfg.Now().UnixNano(),
	})
	if err != nil {
		return nil, nil, err
	}
	return c, hello, nil
}

func finish(cfg Config, c *channel.Client, hello, data []byte) (*Session, error) {
	var r messages.HelloReply
	if err := messages.Decode(data, messages.MaxHelloReply, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthentic, err)
	}
	var b messages.HelloReplyBody
	if err := messages.Decode(r.Body, messages.MaxHelloReplyBody, &b); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthentic, err)
	}
	if !bytes.Equal(b.Session, channel.SessionID(hello)) {
		return nil, fmt.Errorf("%w: the session id is not the one this hello opens", ErrUnauthentic)
	}
	leaf, err := x509.ParseCertificate(b.Chain[0])
	if err != nil {
		return nil, fmt.Errorf("%w: certificate: %w", ErrUnauthentic, err)
	}
	inter := x509.NewCertPool()
	for _, der := range b.Chain[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate: %w", ErrUnauthentic, err)
		}
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: cfg.Roots, Intermediates: inter, CurrentTime: cfg.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, fmt.Errorf("%w: the unit's chain does not verify to the root: %w", ErrUnauthentic, err)
	}
	id, err := identity.FromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthentic, err)
	}
	if id.Kind != identity.KindTask || (cfg.Task != "" && id.Name != cfg.Task) || !id.InCluster(cfg.Cluster) {
		return nil, fmt.Errorf("%w: the certificate is for task %q of clusters %v; want task %q of cluster %q",
			ErrUnauthentic, id.Name, id.Clusters, cfg.Task, cfg.Cluster)
	}
	tr := channel.Transcript(hello, r.Body)
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !ecdsa.VerifyASN1(pub, tr[:], r.Signature) {
		return nil, fmt.Errorf("%w: the transcript is not signed by the certificate's key", ErrUnauthentic)
	}
	secret, err := c.Secret(b.Enc, hello)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthentic, err)
	}
	keys, err := channel.DeriveKeys(secret, tr)
	clear(secret)
	if err != nil {
		return nil, err
	}
	return &Session{ID: b.Session, Cluster: cfg.Cluster, Task: id.Name, Unit: b.Unit, Expires: time.Unix(0, b.Expires), keys: keys, cfg: cfg}, nil
}

// Answer is a call's answer and the unit that gave it.
type Answer struct {
	Data []byte
	Unit string
}

// ErrClosed: the session was closed by this client.
var ErrClosed = errors.New("client: the session is closed")

// Call sends data to the cluster and returns the answer. Any unit may serve
// it. A call runs at most once: an attempt that gets no answer is sent again
// as the same call (same sequence number, same bytes), which the queue group
// routes to a live unit; a unit that finds the call taken answers with the
// answer stored when it ran, or, while it still runs, "in progress", and the
// client asks again. A call whose unit died after taking it and before
// answering fails after the retries rather than run a second time.
func (s *Session) Call(ctx context.Context, data []byte) (*Answer, error) {
	if len(data) > messages.MaxCallData {
		return nil, fmt.Errorf("client: a call carries at most %d bytes", messages.MaxCallData)
	}
	if s.closed.Load() {
		return nil, ErrClosed
	}
	return s.send(ctx, channel.KindCall, messages.CallSubject(s.Cluster, s.cfg.User), data)
}

// Close closes the session for the whole cluster: once it returns, no unit
// runs a call of the session. Safe to call twice: a closed session stays
// closed.
func (s *Session) Close(ctx context.Context) error {
	if s.closed.Load() {
		return nil // closed already: safe to call twice
	}
	a, err := s.send(ctx, channel.KindClose, messages.CloseSubject(s.Cluster, s.cfg.User), []byte(messages.CloseMarker))
	if err != nil {
		return err
	}
	if string(a.Data) != "closed" {
		return fmt.Errorf("%w: the close was answered %q", ErrUnauthentic, a.Data)
	}
	s.closed.Store(true)
	return nil
}

// send delivers one call or close, with Call's retries.
func (s *Session) send(ctx context.Context, kind channel.Kind, subject string, data []byte) (*Answer, error) {
	seq := s.seq.Add(1)
	sent := s.cfg.Now().UnixNano()
	ct, err := channel.SealCall(s.keys, kind, s.ID, seq, sent, data)
	if err != nil {
		return nil, err
	}
	req, err := messages.Marshal(&messages.Call{V: messages.Version, Session: s.ID, Seq: seq, Time: sent, Ciphertext: ct})
	if err != nil {
		return nil, err
	}
	var last error
	for try := range s.cfg.Retries {
		ans, err := s.attempt(ctx, kind, subject, seq, req)
		if err == nil {
			return ans, nil
		}
		last = err
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, messages.ErrInProgress):
			// Another unit runs it (or ran it and died, until its claim's
			// lease runs out): ask again for the answer it stores.
			if !backoff.Wait(ctx, backoff.Policy{Min: 200 * time.Millisecond, Max: s.cfg.CallTimeout}.Delay(try)) {
				return nil, ctx.Err()
			}
		case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
			// No answer within CallTimeout: the same call again.
		case errors.Is(err, nats.ErrNoResponders), errors.Is(err, messages.ErrOverloaded):
			// No unit listens, or one could not store: the same call again
			// after a pause, so that a failover has time to happen.
			if !backoff.Wait(ctx, backoff.Policy{Min: 100 * time.Millisecond, Max: s.cfg.CallTimeout}.Delay(try)) {
				return nil, ctx.Err()
			}
		default:
			return nil, err
		}
	}
	if errors.Is(last, messages.ErrInProgress) {
		// The unit that took the call has not answered: it may have died
		// while running it. The call may have run; it is never run twice.
		return nil, fmt.Errorf("client: call %d was taken and not answered within %d attempts (its unit may have died running it; cohort does not run a call twice): %w", seq, s.cfg.Retries, last)
	}
	return nil, fmt.Errorf("client: call failed after %d attempts: %w", s.cfg.Retries, last)
}

func (s *Session) attempt(ctx context.Context, kind channel.Kind, subject string, seq uint64, req []byte) (*Answer, error) {
	actx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	msg, err := s.cfg.Conn.RequestWithContext(actx, subject, req)
	if err != nil {
		return nil, err
	}
	if code := msg.Header.Get(service.ErrorCodeHeader); code != "" {
		if messages.Code(code) == messages.CodeReplay {
			// The call ran already (an earlier attempt): its answer comes along.
			if ans, err := s.open(kind, seq, msg.Data); err == nil {
				return ans, nil
			}
		}
		return nil, messages.DecodeError(code, msg.Data)
	}
	return s.open(kind, seq, msg.Data)
}

// open decrypts a unit's answer to message seq.
func (s *Session) open(kind channel.Kind, seq uint64, data []byte) (*Answer, error) {
	var r messages.CallReply
	if err := messages.Decode(data, messages.MaxCallReply, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthentic, err)
	}
	pt, err := channel.OpenAnswer(s.keys, kind, r.Unit, s.ID, seq, r.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("%w: the answer", ErrUnauthentic)
	}
	return &Answer{Data: pt, Unit: r.Unit}, nil
}
