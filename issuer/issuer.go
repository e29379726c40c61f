package issuer

// The Issuer: its construction, its lifecycle (Run: load the state, serve,
// follow updates) and the loading of its root. The decisions live beside it:
// certify.go, evidence.go, update.go, recovery.go, rotation.go; the view of
// the policy in force in view.go; the configuration in config.go.

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/replay"
	"github.com/cohort-dev/cohort/service"
)

// Issuer is the certificate issuer service.
type Issuer struct {
	cfg     Config
	log     *slog.Logger
	ready   chan struct{}
	replay  *replay.Cache
	running atomic.Bool
	metrics *metrics
	gate    *evidenceGate
	events  *events.Publisher // nil with NoEvents
	self    []byte            // this issuer's measurement
	// signRefusal signs a refusal's digest with the root's key:
	// ecdsa.SignASN1, or a test's that fails.
	signRefusal func(rand io.Reader, key *ecdsa.PrivateKey, digest []byte) ([]byte, error)

	// Set before ready is closed, read-only after.
	store *store
	fence *fence
	// roots caches the state's roots by generation; written by load, and
	// under adopting after.
	roots map[uint32]*rootState

	// view is the policy in force and everything made from it. A request
	// reads it once; an update swaps it whole, so that no request sees a
	// mix of two policies.
	view atomic.Pointer[view]
	// adopting serialises the writers of view: updates applied here and
	// those followed from other replicas.
	adopting sync.Mutex
}

// New checks cfg and returns an issuer ready to Run.
func New(cfg Config) (*Issuer, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("issuer: metrics: %w", err)
	}
	return &Issuer{
		cfg:     cfg,
		log:     cfg.Logger,
		ready:   make(chan struct{}),
		replay:  replay.New(2*cfg.MaxClockSkew, cfg.Now()),
		metrics: m,
		gate:    newEvidenceGate(cfg.EvidenceRate, cfg.EvidenceTotal),
		self:    cfg.Platform.Measurement(),
		fence:   newFence(cfg.Lease, time.Now),
		roots:   map[uint32]*rootState{},

		signRefusal: ecdsa.SignASN1,
	}, nil
}

// Ready is closed once the issuer has its keys and serves requests.
func (i *Issuer) Ready() <-chan struct{} { return i.ready }

// Root returns the root certificate. Valid after Ready.
func (i *Issuer) Root() *x509.Certificate { return i.view.Load().root.cred.cert }

// Instance is this issuer's instance name.
func (i *Issuer) Instance() string { return i.cfg.Instance }

// Policy returns the policy in force. Valid after Ready.
func (i *Issuer) Policy() *Policy { return i.view.Load().policy }

// TaskCertificate returns the current certificate of a task. Valid after Ready.
func (i *Issuer) TaskCertificate(task string) (*x509.Certificate, bool) {
	s, ok := i.view.Load().tasks[task]
	if !ok {
		return nil, false
	}
	return s.cur.Load().cred.cert, true
}

// GroupCertificate returns the current certificate of a group. Valid after
// Ready.
func (i *Issuer) GroupCertificate(group string) (*x509.Certificate, bool) {
	s, ok := i.view.Load().groups[group]
	if !ok {
		return nil, false
	}
	return s.cur.Load().cred.cert, true
}

// ErrRemoved: an update removed this issuer's build from the policy in force.
var ErrRemoved = errors.New("issuer: the policy in force no longer lists this issuer's build")

