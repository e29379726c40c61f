package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/rate"
)

// TestRotationGovernedAndFollowed: rotating the root is a policy update
// that two of the three administrators sign (one signature is refused,
// --init over the state is refused). With a second issuer replica running
// throughout, every answer a user gets is one root, never the old after
// the new; a user holding the old root moves with one call that checks the
// vouchers; the running units renew under the new root without a restart
// and join again; the manager follows, and takes joins only under the new
// root; a user with the new root calls the cluster; the history keeps both
// versions, and the rotation is one event.
func TestRotationGovernedAndFollowed(t *testing.T) {
	l := newLifecycle(t)
	ib := buildMeasure(t, sim.IssuerIdentity, "")
	demo := buildMeasure(t, sim.UnitIdentity("demo"), "")
	m1 := newMachine(t)
	// A user asks for the evidence 100 times in a row, the units and the
	// manager every 100 ms: no evidence rate holds them here.
	lease := func(cfg *issuer.Config) {
		cfg.Lease = 500 * time.Millisecond
		cfg.EvidenceRate, cfg.EvidenceTotal = rate.Limit{Rate: 1e6, Burst: 1e6}, rate.Limit{Rate: 1e6, Burst: 1e6}
	}
	a, stopA, aDone := l.startIssuerTuned(m1, l.doc(1, time.Hour, [][]byte{demo}, [][]byte{ib}, ""), lease)
	b, stopB, bDone := l.startIssuerTuned(newMachine(t), nil, lease)
	old := a.Root()
	g := access.Grant{Role: access.Manager}
	mgr, err := manager.New(manager.Config{Conn: l.conn(g, access.State), Serve: l.conn(g, access.Serve), Root: old, Interval: heartbeat, Logger: logger(t),
		RootPoll: 100 * time.Millisecond, Roots: issuerclient.Follower{Config: issuerclient.Config{Conn: l.conn(g, access.State), Verifier: sim.Verifier(), IssuerMeasurement: ib, AllowSimulated: true}}})
	if err != nil {
		t.Fatal(err)
	}
	runUntilReady(t, mgr.Run, mgr.Ready())
	var units []*unitHandle
	for _, id := range []string{"u1", "u2"} {
		cfg := l.unitOf(id, "", time.Hour)
		cfg.RootCheck = 100 * time.Millisecond
		u, done := runUnit(t, cfg)
		units = append(units, &unitHandle{u: u, done: done})
	}
	eventually(t, "two members", func() bool { return mgr.Table().Counts(time.Now())[manager.Active] == 2 })

	// A user asks for the issuer's evidence throughout, holding the old root.
	user := l.conn(access.Grant{Role: access.User, Name: "alice"}, access.State)
	type seen struct{ root []byte }
	answers := make(chan []seen, 1)
	go func() {
		var got []seen
		for len(got) < 100 {
			tr, err := issuerclient.VerifyIssuer(context.Background(), issuerclient.Config{Conn: user, Verifier: sim.Verifier(), IssuerMeasurement: ib, AllowSimulated: true, Root: old, Timeout: 10 * time.Second})
			if err != nil {
				got = append(got, seen{root: []byte(err.Error())})
			} else {
				got = append(got, seen{root: tr.Root.Raw})
			}
		}
		answers <- got
	}()

	v2 := l.doc(2, time.Hour, [][]byte{demo}, [][]byte{ib}, "root_generation: 2\n")
	if _, err := l.apply(v2, l.sign(v2, 0)); !errors.Is(err, messages.ErrPolicySignatures) {
		t.Fatalf("a rotation one administrator signed: %v, want %v", err, messages.ErrPolicySignatures)
	}
	if _, err := l.apply(v2, l.sign(v2, 0, 2)); err != nil {
		t.Fatalf("the rotation: %v", err)
	}
	eventually(t, "both replicas serve the new root", func() bool {
		return !bytes.Equal(a.Root().Raw, old.Raw) && bytes.Equal(a.Root().Raw, b.Root().Raw)
	})
	newRoot := a.Root()
	// The user moves: the held root vouches for the new one.
	moved, err := issuerclient.VerifyIssuer(context.Background(), issuerclient.Config{Conn: user, Verifier: sim.Verifier(), Root: old, AllowSimulated: true, Timeout: 10 * time.Second})
	if err != nil || !bytes.Equal(moved.Root.Raw, newRoot.Raw) || moved.Previous == nil {
		t.Fatalf("the user holding the old root: %+v, %v", moved, err)
	}
	got := <-answers
	sawNew, olds := false, 0
	for k, s := range got {
		switch {
		case bytes.Equal(s.root, newRoot.Raw):
			sawNew = true
		case bytes.Equal(s.root, old.Raw):
			olds++
			if sawNew {
				t.Fatalf("answer %d: the old root after the new", k)
			}
		default:
			t.Fatalf("answer %d: %s", k, s.root)
		}
	}
	t.Logf("%d answers during and after the rotation: %d under the old root, then %d under the new", len(got), olds, len(got)-olds)

	// The units renew under the new root, without a restart, and the
	// manager takes their joins under it.
	for k, h := range units {
		eventually(t, "a unit renews under the new root", func() bool { return bytes.Equal(h.u.Pair().Root().Raw, newRoot.Raw) })
		select {
		case err := <-h.done:
			t.Fatalf("unit %d stopped: %v", k, err)
		default:
		}
	}
	eventually(t, "the manager follows the root", func() bool { return bytes.Equal(mgr.Root().Raw, newRoot.Raw) })
	eventually(t, "both units joined under the new root", func() bool {
		n := 0
		for _, v := range mgr.Table().Snapshot(time.Now()) {
			if v.State == manager.Active {
				n++
			}
		}
		return n == 2 && mgr.Stats().Joins.Load() >= 4
	})
	roots := x509.NewCertPool()
	roots.AddCert(newRoot)
	s, err := client.Dial(testContext(t), client.Config{Conn: user, User: "alice", Cluster: "c1", Roots: roots})
	if err != nil {
		t.Fatalf("a user with the new root: %v", err)
	}
	if _, err := s.Call(testContext(t), []byte("after the rotation")); err != nil {
		t.Fatal(err)
	}

	// --init over the state is refused; the history keeps both versions;
	// the rotation is one event.
	cfg := l.issuerConfig(newMachine(t), "", l.doc(1, time.Hour, [][]byte{demo}, [][]byte{ib}, ""))
	cfg.Init = true
	if _, _, done := l.run(cfg); !strings.Contains(errString(<-done), "--init refused") {
		t.Fatal("--init over the state was not refused")
	}
	shown, err := issuerclient.ShowPolicy(context.Background(), l.op, deadline)
	if err != nil || len(shown.History) != 2 || shown.History[1].Version != 2 {
		t.Fatalf("policy show after the rotation: %+v, %v", shown, err)
	}
	l.eventsOnce(events.RootRotated, 1)
	for _, d := range []<-chan error{aDone, bDone} {
		select {
		case err := <-d:
			t.Fatalf("an issuer replica stopped: %v", err)
		default:
		}
	}

	// Every issuer lost: two holders who kept the root.pem of before the
	// rotation restore the state into a fresh issuer, which serves the new
	// root; the old root vouches for the state's.
	stopA()
	stopB()
	<-aDone
	<-bDone
	waiting := make(chan string, 1)
	rcfg := l.issuerConfig(newMachine(t), "", nil)
	rcfg.AwaitRecovery, rcfg.Lease = true, 500*time.Millisecond
	rcfg.Waiting = func(instance string) { waiting <- instance }
	fresh, _, freshDone := l.run(rcfg)
	select {
	case <-waiting:
	case err := <-freshDone:
		t.Fatalf("the fresh issuer stopped: %v", err)
	case <-time.After(deadline):
		t.Fatal("the fresh issuer does not wait for recovery")
	}
	for _, k := range []int{0, 1} {
		if _, err := issuerclient.Recover(context.Background(), issuerclient.RecoverConfig{Conn: l.op, Verifier: sim.Verifier(), IssuerMeasurement: ib, AllowSimulated: true, Key: l.recovery[k], Root: old}); err != nil {
			t.Fatalf("holder %d, holding the root of before the rotation: %v", k, err)
		}
	}
	readyAfterRecovery(t, fresh, freshDone)
	if !bytes.Equal(fresh.Root().Raw, newRoot.Raw) {
		t.Fatal("the recovered issuer serves another root than the rotated one")
	}
}

