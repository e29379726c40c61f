package issuer

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/messages"
)

const testDeadline = 30 * time.Second

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(testDeadline)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v", what, testDeadline)
		}
		<-tick.C
	}
}

type replica struct {
	iss    *Issuer
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
}

// startReplica runs an issuer on machine secret (its key cache in dir).
func startReplica(t *testing.T, srv *embednats.Server, secret []byte, dir string, genesis *Policy, hook func(*replica)) *replica {
	t.Helper()
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{nc: nc, done: make(chan error, 1)}
	cfg := Config{Conn: nc, Platform: p, Policy: genesis, Ungoverned: true, KeyCache: FileKeyCache(dir + "/" + KeyCacheFile), PolicyPoll: 20 * time.Millisecond, Lease: 300 * time.Millisecond, PeerTimeout: time.Second, NoEvents: true}
	if hook != nil {
		cfg.afterCommit = func() { hook(r) }
	}
	if r.iss, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	finished := make(chan struct{})
	go func() {
		r.done <- r.iss.Run(ctx)
		close(finished)
	}()
	t.Cleanup(func() { cancel(); <-finished })
	select {
	case <-r.iss.Ready():
	case err := <-r.done:
		t.Fatalf("replica stopped: %v", err)
	case <-time.After(testDeadline):
		t.Fatal("replica not ready")
	}
	return r
}

