package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/unit"
)

// run starts run in the background, waits for ready, and stops it at the
// end of the test.
func run(t *testing.T, f func(context.Context) error, ready <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("stopped before ready: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("not ready in time")
	}
}

// stack is a running cluster c1 of task demo: NATS, issuer, manager, units.
type stack struct {
	srv   *embednats.Server
	units []*unit.Unit
	roots *x509.CertPool
	conn  func() *nats.Conn
	tap   *nats.Conn
}

// newStack starts n units of cluster c1; app, if not nil, is their task;
// tap, if not nil, sees every message on the server from before the issuer
// starts; opts adjust each unit's configuration.
func newStack(t *testing.T, n int, app unit.App, tap nats.MsgHandler, opts ...func(*unit.Config)) *stack {
	t.Helper()
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	st := &stack{srv: srv}
	st.conn = func() *nats.Conn {
		nc, err := srv.Connect()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	if tap != nil {
		st.tap = st.conn()
		if _, err := st.tap.Subscribe(">", tap); err != nil {
			t.Fatal(err)
		}
		if err := st.tap.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	m, err := sim.MeasurementHex(sim.UnitIdentity("demo"))
	if err != nil {
		t.Fatal(err)
	}
	policy, err := issuer.ParsePolicy(fmt.Appendf(nil, "version: 1\naccept_simulated: true\ntasks:\n  - name: demo\n    measurements: [%s]\nclusters:\n  - id: c1\n    task: demo\n", m))
	if err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, sim.SealSecretSize)
	rand.Read(secret)
	ip, _ := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: secret})
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: st.conn(), Platform: ip, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	run(t, iss.Run, iss.Ready())
	mgr, err := manager.New(manager.Config{Conn: st.conn(), Root: iss.Root(), Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, mgr.Run, mgr.Ready())
	pin, _ := sim.Measure(sim.IssuerIdentity)
	up, _ := sim.New(sim.Config{Identity: sim.UnitIdentity("demo")})
	for i := range n {
		cfg := unit.Config{
			Conn: st.conn(), Platform: up, Task: "demo", IssuerMeasurement: pin, AllowSimulatedIssuer: true,
			HTTPSAddr: "127.0.0.1:0", Name: fmt.Sprintf("cap%d", i), Cluster: "c1", RetryMin: 20 * time.Millisecond, App: app,
		}
		for _, o := range opts {
			o(&cfg)
		}
		u, err := unit.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		run(t, u.Run, u.Ready())
		st.units = append(st.units, u)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(60 * time.Second); mgr.Table().Counts(time.Now())[manager.Active] < n; <-tick.C {
		if time.Now().After(deadline) {
			t.Fatal("units did not join")
		}
	}
	st.roots = x509.NewCertPool()
	st.roots.AddCert(iss.Root())
	return st
}

// Every NATS message of a run (joins, certify, handshakes, session records,
// calls, answers, a close, JetStream's own traffic) is recorded; none holds a
// unit's task key, the cluster key or a session key, raw, hex or base64.
func TestNoKeyCrossesNATS(t *testing.T) {
	var mu sync.Mutex
	var captured [][]byte
	st := newStack(t, 3, nil, func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		captured = append(captured, append([]byte(m.Subject+" "), m.Data...))
		for k, vs := range m.Header {
			for _, v := range vs {
				captured = append(captured, []byte(k+": "+v))
			}
		}
	})
	s, err := Dial(context.Background(), Config{Conn: st.conn(), User: "alice", Cluster: "c1", Roots: st.roots})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := s.Call(context.Background(), fmt.Appendf(nil, "call %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := st.tap.Flush(); err != nil {
		t.Fatal(err)
	}

	secrets := map[string][]byte{"session calls key": s.keys.C2S, "session answers key": s.keys.S2C}
	for i, u := range st.units {
		p := u.Pair()
		raw, err := p.Key.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		pkcs8, err := x509.MarshalPKCS8PrivateKey(p.Key)
		if err != nil {
			t.Fatal(err)
		}
		secrets[fmt.Sprintf("unit %d task key", i)] = raw
		secrets[fmt.Sprintf("unit %d task key, PKCS #8", i)] = pkcs8
		secrets["cluster key"] = p.ClusterKey.Key
	}
	mu.Lock()
	defer mu.Unlock()
	if len(captured) < 100 {
		t.Fatalf("only %d messages captured: the tap saw too little", len(captured))
	}
	for name, sec := range secrets {
		forms := [][]byte{sec, []byte(hex.EncodeToString(sec)), []byte(base64.StdEncoding.EncodeToString(sec)), []byte(base64.RawURLEncoding.EncodeToString(sec))}
		for _, msg := range captured {
			for _, f := range forms {
				if bytes.Contains(msg, f) {
					t.Fatalf("the %s crossed NATS in a message: %.120q", name, msg)
				}
			}
		}
	}
	t.Logf("%d NATS messages captured; none holds any of %d secrets", len(captured), len(secrets))
}
