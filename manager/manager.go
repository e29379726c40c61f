// Package manager is cohort's cluster manager: the untrusted coordinator that
// knows which units are alive in which cluster and is where operators look.
// It runs outside any enclave and holds no secret: it verifies what it can,
// signatures chaining to the issuer's public root, and refuses the rest.
//
// Membership. A unit joins with a message signed by its task key and carrying
// its certificate, on a subject that names its cluster and unit id (which
// the NATS server lets only that unit publish to); the manager checks that
// the join names the same, the chain to the root, that the certificate
// covers the cluster named and the measurement claimed, the signature, the
// time and that the join is new (its nonce unseen, its time later than the
// unit's last join), then records the member in the JetStream key-value
// bucket DefaultBucket with compare-and-set, and answers with a token.
// Heartbeats carry the token; a unit missing Misses heartbeats in a row is
// evicted (deleted with compare-and-set), and one that comes back joins again.
//
// Connections. The manager answers on Config.Serve, whose credential may
// publish only replies, and writes the bucket, the audit stream and the
// clusters' session records on Config.Conn, whose credential serves nothing
// (package access): no request can make the manager write where it points.
//
// Every manager mirrors the bucket through a watch and hears every heartbeat
// (heartbeats use no queue group), so a restarted manager, or two at once,
// carry on from the bucket: a restarted manager gives each member it loads a
// full grace period, and of two managers that decide the same eviction only
// the one whose delete succeeds reports it.
//
// Every join, leave, eviction and refusal is an event on the audit stream
// (package events); refusals name their reason and change no membership.
package manager

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/replay"
	"github.com/cohort-dev/cohort/service"
	"github.com/cohort-dev/cohort/streamcheck"
)

// Version is the manager service's version as nats micro reports it.
const Version = "0.1.0"

// DefaultBucket is the JetStream key-value bucket of the members.
const DefaultBucket = messages.MembersBucket

const (
	maxMember  = 4 << 10
	memberV    = 2
	chainCache = 1024
	MaxMisses  = 1000 // the most heartbeats Config.Misses may allow missed
	// A status reply must fit NATS's default 1 MiB message: at most
	// statusLimit units, each under 700 bytes of JSON with every field at
	// its cap, plus their clusters' headers. A larger view is marked
	// Truncated.
	statusLimit = 1200
	maxStatus   = 1 << 20
)

// Config configures a Manager. Zero fields take the defaults noted.
type Config struct {
	// Conn writes the members bucket, the audit stream and the session
	// records. Required.
	Conn *nats.Conn
	// Serve is the connection the manager answers on; default Conn. With
	// NATS credentials it is the credential's Serve key, which may publish
	// nothing but replies (package access).
	Serve *nats.Conn
	Root  *x509.Certificate // required: the issuer's root, to verify units' chains
	// Roots, if set, tells the manager the issuer's current root every
	// RootPoll, so that it follows a rotation without a restart: from
	// then on it takes joins only under the new root (units join again as
	// they renew under it). Default none: Root throughout.
	Roots    RootFollower
	RootPoll time.Duration // default 10s

	Interval time.Duration // heartbeat interval units are told; default 1s
	Misses   int           // heartbeats missed in a row before eviction; default 3

	Bucket   string // members bucket; default DefaultBucket
	Replicas int    // JetStream replicas of the bucket and the event stream; default 1
	ID       string // this manager's id in events and records; default random

	Workers      int           // join workers; default 2 × GOMAXPROCS
	Queue        int           // joins waiting for a worker; default 4096
	MaxClockSkew time.Duration // how far a join's time may be off; default 2m
	// Stores bounds the session records in flight to JetStream at once,
	// in a pool apart from the join workers: each waits for its write to be
	// durable (an fsync, or a replicated commit, which a replicated stream
	// makes of the writes queued together). Default 256.
	Stores int

	Metrics prometheus.Registerer // registers the manager's metrics; nil for none

	Logger *slog.Logger
	Now    func() time.Time
	Rand   io.Reader // tokens
}

