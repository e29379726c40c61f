// Package faults runs a steady load of user calls against a cluster while
// parts of the deployment are killed, one after another, and judges how the
// deployment came through: whether any acknowledged session was lost,
// whether any call failed beyond the client's retry budget, and how long
// full service took to come back after each fault.
//
// It kills nothing itself: each Target brings its own Kill (and Restart,
// where no supervisor restarts the part), so the same judge serves the
// in-process cluster of the tests and the compose deployment of CI.
//
// "Full service" is: a new handshake opens a session and its first call is
// answered; every session opened before the fault has had a call answered
// since the fault; and the caller's Ready check passes (every unit active,
// every NATS server up, say).
package faults

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/messages"
)

// Config configures a run. Zero fields take the defaults noted.
type Config struct {
	Conn    *nats.Conn     // required: the user's connection
	User    string         // required: the user's name, as its credential names it
	Cluster string         // required
	Roots   *x509.CertPool // required: the issuer's root
	Task    string         // the task the cluster must run; empty accepts any
	KEM     uint16         // default ML-KEM-768 + X25519

	Sessions int           // sessions under steady load; default 4
	Interval time.Duration // between one session's calls; default 20ms
	// The client's retry budget: a call is sent up to Retries times, each
	// attempt waiting CallTimeout; defaults 500ms and 24 (12 s and more),
	// which outlasts JetStream's longest leader election (9 s) after a NATS
	// server that led a stream dies.
	CallTimeout time.Duration
	Retries     int
	// Recovery is the most a fault may take to full service; default 5s.
	// Wait is how long a run waits for full service before giving up on a
	// target; default 60s.
	Recovery, Wait time.Duration
	// Ready is the deployment's part of full service, since the kill at
	// since; nil checks nothing besides calls and handshakes.
	Ready func(ctx context.Context, since time.Time) error
	Out   io.Writer // progress and the table; default discard
	// Trace prints why each probe found service not yet full.
	Trace bool
	Now   func() time.Time
}

func (c *Config) fill() error {
	if c.Conn == nil || c.Roots == nil || !messages.ValidTaskName(c.Cluster) || !messages.ValidUserName(c.User) {
		return errors.New("faults: Config.Conn, User, Roots and a valid Cluster are required")
	}
	if c.Sessions <= 0 {
		c.Sessions = 4
	}
	if c.Interval <= 0 {
		c.Interval = 20 * time.Millisecond
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 500 * time.Millisecond
	}
	if c.Retries <= 0 {
		c.Retries = 24
	}
	if c.Recovery <= 0 {
		c.Recovery = 5 * time.Second
	}
	if c.Wait <= 0 {
		c.Wait = 60 * time.Second
	}
	if c.Ready == nil {
		c.Ready = func(context.Context, time.Time) error { return nil }
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Target is one fault: a part of the deployment to kill.
type Target struct {
	Name string
	Kill func(context.Context) error
	// Restart starts the part again; nil when a supervisor does (Docker's
	// restart policy, say).
	Restart func(context.Context) error
	// Recovery, if set, is this target's bar instead of Config.Recovery.
	Recovery time.Duration
	// Planned targets are a stop and start on purpose (of everything, say):
	// the load pauses while they run, and their recovery is reported but
	// not held to Config.Recovery; the sessions must still be served after.
	Planned bool
}

// Result is how the deployment came through one target.
type Result struct {
	Target   string        `json:"target"`
	Recovery time.Duration `json:"recovery_ns"` // from the kill to full service
	Calls    int           `json:"calls"`       // calls answered from the kill to full service
	Failed   int           `json:"failed"`      // calls that failed beyond the retry budget
	Judged   bool          `json:"judged"`
	Bar      time.Duration `json:"bar_ns"`          // the most Recovery may be, when judged
	Err      string        `json:"error,omitempty"` // the last thing full service lacked, if it never came
}

// OK reports whether the target met its bar.
func (r *Result) OK() bool {
	return r.Err == "" && r.Failed == 0 && (!r.Judged || r.Recovery <= r.Bar)
}

// Report is a whole run.
type Report struct {
	Results      []Result `json:"results"`
	Calls        int      `json:"calls"`         // answered, in all
	Failed       int      `json:"failed"`        // beyond the retry budget, in all
	Sessions     int      `json:"sessions"`      // acknowledged sessions, in all
	SessionsLost int      `json:"sessions_lost"` // of those, not served at the end
	Budget       string   `json:"retry_budget"`
	OK           bool     `json:"ok"`
}

// load is the steady load: sessions calling in turn.
type load struct {
	cfg  *Config
	gate sync.RWMutex // the load's calls hold it shared; a planned stop holds it
	mu   sync.Mutex
	// sessions is every acknowledged session; lastOK when each last had a
	// call answered.
	sessions []*client.Session
	lastOK   map[*client.Session]time.Time
	calls    int
	failed   int
	errs     []error
}

func (l *load) dial(ctx context.Context) (*client.Session, error) {
	return client.Dial(ctx, client.Config{
		Conn: l.cfg.Conn, User: l.cfg.User, Cluster: l.cfg.Cluster, Roots: l.cfg.Roots, Task: l.cfg.Task, KEM: l.cfg.KEM,
		Timeout: l.cfg.CallTimeout * 2, CallTimeout: l.cfg.CallTimeout, Retries: l.cfg.Retries, Now: l.cfg.Now,
	})
}

func (l *load) add(s *client.Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sessions = append(l.sessions, s)
	l.lastOK[s] = l.cfg.Now()
}

// call makes one call on s and records its outcome.
func (l *load) call(ctx context.Context, s *client.Session, data []byte) error {
	_, err := s.Call(ctx, data)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.failed++
		if len(l.errs) < 8 {
			l.errs = append(l.errs, err)
		}
		return err
	}
	l.calls++
	l.lastOK[s] = l.cfg.Now()
	return nil
}

// served records an answered call of the probe's on s.
func (l *load) served(s *client.Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastOK[s] = l.cfg.Now()
}

func (l *load) counts() (calls, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls, l.failed
}

// servedSince reports the first session without an answered call since t.
func (l *load) servedSince(t time.Time, which []*client.Session) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range which {
		if l.lastOK[s].Before(t) {
			return fmt.Errorf("session %x has had no call answered since the fault", s.ID)
		}
	}
	return nil
}