// Run obtains the state key, loads the state, serves until ctx is done,
// then drains in-flight requests and returns. It returns an error if the
// state cannot be opened or the service cannot start, or, wrapping
// ErrRemoved, when an update removes this issuer's build.
func (i *Issuer) Run(ctx context.Context) error {
	if !i.running.CompareAndSwap(false, true) {
		return errors.New("issuer: Run called twice")
	}
	defer i.closeEvents(ctx)
	if err := i.load(ctx); err != nil {
		return err
	}
	v := i.view.Load()
	hash := v.policy.Hash()
	svc, err := service.New(service.Config{
		Conn:        i.cfg.Serve,
		Name:        messages.IssuerService,
		Version:     Version,
		Description: "cohort issuer: attested certificates for enclave replicas",
		QueueGroup:  messages.IssuerQueue,
		Metadata: map[string]string{
			"backend":  i.cfg.Platform.Name(),
			"instance": i.cfg.Instance,
			"protocol": fmt.Sprint(messages.Version),
		},
		Workers: i.cfg.Workers, Queue: i.cfg.Queue, Logger: i.log,
		StopTimeout: i.cfg.stopTimeout,
	})
	if err != nil {
		return fmt.Errorf("issuer: start service: %w", err)
	}
	defer svc.Stop()
	for _, ep := range []service.Endpoint{
		// Evidence has its own pool and rates (evidence.go): no flood of it
		// holds a certify worker.
		{Name: "evidence", Subject: messages.SubjectEvidence, Workers: i.cfg.EvidenceWorkers, Admit: i.admitEvidence,
			Handle: func(m service.Msg) ([]byte, *messages.Error) { return i.answerEvidence(m.Context(), m.Data) }},
		{Name: "certify", Subject: messages.SubjectCertify, Handle: func(m service.Msg) ([]byte, *messages.Error) { return i.certify(ctx, m.Data) }},
		{Name: "state-key", Subject: messages.SubjectPeerStateKey, Handle: func(m service.Msg) ([]byte, *messages.Error) { return i.grant(m.Context(), m.Data) }},
		{Name: "policy-apply", Subject: messages.SubjectPolicyApply, Handle: func(m service.Msg) ([]byte, *messages.Error) { return i.apply(ctx, m.Data) }},
		{Name: "policy-show", Subject: messages.SubjectPolicyShow, Handle: func(m service.Msg) ([]byte, *messages.Error) { return i.show(m.Data) }},
	} {
		if err := svc.Add(ep); err != nil {
			return fmt.Errorf("issuer: add %s endpoint: %w", ep.Name, err)
		}
	}
	attrs := []any{"backend", i.cfg.Platform.Name(), "root", fingerprint(v.root.cred.cert), "root_generation", v.root.gen, "policy_version", v.policy.Version,
		"policy_hash", hex.EncodeToString(hash[:]), "tasks", len(v.tasks), "groups", len(v.groups), "clusters", len(v.clusters)}
	if i.cfg.Platform.Simulated() {
		attrs = append(attrs, "attestation", "SIMULATED")
	}
	// The server must know the subscriptions before anyone is told to ask.
	if err := svc.Flush(); err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	i.log.Info("issuer serving", attrs...)
	close(i.ready)
	return i.follow(ctx)
}

// closeEvents waits a little for the events still on their way, then
// stops the publisher: lifecycle events the audit stream has not stored by
// then are lost with the process (and counted in the log).
func (i *Issuer) closeEvents(ctx context.Context) {
	if i.events == nil {
		return
	}
	flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := i.events.Flush(flush); err != nil {
		i.log.Warn("events not all stored at exit", "err", err)
	}
	i.events.Close()
}