func (c *Config) fill() error {
	if c.Conn == nil || c.Root == nil {
		return errors.New("manager: Config.Conn and Config.Root are required")
	}
	if c.Serve == nil {
		c.Serve = c.Conn
	}
	if c.RootPoll <= 0 {
		c.RootPoll = 10 * time.Second
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.Misses <= 0 {
		c.Misses = 3
	}
	if c.Misses > MaxMisses {
		return fmt.Errorf("manager: Config.Misses is %d, at most %d", c.Misses, MaxMisses)
	}
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.ID == "" {
		b := make([]byte, 4)
		if _, err := io.ReadFull(c.Rand, b); err != nil {
			return fmt.Errorf("manager: draw id: %w", err)
		}
		c.ID = hex.EncodeToString(b)
	}
	if c.Workers <= 0 {
		c.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if c.Queue <= 0 {
		c.Queue = 4096
	}
	if c.Stores <= 0 {
		c.Stores = 256
	}
	if c.MaxClockSkew <= 0 {
		c.MaxClockSkew = 2 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Logger = c.Logger.With("component", "manager", "manager_id", c.ID)
	return nil
}

// RootFollower tells the root the issuer serves now, given the root held:
// the same, or one that the held root vouches for (a rotation). An error
// when it cannot tell. issuerclient.Follower is one.
type RootFollower interface {
	Follow(ctx context.Context, held *x509.Certificate) (*x509.Certificate, error)
}

// trusted is the root the manager verifies chains to.
type trusted struct {
	root *x509.Certificate
	pool *x509.CertPool
}

func trustIn(root *x509.Certificate) *trusted {
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &trusted{root: root, pool: pool}
}

// Manager is the cluster manager.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	table   *Table
	trust   atomic.Pointer[trusted]
	ready   chan struct{}
	running atomic.Bool
	kv      jetstream.KeyValue
	js      jetstream.JetStream
	events  *events.Publisher
	stats   Stats
	joins   *replay.Cache // nonces of recent joins

	joinLatency prometheus.Histogram

	chainsMu sync.Mutex
	chains   map[[32]byte]*verifiedLeaf // leaf hash → verified identity
}

type verifiedLeaf struct {
	leaf *x509.Certificate
	id   identity.Identity
	root *trusted // the root it was verified to
}

// Stats counts what the manager did, for metrics and tests.
type Stats struct {
	Joins, JoinsRefused, Heartbeats, HeartbeatsUnknown, Leaves, Evictions atomic.Int64
}

// New checks cfg and returns a manager ready to Run.
func New(cfg Config) (*Manager, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	m := &Manager{
		cfg: cfg, log: cfg.Logger, table: NewTable(cfg.Interval, cfg.Misses, 2*cfg.MaxClockSkew),
		ready: make(chan struct{}), chains: make(map[[32]byte]*verifiedLeaf), joinLatency: newJoinLatency(),
		joins: replay.New(2*cfg.MaxClockSkew, cfg.Now()),
	}
	m.trust.Store(trustIn(cfg.Root))
	if cfg.Metrics != nil {
		if err := m.register(cfg.Metrics); err != nil {
			return nil, fmt.Errorf("manager: metrics: %w", err)
		}
	}
	return m, nil
}

// Ready is closed once the manager has loaded the members and serves.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Table is the manager's view of the members.
func (m *Manager) Table() *Table { return m.table }

// Stats returns the manager's counters.
func (m *Manager) Stats() *Stats { return &m.stats }

// Run loads the members, serves until ctx is done, and returns.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("manager: Run called twice")
	}
	js, err := jetstream.New(m.cfg.Conn)
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if m.kv, err = openMembers(ctx, js, m.cfg.Bucket, m.cfg.Replicas); err != nil {
		return err
	}
	if err := events.EnsureStream(ctx, js, events.StreamConfig{Replicas: m.cfg.Replicas}, m.log); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	m.js = js
	if m.events, err = events.NewPublisher(m.cfg.Conn, "manager/"+m.cfg.ID, m.log, m.cfg.Now); err != nil {
		return fmt.Errorf("manager: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	synced := make(chan struct{})
	watchErr := make(chan error, 1)
	wg.Go(func() { watchErr <- m.watch(ctx, synced) })
	select {
	case <-synced:
	case err := <-watchErr:
		return fmt.Errorf("manager: watch members: %w", err)
	case <-ctx.Done():
		return nil
	}

	svc, err := service.New(service.Config{
		Conn:        m.cfg.Serve,
		Name:        messages.ManagerService,
		Version:     Version,
		Description: "cohort manager: cluster membership, heartbeats, session records and the operators' view",
		QueueGroup:  messages.ManagerQueue,
		Metadata:    map[string]string{"id": m.cfg.ID, "interval": m.cfg.Interval.String(), "protocol": fmt.Sprint(messages.Version)},
		Workers:     m.cfg.Workers, Queue: m.cfg.Queue, Logger: m.log,
	})
	if err != nil {
		return fmt.Errorf("manager: start service: %w", err)
	}
	defer svc.Stop()
	for _, ep := range []service.Endpoint{
		{Name: "join", Subject: messages.ManagerFilter(messages.VerbJoin), Handle: func(r service.Msg) ([]byte, *messages.Error) { return m.serveJoin(ctx, r) }},
		{Name: "heartbeat", Subject: messages.ManagerFilter(messages.VerbHeartbeat), EveryInstance: true, Inline: true, Handle: m.serveHeartbeat},
		{Name: "leave", Subject: messages.ManagerFilter(messages.VerbLeave), Handle: func(r service.Msg) ([]byte, *messages.Error) { return m.serveLeave(ctx, r) }},
		{Name: "status", Subject: messages.SubjectStatus, Handle: m.serveStatus},
		{Name: "session", Subject: messages.ManagerFilter(messages.VerbSession), Workers: m.cfg.Stores, Handle: func(r service.Msg) ([]byte, *messages.Error) { return m.serveSession(ctx, r) }},
		{Name: "reader", Subject: messages.SubjectReaderCreate + ".>", Handle: func(r service.Msg) ([]byte, *messages.Error) { return m.serveReader(ctx, r) }},
	} {
		if err := svc.Add(ep); err != nil {
			return fmt.Errorf("manager: add %s endpoint: %w", ep.Name, err)
		}
	}
	wg.Go(func() { m.sweep(ctx) })
	if m.cfg.Roots != nil {
		wg.Go(func() { m.followRoot(ctx) })
	}
	// The server must know the subscriptions before anyone is told to ask.
	if err := svc.Flush(); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	m.log.Info("manager serving", "members", len(m.table.Snapshot(m.cfg.Now())), "interval", m.cfg.Interval, "misses", m.cfg.Misses)
	close(m.ready)
	select {
	case <-ctx.Done():
	case err := <-watchErr:
		if ctx.Err() == nil {
			return fmt.Errorf("manager: watch members: %w", err)
		}
	}
	flush, stop := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer stop()
	if err := m.events.Flush(flush); err != nil {
		m.log.Warn("events not all stored at exit", "err", err)
	}
	return nil
}

// membersStream is the configuration of the members bucket's stream: a
// key-value bucket's with one record a key, but without roll-ups or purges
// (the manager writes, and deletes with a delete marker, one record at a
// time), so that no record leaves the bucket without a delete the watch
// sees.
func membersStream(bucket string, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              "KV_" + bucket,
		Description:       "cohort cluster members: units, their cluster, task, measurement and HTTPS address",
		Subjects:          []string{"$KV." + bucket + ".>"},
		MaxMsgsPerSubject: 1,
		MaxMsgSize:        maxMember,
		Discard:           jetstream.DiscardNew,
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		AllowDirect:       true,
		DenyDelete:        true,
		DenyPurge:         true,
	}
}

// ErrUntrusted: the members bucket's stream is configured otherwise than
// the manager makes it, so that JetStream itself could lose, alter, copy or
// add members (package streamcheck).
var ErrUntrusted = errors.New("manager: the members bucket's stream is not as the manager makes it")

// openMembers takes the members bucket, making its stream if there is
// none; one made otherwise is refused. Created, never updated: no role may
// update, purge or delete a stream (package access).
func openMembers(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (jetstream.KeyValue, error) {
	want := membersStream(bucket, replicas)
	st, err := js.CreateStream(ctx, want)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		st, err = js.Stream(ctx, want.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("manager: members bucket %q: %w", bucket, err)
	}
	if err := streamcheck.Check(st.CachedInfo().Config, want); err != nil {
		// A bucket of an earlier manager allows roll-ups and purges, which
		// an update may deny; JetStream lets no update undo the rest.
		return nil, fmt.Errorf("%w (%v): an administrator must make it again, or, where it only allows roll-ups or purges, deny them (nats stream edit %s --no-allow-rollup --deny-purge)",
			ErrUntrusted, err, want.Name)
	}
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("manager: members bucket %q: %w", bucket, err)
	}
	return kv, nil
}

// watch mirrors the members bucket into the table. It closes synced once the
// bucket's current content is loaded.
func (m *Manager) watch(ctx context.Context, synced chan<- struct{}) error {
	w, err := m.kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	loaded := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("watch ended")
			}
			if e == nil {
				if !loaded {
					loaded = true
					close(synced)
				}
				continue
			}
			m.apply(e)
		}
	}
}

