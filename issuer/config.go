package issuer

// The issuer's configuration: what each field means, its default, and the
// checks New makes of it (fill).

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/rate"
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