func lifecyclePolicy(t *testing.T, version uint64, admin *adminkey.Key, measurements ...[]byte) *Policy {
	t.Helper()
	doc := fmt.Sprintf("version: %d\naccept_simulated: true\nadministrators:\n  threshold: 1\n  keys:\n    - {name: ada, key: %x}\ntasks:\n  - name: demo\n    measurements: [", version, admin.AdminPublic())
	for k, m := range measurements {
		if k > 0 {
			doc += ", "
		}
		doc += fmt.Sprintf("%x", m)
	}
	doc += "]\nclusters:\n  - {id: c1, task: demo}\n"
	p, err := ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// consistent checks that a replica serves one policy whole: the task
// certificate it hands out names exactly the measurements of the policy
// it attests to.
func consistent(t *testing.T, r *replica) uint64 {
	t.Helper()
	v := r.iss.view.Load()
	cert := v.tasks["demo"].cur.Load().cred.cert
	id, err := identity.FromCertificate(cert)
	if err != nil {
		t.Fatal(err)
	}
	want := v.policy.byName["demo"].measurements
	if len(id.Measurements) != len(want) {
		t.Fatalf("the task certificate names %d measurements, the policy in force (version %d) %d: a mix", len(id.Measurements), v.policy.Version, len(want))
	}
	for k := range want {
		if !bytes.Equal(id.Measurements[k], want[k]) {
			t.Fatalf("the task certificate and the policy in force (version %d) disagree", v.policy.Version)
		}
	}
	return v.policy.Version
}

// A crash during an update: the issuer applying it is killed between the
// write that commits it and its adoption, and another killed before the
// write. Afterwards every replica serves either the old policy or the new,
// whole, and applying again succeeds.
func TestCrashDuringUpdate(t *testing.T) {
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	admin, err := adminkey.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m1 := bytes.Repeat([]byte{1}, 32)
	m2 := bytes.Repeat([]byte{2}, 32)
	genesis := lifecyclePolicy(t, 1, admin, m1)
	secretA, secretB := bytes.Repeat([]byte{0xa}, 32), bytes.Repeat([]byte{0xb}, 32)
	dirA, dirB := t.TempDir(), t.TempDir()
	kill := func(r *replica) {
		r.cancel()
		r.nc.Close() // nothing more it writes gets through
	}
	a := startReplica(t, srv, secretA, dirA, genesis, kill)
	b := startReplica(t, srv, secretB, dirB, nil, nil)

	// Killed after the commit.
	v2 := lifecyclePolicy(t, 2, admin, m1, m2)
	req, _ := messages.Marshal(&messages.PolicyApply{V: messages.Version, Document: v2.Document(), Signatures: []messages.PolicySignature{admin.Sign(v2.Document())}})
	if _, err := a.iss.Apply(context.Background(), req); err == nil {
		t.Fatal("the killed issuer answered as if it had applied the update")
	}
	<-a.done
	waitFor(t, "the other replica adopts the committed update", func() bool { return b.iss.Policy().Version == 2 })
	if got := consistent(t, b); got != 2 {
		t.Fatalf("replica b serves version %d", got)
	}
	a = startReplica(t, srv, secretA, dirA, genesis, nil)
	if got := consistent(t, a); got != 2 {
		t.Fatalf("the restarted replica serves version %d, want 2", got)
	}
	if _, err := a.iss.Apply(context.Background(), req); err != nil {
		t.Fatalf("applying again: %v", err)
	}

	// Killed before the commit: its connection is gone when it writes.
	v3 := lifecyclePolicy(t, 3, admin, m2)
	req3, _ := messages.Marshal(&messages.PolicyApply{V: messages.Version, Document: v3.Document(), Signatures: []messages.PolicySignature{admin.Sign(v3.Document())}})
	kill(b)
	<-b.done
	if _, err := b.iss.Apply(context.Background(), req3); err == nil {
		t.Fatal("an issuer without its connection applied an update")
	}
	if got := consistent(t, a); got != 2 {
		t.Fatalf("replica a serves version %d after the failed update, want 2", got)
	}
	b = startReplica(t, srv, secretB, dirB, nil, nil)
	if got := consistent(t, b); got != 2 {
		t.Fatalf("the restarted replica serves version %d, want 2", got)
	}
	if _, err := b.iss.Apply(context.Background(), req3); err != nil {
		t.Fatalf("applying again: %v", err)
	}
	waitFor(t, "both replicas serve version 3", func() bool { return a.iss.Policy().Version == 3 && b.iss.Policy().Version == 3 })
	consistent(t, a)
	consistent(t, b)
}

// The issuer's own credential cannot empty a record's subject to write an
// old record there again: the state's stream takes no roll-up, purge or
// delete; a record written under a condition on another subject, or
// deleted, does not count; and an issuer whose state lost its policy
// record does not take the file its host gives as the genesis.
func TestStateCannotBeRolledUp(t *testing.T) {
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	admin, _ := adminkey.Generate(rand.Reader)
	m1, m2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	secret, dir := bytes.Repeat([]byte{0xa}, 32), t.TempDir()
	a := startReplica(t, srv, secret, dir, lifecyclePolicy(t, 1, admin, m1), nil)
	genesis, err := a.iss.store.get(context.Background(), policyKey)
	if err != nil {
		t.Fatal(err)
	}
	v2 := lifecyclePolicy(t, 2, admin, m1, m2)
	req, _ := messages.Marshal(&messages.PolicyApply{V: messages.Version, Document: v2.Document(), Signatures: []messages.PolicySignature{admin.Sign(v2.Document())}})
	if _, err := a.iss.Apply(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(a.nc)
	rollup := nats.NewMsg(a.iss.store.subject(policyKey))
	rollup.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupAll)
	if _, err := js.PublishMsg(context.Background(), rollup); err == nil {
		t.Fatal("the state stream took a roll-up")
	}
	if err := a.iss.store.stream.Purge(context.Background()); err == nil {
		t.Fatal("the state stream was purged")
	}
	// The genesis record again, on the condition that another, empty,
	// subject holds nothing: JetStream takes it; the issuer does not.
	replay := nats.NewMsg(a.iss.store.subject(policyKey))
	replay.Data = genesis.data
	replay.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	replay.Header.Set("Nats-Expected-Last-Subject-Sequence-Subject", a.iss.store.subject("nothing"))
	if _, err := js.PublishMsg(context.Background(), replay); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if _, _, err := a.iss.store.load(context.Background(), policyKey); !errors.Is(err, ErrTampered) {
		t.Fatalf("a record written on another subject's condition: %v, want ErrTampered", err)
	}
	// Deleted: a restarted replica refuses to serve rather than take the
	// file it is given as a new genesis.
	del := nats.NewMsg(a.iss.store.subject(policyKey))
	del.Header.Set("KV-Operation", "DEL")
	if _, err := js.PublishMsg(context.Background(), del); err != nil {
		t.Fatal(err)
	}
	a.cancel()
	<-a.done
	nc, _ := srv.Connect()
	defer nc.Close()
	p, _ := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: secret})
	evil := lifecyclePolicy(t, 1, admin, bytes.Repeat([]byte{9}, 32))
	iss, err := New(Config{Conn: nc, Platform: p, Policy: evil, Ungoverned: true, KeyCache: FileKeyCache(dir + "/" + KeyCacheFile)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	if err := iss.Run(ctx); !errors.Is(err, ErrTampered) {
		t.Fatalf("an issuer over a state without its policy record: %v, want ErrTampered", err)
	}
}

// A record written again out of place, or unconditionally, does not open:
// the issuer's own credential cannot roll the policy back.
func TestStateRecordsCannotBeReplayed(t *testing.T) {
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	admin, _ := adminkey.Generate(rand.Reader)
	m1, m2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a := startReplica(t, srv, bytes.Repeat([]byte{0xa}, 32), t.TempDir(), lifecyclePolicy(t, 1, admin, m1), nil)
	old, err := a.iss.store.get(context.Background(), policyKey)
	if err != nil {
		t.Fatal(err)
	}
	v2 := lifecyclePolicy(t, 2, admin, m1, m2)
	req, _ := messages.Marshal(&messages.PolicyApply{V: messages.Version, Document: v2.Document(), Signatures: []messages.PolicySignature{admin.Sign(v2.Document())}})
	if _, err := a.iss.Apply(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	// The old policy record, published again by whoever holds the
	// issuer's credential: unconditionally, and over the current revision.
	if _, err := a.nc.Request(a.iss.store.subject(policyKey), old.data, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.iss.store.load(context.Background(), policyKey); !errors.Is(err, ErrTampered) {
		t.Fatalf("an old record published again: %v, want ErrTampered", err)
	}
	cur, _ := a.iss.store.get(context.Background(), policyKey)
	if _, err := a.iss.store.write(context.Background(), policyKey, old.data, cur.rev); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.iss.store.load(context.Background(), policyKey); !errors.Is(err, ErrTampered) {
		t.Fatalf("an old record written over the current revision: %v, want ErrTampered", err)
	}
	// The replica's next look refuses it and keeps serving what it adopted.
	if err := a.iss.refresh(context.Background()); !errors.Is(err, ErrTampered) {
		t.Fatalf("following a replayed record: %v, want ErrTampered", err)
	}
	if a.iss.Policy().Version != 2 {
		t.Fatalf("the replica serves version %d, want 2", a.iss.Policy().Version)
	}
}

// TestGenesisIsCheckedBeforeAnythingIsWritten: a genesis policy that lists
// issuer builds but not this one, or names no administrators or no
// recovery holders (without Ungoverned), is refused, and the bucket stays
// empty: a corrected policy then starts the state.
func TestGenesisIsCheckedBeforeAnythingIsWritten(t *testing.T) {
	srv, err := embednats.StartTemp("cohort-genesis-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: bytes.Repeat([]byte{3}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := adminkey.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	doc := func(issuers string, governed bool) *Policy {
		d := "version: 1\naccept_simulated: true\n" + issuers + "tasks:\n  - {name: demo, measurements: [" + fmt.Sprintf("%x", bytes.Repeat([]byte{1}, 32)) + "]}\n"
		if governed {
			d += fmt.Sprintf("administrators:\n  threshold: 1\n  keys:\n    - {name: ada, key: %x}\nrecovery:\n  threshold: 1\n  keys:\n    - {name: rob, key: %x}\n", admin.AdminPublic(), admin.RecoveryPublic())
		}
		pol, err := ParsePolicy([]byte(d))
		if err != nil {
			t.Fatal(err)
		}
		return pol
	}
	self := fmt.Sprintf("issuers: [%x]\n", p.Measurement())
	other := fmt.Sprintf("issuers: [%x]\n", bytes.Repeat([]byte{9}, 32))
	run := func(policy *Policy, ungoverned bool) error {
		iss, err := New(Config{Conn: nc, Platform: p, Policy: policy, Ungoverned: ungoverned, NoEvents: true})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- iss.Run(ctx) }()
		select {
		case err := <-done:
			return err
		case <-iss.Ready():
			cancel()
			return <-done
		}
	}
	empty := func() bool {
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		st, err := js.Stream(context.Background(), "KV_"+DefaultBucket)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return true
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs == 0
	}
	for _, c := range []struct {
		name       string
		policy     *Policy
		ungoverned bool
		want       string
	}{
		{"another issuer build listed", doc(other, true), true, "not this one"},
		{"no administrators nor recovery", doc(self, false), false, "--ungoverned"},
	} {
		err := run(c.policy, c.ungoverned)
		if !errors.Is(err, ErrGenesis) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "Nothing was written") {
			t.Errorf("%s: %v, want %v naming %q", c.name, err, ErrGenesis, c.want)
		}
		if !empty() {
			t.Fatalf("%s: the refused genesis wrote to the state", c.name)
		}
	}
	if err := run(doc(self, true), false); err != nil {
		t.Fatalf("a governed genesis that lists this build: %v", err)
	}
	if empty() {
		t.Fatal("the accepted genesis wrote nothing")
	}
}