func (m *Manager) apply(e jetstream.KeyValueEntry) {
	switch e.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
		m.table.Remove(e.Key(), e.Revision())
	case jetstream.KeyValuePut:
		mem, err := decodeMember(e.Value())
		if err != nil || Key(mem.Cluster, mem.Unit) != e.Key() {
			m.log.Warn("ignoring a member record that does not decode", "key", e.Key(), "err", err)
			return
		}
		m.table.Put(*mem, e.Revision(), m.cfg.Now())
	}
}

func decodeMember(b []byte) (*Member, error) {
	var mem Member
	if err := messages.Unmarshal(b, maxMember, &mem); err != nil {
		return nil, err
	}
	if mem.V != memberV || !messages.ValidTaskName(mem.Cluster) || !messages.ValidTaskName(mem.Task) || !messages.ValidUnitID(mem.Unit) ||
		len(mem.Token) != messages.TokenSize || !messages.ValidAddr(mem.Addr) || len(mem.Measurement) != messages.HashSize ||
		len(mem.Manager) > 64 {
		return nil, errors.New("member record out of bounds")
	}
	return &mem, nil
}

// sweep evicts members that missed their heartbeats. It looks ten times an
// interval, so that an eviction comes at most a tenth of an interval after
// the third missed heartbeat; a look is a scan of the table, microseconds
// for thousands of members.
func (m *Manager) sweep(ctx context.Context) {
	t := time.NewTicker(max(m.cfg.Interval/10, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, ev := range m.table.Due(m.cfg.Now()) {
			key := Key(ev.Member.Cluster, ev.Member.Unit)
			err := m.kv.Delete(ctx, key, jetstream.LastRevision(ev.Rev))
			if err != nil {
				// Another manager evicted it, or the unit joined again: not ours
				// to report. Take what the bucket holds now, so that a stale
				// entry cannot linger in the table.
				m.log.Debug("eviction skipped", "key", key, "err", err)
				m.reconcile(ctx, key, ev.Rev)
				continue
			}
			m.table.Remove(key, ev.Rev)
			m.stats.Evictions.Add(1)
			m.log.Info("unit evicted", "cluster", ev.Member.Cluster, "unit", ev.Member.Unit, "silent", ev.Silent.Round(time.Millisecond))
			m.events.Publish(events.Event{
				Kind: events.UnitEvicted, Cluster: ev.Member.Cluster, Task: ev.Member.Task, Unit: ev.Member.Unit,
				Addr: ev.Member.Addr, Reason: fmt.Sprintf("no heartbeat for %v (%d missed)", ev.Silent.Round(time.Millisecond), m.cfg.Misses),
			})
		}
	}
}

// reconcile makes the table's entry for key agree with the bucket after a
// compare-and-set on revision rev failed.
func (m *Manager) reconcile(ctx context.Context, key string, rev uint64) {
	e, err := m.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		m.table.Remove(key, rev)
	case err == nil:
		m.apply(e)
	}
}

