// Package unit is a compute unit: one replica of a task, running in an
// enclave. It verifies the issuer against the measurement it pins, attests to
// it, obtains its task's certificate pair (the same for every replica), with
// its cluster's key and its groups' pairs when configured, serves HTTPS with
// it, and renews it at two thirds of its lifetime. Group gives mutual TLS
// with the units of the other tasks of a group.
//
// Guarantees:
//   - The unit trusts no root and no key until the issuer's evidence has been
//     checked against the pinned measurement. Every renewal checks the
//     evidence again, and accepts an issuer of another measurement only if
//     its evidence binds the root the unit holds: its report must then be
//     signed by that root's key, which passes only between issuer builds the
//     policy lists, so an issuer upgrade needs no unit restart.
//   - HTTPS starts only once a pair is held; a renewal swaps the pair without
//     dropping connections; a failed renewal keeps the current pair and
//     retries with backoff.
//   - Before it holds a pair, a refusal that retrying cannot change (the
//     policy does not accept this code, the issuer is not the pinned one) ends
//     Run with that error. Once it holds one, only such a refusal signed by
//     its root for its own request ends it (a policy update removed its
//     build): it stops serving and leaves its cluster. Anyone on NATS can
//     forge an unsigned refusal, which a serving replica outlasts: it keeps
//     its pair and retries.
//
// With a cluster key, it serves its cluster's channel (channel.go): it
// answers users on Config.Serve, whose credential may publish only replies,
// and keeps the cluster's state over Config.Conn. Its guarantees:
//   - It knows who asks from the subject (which the NATS server lets only
//     that user publish under), serves a session to its user only, and holds
//     each user to its Quota.
//   - A call runs at most once: it is claimed, create-only, before it runs,
//     and a claim that no unit of the cluster wrote (claims.go) is refused
//     as tampered, never run. A claim whose unit died is final. A task
//     declared free of side effects (Config.SideEffectFree) is not claimed:
//     its call runs, and its answer is stored create-only, one durable write
//     a call; a call sent again while it runs may run twice, but one answer
//     is kept and every retry hears it.
//   - A closed session stays closed; a hello sent again opens nothing.
//   - It makes its cluster's streams (streams.go), and does not serve over
//     ones whose configuration could lose a claim or a record.
//   - Its memory is bounded: expired sessions are dropped (sessions.go).
package unit

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/group"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/replay"
)

// Platform is what a unit needs of its enclave: attesting itself, verifying
// the issuer, and knowing its own measurement (which its join names).
type Platform interface {
	enclave.Attester
	enclave.Verifier
	Measurement() []byte
}