type unitHandle struct {
	u interface {
		Pair() *issuerclient.Pair
	}
	done <-chan error
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestExpiredUnitStopsServing: a unit whose issuer is gone past its
// certificate's end serves neither HTTPS nor its cluster's channel under
// the expired certificate, and leaves its cluster; once an issuer is back
// it renews, serves and joins again, without a restart.
func TestExpiredUnitStopsServing(t *testing.T) {
	l := newLifecycle(t)
	ib := buildMeasure(t, sim.IssuerIdentity, "")
	demo := buildMeasure(t, sim.UnitIdentity("demo"), "")
	machine := newMachine(t)
	doc := l.doc(1, 3*time.Second, [][]byte{demo}, [][]byte{ib}, "")
	iss, stopIssuer, issDone := l.startIssuer(machine, "", doc)
	mgr := l.startManager(iss.Root())
	u, unitDone := runUnit(t, l.unitOf("u1", "", 3*time.Second))
	eventually(t, "u1 joined", func() bool { return mgr.Table().Counts(time.Now())[manager.Active] == 1 })
	roots := x509.NewCertPool()
	roots.AddCert(iss.Root())
	httpsServes := func() error {
		conn, err := tls.Dial("tcp", u.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "localhost"})
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := httpsServes(); err != nil {
		t.Fatalf("HTTPS before: %v", err)
	}

	stopIssuer()
	<-issDone
	notAfter := u.Pair().Leaf.NotAfter
	eventually(t, "HTTPS refused under the expired certificate", func() bool { return time.Now().After(notAfter) && httpsServes() != nil })
	user := l.conn(access.Grant{Role: access.User, Name: "alice"}, access.State)
	_, err := client.Dial(testContext(t), client.Config{Conn: user, User: "alice", Cluster: "c1", Roots: roots, Timeout: time.Second})
	if !errors.Is(err, &messages.Error{Code: messages.CodeNotReady}) {
		t.Fatalf("a handshake with the expired unit: %v, want %s", err, messages.CodeNotReady)
	}
	eventually(t, "u1 left its cluster", func() bool { return len(mgr.Table().Snapshot(time.Now())) == 0 })
	select {
	case err := <-unitDone:
		t.Fatalf("the unit stopped: %v", err)
	default:
	}

	iss2, _, _ := l.startIssuer(machine, "", nil)
	if !bytes.Equal(iss2.Root().Raw, iss.Root().Raw) {
		t.Fatal("the issuer came back with another root")
	}
	eventually(t, "u1 renewed", func() bool { return u.Pair().Leaf.NotAfter.After(notAfter) })
	eventually(t, "HTTPS serves again", func() bool { return httpsServes() == nil })
	eventually(t, "u1 joined again", func() bool { return mgr.Table().Counts(time.Now())[manager.Active] == 1 })
	s, err := client.Dial(testContext(t), client.Config{Conn: user, User: "alice", Cluster: "c1", Roots: roots})
	if err != nil {
		t.Fatalf("a handshake after the renewal: %v", err)
	}
	if _, err := s.Call(testContext(t), []byte("back")); err != nil {
		t.Fatal(err)
	}
}