func (m *Manager) serveJoin(ctx context.Context, r service.Msg) ([]byte, *messages.Error) {
	start := time.Now()
	reply, body, refusal := m.join(ctx, r)
	m.observeJoin(time.Since(start))
	if refusal != nil {
		m.stats.JoinsRefused.Add(1)
		ev := events.Event{Kind: events.UnitJoinRefused, Code: string(refusal.Code), Reason: refusal.Reason}
		if body != nil { // as claimed: the refusal says whether it checked out
			ev.Cluster, ev.Task, ev.Unit, ev.Addr = body.Cluster, body.Task, body.Unit, body.Addr
		}
		m.events.Publish(ev)
		m.log.Info("join refused", "code", refusal.Code, "reason", refusal.Reason)
		return nil, refusal
	}
	return encode(reply)
}

func encode(m any) ([]byte, *messages.Error) { return service.Encode(m) }

// sender checks who sent a unit's request: the cluster and unit id its
// subject names, which the NATS server lets only that unit publish to, and
// refuses a request whose body names another. Where the request crossed
// its cluster's import of the manager's subjects, the server stamped it
// with its sender (Nats-Request-Info; the import shares it, package access),
// and only a client's own publish is taken: an answer the server made on a
// unit's behalf (a JetStream API answer, a consumer's delivery, a stream's
// republish), which a unit's credential can aim at a peer's subject inside
// its account, is refused, whatever it carries.
func sender(r service.Msg, verb, cluster, unit string) *messages.Error {
	if refusal := stamped(r.Header); refusal != nil {
		return refusal
	}
	c, u, ok := messages.UnitOfSubject(r.Subject, verb)
	if !ok {
		return messages.Refusal(messages.CodeWrongSubject, "the subject %q names no cluster and unit", r.Subject)
	}
	if c != cluster || u != unit {
		return messages.Refusal(messages.CodeWrongSubject, "unit %s of cluster %s may not %s for unit %s of cluster %s", u, c, verb, unit, cluster)
	}
	return nil
}