// Config configures a Unit. Zero fields take the defaults noted.
type Config struct {
	// Conn is the unit's connection for everything but answering users: the
	// issuer, the manager, the cluster's streams. Required.
	Conn *nats.Conn
	// Serve is the connection the unit answers users on; default Conn.
	// With NATS credentials it is the credential's Serve key, which may
	// publish nothing but replies (package access).
	Serve                *nats.Conn
	Platform             Platform // required
	Task                 string   // required
	IssuerMeasurement    []byte   // required: the issuer measurement this unit pins
	PolicyHash           []byte   // optional: the issuer policy this unit pins
	AllowSimulatedIssuer bool     // accept a simulated issuer (development only)
	HTTPSAddr            string   // where to serve HTTPS, e.g. 127.0.0.1:8443; empty: no HTTPS (a channel-only task)
	Name                 string   // this replica's name in logs and the default page; default the HTTPS address, or the id
	Cluster              string   // the cluster to join at the manager; empty: join none
	Groups               []string // groups of the task whose pairs to obtain with the task's; see Group
	ID                   string   // this unit's id in its cluster (its credential's); default derived from Name
	Handler              http.Handler
	App                  App                              // answers the cluster channel's calls; default an echo
	OnSession            func(id []byte)                  // observes each session the unit comes to hold (benchmarks, tests); must not block
	OnAnswer             func(session []byte, seq uint64) // observes each answer JetStream acknowledged storing (tests); must not block
	KEM                  uint16                           // HPKE KEM for the report; default ML-KEM-768+X25519
	SessionTTL           time.Duration                    // how long a channel session lives; default 1h
	CallTimeout          time.Duration                    // how long the task may take over one call; default 30s
	// SideEffectFree declares that the App's calls have no effect beyond
	// their answers. Such a call is not claimed before it runs: it is one
	// durable write (its answer, create-only) rather than two, and a call
	// sent again while it runs, or whose unit died, runs again on whichever
	// unit takes it, the first answer stored being the one every retry
	// hears. By default a call is claimed before it runs and never runs
	// twice: one whose unit died before answering fails.
	SideEffectFree bool
	Quota          Quota // what one user may ask of the cluster
	Replicas       int   // JetStream replicas of the cluster's streams, when this unit makes them; default 1
	// SessionsMaxBytes and CallsMaxBytes bound the cluster's two streams,
	// when this unit makes them; default DefaultSessionsMaxBytes and
	// DefaultCallsMaxBytes, at least 16 MiB. A stream keeps the bounds it
	// was made with.
	SessionsMaxBytes int64
	CallsMaxBytes    int64
	StoreTimeout     time.Duration // how long a handshake waits for the manager to store its record; default 3s, less than a client's 5s
	Workers          int           // channel workers; default 2 × GOMAXPROCS
	RetryMin         time.Duration // first retry after a failure; default 500ms
	RetryMax         time.Duration // longest wait between retries; default 5s
	Timeout          time.Duration // per issuer request; default 5s
	// RootCheck is how often the unit asks the issuer whether it still
	// serves the root the unit holds, so that it follows a rotation
	// (following.go); default 1m.
	RootCheck time.Duration
	Metrics   prometheus.Registerer // registers the unit's metrics (metrics.go); nil for none
	Logger    *slog.Logger
	Now       func() time.Time
}

