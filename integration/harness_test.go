// Package integration tests cohort's parts together on the real NATS server,
// embedded in the test process on random loopback ports: no mocked bus.
package integration

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/unit"
)

// deadline bounds every wait; generous for a loaded 2-core machine under -race.
const deadline = 60 * time.Second

func logger(t *testing.T) *slog.Logger {
	if os.Getenv("COHORT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startNATS starts an embedded server on a random port with its store in dir.
func startNATS(t *testing.T, dir string) *embednats.Server {
	t.Helper()
	srv, err := embednats.Start(embednats.Config{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

func connect(t *testing.T, srv *embednats.Server) *nats.Conn {
	t.Helper()
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func measure(t *testing.T, identity string) []byte {
	t.Helper()
	m, err := sim.Measure(identity)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// policyYAML is a policy accepting this test binary's demo task.
func policyYAML(t *testing.T, acceptSimulated bool, taskValidity time.Duration) []byte {
	t.Helper()
	return fmt.Appendf(nil, `version: 1
accept_simulated: %t
validity:
  task: %s
tasks:
  - name: demo
    measurements: [%s]
    dns_names: [localhost]
    ip_addresses: [127.0.0.1]
  - name: other
    measurements: [%s]
clusters:
  - id: c1
    task: demo
  - id: o1
    task: other
`, acceptSimulated, taskValidity, hex.EncodeToString(measure(t, sim.UnitIdentity("demo"))),
		hex.EncodeToString(measure(t, sim.UnitIdentity("other"))))
}

func parsePolicy(t *testing.T, y []byte) *issuer.Policy {
	t.Helper()
	p, err := issuer.ParsePolicy(y)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// machine is one simulated machine of a test: its CPU's seal secret and a
// folder for what an issuer keeps on it (the sealed key cache).
type machine struct {
	secret []byte
	dir    string
}

// newMachine makes a simulated machine.
func newMachine(t *testing.T) *machine {
	t.Helper()
	s := make([]byte, sim.SealSecretSize)
	if _, err := rand.Read(s); err != nil {
		t.Fatal(err)
	}
	return &machine{secret: s, dir: t.TempDir()}
}

// keyCache is the issuer's key cache on the machine.
func (m *machine) keyCache() issuer.KeyCache {
	return issuer.FileKeyCache(filepath.Join(m.dir, issuer.KeyCacheFile))
}

// platform is the simulated issuer platform on the machine.
func (m *machine) platform(t *testing.T) *sim.Platform {
	t.Helper()
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: m.secret})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type runningIssuer struct {
	*issuer.Issuer
	stop func() // cancels Run and waits for it
}

func startIssuer(t *testing.T, nc *nats.Conn, policy *issuer.Policy, m *machine) *runningIssuer {
	t.Helper()
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: nc, Platform: m.platform(t), Policy: policy, KeyCache: m.keyCache(), Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	stop := runUntilReady(t, iss.Run, iss.Ready())
	return &runningIssuer{Issuer: iss, stop: stop}
}

// runUntilReady runs run in the background until ready is closed, and returns
// a function that stops it and waits. A run that fails before it is ready
// fails the test.
func runUntilReady(t *testing.T, run func(context.Context) error, ready <-chan struct{}) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("stopped before it was ready: %v", err)
	case <-time.After(deadline):
		cancel()
		t.Fatal("not ready in time")
	}
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(deadline):
			t.Error("did not stop in time")
		}
	}
	t.Cleanup(stop)
	return stop
}

type runningManager struct {
	*manager.Manager
	stop func()
}

func startManager(t *testing.T, nc *nats.Conn, root *x509.Certificate, interval time.Duration) *runningManager {
	t.Helper()
	m, err := manager.New(manager.Config{Conn: nc, Root: root, Interval: interval, Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return &runningManager{Manager: m, stop: runUntilReady(t, m.Run, m.Ready())}
}

func unitPlatform(t *testing.T, identity string) *sim.Platform {
	t.Helper()
	p, err := sim.New(sim.Config{Identity: identity})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func unitConfig(t *testing.T, nc *nats.Conn, task, identity string) unit.Config {
	return unit.Config{
		Conn:                 nc,
		Platform:             unitPlatform(t, identity),
		Task:                 task,
		IssuerMeasurement:    measure(t, sim.IssuerIdentity),
		AllowSimulatedIssuer: true,
		HTTPSAddr:            "127.0.0.1:0",
		RetryMin:             50 * time.Millisecond,
		RetryMax:             time.Second,
		Logger:               logger(t),
	}
}

func startUnit(t *testing.T, cfg unit.Config) *unit.Unit {
	t.Helper()
	u, err := unit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runUntilReady(t, u.Run, u.Ready())
	return u
}

// certifier returns a certifier for the demo task's code, as a unit has.
func certifier(t *testing.T, nc *nats.Conn, identity string) *issuerclient.Certifier {
	t.Helper()
	return certifierFor(t, nc, identity, "")
}

// certifierFor returns a certifier that asks for cluster's key too.
func certifierFor(t *testing.T, nc *nats.Conn, identity, cluster string) *issuerclient.Certifier {
	t.Helper()
	p := unitPlatform(t, identity)
	client := issuerclient.Config{Conn: nc, Verifier: p, IssuerMeasurement: measure(t, sim.IssuerIdentity), AllowSimulated: true}
	trust, err := issuerclient.VerifyIssuer(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, Attester: p, Cluster: cluster})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v", what, deadline)
		}
		<-tick.C
	}
}

// cluster is a running cluster c1 of task demo: NATS, the issuer, the
// manager and units, each unit on its own connection.
type cluster struct {
	srv   *embednats.Server
	nc    *nats.Conn // the test's own connection
	iss   *runningIssuer
	mgr   *runningManager
	units []*unit.Unit
	conns map[string]*nats.Conn // each unit's connection, by name
	roots *x509.CertPool        // the issuer's root, as a user trusts it
}

// startCluster starts n units of cluster c1, named prefix0, prefix1, …, and
// waits until the manager counts them all active. tune, if not nil, adjusts
// each unit's configuration.
func startCluster(t *testing.T, n int, prefix string, tune func(*unit.Config)) *cluster {
	t.Helper()
	c := &cluster{srv: startNATS(t, t.TempDir()), conns: map[string]*nats.Conn{}}
	c.nc = connect(t, c.srv)
	c.iss = startIssuer(t, c.nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	c.mgr = startManager(t, connect(t, c.srv), c.iss.Root(), heartbeat)
	for i := range n {
		name := fmt.Sprintf("%s%d", prefix, i)
		c.conns[name] = connect(t, c.srv)
		cfg := unitConfig(t, c.conns[name], "demo", sim.UnitIdentity("demo"))
		cfg.Name, cfg.Cluster = name, "c1"
		if tune != nil {
			tune(&cfg)
		}
		c.units = append(c.units, startUnit(t, cfg))
	}
	eventually(t, fmt.Sprintf("%d members active", n), func() bool { return c.mgr.Table().Counts(time.Now())[manager.Active] == n })
	c.roots = x509.NewCertPool()
	c.roots.AddCert(c.iss.Root())
	return c
}

// streamState is a stream's message count and last sequence, to show that
// something wrote nothing.
func streamState(t *testing.T, nc *nats.Conn, stream string) [2]uint64 {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info := st.CachedInfo()
	return [2]uint64{info.State.Msgs, info.State.LastSeq}
}