// stamped refuses a request that the NATS server stamped as not sent by a
// client: the server's own publishes carry the kind of its internal client
// ("JetStream", "Account", "System"). A request without a stamp reached the
// manager without crossing an import: from within the manager's own account,
// or from a deployment without accounts.
func stamped(h nats.Header) *messages.Error {
	ci, ok, err := service.SenderOf(h)
	switch {
	case !ok:
		return nil
	case err != nil:
		return messages.Refusal(messages.CodeWrongSubject, "%v", err)
	case ci.Client():
		return nil
	}
	switch ci.Kind {
	case "":
		return messages.Refusal(messages.CodeWrongSubject, "the NATS server's stamp of the sender names no kind of sender: the cluster's import of the manager's subjects must share its requesters "+
			"(share: true, as package access writes it: reload the NATS servers' configuration from this cohort's deployment before its manager)")
	case "Leafnode":
		return messages.Refusal(messages.CodeWrongSubject, "the request came through a leaf node, behind which the server cannot tell a unit from its own answers: "+
			"units connect to the servers that hold the deployment's accounts")
	default:
		return messages.Refusal(messages.CodeWrongSubject, "the request was published by the NATS server itself (%s, in account %s) on a unit's behalf, not by a unit", ci.Kind, ci.Account)
	}
}

