package issuer

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/rate"
	"github.com/cohort-dev/cohort/replay"
	"github.com/cohort-dev/cohort/service"
)

// Version is the issuer service's version as nats micro reports it.
const Version = "0.1.0"

// DefaultLease is Config.Lease's default: longer than JetStream's leader
// elections, which take 4 to 9 s.
const DefaultLease = 12 * time.Second

// reissueTimeout bounds the store write of a reissue on the certify path.
const reissueTimeout = 2 * time.Second

// Config configures an Issuer. Zero fields take the defaults noted.
type Config struct {
	// Conn writes the issuer's state and its events. Required.
	Conn *nats.Conn
	// Serve is the connection the issuer answers requests on; default
	// Conn. With NATS credentials it is the credential's Serve key, which
	// may publish nothing but replies (package access).
	Serve    *nats.Conn
	Platform enclave.Platform // required: attests the issuer, seals the key cache
	// Verifier checks the evidence of units and of peer issuers, of every
	// platform the deployment runs on (package attest); default Platform.
	Verifier enclave.Verifier
	// Policy is the genesis policy: the one a new state starts with (on an
	// empty bucket, or with Init). Once a state exists the policy in force
	// is the state's, changed only by signed updates (Apply); a Policy
	// given then that differs from it is logged and ignored. Required for
	// a new state.
	Policy *Policy

	Bucket   string // key-value bucket of the state; default DefaultBucket
	Replicas int    // JetStream replicas of that bucket; default 1

	// Init makes a new state key and a new root over a bucket whose state
	// is damaged (records, but no readable meta record). Every user must
	// then trust the new root. Over a working state it is refused: a root
	// is rotated only by a signed update (Policy.RootGeneration). Without
	// it a root is made only on an empty bucket.
	Init bool
	// KeyCache keeps the state key sealed to this platform (this machine
	// and this build) between runs; nil keeps it in memory only.
	KeyCache KeyCache
	// Ungoverned accepts a genesis policy that names no administrators or
	// no recovery holders. Without administrators the policy can never
	// change: the next release of the issuer, or of any task, needs a new
	// root, and every user must trust again. Without recovery holders a
	// state whose every issuer is lost (or whose machines all changed) is
	// lost with its root. Development (cohort dev) sets it; a deployment
	// says so explicitly.
	Ungoverned bool
	// RecoverUnlisted lets recovery restore the state key into a build the
	// policy in force does not list, which then serves until an update
	// lists it (or drops it for good). Development only: cohort dev
	// restores its own state into a rebuilt cohort this way, then lists the
	// build with an update its administrator key signs. Without it a
	// recovered issuer of an unlisted build stops: the administrators may
	// have dropped it for a vulnerability.
	RecoverUnlisted bool
	// AwaitRecovery: when neither the key cache nor a running issuer gives
	// the state key, wait for recovery-key holders (`cohort recover`)
	// instead of refusing to start.
	AwaitRecovery bool
	// Waiting, if set, is called with the instance name once the issuer
	// waits for recovery.
	Waiting func(instance string)
	// Instance names this issuer process in logs and in the subject on
	// which it takes recovery shares; default random.
	Instance string
	// PeerTimeout bounds the wait for a running issuer's answer to a
	// state-key request, retried while none answers; default 5s.
	PeerTimeout time.Duration
	// PolicyPoll is how often a replica checks for a policy another one
	// applied; default 1s.
	PolicyPoll time.Duration
	// Lease is how long a replica answers after it last confirmed, with
	// the state stream's leader, the policy in force (it confirms every
	// PolicyPoll), and how long it answers under neither root when it
	// adopts a new one: so no two roots are ever served at once. It must
	// outlast a leader election of the state stream (4 to 9 s after its
	// leader's server dies), or the issuer stops answering during one.
	// Default DefaultLease.
	Lease time.Duration

	Workers int // certify workers; default 2 × GOMAXPROCS
	Queue   int // requests waiting for a worker before "overloaded", in each pool; default 1024

	// EvidenceWorkers answer evidence requests, in a pool of their own,
	// apart from Workers: an evidence request holds no certify worker.
	// Default DefaultEvidenceWorkers.
	EvidenceWorkers int
	// EvidenceRate bounds each requester's evidence requests: the account
	// and key the NATS server stamped the request with (each unit, user,
	// operator and manager key is one). Beyond it a request is refused as
	// rate_limited before it is queued. Default DefaultEvidenceRate; it
	// may not exceed EvidenceTotal.
	EvidenceRate rate.Limit
	// EvidenceTotal bounds the evidence requests of each class of
	// requesters together: the units of every cluster; users, operators
	// and managers; and requests that crossed no import (everyone, in a
	// deployment without accounts), which count as one requester. Default
	// DefaultEvidenceTotal.
	EvidenceTotal rate.Limit

	// MaxClockSkew bounds how far a request's time may be from the issuer's
	// clock; replayed nonces are remembered for twice as long. Default 2m.
	MaxClockSkew time.Duration

	// Metrics registers the issuer's Prometheus metrics; nil for none.
	Metrics prometheus.Registerer
	// NoEvents turns off the events on the audit stream.
	NoEvents bool

	Logger *slog.Logger     // default: discard
	Now    func() time.Time // default time.Now
	Rand   io.Reader        // serial numbers, signatures, keys' shares; default crypto/rand

	// afterCommit, in tests, runs between storing an update and adopting it.
	afterCommit func()
	// stopTimeout, in tests, bounds the service's Stop; zero: its default.
	stopTimeout time.Duration
}

