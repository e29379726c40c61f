package issuer

import (
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

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/replay"
	"github.com/cohort-dev/cohort/service"
)

// Version is the issuer service's version as nats micro reports it.
const Version = "0.1.0"

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
	Platform enclave.Platform // required: attests the issuer, verifies units, seals state
	Policy   *Policy          // required

	Bucket   string // key-value bucket of the sealed state; default DefaultBucket
	Replicas int    // JetStream replicas of that bucket; default 1

	Workers int // certify workers; default 2 × GOMAXPROCS
	Queue   int // requests waiting for a worker before "overloaded"; default 1024

	// MaxClockSkew bounds how far a request's time may be from the issuer's
	// clock; replayed nonces are remembered for twice as long. Default 2m.
	MaxClockSkew time.Duration

	// Metrics registers the issuer's Prometheus metrics; nil for none.
	Metrics prometheus.Registerer
	// NoEvents turns off the certificate events on the audit stream.
	NoEvents bool

	Logger *slog.Logger     // default: discard
	Now    func() time.Time // default time.Now
	Rand   io.Reader        // serial numbers and signatures; default crypto/rand
}

func (c *Config) fill() error {
	switch {
	case c.Conn == nil:
		return errors.New("issuer: Config.Conn is required")
	case c.Platform == nil:
		return errors.New("issuer: Config.Platform is required")
	case c.Policy == nil:
		return errors.New("issuer: Config.Policy is required")
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
	if c.MaxClockSkew <= 0 {
		c.MaxClockSkew = 2 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Logger = c.Logger.With("component", "issuer")
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
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
	events  *events.Publisher // nil with NoEvents

	// Set before ready is closed, read-only after.
	store    *store
	root     *credential
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
	// clusters are the clusters of a task, whose secrets set precomputes.
	clusters []string
	mu       sync.Mutex
	rev      uint64    // guarded by mu
	retry    time.Time // guarded by mu: no reissue attempt before this, after a failure
	fails    int       // guarded by mu: reissues failed in a row
	cur      atomic.Pointer[held]
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
	}, nil
}

// Ready is closed once the issuer has its keys and serves requests.
func (i *Issuer) Ready() <-chan struct{} { return i.ready }

// Root returns the root certificate. Valid after Ready.
func (i *Issuer) Root() *x509.Certificate { return i.root.cert }

// TaskCertificate returns the current certificate of a task. Valid after Ready.
func (i *Issuer) TaskCertificate(task string) (*x509.Certificate, bool) {
	s, ok := i.tasks[task]
	if !ok {
		return nil, false
	}
	return s.cur.Load().cred.cert, true
}

// GroupCertificate returns the current certificate of a group. Valid after
// Ready.
func (i *Issuer) GroupCertificate(group string) (*x509.Certificate, bool) {
	s, ok := i.groups[group]
	if !ok {
		return nil, false
	}
	return s.cur.Load().cred.cert, true
}

// Run loads or creates the issuer's keys, serves until ctx is done, then
// drains in-flight requests and returns. It returns an error if the state
// cannot be loaded or the service cannot start.
func (i *Issuer) Run(ctx context.Context) error {
	if !i.running.CompareAndSwap(false, true) {
		return errors.New("issuer: Run called twice")
	}
	if err := i.load(ctx); err != nil {
		return err
	}
	hash := i.cfg.Policy.Hash()
	svc, err := service.New(service.Config{
		Conn:        i.cfg.Serve,
		Name:        messages.IssuerService,
		Version:     Version,
		Description: "cohort issuer: attested certificates for enclave replicas",
		QueueGroup:  messages.IssuerQueue,
		Metadata: map[string]string{
			"backend":     i.cfg.Platform.Name(),
			"policy_hash": hex.EncodeToString(hash[:]),
			"protocol":    fmt.Sprint(messages.Version),
		},
		Workers: i.cfg.Workers, Queue: i.cfg.Queue, Logger: i.log,
	})
	if err != nil {
		return fmt.Errorf("issuer: start service: %w", err)
	}
	defer svc.Stop()
	for _, ep := range []service.Endpoint{
		{Name: "evidence", Subject: messages.SubjectEvidence, Handle: func(m service.Msg) ([]byte, *messages.Error) { return i.evidence(m.Data) }},
		{Name: "certify", Subject: messages.SubjectCertify, Handle: func(m service.Msg) ([]byte, *messages.Error) { return i.certify(ctx, m.Data) }},
	} {
		if err := svc.Add(ep); err != nil {
			return fmt.Errorf("issuer: add %s endpoint: %w", ep.Name, err)
		}
	}
	attrs := []any{"backend", i.cfg.Platform.Name(), "root", fingerprint(i.root.cert), "policy_hash", hex.EncodeToString(hash[:]),
		"tasks", len(i.tasks), "groups", len(i.groups), "clusters", len(i.clusters)}
	if i.cfg.Platform.Simulated() {
		attrs = append(attrs, "attestation", "SIMULATED")
	}
	// The server must know the subscriptions before anyone is told to ask.
	if err := svc.Flush(); err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	i.log.Info("issuer serving", attrs...)
	close(i.ready)
	<-ctx.Done()
	if i.events != nil {
		flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = i.events.Flush(flush)
	}
	return nil
}

// load reads the root, the cluster keys and the task and group credentials
// from the state bucket, creating what is missing and reissuing certificates
// that no longer match the policy or are due. Everything the policy declares
// exists once load returns: nothing is made on first request.
func (i *Issuer) load(ctx context.Context) error {
	js, err := jetstream.New(i.cfg.Conn)
	if err != nil {
		return fmt.Errorf("issuer: jetstream: %w", err)
	}
	if i.store, err = openStore(ctx, js, i.cfg.Bucket, i.cfg.Replicas, i.cfg.Platform, i.cfg.Policy.Hash()); err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	if i.root, err = i.loadRoot(ctx); err != nil {
		return fmt.Errorf("issuer: root: %w", err)
	}
	if !i.cfg.NoEvents {
		// The audit stream is the manager's: the issuer's events reach it
		// through the manager's account, and are dropped (counted) while no
		// manager has made it.
		if i.events, err = events.NewPublisher(i.cfg.Conn, "issuer", i.log, i.cfg.Now); err != nil {
			return fmt.Errorf("issuer: %w", err)
		}
	}
	if left := i.root.cert.NotAfter.Sub(i.cfg.Now()); left < i.cfg.Policy.Validity.Task {
		// Task certificates are cut at the root's end; past it nothing verifies.
		i.log.Warn("the root CA expires before a task certificate would: root rollover is not supported yet",
			"root_not_after", i.root.cert.NotAfter, "left", left.Round(time.Second))
	}
	i.clusters = make(map[string]*clusterKey, len(i.cfg.Policy.Clusters))
	for _, c := range i.cfg.Policy.Clusters {
		if i.clusters[c.ID], err = i.loadCluster(ctx, c.ID); err != nil {
			return fmt.Errorf("issuer: cluster %q: %w", c.ID, err)
		}
	}
	p := i.cfg.Policy
	i.tasks = make(map[string]*slot, len(p.Tasks))
	for k := range p.Tasks {
		t := &p.Tasks[k]
		s := &slot{
			kind: "task", name: t.Name, key: taskKeyPrefix + t.Name, clusters: t.clusters,
			spec: taskSpec(i.root.cert, t, p.Validity.Task, p.AcceptSimulated),
			issue: func(key *ecdsa.PrivateKey) (*x509.Certificate, error) {
				return issueTask(i.cfg.Rand, i.cfg.Now(), i.root, t, key, p.Validity.Task, p.AcceptSimulated)
			},
		}
		if err := i.loadSlot(ctx, s); err != nil {
			return fmt.Errorf("issuer: task %q: %w", t.Name, err)
		}
		i.tasks[t.Name] = s
	}
	i.groups = make(map[string]*slot, len(p.Groups))
	for k := range p.Groups {
		g := &p.Groups[k]
		s := &slot{
			kind: "group", name: g.ID, key: groupKeyPrefix + g.ID,
			spec: groupSpec(i.root.cert, g, p.Validity.Group, p.AcceptSimulated),
			issue: func(key *ecdsa.PrivateKey) (*x509.Certificate, error) {
				return issueGroup(i.cfg.Rand, i.cfg.Now(), i.root, g, key, p.Validity.Group, p.AcceptSimulated)
			},
		}
		if err := i.loadSlot(ctx, s); err != nil {
			return fmt.Errorf("issuer: group %q: %w", g.ID, err)
		}
		i.groups[g.ID] = s
	}
	return nil
}

func (i *Issuer) loadRoot(ctx context.Context) (*credential, error) {
	for {
		c, _, _, err := i.store.load(ctx, rootKey)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, err
		}
		c, err = newRoot(i.cfg.Rand, i.cfg.Now(), i.cfg.Policy.Validity.Root, i.cfg.Platform.Simulated())
		if err != nil {
			return nil, err
		}
		if _, err = i.store.put(ctx, rootKey, c, nil, 0); err == nil {
			i.log.Info("created root CA", "root", fingerprint(c.cert))
			return c, nil
		}
		if !errors.Is(err, errExists) {
			return nil, err
		}
		// Another issuer created it first: load theirs.
	}
}