// join decides a join request; it returns the reply, or a refusal and the
// body as far as it decoded.
func (m *Manager) join(ctx context.Context, req service.Msg) (*messages.JoinReply, *messages.JoinBody, *messages.Error) {
	var r messages.JoinRequest
	if err := messages.Decode(req.Data, messages.MaxJoinRequest, &r); err != nil {
		return nil, nil, service.DecodeRefusal("join", err)
	}
	var body messages.JoinBody
	if err := messages.Decode(r.Body, messages.MaxJoinBody, &body); err != nil {
		return nil, nil, service.DecodeRefusal("join body", err)
	}
	if refusal := sender(req, messages.VerbJoin, body.Cluster, body.Unit); refusal != nil {
		return nil, &body, refusal
	}
	now := m.cfg.Now()
	if skew := now.Sub(time.Unix(0, body.Time)); skew > m.cfg.MaxClockSkew || skew < -m.cfg.MaxClockSkew {
		return nil, &body, messages.Refusal(messages.CodeStale, "join time is %v from the manager's clock, more than %v", skew.Round(time.Millisecond), m.cfg.MaxClockSkew)
	}
	v, err := m.verifyChain(body.Chain, now)
	if err != nil {
		return nil, &body, messages.Refusal(messages.CodeCertificate, "%v", err)
	}
	if v.id.Kind != identity.KindTask || v.id.Name != body.Task {
		return nil, &body, messages.Refusal(messages.CodeCertificate, "the certificate is for %s %q, the join names task %q", v.id.Kind, v.id.Name, body.Task)
	}
	if !v.id.InCluster(body.Cluster) {
		return nil, &body, messages.Refusal(messages.CodeClusterNotCovered, "the certificate of task %q does not cover cluster %q (it covers %v)", body.Task, body.Cluster, v.id.Clusters)
	}
	if len(v.id.Measurements) > 0 && !containsBytes(v.id.Measurements, body.Measurement) {
		return nil, &body, messages.Refusal(messages.CodeMeasurement, "measurement %x is not one the certificate names for task %q", body.Measurement, body.Task)
	}
	pub, ok := v.leaf.PublicKey.(*ecdsa.PublicKey)
	digest := messages.JoinDigest(r.Body)
	if !ok || !ecdsa.VerifyASN1(pub, digest[:], r.Signature) {
		return nil, &body, messages.Refusal(messages.CodeSignature, "the join is not signed by the certificate's key")
	}
	// A join sent again: to this manager (its nonce), or to any (its time is
	// no later than the unit's last join, which every manager's table holds).
	if !m.table.Newer(body.Cluster, body.Unit, body.Time) {
		return nil, &body, messages.Refusal(messages.CodeReplay, "unit %s of cluster %s joined at this time or later already: a join sent again, or the unit's clock went back", body.Unit, body.Cluster)
	}
	switch m.joins.Check(body.Nonce, now) {
	case replay.Seen:
		return nil, &body, messages.Refusal(messages.CodeReplay, "this join's nonce was used before")
	case replay.Full:
		return nil, &body, messages.Refusal(messages.CodeOverloaded, "too many recent joins to track replays")
	}

	token := make([]byte, messages.TokenSize)
	if _, err := io.ReadFull(m.cfg.Rand, token); err != nil {
		return nil, &body, messages.Refusal(messages.CodeInternal, "drawing a token failed")
	}
	mem := Member{
		V: memberV, Cluster: body.Cluster, Unit: body.Unit, Task: body.Task, Measurement: body.Measurement,
		Addr: body.Addr, Token: token, Joined: now.UnixNano(), JoinTime: body.Time, Manager: m.cfg.ID,
	}
	rev, rejoined, err := m.store(ctx, &mem)
	if err != nil {
		m.log.Error("store member", "err", err)
		return nil, &body, messages.Refusal(messages.CodeInternal, "storing the membership failed")
	}
	m.table.Put(mem, rev, now)
	m.stats.Joins.Add(1)
	m.log.Info("unit joined", "cluster", mem.Cluster, "unit", mem.Unit, "task", mem.Task, "addr", mem.Addr, "rejoined", rejoined)
	m.events.Publish(events.Event{
		Kind: events.UnitJoined, Cluster: mem.Cluster, Task: mem.Task, Unit: mem.Unit, Addr: mem.Addr,
		Measurement: hex.EncodeToString(mem.Measurement), Simulated: v.id.Simulated,
	})
	return &messages.JoinReply{V: messages.Version, Token: token, Interval: int64(m.cfg.Interval), Misses: uint16(m.cfg.Misses)}, &body, nil
}

// store writes a member with compare-and-set: created if new, else updated
// over the revision read (a unit joining again replaces its old record).
func (m *Manager) store(ctx context.Context, mem *Member) (uint64, bool, error) {
	b, err := messages.Marshal(mem)
	if err != nil {
		return 0, false, err
	}
	key := Key(mem.Cluster, mem.Unit)
	for range 5 {
		rev, err := m.kv.Create(ctx, key, b)
		if err == nil {
			return rev, false, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, false, err
		}
		cur, err := m.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted meanwhile: create again
		}
		if err != nil {
			return 0, false, err
		}
		rev, err = m.kv.Update(ctx, key, b, cur.Revision())
		if err == nil {
			return rev, true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, false, err
		}
	}
	return 0, false, errors.New("the member record kept changing under compare-and-set")
}