// load obtains the state key, then reads the root, the policy in force and
// everything made from it, creating what is missing and reissuing
// certificates that no longer match the policy or are due. Everything the
// policy declares exists once load returns: nothing is made on first
// request.
func (i *Issuer) load(ctx context.Context) error {
	js, err := jetstream.New(i.cfg.Conn)
	if err != nil {
		return fmt.Errorf("issuer: jetstream: %w", err)
	}
	store, empty, err := openStore(ctx, i.cfg.Conn, js, i.cfg.Bucket, i.cfg.Replicas)
	if err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	i.store = store
	if !i.cfg.NoEvents {
		// The audit stream is the manager's: the issuer's events reach it
		// through the manager's account, and are dropped (counted) while no
		// manager has made it.
		if i.events, err = events.NewPublisher(i.cfg.Conn, "issuer", i.log, i.cfg.Now); err != nil {
			return fmt.Errorf("issuer: %w", err)
		}
	}
	got, err := i.obtainKey(ctx, empty)
	if err != nil {
		return err
	}
	fresh := got.source == fromNew
	genesis, err := i.loadRoot(ctx, fresh)
	if err != nil {
		return fmt.Errorf("issuer: root: %w", err)
	}
	i.roots[1] = &rootState{gen: 1, cred: genesis}
	rec, rev, err := i.loadPolicy(ctx, fresh)
	if err != nil {
		return err
	}
	if v := lastVersion(rec); v < got.floor {
		return fmt.Errorf("%w: the state's policy record is version %d, older than version %d, which this issuer or the one that gave it the key served: the state was rolled back", ErrTampered, v, got.floor)
	}
	// Who may serve this state is decided before anything is made from
	// it: a dropped build writes nothing.
	p, err := ParsePolicy(rec.Document)
	if err != nil {
		return fmt.Errorf("issuer: the policy in force: %w", err)
	}
	if got.peer != nil && !p.AcceptsIssuer(got.peer, i.self) {
		return fmt.Errorf("issuer: the issuer that gave this one the state key measures %x, which the policy in force (version %d) does not list under issuers: refusing its state", got.peer, p.Version)
	}
	if len(p.issuers) > 0 && !p.AcceptsIssuer(i.self, i.self) && got.source == fromRecovery && i.cfg.RecoverUnlisted {
		i.log.Warn("recovered into a build the policy in force does not list, as RecoverUnlisted allows (development): apply an update that lists it under issuers",
			"measurement", hex.EncodeToString(i.self), "policy_version", p.Version)
	} else if len(p.issuers) > 0 && !p.AcceptsIssuer(i.self, i.self) {
		how := "its key cache still opens, but the policy dropped it"
		if got.source == fromRecovery {
			// Recovery restores only into a build the administrators
			// keep: one they dropped (for a vulnerability, say) must not
			// serve because its holders vouched for it.
			how = "recovery restores the state key only into a build the policy in force lists"
		}
		i.lifecycle(events.Event{Kind: events.IssuerStopped, Measurement: hex.EncodeToString(i.self), Policy: p.Version,
			Code: string(messages.CodeIssuerNotAccepted), Reason: "this issuer build is not listed under issuers: " + how, Simulated: i.cfg.Platform.Simulated()})
		return fmt.Errorf("%w: version %d does not list this build (measurement %x) under issuers: %s; an update must list it first", ErrRemoved, p.Version, i.self, how)
	}
	v, _, err := i.build(ctx, rec, rev)
	if err != nil {
		return err
	}
	i.view.Store(v)
	// The policy was read from any replica of the stream, which may lag:
	// this replica answers once the leader confirms it (here, or when it
	// next follows the policy, adopting a later one).
	sent := time.Now()
	if r, err := i.store.current(ctx, policyKey); err == nil && r.rev == v.rev {
		i.fence.confirm(sent)
	}
	i.toCache(i.store.key, v.policy.Version)
	if left := v.root.cred.cert.NotAfter.Sub(i.cfg.Now()); left < v.policy.Validity.Task {
		// Task certificates are cut at the root's end; past it nothing verifies.
		i.log.Warn("the root CA expires before a task certificate would: rotate the root (an update that raises root_generation)",
			"root_not_after", v.root.cred.cert.NotAfter, "left", left.Round(time.Second))
	}
	return nil
}

// loadRoot returns the root, creating it only in a state made in this run
// (fresh): a root is never made over a state that lost its own.
func (i *Issuer) loadRoot(ctx context.Context, fresh bool) (*credential, error) {
	for {
		c, _, rev, err := i.store.loadCredential(ctx, rootKey)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, errNotFound) && !fresh {
			return nil, fmt.Errorf("%w: the state has no root record: only a new state (an empty bucket, or --init) makes a root", ErrTampered)
		}
		if !errors.Is(err, errNotFound) {
			return nil, err
		}
		if c, err = newRoot(i.cfg.Rand, i.cfg.Now(), i.genesisValidity(), i.cfg.Platform.Simulated(), 1); err != nil {
			return nil, err
		}
		if _, err = i.store.putCredential(ctx, rootKey, c, nil, rev); err == nil {
			i.log.Info("created root CA", "root", fingerprint(c.cert))
			return c, nil
		}
		if !errors.Is(err, errExists) {
			return nil, err
		}
		// Another issuer created it first: load theirs.
	}
}

// genesisValidity is the root's lifetime: the genesis policy's, or the
// default when the state's policy is to be read after the root.
func (i *Issuer) genesisValidity() time.Duration {
	if i.cfg.Policy != nil {
		return i.cfg.Policy.Validity.Root
	}
	return defaultRootValidity
}

// fingerprint is the SHA-256 of a certificate, in hex, for logs.
func fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}
