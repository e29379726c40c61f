package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

const heartbeat = 250 * time.Millisecond

// allEvents reads the audit stream as it is now.
func allEvents(t *testing.T, nc *nats.Conn) []*events.Event {
	t.Helper()
	var out []*events.Event
	err := events.Follow(context.Background(), nc, events.FollowConfig{}, func(e *events.Event, err error) error {
		if err != nil {
			return err
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func hasEvent(t *testing.T, nc *nats.Conn, kind, unitID, code string) bool {
	return slices.ContainsFunc(allEvents(t, nc), func(e *events.Event) bool {
		return e.Kind == kind && (unitID == "" || e.Unit == unitID) && (code == "" || e.Code == code)
	})
}

func memberState(m *manager.Manager, key string) manager.State {
	for _, v := range m.Table().Snapshot(time.Now()) {
		if manager.Key(v.Member.Cluster, v.Member.Unit) == key {
			return v.State
		}
	}
	return ""
}

// Three units join; one loses its connection (no polite leave) and is
// evicted within about three heartbeat intervals, with an event; it comes
// back and rejoins; the manager restarted mid-way loses no member.
func TestMembershipJoinEvictRejoinRestart(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	iss := startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	mgr := startManager(t, connect(t, srv), iss.Root(), heartbeat)

	conns := make([]*nats.Conn, 3)
	for i := range conns {
		conns[i] = connect(t, srv)
		cfg := unitConfig(t, conns[i], "demo", sim.UnitIdentity("demo"))
		cfg.Name, cfg.Cluster = fmt.Sprintf("u%d", i+1), "c1"
		startUnit(t, cfg)
	}
	eventually(t, "three units active", func() bool { return mgr.Table().Counts(time.Now())[manager.Active] == 3 })
	for _, u := range mgr.Status().Clusters[0].Units {
		if u.Addr == "" || u.Task != "demo" || len(u.Measurement) != 64 {
			t.Errorf("member %+v lacks its address, task or measurement", u)
		}
	}

	// Cut u2's connection: its heartbeats stop and it cannot say goodbye.
	killed := time.Now()
	conns[1].Close()
	eventually(t, "u2 evicted", func() bool { return memberState(mgr.Manager, "c1.u2") == "" })
	// How soon is the benchmark's to measure (cohort bench members): a
	// loaded machine stretches any bound a test would set.
	t.Logf("evicted %v after its connection was cut (heartbeat %v, evicted after 3 missed)", time.Since(killed).Round(time.Millisecond), heartbeat)
	eventually(t, "an eviction event", func() bool { return hasEvent(t, nc, events.UnitEvicted, "u2", "") })
	for _, e := range allEvents(t, nc) {
		if e.Kind == events.UnitEvicted {
			t.Logf("eviction event: %s", e.Reason) // the silence the manager measured from the last heartbeat
		}
	}
	if n := mgr.Table().Counts(time.Now())[manager.Active]; n != 2 {
		t.Errorf("%d active after the eviction, want 2", n)
	}

	// u2 comes back, on a new connection, and joins again.
	cfg := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
	cfg.Name, cfg.Cluster = "u2", "c1"
	startUnit(t, cfg)
	eventually(t, "u2 rejoined", func() bool { return memberState(mgr.Manager, "c1.u2") == manager.Active })

	// Restart the manager: the new one loads every member from the bucket and
	// evicts none, as their heartbeats go on.
	mgr.stop()
	mgr = startManager(t, connect(t, srv), iss.Root(), heartbeat)
	if n := len(mgr.Table().Snapshot(time.Now())); n != 3 {
		t.Fatalf("restarted manager loaded %d members, want 3", n)
	}
	eventually(t, "heartbeats after the restart", func() bool { return mgr.Stats().Heartbeats.Load() >= 3*6 })
	if n := mgr.Table().Counts(time.Now())[manager.Active]; n != 3 || mgr.Stats().Evictions.Load() != 0 {
		t.Fatalf("after the restart: %d active, %d evicted; want 3 and 0", n, mgr.Stats().Evictions.Load())
	}
}

// Bad joins are refused with a reason and an event, and change no membership.
func TestBadJoinsAreRefused(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	iss := startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	mgr := startManager(t, connect(t, srv), iss.Root(), heartbeat)
	ctx := context.Background()
	demo := unitPlatform(t, sim.UnitIdentity("demo"))

	pair, err := certifier(t, nc, sim.UnitIdentity("demo")).Certify(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	// A pair from another issuer, whose root the manager does not trust.
	otherSrv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer otherSrv.Close()
	otherNC := connect(t, otherSrv)
	startIssuer(t, otherNC, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	foreign, err := certifier(t, otherNC, sim.UnitIdentity("demo")).Certify(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	join := func(cluster, id string, m []byte) []byte {
		req, err := unit.JoinRequest(pair, cluster, id, m, "127.0.0.1:1", time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	foreignJoin, err := unit.JoinRequest(foreign, "c1", "f1", demo.Measurement(), "127.0.0.1:1", time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		cluster, id string // the subject's
		req         []byte
		code        messages.Code
	}{
		{"key not chaining to the root", "c1", "f1", foreignJoin, messages.CodeCertificate},
		{"cluster the certificate does not cover", "o1", "x1", join("o1", "x1", demo.Measurement()), messages.CodeClusterNotCovered},
		{"measurement the certificate does not name", "c1", "x2", join("c1", "x2", measure(t, sim.UnitIdentity("other"))), messages.CodeMeasurement},
		{"garbage", "c1", "x9", []byte("garbage \xc1"), messages.CodeMalformed},
		{"oversized", "c1", "x9", make([]byte, messages.MaxJoinRequest+1), messages.CodeTooLarge},
		{"another unit's join", "c1", "x4", join("c1", "x5", demo.Measurement()), messages.CodeWrongSubject},
	}
	for _, tc := range cases {
		_, err := unit.Join(ctx, nc, tc.cluster, tc.id, tc.req, deadline)
		var e *messages.Error
		if !errors.As(err, &e) || e.Code != tc.code || e.Reason == "" {
			t.Errorf("%s: %v, want %s with a reason", tc.name, err, tc.code)
			continue
		}
		eventually(t, tc.name+": refusal event", func() bool { return hasEvent(t, nc, events.UnitJoinRefused, "", string(tc.code)) })
	}
	if n := len(mgr.Table().Snapshot(time.Now())); n != 0 {
		t.Fatalf("refused joins made %d members", n)
	}
	// A forged signature: a real body, someone else's signature.
	var r messages.JoinRequest
	mustDecode(t, join("c1", "x3", demo.Measurement()), &r)
	r.Signature[len(r.Signature)-1] ^= 1
	forged, _ := messages.Marshal(&r)
	if _, err := unit.Join(ctx, nc, "c1", "x3", forged, deadline); !errors.Is(err, messages.ErrSignature) {
		t.Errorf("forged signature: %v", err)
	}
	// The real join is admitted.
	good := join("c1", "ok1", demo.Measurement())
	if _, err := unit.Join(ctx, nc, "c1", "ok1", good, deadline); err != nil {
		t.Fatalf("a good join: %v", err)
	}
	// The same join again is a replay: refused, and the member's token stays.
	tok := mgr.Table().Snapshot(time.Now())[0].Member.Token
	if _, err := unit.Join(ctx, nc, "c1", "ok1", good, deadline); !errors.Is(err, messages.ErrReplay) {
		t.Errorf("a replayed join: %v, want %v", err, messages.ErrReplay)
	}
	if now := mgr.Table().Snapshot(time.Now())[0].Member.Token; !bytes.Equal(now, tok) {
		t.Error("a replayed join rotated the member's token")
	}
	if n := len(mgr.Table().Snapshot(time.Now())); n != 1 {
		t.Fatalf("%d members after one good join", n)
	}
}

// Two managers at once share the bucket without corrupting it: both see
// every member (one handled each join, the other learned it by its watch),
// both hear every heartbeat, and a dead unit is evicted once, with one event.
func TestTwoManagersAgree(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	iss := startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	a := startManager(t, connect(t, srv), iss.Root(), heartbeat)
	b := startManager(t, connect(t, srv), iss.Root(), heartbeat)
	if err := a.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "Run called twice") {
		t.Fatalf("a second Run of a running manager: %v, want it refused", err)
	}

	conns := make([]*nats.Conn, 4)
	for i := range conns {
		conns[i] = connect(t, srv)
		cfg := unitConfig(t, conns[i], "demo", sim.UnitIdentity("demo"))
		cfg.Name, cfg.Cluster = fmt.Sprintf("t%d", i), "c1"
		startUnit(t, cfg)
	}
	for _, m := range []*runningManager{a, b} {
		eventually(t, "both managers see four active", func() bool { return m.Table().Counts(time.Now())[manager.Active] == 4 })
	}
	conns[0].Close()
	for _, m := range []*runningManager{a, b} {
		eventually(t, "both managers drop the dead unit", func() bool { return memberState(m.Manager, "c1.t0") == "" })
	}
	// Let a few more sweeps pass: neither may report it again.
	hb := a.Stats().Heartbeats.Load()
	eventually(t, "more heartbeats", func() bool { return a.Stats().Heartbeats.Load() >= hb+3*6 })
	evictions := 0
	for _, e := range allEvents(t, nc) {
		if e.Kind == events.UnitEvicted && e.Unit == "t0" {
			evictions++
		}
	}
	if evictions != 1 || a.Stats().Evictions.Load()+b.Stats().Evictions.Load() != 1 {
		t.Fatalf("%d eviction events, %d+%d evictions; want exactly one", evictions, a.Stats().Evictions.Load(), b.Stats().Evictions.Load())
	}
	for _, m := range []*runningManager{a, b} {
		if n := m.Table().Counts(time.Now())[manager.Active]; n != 3 {
			t.Errorf("a manager counts %d active, want 3", n)
		}
	}
}