func (c *Config) fill() error {
	switch {
	case c.Conn == nil:
		return errors.New("unit: Config.Conn is required")
	case c.Platform == nil:
		return errors.New("unit: Config.Platform is required")
	case !messages.ValidTaskName(c.Task):
		return fmt.Errorf("unit: task name %q is not valid", c.Task)
	case !enclave.ValidMeasurement(c.IssuerMeasurement):
		return fmt.Errorf("unit: the pinned issuer measurement is %d bytes, want 32 or 48", len(c.IssuerMeasurement))
	case c.ID == "" && c.Name == "" && c.HTTPSAddr == "":
		return errors.New("unit: Config.ID, Config.Name or Config.HTTPSAddr is required: a unit without HTTPS needs an id")
	}
	if c.ID == "" {
		// Replicas on several hosts often serve on the same address
		// (0.0.0.0:8443): the host name keeps their default ids apart.
		name := c.Name
		if name == "" {
			host, _ := os.Hostname()
			name = host + "-" + c.HTTPSAddr
		}
		c.ID = unitID(name)
	}
	if c.Name == "" {
		c.Name = c.HTTPSAddr
	}
	if c.Name == "" {
		c.Name = c.ID
	}
	if c.Cluster != "" && !messages.ValidTaskName(c.Cluster) {
		return fmt.Errorf("unit: cluster id %q is not valid", c.Cluster)
	}
	if len(c.Groups) > messages.MaxGroups {
		return fmt.Errorf("unit: %d groups, at most %d", len(c.Groups), messages.MaxGroups)
	}
	for i, g := range c.Groups {
		if !messages.ValidTaskName(g) || slices.Contains(c.Groups[:i], g) {
			return fmt.Errorf("unit: group id %q is not valid or named twice", g)
		}
	}
	c.Groups = slices.Clone(c.Groups)
	if !messages.ValidUnitID(c.ID) {
		return fmt.Errorf("unit: unit id %q is not valid: letters, digits, '-' and '_', at most %d", c.ID, messages.MaxUnitID)
	}
	if c.Serve == nil {
		c.Serve = c.Conn
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.StoreTimeout <= 0 {
		c.StoreTimeout = 3 * time.Second
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.SessionsMaxBytes == 0 {
		c.SessionsMaxBytes = DefaultSessionsMaxBytes
	}
	if c.CallsMaxBytes == 0 {
		c.CallsMaxBytes = DefaultCallsMaxBytes
	}
	if c.SessionsMaxBytes < minStreamBytes || c.CallsMaxBytes < minStreamBytes {
		return fmt.Errorf("unit: the cluster's streams are bounded to %d and %d bytes; each bound must be at least %d", c.SessionsMaxBytes, c.CallsMaxBytes, minStreamBytes)
	}
	c.Quota.fill()
	if c.SessionTTL <= 0 {
		c.SessionTTL = defaultSessionTTL
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 30 * time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if c.RetryMin <= 0 {
		c.RetryMin = 500 * time.Millisecond
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = max(5*time.Second, c.RetryMin)
	}
	if c.RootCheck <= 0 {
		c.RootCheck = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Logger = c.Logger.With("component", "unit", "task", c.Task, "unit", c.Name)
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Unit is one replica of a task.
type Unit struct {
	cfg   Config
	log   *slog.Logger
	ready chan struct{}
	addr  atomic.Pointer[net.TCPAddr]
	pair  atomic.Pointer[issuerclient.Pair]
	cert  atomic.Pointer[tls.Certificate]

	running  atomic.Bool
	expired  atomic.Bool            // the certificate expired before it was renewed (following.go)
	rejoin   chan struct{}          // the membership must change: a new root, an expiry, a renewal after one
	token    atomic.Pointer[[]byte] // membership token, once joined
	js       jetstream.JetStream
	sessions sessionTable
	stale    staleClaims   // claims seen in progress, for taking over a dead unit's
	hellos   *replay.Cache // nonces of recent hellos
	quotas   *quotas
	metrics  *metrics // nil without Config.Metrics
}

// New checks cfg and returns a unit ready to Run.
func New(cfg Config) (*Unit, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	u := &Unit{cfg: cfg, log: cfg.Logger, ready: make(chan struct{}), rejoin: make(chan struct{}, 1), hellos: replay.New(2*maxClockSkew, cfg.Now()), quotas: newQuotas(cfg.Quota)}
	if u.cfg.Handler == nil {
		u.cfg.Handler = http.HandlerFunc(u.hello)
	}
	if u.cfg.App == nil {
		u.cfg.App = u.echo
	}
	m, err := newMetrics(cfg.Metrics, u)
	if err != nil {
		return nil, fmt.Errorf("unit: register metrics: %w", err)
	}
	u.metrics = m
	return u, nil
}

// Ready is closed once the unit holds a pair and serves HTTPS and, with a
// cluster key, its cluster's channel.
func (u *Unit) Ready() <-chan struct{} { return u.ready }

// Addr is the HTTPS listener's address. Valid after Ready; nil without
// HTTPS.
func (u *Unit) Addr() *net.TCPAddr { return u.addr.Load() }

// Pair is the certificate pair in service. Valid after Ready.
func (u *Unit) Pair() *issuerclient.Pair { return u.pair.Load() }

// Group returns mutual TLS among the units of a group of the unit's task,
// with the group's pair, which Config.Groups must name. It follows renewals.
// Valid after Ready.
func (u *Unit) Group(id string) (*group.TLS, error) {
	if !slices.Contains(u.cfg.Groups, id) {
		return nil, fmt.Errorf("unit: group %q is not among the unit's groups %v", id, u.cfg.Groups)
	}
	return group.New(group.Config{Group: id, Pair: u.Pair, Timeout: u.cfg.Timeout, Now: u.cfg.Now})
}

// Run obtains the pair, serves HTTPS and renews until ctx is done.
func (u *Unit) Run(ctx context.Context) error {
	if !u.running.CompareAndSwap(false, true) {
		return errors.New("unit: Run called twice")
	}
	if err := u.renew(ctx); err != nil {
		return err
	}
	stopHTTPS, err := u.serveHTTPS()
	if err != nil {
		return err
	}
	// The cluster's work stops when renewal does: a unit the issuer no
	// longer certifies leaves its cluster.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var member sync.WaitGroup
	if u.cfg.Cluster != "" {
		member.Go(func() { u.membership(ctx) })
	}
	if ck := u.pair.Load().ClusterKey; ck != nil {
		if u.js, err = jetstream.New(u.cfg.Conn); err != nil {
			return fmt.Errorf("unit: %w", err)
		}
		// Ready waits for the channel: once Ready, the unit answers its
		// cluster's handshakes and calls. It joins meanwhile, so that a
		// restarted unit is back as soon as it can be.
		up, exited := make(chan struct{}), make(chan struct{})
		member.Go(func() {
			defer close(exited)
			if err := u.serveChannel(ctx, ck, up); err != nil {
				u.log.Error("cluster channel", "err", err)
			}
		})
		select {
		case <-up:
		case <-exited:
		case <-ctx.Done():
		}
	}
	close(u.ready)

	err = u.renewLoop(ctx)
	stop()
	member.Wait() // it has left the cluster before HTTPS stops
	if serr := stopHTTPS(context.WithoutCancel(ctx)); serr != nil && err == nil {
		err = serr
	}
	return err
}

// serveHTTPS serves HTTPS with the pair, if Config.HTTPSAddr asks for it,
// and returns what stops it.
func (u *Unit) serveHTTPS() (stop func(context.Context) error, err error) {
	if u.cfg.HTTPSAddr == "" {
		u.log.Info("unit holds its certificate; no HTTPS asked for", "serial", u.serial(), "groups", u.cfg.Groups)
		return func(context.Context) error { return nil }, nil
	}
	ln, err := net.Listen("tcp", u.cfg.HTTPSAddr)
	if err != nil {
		return nil, fmt.Errorf("unit: listen on %s: %w", u.cfg.HTTPSAddr, err)
	}
	u.addr.Store(ln.Addr().(*net.TCPAddr))
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if u.expired.Load() {
				return nil, ErrExpired
			}
			return u.cert.Load(), nil
		},
	}
	if ck := u.pair.Load().ClusterKey; ck != nil {
		// Every unit of the cluster derives the same ticket key, so a TLS
		// session begun on one replica resumes on another.
		key, err := TicketKey(ck)
		if err != nil {
			return nil, fmt.Errorf("unit: %w", err)
		}
		tlsConf.SetSessionTicketKeys([][32]byte{key})
	}
	srv := &http.Server{
		Handler:           u.cfg.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(u.log.Handler(), slog.LevelDebug),
		TLSConfig:         tlsConf,
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	u.log.Info("unit serving HTTPS", "addr", ln.Addr().String(), "serial", u.serial(), "groups", u.cfg.Groups)
	return func(ctx context.Context) error {
		shutdown, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if serr := srv.Shutdown(shutdown); serr != nil {
			u.log.Warn("https shutdown", "err", serr)
		}
		if serr := <-served; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
			return fmt.Errorf("unit: https: %w", serr)
		}
		return nil
	}, nil
}

// renewLoop renews the pair at two thirds of the life of its first
// certificate to be due, task or group, or at once when the issuer's root
// was rotated (checked every RootCheck), until ctx is done.
func (u *Unit) renewLoop(ctx context.Context) error {
	for {
		due := max(PairRenewalDelay(u.cfg.Now(), u.pair.Load()), u.cfg.RetryMin) // never spin on a certificate that is already due
		t := time.NewTimer(min(due, u.cfg.RootCheck))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if due > u.cfg.RootCheck && !u.checkRoot(ctx) {
			continue
		}
		if err := u.renew(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// renew verifies the issuer and obtains a pair, retrying transient failures
// with backoff until ctx is done. It returns a terminal refusal at once.
func (u *Unit) renew(ctx context.Context) error {
	for failures := 0; ; failures++ {
		pair, err := u.obtain(ctx)
		if err == nil {
			cert := pair.TLSCertificate()
			u.cert.Store(&cert)
			old := u.pair.Swap(pair)
			if old != nil {
				u.log.Info("renewed certificate", "serial", u.serial(), "not_after", pair.Leaf.NotAfter)
			}
			u.adopted(old, pair)
			return nil
		}
		if Terminal(err) {
			// Retrying cannot change it. A unit that holds a pair stops
			// only on a refusal its root signed: a policy update dropped it
			// (its measurement removed, say), and it leaves its cluster.
			// Anybody on NATS can forge an unsigned refusal, which the unit
			// outlasts by retrying.
			if u.pair.Load() == nil {
				u.log.Error("issuer refused this unit", "err", err)
				return fmt.Errorf("unit: %w", err)
			}
			if errors.Is(err, issuerclient.ErrAuthenticRefusal) {
				u.log.Error("the issuer no longer certifies this unit; leaving the cluster", "err", err)
				return fmt.Errorf("unit: renewal refused: %w", err)
			}
		}
		wait := u.retryIn(failures)
		if p := u.pair.Load(); p != nil {
			if left := u.untilExpiry(); left <= 0 {
				u.expire(p)
			} else {
				wait = min(wait, left) // wake when it expires, to say so
			}
		}
		u.log.Warn("obtaining certificate failed; retrying", "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("unit: stopped before obtaining a certificate: %w", err)
		case <-t.C:
		}
	}
}

// issuerConfig is how the unit reaches and recognises the issuer, holding
// root (nil before its first pair).
func (u *Unit) issuerConfig(root *x509.Certificate) issuerclient.Config {
	return issuerclient.Config{
		Conn: u.cfg.Conn, Verifier: u.cfg.Platform, IssuerMeasurement: u.cfg.IssuerMeasurement,
		AllowSimulated: u.cfg.AllowSimulatedIssuer, PolicyHash: u.cfg.PolicyHash, Timeout: u.cfg.Timeout, Root: root,
	}
}

func (u *Unit) obtain(ctx context.Context) (*issuerclient.Pair, error) {
	var held *x509.Certificate
	if p := u.pair.Load(); p != nil {
		// Renewal: the root this unit holds vouches for any issuer that
		// holds its key, an upgraded build included, and for the roots
		// it was rotated to.
		held = p.Root()
	}
	client := u.issuerConfig(held)
	trust, err := issuerclient.VerifyIssuer(ctx, client)
	if err != nil {
		return nil, err
	}
	c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{
		Client: client, Trust: trust, Attester: u.cfg.Platform, KEM: u.cfg.KEM, Cluster: u.cfg.Cluster, Groups: u.cfg.Groups, Now: u.cfg.Now,
	})
	if err != nil {
		return nil, err
	}
	return c.Certify(ctx, u.cfg.Task)
}

func (u *Unit) serial() string {
	p := u.pair.Load()
	return hex.EncodeToString(p.Leaf.SerialNumber.Bytes())
}

func (u *Unit) hello(w http.ResponseWriter, _ *http.Request) {
	p := u.pair.Load()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "cohort unit %s of task %s; certificate serial %x, valid until %s\n",
		u.cfg.Name, u.cfg.Task, p.Leaf.SerialNumber, p.Leaf.NotAfter.UTC().Format(time.RFC3339))
}

// Terminal reports whether an error from obtaining a pair is one that retrying
// cannot change.
func Terminal(err error) bool {
	for _, target := range []error{
		issuerclient.ErrMeasurement, issuerclient.ErrSimulated, issuerclient.ErrDebug, issuerclient.ErrPolicy,
		messages.ErrMeasurement, messages.ErrSimulated, messages.ErrUnknownTask, messages.ErrUnknownGroup, messages.ErrNotInGroup,
		&messages.Error{Code: messages.CodeDebug}, &messages.Error{Code: messages.CodeSecurityVersion},
		messages.ErrPlatform, messages.ErrTCBStatus, messages.ErrTCB, messages.ErrClusterNotCovered,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// TicketKey derives the TLS session-ticket key of a cluster from its key and
// epoch. The label keeps it apart from every other use of the cluster key.
func TicketKey(ck *issuerclient.ClusterKey) ([32]byte, error) {
	var k [32]byte
	info := fmt.Sprintf("cohort/v1 tls session tickets\x00%s\x00%d", ck.Cluster, ck.Epoch)
	b, err := hkdf.Key(sha256.New, ck.Key, nil, info, len(k))
	if err != nil {
		return k, fmt.Errorf("derive ticket key: %w", err)
	}
	copy(k[:], b)
	clear(b)
	return k, nil
}