// Run opens the sessions, starts the load, applies each target in turn and
// waits for full service after each, then checks every acknowledged
// session once more.
func Run(ctx context.Context, cfg Config, targets []Target) (*Report, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	l := &load{cfg: &cfg, lastOK: map[*client.Session]time.Time{}}
	var steady []*client.Session
	// The deployment may still be settling (a unit not yet joined refuses
	// handshakes): the first sessions are tried for up to Wait.
	deadline := cfg.Now().Add(cfg.Wait)
	for len(steady) < cfg.Sessions {
		s, err := l.dial(ctx)
		if err != nil {
			if cfg.Now().After(deadline) || !backoff.Wait(ctx, 100*time.Millisecond) {
				return nil, fmt.Errorf("faults: open a session: %w", err)
			}
			continue
		}
		l.add(s)
		steady = append(steady, s)
	}
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, s := range steady {
		wg.Go(func() {
			for n := 0; lctx.Err() == nil; n++ {
				l.gate.RLock()
				_ = l.call(lctx, s, fmt.Appendf(nil, "load %d/%d", i, n))
				l.gate.RUnlock()
				backoff.Wait(lctx, cfg.Interval)
			}
		})
	}
	defer func() { stopLoad(); wg.Wait() }()

	rep := &Report{Budget: fmt.Sprintf("%d attempts of %v", cfg.Retries, cfg.CallTimeout)}
	fmt.Fprintf(cfg.Out, "faults: %d sessions under steady load (a call every %v each); retry budget %s\n", cfg.Sessions, cfg.Interval, rep.Budget)
	for _, t := range targets {
		res := Result{Target: t.Name, Judged: !t.Planned, Bar: cmp.Or(t.Recovery, cfg.Recovery)}
		calls0, failed0 := l.counts()
		killed, err := apply(ctx, l, t)
		if err != nil {
			return nil, err
		}
		err = waitFullService(ctx, l, killed, t.Planned)
		if t.Planned {
			l.gate.Unlock()
		}
		res.Recovery = cfg.Now().Sub(killed)
		if err != nil {
			res.Err = err.Error()
		}
		calls1, failed1 := l.counts()
		res.Calls, res.Failed = calls1-calls0, failed1-failed0
		fmt.Fprintf(cfg.Out, "faults: %s %-10s killed; full service after %6.2f s (%s); %5d calls answered meanwhile, %d failed%s\n",
			killed.UTC().Format("15:04:05.000"), t.Name, res.Recovery.Seconds(), barText(&res), res.Calls, res.Failed, errSuffix(res.Err))
		rep.Results = append(rep.Results, res)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	stopLoad()
	wg.Wait()

	// Every acknowledged session is served at the end.
	l.mu.Lock()
	all := append([]*client.Session(nil), l.sessions...)
	l.mu.Unlock()
	rep.Sessions = len(all)
	for _, s := range all {
		if err := l.call(ctx, s, []byte("final")); err != nil {
			rep.SessionsLost++
			fmt.Fprintf(cfg.Out, "faults: session %x lost: %v\n", s.ID, err)
		}
	}
	rep.Calls, rep.Failed = l.counts()
	rep.OK = rep.SessionsLost == 0 && rep.Failed == 0
	for i := range rep.Results {
		rep.OK = rep.OK && rep.Results[i].OK()
	}
	l.mu.Lock()
	for _, e := range l.errs {
		fmt.Fprintf(cfg.Out, "faults: a failed call: %v\n", e)
	}
	l.mu.Unlock()
	fmt.Fprintf(cfg.Out, "faults: %d calls answered, %d failed beyond the budget; %d acknowledged sessions, %d lost; ok=%v\n",
		rep.Calls, rep.Failed, rep.Sessions, rep.SessionsLost, rep.OK)
	return rep, nil
}

// apply kills the target, and restarts it if it says how, and returns when
// the kill was done. A planned target pauses the load first; on success the
// pause lasts until the caller lifts it, on failure it is lifted here.
func apply(ctx context.Context, l *load, t Target) (killed time.Time, err error) {
	if t.Planned {
		l.gate.Lock() // waits for the calls in flight
		defer func() {
			if err != nil {
				l.gate.Unlock()
			}
		}()
	}
	if err := t.Kill(ctx); err != nil {
		return time.Time{}, fmt.Errorf("faults: kill %s: %w", t.Name, err)
	}
	// From here the part is dead: what it did before does not count.
	killed = l.cfg.Now()
	if t.Restart != nil {
		if err := t.Restart(ctx); err != nil {
			return time.Time{}, fmt.Errorf("faults: restart %s: %w", t.Name, err)
		}
	}
	return killed, nil
}

func barText(r *Result) string {
	if !r.Judged {
		return "planned, not judged"
	}
	if r.OK() {
		return fmt.Sprintf("bar %v: ok", r.Bar)
	}
	return fmt.Sprintf("bar %v: MISSED", r.Bar)
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return " (never full: " + e + ")"
}

// waitFullService probes until the deployment is fully back or cfg.Wait
// has passed since the kill.
func waitFullService(ctx context.Context, l *load, killed time.Time, planned bool) error {
	cfg := l.cfg
	deadline := killed.Add(cfg.Wait)
	l.mu.Lock()
	before := append([]*client.Session(nil), l.sessions...)
	l.mu.Unlock()
	var last error
	for cfg.Now().Before(deadline) {
		if last = probe(ctx, l, killed, before, planned); last == nil {
			return nil
		}
		if cfg.Trace {
			fmt.Fprintf(cfg.Out, "faults:   +%5.2f s not yet: %v\n", cfg.Now().Sub(killed).Seconds(), last)
		}
		if !backoff.Wait(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
	return last
}

// probe checks full service once: the sessions opened before the kill have
// been served since (those under load by the load, unless a planned stop
// paused it, the others by a call of the probe's), the deployment is ready, and a new session opens and is
// served. The new session counts as acknowledged from then on.
func probe(ctx context.Context, l *load, killed time.Time, before []*client.Session, planned bool) error {
	probed := before[l.cfg.Sessions:]
	if planned { // the load is paused: the probe calls every session
		probed = before
	} else if err := l.servedSince(killed, before[:l.cfg.Sessions]); err != nil {
		return err
	}
	// The deployment first: a probe's call waits its whole retry budget
	// while no unit is there.
	if err := l.cfg.Ready(ctx, killed); err != nil {
		return err
	}
	for _, s := range probed {
		if l.servedSince(killed, []*client.Session{s}) == nil {
			continue
		}
		// A probe's call that fails is no user's: it is not counted, and
		// the session is called again by the next probe and at the end.
		if _, err := s.Call(ctx, []byte("probe")); err != nil {
			return fmt.Errorf("session %x, opened before the fault: %w", s.ID, err)
		}
		l.served(s)
	}
	pctx, cancel := context.WithTimeout(ctx, 2*l.cfg.CallTimeout)
	defer cancel()
	s, err := l.dial(pctx)
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	l.add(s)
	if _, err := s.Call(pctx, []byte("probe")); err != nil {
		return fmt.Errorf("first call of a new session: %w", err)
	}
	return nil
}