func (m *Manager) verifyChain(chain [][]byte, now time.Time) (*verifiedLeaf, error) {
	h := sha256.Sum256(bytes.Join(chain, nil))
	tr := m.trust.Load()
	m.chainsMu.Lock()
	v, ok := m.chains[h]
	m.chainsMu.Unlock()
	if ok && v.root == tr {
		if now.Before(v.leaf.NotBefore) || now.After(v.leaf.NotAfter) {
			return nil, errors.New("the certificate is outside its validity")
		}
		return v, nil
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("leaf certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for _, der := range chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("intermediate certificate: %w", err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: tr.pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("the chain does not verify to the issuer's root: %w", err)
	}
	id, err := identity.FromCertificate(leaf)
	if err != nil {
		return nil, err
	}
	v = &verifiedLeaf{leaf: leaf, id: id, root: tr}
	m.chainsMu.Lock()
	if len(m.chains) >= chainCache {
		clear(m.chains) // replicas share certificates: the cache refills with the few in use
	}
	m.chains[h] = v
	m.chainsMu.Unlock()
	return v, nil
}

func containsBytes(list [][]byte, b []byte) bool {
	for _, x := range list {
		if bytes.Equal(x, b) {
			return true
		}
	}
	return false
}

func (m *Manager) serveHeartbeat(r service.Msg) ([]byte, *messages.Error) {
	var hb messages.Heartbeat
	if err := messages.Decode(r.Data, messages.MaxHeartbeat, &hb); err != nil {
		return nil, service.DecodeRefusal("heartbeat", err)
	}
	if refusal := sender(r, messages.VerbHeartbeat, hb.Cluster, hb.Unit); refusal != nil {
		return nil, refusal
	}
	known := m.table.Heartbeat(hb.Cluster, hb.Unit, hb.Token, m.cfg.Now())
	m.stats.Heartbeats.Add(1)
	if !known {
		m.stats.HeartbeatsUnknown.Add(1)
	}
	return encode(&messages.HeartbeatReply{V: messages.Version, Known: known})
}

func (m *Manager) serveLeave(ctx context.Context, r service.Msg) ([]byte, *messages.Error) {
	var l messages.Heartbeat
	if err := messages.Decode(r.Data, messages.MaxHeartbeat, &l); err != nil {
		return nil, service.DecodeRefusal("leave", err)
	}
	if refusal := sender(r, messages.VerbLeave, l.Cluster, l.Unit); refusal != nil {
		return nil, refusal
	}
	mem, rev, ok := m.table.Lookup(l.Cluster, l.Unit, l.Token)
	if !ok {
		return nil, messages.Refusal(messages.CodeUnknownUnit, "no member %s of cluster %s with that token", l.Unit, l.Cluster)
	}
	key := Key(l.Cluster, l.Unit)
	if err := m.kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		return nil, messages.Refusal(messages.CodeUnknownUnit, "the member changed meanwhile")
	}
	m.table.Remove(key, rev)
	m.stats.Leaves.Add(1)
	m.log.Info("unit left", "cluster", mem.Cluster, "unit", mem.Unit)
	m.events.Publish(events.Event{Kind: events.UnitLeft, Cluster: mem.Cluster, Task: mem.Task, Unit: mem.Unit, Addr: mem.Addr})
	return encode(&messages.HeartbeatReply{V: messages.Version, Known: true})
}

// serveStatus answers with the status as JSON; the request's payload is
// ignored.
func (m *Manager) serveStatus(service.Msg) ([]byte, *messages.Error) {
	b, err := json.Marshal(m.Status())
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the status failed")
	}
	return b, nil
}

// Root is the issuer's root the manager verifies units' chains to.
func (m *Manager) Root() *x509.Certificate { return m.trust.Load().root }

// followRoot asks Config.Roots for the issuer's root every RootPoll, and
// takes a new one, until ctx is done.
func (m *Manager) followRoot(ctx context.Context) {
	t := time.NewTicker(m.cfg.RootPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		held := m.trust.Load().root
		root, err := m.cfg.Roots.Follow(ctx, held)
		if err != nil {
			if ctx.Err() == nil {
				m.log.Debug("asking the issuer for its root", "err", err)
			}
			continue
		}
		if bytes.Equal(root.Raw, held.Raw) {
			continue
		}
		m.trust.Store(trustIn(root))
		m.chainsMu.Lock()
		clear(m.chains)
		m.chainsMu.Unlock()
		h, p := sha256.Sum256(root.Raw), sha256.Sum256(held.Raw)
		m.log.Warn("the issuer's root was rotated: joins are taken under the new root from now on; units join again as they renew",
			"root", hex.EncodeToString(h[:]), "previous", hex.EncodeToString(p[:]))
	}
}