// loadCluster returns a cluster's key, creating it (epoch 1) if the state has
// none: keys are made when a cluster is declared, never on first request.
func (i *Issuer) loadCluster(ctx context.Context, id string) (*clusterKey, error) {
	name := clusterKeyPrefix + id
	for {
		ck, err := i.store.loadCluster(ctx, name)
		if err == nil {
			return ck, nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, err
		}
		ck = &clusterKey{V: recordVersion, Key: make([]byte, messages.ClusterKeySize), Epoch: 1}
		if _, err := rand.Read(ck.Key); err != nil {
			return nil, err
		}
		if err = i.store.createCluster(ctx, name, ck); err == nil {
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
// policy changed or it is due.
func (i *Issuer) loadSlot(ctx context.Context, s *slot) error {
	for {
		c, spec, rev, err := i.store.load(ctx, s.key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			key, err := newKey()
			if err != nil {
				return err
			}
			if c, err = s.make(key); err != nil {
				return err
			}
			if rev, err = i.store.put(ctx, s.key, c, s.spec, 0); errors.Is(err, errExists) {
				continue
			} else if err != nil {
				return err
			}
			i.log.Info("created "+s.kind+" key and certificate", s.kind, s.name, "cert", fingerprint(c.cert))
		case err != nil:
			return err
		case string(spec) != string(s.spec) || !i.cfg.Now().Before(reissueAt(c.cert)):
			// The policy changed, or the certificate is due: same key, new certificate.
			if c, err = s.make(c.key); err != nil {
				return err
			}
			if rev, err = i.store.put(ctx, s.key, c, s.spec, rev); errors.Is(err, errExists) {
				continue
			} else if err != nil {
				return err
			}
			i.log.Info("reissued "+s.kind+" certificate", s.kind, s.name, "cert", fingerprint(c.cert))
		}
		s.rev = rev
		return i.set(s, c)
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
		for _, id := range append([]string{""}, s.clusters...) {
			if h.secrets[id], err = messages.Marshal(i.secrets(h, id, nil)); err != nil {
				return err
			}
		}
	}
	s.cur.Store(h)
	return nil
}

// secrets assembles the secrets of a report for a task's credential, the
// cluster the request named (if any) and the groups it named.
func (i *Issuer) secrets(task *held, cluster string, groups []*held) *messages.Secrets {
	sec := &messages.Secrets{V: messages.Version, TaskKey: task.pkcs8}
	if ck := i.clusters[cluster]; ck != nil {
		sec.Cluster, sec.ClusterEpoch, sec.ClusterKey = cluster, ck.Epoch, ck.Key
	}
	for _, g := range groups {
		sec.Groups = append(sec.Groups, messages.GroupKey{ID: g.name, Key: g.pkcs8})
	}
	return sec
}

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
		s.retry = now.Add(min(time.Second<<min(s.fails, 6), time.Minute))
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
	rev, err := i.store.put(ctx, s.key, c, s.spec, s.rev)
	if errors.Is(err, errExists) {
		if c, _, rev, err = i.store.load(ctx, s.key); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	s.rev = rev
	i.log.Info("reissued "+s.kind+" certificate", s.kind, s.name, "cert", fingerprint(c.cert))
	return i.set(s, c)
}

// evidence answers an evidence request: the issuer's evidence, binding its
// root, its policy and the requester's nonce.
func (i *Issuer) evidence(data []byte) ([]byte, *messages.Error) {
	var m messages.EvidenceRequest
	if err := messages.Decode(data, messages.MaxEvidenceRequest, &m); err != nil {
		return nil, service.DecodeRefusal("evidence request", err)
	}
	hash := i.cfg.Policy.Hash()
	rd := messages.EvidenceBinding(i.root.cert.Raw, hash[:], m.Nonce)
	ev, err := i.cfg.Platform.Attest(rd)
	if err != nil {
		i.log.Error("attest", "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "the issuer could not produce evidence")
	}
	return service.Encode(&messages.EvidenceReply{
		V: messages.Version, Evidence: ev, Root: i.root.cert.Raw, PolicyHash: hash[:], Backend: i.cfg.Platform.Name(),
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
	task        string
	measurement []byte
	simulated   bool
}

// certify decides a certify request and reports the outcome. It returns the
// encoded reply, or a refusal; a refusal changes nothing.
func (i *Issuer) certify(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	start := time.Now()
	var o outcome
	reply, refusal := i.decide(ctx, data, &o)
	i.report(&o, refusal, time.Since(start))
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
	kem, err := acceptedKEM(body.KEM)
	if err != nil {
		return nil, messages.Refusal(messages.CodeUnsupportedKEM, "%v", err)
	}
	pub, err := kem.NewPublicKey(body.PublicKey)
	if err != nil {
		return nil, messages.Refusal(messages.CodeMalformed, "public key is not a valid key for KEM 0x%04x", body.KEM)
	}
	now := i.cfg.Now()
	if skew := now.Sub(time.Unix(0, body.Time)); skew > i.cfg.MaxClockSkew || skew < -i.cfg.MaxClockSkew {
		return nil, messages.Refusal(messages.CodeStale, "request time is %v from the issuer's clock, more than %v", skew.Round(time.Millisecond), i.cfg.MaxClockSkew)
	}
	o.task = body.Task
	claims, err := i.cfg.Platform.Verify(req.Evidence)
	if err != nil {
		return nil, messages.Refusal(messages.CodeEvidence, "%v", err)
	}
	o.measurement, o.simulated = claims.UniqueID, claims.Simulated
	if claims.ReportData != messages.CertifyBinding(req.Body) {
		return nil, messages.Refusal(messages.CodeBinding, "the evidence's report data does not bind this request")
	}
	// Task names are answered only to verified evidence that binds the request.
	task, ok := i.tasks[body.Task]
	if !ok {
		return nil, messages.Refusal(messages.CodeUnknownTask, "the policy names no task %q", body.Task)
	}
	if refusal := i.cfg.Policy.accept(body.Task, claims); refusal != nil {
		return nil, refusal
	}
	if body.Cluster != "" && !slices.Contains(task.clusters, body.Cluster) {
		return nil, messages.Refusal(messages.CodeClusterNotCovered, "task %q does not run cluster %q (it runs %v)", body.Task, body.Cluster, task.clusters)
	}
	// Every group is checked before anything is handed out: one the unit
	// may not hold refuses the whole request.
	groups := make([]*slot, len(body.Groups))
	for k, id := range body.Groups {
		g, ok := i.cfg.Policy.Group(id)
		if !ok {
			return nil, messages.Refusal(messages.CodeUnknownGroup, "the policy names no group %q", id)
		}
		if !g.Has(body.Task) {
			// The reason does not list the group's tasks: the requester is not one.
			return nil, messages.Refusal(messages.CodeNotInGroup, "task %q is not a member of group %q", body.Task, id)
		}
		groups[k] = i.groups[id]
	}
	switch i.replay.Check(body.Nonce, now) {
	case replay.Seen:
		return nil, messages.Refusal(messages.CodeReplay, "this request's nonce was used before")
	case replay.Full:
		return nil, messages.Refusal(messages.CodeOverloaded, "too many recent requests to track replays")
	}

	th := i.current(ctx, task)
	secrets := th.secrets[body.Cluster] // present: the cluster was checked above
	var groupCerts []messages.GroupCert
	if len(groups) > 0 {
		gh := make([]*held, len(groups))
		for k, g := range groups {
			gh[k] = i.current(ctx, g)
			groupCerts = append(groupCerts, messages.GroupCert{ID: gh[k].name, Cert: gh[k].cred.cert.Raw})
		}
		if secrets, err = messages.Marshal(i.secrets(th, body.Cluster, gh)); err != nil {
			return nil, messages.Refusal(messages.CodeInternal, "encoding the secrets failed")
		}
		defer clear(secrets)
	}
	requestHash := messages.RequestHash(req.Body)
	sealed, err := hpke.Seal(pub, hpke.HKDFSHA256(), hpke.AES256GCM(), messages.SecretsInfo(requestHash[:]), secrets)
	if err != nil {
		i.log.Error("seal report", "task", body.Task, "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "sealing the report failed")
	}
	chain := [][]byte{th.cred.cert.Raw, i.root.cert.Raw}
	rb, err := messages.Marshal(&messages.ReportBody{
		V: messages.Version, RequestHash: requestHash[:], Task: body.Task, Chain: chain, Groups: groupCerts, Sealed: sealed,
	})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the report failed")
	}
	digest := messages.ReportDigest(rb)
	sig, err := ecdsa.SignASN1(i.cfg.Rand, i.root.key, digest[:])
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