func (c *Config) fill() error {
	switch {
	case c.Conn == nil:
		return errors.New("issuer: Config.Conn is required")
	case c.Platform == nil:
		return errors.New("issuer: Config.Platform is required")
	case c.Instance != "" && !messages.ValidInstance(c.Instance):
		return fmt.Errorf("issuer: instance %q: want 1 to %d lower-case letters and digits", c.Instance, messages.MaxInstance)
	}
	if c.Verifier == nil {
		c.Verifier = c.Platform
	}
	if c.Serve == nil {
		c.Serve = c.Conn
	}
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Workers <= 0 {
		c.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if c.Queue <= 0 {
		c.Queue = 1024
	}
	if c.EvidenceWorkers <= 0 {
		c.EvidenceWorkers = DefaultEvidenceWorkers
	}
	if c.EvidenceRate == (rate.Limit{}) {
		c.EvidenceRate = DefaultEvidenceRate
	}
	if c.EvidenceTotal == (rate.Limit{}) {
		c.EvidenceTotal = DefaultEvidenceTotal
	}
	if err := validLimit("EvidenceRate", c.EvidenceRate); err != nil {
		return err
	}
	if err := validLimit("EvidenceTotal", c.EvidenceTotal); err != nil {
		return err
	}
	if c.EvidenceRate.Rate > c.EvidenceTotal.Rate || c.EvidenceRate.Burst > c.EvidenceTotal.Burst {
		return fmt.Errorf("issuer: Config.EvidenceRate %+v exceeds EvidenceTotal %+v: one requester would take what all together may", c.EvidenceRate, c.EvidenceTotal)
	}
	if c.MaxClockSkew <= 0 {
		c.MaxClockSkew = 2 * time.Minute
	}
	if c.PeerTimeout <= 0 {
		c.PeerTimeout = 5 * time.Second
	}
	if c.PolicyPoll <= 0 {
		c.PolicyPoll = time.Second
	}
	if c.Lease <= 0 {
		c.Lease = max(DefaultLease, 3*c.PolicyPoll)
	}
	if c.Lease < 2*c.PolicyPoll {
		return fmt.Errorf("issuer: Config.Lease %v must be at least twice PolicyPoll %v", c.Lease, c.PolicyPoll)
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Instance == "" {
		var b [6]byte
		if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
			return err
		}
		c.Instance = hex.EncodeToString(b[:])
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Logger = c.Logger.With("component", "issuer", "instance", c.Instance)
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

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

// view is one policy in force, with the keys and certificates made from it.
type view struct {
	root     *rootState // the root of the policy's generation
	policy   *Policy
	record   *policyRecord
	rev      uint64 // of the policy record
	tasks    map[string]*slot
	groups   map[string]*slot
	clusters map[string]*clusterKey
}

// slot holds the current credential of a task or a group. The certify path
// reads it without a lock; reissue serialises the writers of one slot only.
type slot struct {
	kind  string // "task" or "group", for logs
	name  string // the task's name or the group's id
	key   string // its key in the state bucket
	spec  []byte
	issue func(*ecdsa.PrivateKey) (*x509.Certificate, error)
	// dropped, if set, reports whether a stored certificate was made for
	// code (measurements, tasks) the policy no longer accepts: its key is
	// then replaced, not reused.
	dropped func(*x509.Certificate) bool
	// clusterIDs are the clusters of a task, whose secrets set precomputes
	// from clusters, the view's cluster keys.
	clusterIDs []string
	clusters   map[string]*clusterKey
	mu         sync.Mutex
	rev        uint64    // guarded by mu
	retry      time.Time // guarded by mu: no reissue attempt before this, after a failure
	fails      int       // guarded by mu: reissues failed in a row
	cur        atomic.Pointer[held]
}

// held is an immutable snapshot of a slot's credential, with everything the
// certify path needs precomputed. It stays in the enclave.
type held struct {
	name  string // the slot's name
	cred  *credential
	pkcs8 []byte // the private key, PKCS #8
	// secrets holds, for a task, the encoded messages.Secrets of a request
	// naming no group: for no cluster (key "") and for each of its clusters.
	secrets   map[string][]byte
	reissueAt time.Time
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

// build makes the view of a policy record: every cluster key, task and
// group credential the policy declares, created when missing and reissued
// when their certificate no longer matches. It returns the view and the
// credentials it made anew.
func (i *Issuer) build(ctx context.Context, rec *policyRecord, rev uint64) (*view, []string, error) {
	p, err := ParsePolicy(rec.Document)
	if err != nil {
		return nil, nil, fmt.Errorf("issuer: the policy in force: %w", err)
	}
	root, err := i.rootOf(ctx, p.RootGeneration, p.Validity.Root)
	if err != nil {
		return nil, nil, fmt.Errorf("issuer: the root of generation %d: %w", p.RootGeneration, err)
	}
	v := &view{root: root, policy: p, record: rec, rev: rev, clusters: make(map[string]*clusterKey, len(p.Clusters))}
	for _, c := range p.Clusters {
		if v.clusters[c.ID], err = i.loadCluster(ctx, c.ID); err != nil {
			return nil, nil, fmt.Errorf("issuer: cluster %q: %w", c.ID, err)
		}
	}
	var made []string
	v.tasks = make(map[string]*slot, len(p.Tasks))
	for k := range p.Tasks {
		t := &p.Tasks[k]
		s := &slot{
			kind: "task", name: t.Name, key: taskKeyPrefix + t.Name, clusterIDs: t.clusters, clusters: v.clusters,
			dropped: func(c *x509.Certificate) bool {
				id, err := identity.FromCertificate(c)
				return err == nil && slices.ContainsFunc(id.Measurements, func(m []byte) bool {
					return !slices.ContainsFunc(t.measurements, func(k []byte) bool { return bytes.Equal(k, m) })
				})
			},
			spec: taskSpec(root.cred.cert, t, p.Validity.Task, p.AcceptSimulated),
			issue: func(key *ecdsa.PrivateKey) (*x509.Certificate, error) {
				return issueTask(i.cfg.Rand, i.cfg.Now(), root.cred, t, key, p.Validity.Task, p.AcceptSimulated)
			},
		}
		changed, err := i.loadSlot(ctx, s)
		if err != nil {
			return nil, nil, fmt.Errorf("issuer: task %q: %w", t.Name, err)
		}
		if changed {
			made = append(made, "task/"+t.Name)
		}
		v.tasks[t.Name] = s
	}
	v.groups = make(map[string]*slot, len(p.Groups))
	for k := range p.Groups {
		g := &p.Groups[k]
		s := &slot{
			kind: "group", name: g.ID, key: groupKeyPrefix + g.ID,
			dropped: func(c *x509.Certificate) bool {
				id, err := identity.FromCertificate(c)
				return err == nil && slices.ContainsFunc(id.Tasks, func(task string) bool { return !g.Has(task) })
			},
			spec: groupSpec(root.cred.cert, g, p.Validity.Group, p.AcceptSimulated),
			issue: func(key *ecdsa.PrivateKey) (*x509.Certificate, error) {
				return issueGroup(i.cfg.Rand, i.cfg.Now(), root.cred, g, key, p.Validity.Group, p.AcceptSimulated)
			},
		}
		changed, err := i.loadSlot(ctx, s)
		if err != nil {
			return nil, nil, fmt.Errorf("issuer: group %q: %w", g.ID, err)
		}
		if changed {
			made = append(made, "group/"+g.ID)
		}
		v.groups[g.ID] = s
	}
	if err := i.ensureRecovery(ctx, p, root); err != nil {
		return nil, nil, fmt.Errorf("issuer: recovery record: %w", err)
	}
	return v, made, nil
}

// loadCluster returns a cluster's key, creating it (epoch 1) if the state has
// none: keys are made when a cluster is declared, never on first request.
func (i *Issuer) loadCluster(ctx context.Context, id string) (*clusterKey, error) {
	name := clusterKeyPrefix + id
	for {
		ck, rev, err := i.store.loadCluster(ctx, name)
		if err == nil {
			return ck, nil
		}
		if !errors.Is(err, errNotFound) {
			return nil, err
		}
		ck = &clusterKey{V: recordVersion, Key: make([]byte, messages.ClusterKeySize), Epoch: 1}
		if _, err := rand.Read(ck.Key); err != nil {
			return nil, err
		}
		if err = i.store.putCluster(ctx, name, ck, rev); err == nil {
			i.log.Info("created cluster key", "cluster", id, "epoch", ck.Epoch)
			return ck, nil
		}
		if !errors.Is(err, errExists) {
			return nil, err
		}
		// Another issuer created it first: load theirs.
	}
}

// loadSlot loads a task's or a group's credential, creating it when the
// state has none and reissuing its certificate, with the same key, when the
// policy changed or it is due. It reports whether it made either.
func (i *Issuer) loadSlot(ctx context.Context, s *slot) (bool, error) {
	for {
		c, spec, rev, err := i.store.loadCredential(ctx, s.key)
		changed := true
		switch {
		case errors.Is(err, errNotFound):
			key, err := newKey()
			if err != nil {
				return false, err
			}
			if c, err = s.make(key); err != nil {
				return false, err
			}
			if rev, err = i.store.putCredential(ctx, s.key, c, s.spec, rev); errors.Is(err, errExists) {
				continue
			} else if err != nil {
				return false, err
			}
			i.log.Info("created "+s.kind+" key and certificate", s.kind, s.name, "cert", fingerprint(c.cert))
		case err != nil:
			return false, err
		case string(spec) != string(s.spec) || !i.cfg.Now().Before(reissueAt(c.cert)):
			// The policy changed, or the certificate is due: same key, new
			// certificate; but a new key when the policy dropped code that
			// held the old one, so that a removed build's units, which keep
			// the old key, hold nothing the next certificates vouch for.
			key := c.key
			if s.dropped != nil && s.dropped(c.cert) {
				if key, err = newKey(); err != nil {
					return false, err
				}
				i.log.Info("new "+s.kind+" key: the policy no longer accepts code that held the old one", s.kind, s.name)
			}
			if c, err = s.make(key); err != nil {
				return false, err
			}
			if rev, err = i.store.putCredential(ctx, s.key, c, s.spec, rev); errors.Is(err, errExists) {
				continue
			} else if err != nil {
				return false, err
			}
			i.log.Info("reissued "+s.kind+" certificate", s.kind, s.name, "cert", fingerprint(c.cert))
		default:
			changed = false
		}
		s.rev = rev
		return changed, i.set(s, c)
	}
}

// make issues the slot's certificate for key.
func (s *slot) make(key *ecdsa.PrivateKey) (*credential, error) {
	cert, err := s.issue(key)
	if err != nil {
		return nil, err
	}
	return &credential{key: key, cert: cert}, nil
}

// set makes c the slot's current credential. For a task it precomputes the
// secrets of a request naming no group, for no cluster and for each of the
// task's clusters.
func (i *Issuer) set(s *slot, c *credential) error {
	pk, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return fmt.Errorf("marshal %s key: %w", s.kind, err)
	}
	h := &held{name: s.name, cred: c, pkcs8: pk, reissueAt: reissueAt(c.cert)}
	if s.kind == "task" {
		h.secrets = map[string][]byte{}
		for _, id := range append([]string{""}, s.clusterIDs...) {
			if h.secrets[id], err = messages.Marshal(secrets(s.clusters, h, id, nil)); err != nil {
				return err
			}
		}
	}
	s.cur.Store(h)
	return nil
}

// secrets assembles the secrets of a report for a task's credential, the
// cluster the request named (if any) and the groups it named.
func secrets(clusters map[string]*clusterKey, task *held, cluster string, groups []*held) *messages.Secrets {
	sec := &messages.Secrets{V: messages.Version, TaskKey: task.pkcs8}
	if ck := clusters[cluster]; ck != nil {
		sec.Cluster, sec.ClusterEpoch, sec.ClusterKey = cluster, ck.Epoch, ck.Key
	}
	for _, g := range groups {
		sec.Groups = append(sec.Groups, messages.GroupKey{ID: g.name, Key: g.pkcs8})
	}
	return sec
}

// reissueBackoff spaces the reissues of a certificate that failed: from 2 s
// after the first failure to a minute.
var reissueBackoff = backoff.Policy{Min: time.Second, Max: time.Minute}

// current returns the slot's credential, reissuing it first when it is due.
// Only one request reissues; the others meanwhile get the current
// certificate, which stays valid until its NotAfter, well after it is due. A
// reissue that fails is tried again after a backoff, never on every request.
func (i *Issuer) current(ctx context.Context, s *slot) *held {
	h := s.cur.Load()
	now := i.cfg.Now()
	if now.Before(h.reissueAt) || !s.mu.TryLock() {
		return h
	}
	defer s.mu.Unlock()
	if h = s.cur.Load(); now.Before(h.reissueAt) || now.Before(s.retry) {
		return h // reissued meanwhile, or backing off after a failure
	}
	ctx, cancel := context.WithTimeout(ctx, reissueTimeout)
	defer cancel()
	if err := i.reissue(ctx, s, h); err != nil {
		s.fails++
		s.retry = now.Add(reissueBackoff.Delay(s.fails))
		i.log.Error("reissue "+s.kind+" certificate", s.kind, s.name, "err", err, "retry_at", s.retry)
		return h
	}
	s.fails = 0
	return s.cur.Load()
}

// reissue makes the next certificate of a slot, or adopts the one another
// issuer stored first. Called with s.mu held.
func (i *Issuer) reissue(ctx context.Context, s *slot, h *held) error {
	c, err := s.make(h.cred.key)
	if err != nil {
		return err
	}
	rev, err := i.store.putCredential(ctx, s.key, c, s.spec, s.rev)
	if errors.Is(err, errExists) {
		if c, _, rev, err = i.store.loadCredential(ctx, s.key); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	s.rev = rev
	i.log.Info("reissued "+s.kind+" certificate", s.kind, s.name, "cert", fingerprint(c.cert))
	return i.set(s, c)
}

// answerEvidence answers an evidence request, counting the outcome.
func (i *Issuer) answerEvidence(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	reply, refusal := i.evidence(ctx, data)
	outcome := "answered"
	if refusal != nil {
		outcome = string(refusal.Code)
	}
	i.metrics.evidenceOutcome(outcome)
	return reply, refusal
}

// evidence answers an evidence request: the issuer's evidence, binding its
// root, its policy and the requester's nonce.
func (i *Issuer) evidence(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	var m messages.EvidenceRequest
	if err := messages.Decode(data, messages.MaxEvidenceRequest, &m); err != nil {
		return nil, service.DecodeRefusal("evidence request", err)
	}
	if refusal := i.fence.check(); refusal != nil {
		return nil, refusal
	}
	v := i.view.Load()
	p, root := v.policy, v.root
	hash := p.Hash()
	rd := messages.EvidenceBinding(root.cred.cert.Raw, hash[:], p.Version, m.Nonce)
	ev, err := i.cfg.Platform.Attest(ctx, rd)
	if err != nil {
		i.log.Error("attest", "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "the issuer could not produce evidence")
	}
	// Checked again as it leaves: a root adopted meanwhile holds it back.
	if refusal := i.fence.check(); refusal != nil || i.view.Load().root != root {
		return nil, firstRefusal(refusal, messages.Refusal(messages.CodeRotating, "the issuer switched roots while it answered: retry"))
	}
	return service.Encode(&messages.EvidenceReply{
		V: messages.Version, Evidence: ev, Root: root.cred.cert.Raw, PolicyHash: hash[:], PolicyVersion: p.Version, Backend: i.cfg.Platform.Name(),
		Vouchers: root.vouchers,
	})
}

// Certify decides an encoded certify request in process, without NATS: the
// same work the certify endpoint does. It returns the encoded reply, or a
// *messages.Error. The benchmark uses it to measure the protocol's ceiling.
func (i *Issuer) Certify(ctx context.Context, data []byte) ([]byte, error) {
	reply, refusal := i.certify(ctx, data)
	if refusal != nil {
		return nil, refusal
	}
	return reply, nil
}

// outcome is what a certify request came to, as far as it got: for the
// log, the audit event and the metrics.
type outcome struct {
	root        *rootState // the root of the view the request was decided in
	task        string
	measurement []byte
	simulated   bool
	requestHash []byte // SHA-256 of the whole request, once its body decoded: refusals are then signed
	verified    string // "", or what verifying the evidence came to: verified, invalid, collateral
	platform    string // the platform and TCB status the evidence verified as
	tcbStatus   string
}

// certify decides a certify request and reports the outcome. It returns the
// encoded reply, or a refusal; a refusal changes nothing.
func (i *Issuer) certify(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	start := time.Now()
	if refusal := i.fence.check(); refusal != nil {
		return nil, refusal // unsigned: the unit retries
	}
	o := outcome{root: i.view.Load().root}
	reply, refusal := i.decide(ctx, data, &o)
	i.report(&o, refusal, time.Since(start))
	if reply != nil {
		// Checked again as it leaves: a root adopted meanwhile holds it back.
		if r := i.fence.check(); r != nil || i.view.Load().root != o.root {
			return nil, firstRefusal(r, messages.Refusal(messages.CodeRotating, "the issuer switched roots while it answered: retry"))
		}
	}
	if refusal != nil && o.requestHash != nil {
		// Signed by the root, so that the unit can tell this refusal from
		// one anybody on NATS could send. Signed or not at all: one that
		// cannot be signed is answered with an internal error in its
		// place, which decides nothing (a unit acts only on a signed
		// refusal, and tries an internal error again) and says what
		// happened, rather than with the decision unsigned, which would
		// read as the issuer's to whoever does not check the proof.
		d := messages.RefusalDigest(o.requestHash, refusal.Code, refusal.Reason)
		sig, err := i.signRefusal(i.cfg.Rand, o.root.cred.key, d[:])
		if err != nil {
			i.log.Error("signing a refusal failed: answering an internal error in its place", "code", refusal.Code, "reason", refusal.Reason, "err", err)
			return nil, messages.Refusal(messages.CodeInternal, "the issuer could not sign its refusal: retry")
		}
		signed := *refusal
		signed.Proof = sig
		refusal = &signed
	}
	return reply, refusal
}

func (i *Issuer) report(o *outcome, refusal *messages.Error, took time.Duration) {
	ev := events.Event{Kind: events.CertificateIssued, Task: o.task, Simulated: o.simulated}
	if o.measurement != nil {
		ev.Measurement = hex.EncodeToString(o.measurement)
	}
	code := "issued"
	if refusal != nil {
		code = string(refusal.Code)
		ev.Kind, ev.Code, ev.Reason = events.CertificateRefused, code, refusal.Reason
		level := slog.LevelInfo
		if refusal.Code == messages.CodeReplay || refusal.Code == messages.CodeInternal {
			level = slog.LevelWarn
		}
		i.log.Log(context.Background(), level, "certify refused", "task", o.task, "code", refusal.Code, "reason", refusal.Reason, "measurement", ev.Measurement)
	} else if i.log.Enabled(context.Background(), slog.LevelDebug) {
		i.log.Debug("certified", "task", o.task, "measurement", ev.Measurement, "simulated", o.simulated)
	}
	i.metrics.observe(code, took)
	if o.verified != "" {
		i.metrics.verification(o.platform, o.tcbStatus, o.verified)
	}
	if i.events != nil {
		i.events.Publish(ev)
	}
}

// decide is certify's decision, filling o as it learns who asks.
func (i *Issuer) decide(ctx context.Context, data []byte, o *outcome) ([]byte, *messages.Error) {
	var req messages.CertifyRequest
	if err := messages.Decode(data, messages.MaxCertifyRequest, &req); err != nil {
		return nil, service.DecodeRefusal("certify request", err)
	}
	var body messages.CertifyBody
	if err := messages.Decode(req.Body, messages.MaxCertifyBody, &body); err != nil {
		return nil, service.DecodeRefusal("certify request body", err)
	}
	// A refusal is signed over the whole request, evidence included, so
	// that it answers this request only: another evidence attached to a
	// unit's body gets a refusal the unit does not take for its own.
	full := sha256.Sum256(data)
	o.requestHash = full[:]
	pub, refusal := i.fresh(body.KEM, body.PublicKey, body.Time)
	if refusal != nil {
		return nil, refusal
	}
	now := i.cfg.Now()
	o.task = body.Task
	claims, err := i.cfg.Verifier.Verify(ctx, req.Evidence)
	if err != nil && !errors.Is(err, enclave.ErrInvalidEvidence) && ctx.Err() != nil {
		// Given up on as the issuer stops: nothing is known of the evidence.
		return nil, messages.Refusal(messages.CodeInternal, "the issuer stopped while it verified the evidence")
	}
	if err != nil {
		o.verified = "invalid"
		if errors.Is(err, enclave.ErrCollateral) {
			// Not the evidence's fault: the issuer's cache lacks what it
			// needs, or holds it expired. The unit retries.
			o.verified = "collateral"
			return nil, messages.Refusal(messages.CodeCollateral, "%v", err)
		}
		return nil, messages.Refusal(messages.CodeEvidence, "%v", err)
	}
	o.verified, o.platform, o.tcbStatus = "verified", claims.Backend, claims.TCBStatus
	o.measurement, o.simulated = claims.UniqueID, claims.Simulated
	if claims.ReportData != messages.CertifyBinding(req.Body) {
		return nil, messages.Refusal(messages.CodeBinding, "the evidence's report data does not bind this request")
	}
	// One view for the whole request: an update swaps it whole.
	v := i.view.Load()
	o.root = v.root
	// Task names are answered only to verified evidence that binds the request.
	task, ok := v.tasks[body.Task]
	if !ok {
		return nil, messages.Refusal(messages.CodeUnknownTask, "the policy names no task %q", body.Task)
	}
	if refusal := v.policy.accept(body.Task, claims); refusal != nil {
		return nil, refusal
	}
	if body.Cluster != "" && !slices.Contains(task.clusterIDs, body.Cluster) {
		return nil, messages.Refusal(messages.CodeClusterNotCovered, "task %q does not run cluster %q (it runs %v)", body.Task, body.Cluster, task.clusterIDs)
	}
	// Every group is checked before anything is handed out: one the unit
	// may not hold refuses the whole request.
	groups := make([]*slot, len(body.Groups))
	for k, id := range body.Groups {
		g, ok := v.policy.Group(id)
		if !ok {
			return nil, messages.Refusal(messages.CodeUnknownGroup, "the policy names no group %q", id)
		}
		if !g.Has(body.Task) {
			// The reason does not list the group's tasks: the requester is not one.
			return nil, messages.Refusal(messages.CodeNotInGroup, "task %q is not a member of group %q", body.Task, id)
		}
		groups[k] = v.groups[id]
	}
	switch i.replay.Check(body.Nonce, now) {
	case replay.Seen:
		return nil, messages.Refusal(messages.CodeReplay, "this request's nonce was used before")
	case replay.Full:
		return nil, messages.Refusal(messages.CodeOverloaded, "too many recent requests to track replays")
	}

	th := i.current(ctx, task)
	plain := th.secrets[body.Cluster] // present: the cluster was checked above
	var groupCerts []messages.GroupCert
	if len(groups) > 0 {
		gh := make([]*held, len(groups))
		for k, g := range groups {
			gh[k] = i.current(ctx, g)
			groupCerts = append(groupCerts, messages.GroupCert{ID: gh[k].name, Cert: gh[k].cred.cert.Raw})
		}
		if plain, err = messages.Marshal(secrets(v.clusters, th, body.Cluster, gh)); err != nil {
			return nil, messages.Refusal(messages.CodeInternal, "encoding the secrets failed")
		}
		defer clear(plain)
	}
	requestHash := messages.RequestHash(req.Body)
	sealed, err := hpke.Seal(pub, hpke.HKDFSHA256(), hpke.AES256GCM(), messages.SecretsInfo(requestHash[:]), plain)
	if err != nil {
		i.log.Error("seal report", "task", body.Task, "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "sealing the report failed")
	}
	chain := [][]byte{th.cred.cert.Raw, v.root.cred.cert.Raw}
	rb, err := messages.Marshal(&messages.ReportBody{
		V: messages.Version, RequestHash: requestHash[:], Task: body.Task, Chain: chain, Groups: groupCerts, Sealed: sealed,
	})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the report failed")
	}
	digest := messages.ReportDigest(rb)
	sig, err := ecdsa.SignASN1(i.cfg.Rand, v.root.cred.key, digest[:])
	if err != nil {
		i.log.Error("sign report", "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "signing the report failed")
	}
	out, err := messages.Marshal(&messages.CertifyReply{V: messages.Version, Body: rb, Signature: sig})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the reply failed")
	}
	return out, nil
}

// fresh checks what every sealed-to request carries: a KEM the issuer
// accepts, a valid public key for it, and a time within the clock skew.
func (i *Issuer) fresh(kemID uint16, publicKey []byte, at int64) (hpke.PublicKey, *messages.Error) {
	kem, err := acceptedKEM(kemID)
	if err != nil {
		return nil, messages.Refusal(messages.CodeUnsupportedKEM, "%v", err)
	}
	pub, err := kem.NewPublicKey(publicKey)
	if err != nil {
		return nil, messages.Refusal(messages.CodeMalformed, "public key is not a valid key for KEM 0x%04x", kemID)
	}
	if skew := i.cfg.Now().Sub(time.Unix(0, at)); skew > i.cfg.MaxClockSkew || skew < -i.cfg.MaxClockSkew {
		return nil, messages.Refusal(messages.CodeStale, "request time is %v from the issuer's clock, more than %v", skew.Round(time.Millisecond), i.cfg.MaxClockSkew)
	}
	return pub, nil
}

// acceptedKEM returns the HPKE KEM for id if the issuer accepts it.
func acceptedKEM(id uint16) (hpke.KEM, error) {
	switch id {
	case messages.KEMMLKEM768X25519, messages.KEMX25519:
		return hpke.NewKEM(id)
	}
	return nil, fmt.Errorf("KEM 0x%04x is not accepted (want 0x%04x ML-KEM-768+X25519 or 0x%04x X25519)", id, messages.KEMMLKEM768X25519, messages.KEMX25519)
}

// fingerprint is the SHA-256 of a certificate, in hex, for logs.
func fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

// firstRefusal returns the first refusal that is not nil.
func firstRefusal(a, b *messages.Error) *messages.Error {
	if a != nil {
		return a
	}
	return b
}
