package integration

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/faults"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/status"
	"github.com/cohort-dev/cohort/unit"
)

// proc is one part of a deployment that runs on its own NATS connections,
// as a process would: it can be killed (its connections cut, its run
// stopped) and started again.
type proc struct {
	name   string
	grant  access.Grant
	newRun func(state, serve *nats.Conn) (run func(context.Context) error, ready <-chan struct{}, err error)

	mu     sync.Mutex
	nc     []*nats.Conn
	cancel context.CancelFunc
	done   chan error
}

// deployment is the scale-out deployment in one test process: a cluster of
// three NATS servers whose JetStream keeps three replicas, an issuer, a
// manager and three units, each on a connection with its role's
// credentials.
type deployment struct {
	t      *testing.T
	nats   *embednats.Cluster
	creds  map[access.Grant]*access.Credential
	secret *machine
	procs  []*proc
	units  map[string]*unit.Unit // the running unit of each name
	iss    *issuer.Issuer
	mu     sync.Mutex
}

const faultCluster = "dev"

func (d *deployment) connect(g access.Grant, k access.Key) (*nats.Conn, error) {
	opts := append(d.creds[g].Options(k),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	return nats.Connect(d.nats.URL(), opts...)
}

func (d *deployment) start(p *proc) error {
	state, err := d.connect(p.grant, access.State)
	if err != nil {
		return fmt.Errorf("%s: connect: %w", p.name, err)
	}
	serve, err := d.connect(p.grant, access.Serve)
	if err != nil {
		state.Close()
		return fmt.Errorf("%s: connect: %w", p.name, err)
	}
	nc := closer{state, serve}
	run, ready, err := p.newRun(state, serve)
	if err != nil {
		nc.Close()
		return fmt.Errorf("%s: %w", p.name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		nc.Close()
		return fmt.Errorf("%s stopped before it was ready: %v", p.name, err)
	case <-time.After(deadline):
		cancel()
		nc.Close()
		return fmt.Errorf("%s not ready within %v", p.name, deadline)
	}
	p.mu.Lock()
	p.nc, p.cancel, p.done = nc, cancel, done
	p.mu.Unlock()
	return nil
}

// closer closes connections.
type closer []*nats.Conn

func (c closer) Close() {
	for _, nc := range c {
		nc.Close()
	}
}

// supervise starts p as a supervisor would: again, on the next tick, while
// it fails to start (as the issuer does while JetStream elects its
// leaders), until the deadline.
func (d *deployment) supervise(p *proc) error {
	end := time.Now().Add(deadline)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := d.start(p)
		if err == nil || time.Now().After(end) {
			return err
		}
		<-tick.C
	}
}

// kill cuts the part's connection first, so that it neither answers nor
// says goodbye, then stops its run.
func (d *deployment) kill(p *proc) {
	p.mu.Lock()
	nc, cancel, done := p.nc, p.cancel, p.done
	p.nc = nil
	p.mu.Unlock()
	if nc == nil {
		return
	}
	closer(nc).Close()
	cancel()
	<-done // its error is the cut connection's
}

func (d *deployment) proc(name string) *proc {
	for _, p := range d.procs {
		if p.name == name {
			return p
		}
	}
	d.t.Fatalf("no part %s", name)
	return nil
}

func startDeployment(t *testing.T) *deployment {
	t.Helper()
	d := &deployment{t: t, secret: newMachine(t), units: map[string]*unit.Unit{}}
	dep := access.Deployment{Clusters: []access.Cluster{{ID: faultCluster, Units: []string{"unit-1", "unit-2", "unit-3"}}}, Users: []string{"alice"}}
	var err error
	if d.creds, err = access.LoadOrCreateAll(t.TempDir(), dep); err != nil {
		t.Fatal(err)
	}
	accounts, err := access.Accounts(dep, d.creds)
	if err != nil {
		t.Fatal(err)
	}
	if d.nats, err = embednats.StartCluster(embednats.ClusterConfig{Dir: t.TempDir(), Accounts: accounts}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.nats.Close)
	policy := parsePolicy(t, fmt.Appendf(nil, `version: 1
accept_simulated: true
tasks:
  - name: demo
    measurements: [%x]
    dns_names: [localhost]
clusters:
  - id: %s
    task: demo
`, measure(t, sim.UnitIdentity("demo")), faultCluster))

	d.procs = append(d.procs, &proc{name: "issuer", grant: access.Grant{Role: access.Issuer}, newRun: func(nc, serve *nats.Conn) (func(context.Context) error, <-chan struct{}, error) {
		p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: d.secret.secret})
		if err != nil {
			return nil, nil, err
		}
		iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: nc, Serve: serve, Platform: p, Policy: policy, Replicas: 3, KeyCache: d.secret.keyCache(), Logger: logger(t)})
		if err != nil {
			return nil, nil, err
		}
		d.mu.Lock()
		d.iss = iss
		d.mu.Unlock()
		return iss.Run, iss.Ready(), nil
	}})
	d.procs = append(d.procs, &proc{name: "manager", grant: access.Grant{Role: access.Manager}, newRun: func(nc, serve *nats.Conn) (func(context.Context) error, <-chan struct{}, error) {
		d.mu.Lock()
		root := d.iss.Root()
		d.mu.Unlock()
		m, err := manager.New(manager.Config{Conn: nc, Serve: serve, Root: root, Interval: 250 * time.Millisecond, Replicas: 3, Logger: logger(t)})
		if err != nil {
			return nil, nil, err
		}
		return m.Run, m.Ready(), nil
	}})
	for i := range 3 {
		name := fmt.Sprintf("unit-%d", i+1)
		d.procs = append(d.procs, &proc{name: name, grant: access.Grant{Role: access.Unit, Cluster: faultCluster, Name: name}, newRun: func(nc, serve *nats.Conn) (func(context.Context) error, <-chan struct{}, error) {
			cfg := unitConfig(t, nc, "demo", sim.UnitIdentity("demo"))
			cfg.Serve, cfg.Cluster, cfg.Name, cfg.ID, cfg.Replicas = serve, faultCluster, name, name, 3
			cfg.SideEffectFree = true // the demo task echoes: a call of a killed unit may run again
			u, err := unit.New(cfg)
			if err != nil {
				return nil, nil, err
			}
			d.mu.Lock()
			d.units[name] = u
			d.mu.Unlock()
			return u.Run, u.Ready(), nil
		}})
	}
	d.startAll(t)
	return d
}

func (d *deployment) startAll(t *testing.T) {
	t.Helper()
	for _, p := range d.procs {
		if err := d.start(p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.kill(p) })
	}
}

// leaves are the units' task certificates and the issuer's root.
func (d *deployment) certificates() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := [][]byte{d.iss.Root().Raw}
	for i := range 3 {
		out = append(out, d.units[fmt.Sprintf("unit-%d", i+1)].Pair().Leaf.Raw)
	}
	return out
}

// TestFaultsInProcessCluster: under a steady load of calls, a unit, the
// manager, the issuer and one NATS server of three are killed in turn; then
// everything is stopped and started again. No acknowledged session is lost,
// no call fails beyond the client's retry budget, full service is back
// within 5 seconds of each kill, and the certificates are the same after
// the full restart.
func TestFaultsInProcessCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-server cluster and five faults")
	}
	d := startDeployment(t)
	user, err := d.connect(access.Grant{Role: access.User, Name: "alice"}, access.State)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(user.Close)
	op, err := d.connect(access.Grant{Role: access.Operator}, access.State)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(op.Close)
	roots := x509.NewCertPool()
	roots.AddCert(d.iss.Root())
	before := d.certificates()

	ready := func(ctx context.Context, since time.Time) error {
		if err := d.nats.Healthy(); err != nil {
			return err
		}
		v, err := status.Fetch(ctx, op, time.Second)
		if err != nil {
			return err
		}
		return v.Serving(faultCluster, 3, since)
	}
	eventually(t, "the deployment serves", func() bool { return ready(context.Background(), time.Time{}) == nil })
	restartProc := func(name string) faults.Target {
		p := d.proc(name)
		return faults.Target{
			Name:    name,
			Kill:    func(context.Context) error { d.kill(p); return nil },
			Restart: func(context.Context) error { return d.supervise(p) },
		}
	}
	targets := []faults.Target{
		restartProc("unit-2"), restartProc("manager"), restartProc("issuer"),
		{
			Name:    "nats-2",
			Kill:    func(context.Context) error { d.nats.Kill(1); return nil },
			Restart: func(context.Context) error { return d.nats.Restart(1) },
		},
		{
			Name: "everything", Planned: true,
			Kill: func(context.Context) error {
				for i := len(d.procs) - 1; i >= 0; i-- {
					d.kill(d.procs[i])
				}
				for i := range d.nats.Size() {
					d.nats.Kill(i)
				}
				return nil
			},
			Restart: func(context.Context) error {
				for i := range d.nats.Size() {
					if err := d.nats.Restart(i); err != nil {
						return err
					}
				}
				if err := d.nats.WaitReady(deadline); err != nil {
					return err
				}
				for _, p := range d.procs {
					if err := d.supervise(p); err != nil {
						return err
					}
				}
				return nil
			},
		},
	}
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := faults.Run(ctx, faults.Config{Conn: user, User: "alice", Cluster: faultCluster, Roots: roots, Task: "demo", Ready: ready, Out: &out}, targets)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Results {
		if !r.OK() {
			t.Errorf("%s: recovery %v, %d calls failed, %s", r.Target, r.Recovery, r.Failed, r.Err)
		}
	}
	if rep.SessionsLost != 0 || rep.Failed != 0 {
		t.Errorf("%d of %d sessions lost, %d calls failed beyond the budget", rep.SessionsLost, rep.Sessions, rep.Failed)
	}
	after := d.certificates()
	for i := range before {
		if !bytes.Equal(before[i], after[i]) {
			t.Errorf("certificate %d changed across the full restart", i)
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("the run took more than 5 minutes")
	}
}

// ghostClaim writes, at the claim of a session's call, a running claim of a
// unit that is gone, as that unit would have: signed with the cluster's
// claim key, which the test obtains as a unit of the cluster does.
func ghostClaim(t *testing.T, nc *nats.Conn, session []byte, seq uint64) {
	t.Helper()
	ctx := context.Background()
	pair, err := clusterCertifier(t, nc, sim.UnitIdentity("demo"), "c1").Certify(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	key, err := channel.ClaimKey(pair.ClusterKey.Key, "c1", pair.ClusterKey.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	subject := messages.ClaimSubject("c1", session, seq)
	ghost := messages.CallClaim{V: messages.Version, Unit: "ghost", State: messages.ClaimRunning}
	channel.SignClaim(key, subject, &ghost)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, subject, mustMarshal(t, &ghost), jetstream.WithExpectLastSequencePerSubject(0), jetstream.WithMsgTTL(time.Minute)); err != nil {
		t.Fatal(err)
	}
}

// TestClaimOfADeadUnitIsTakenOver: for a task declared free of side
// effects, a call claimed by a unit that died before it answered (its claim
// no longer renewed) is run by another unit once that unit has seen the
// claim unchanged for the lease, within the client's retry budget; not
// before.
func TestClaimOfADeadUnitIsTakenOver(t *testing.T) {
	c := startCluster(t, 2, "t", func(cfg *unit.Config) { cfg.SideEffectFree = true })
	ctx := context.Background()
	s, err := client.Dial(ctx, client.Config{Conn: c.nc, User: "alice", Cluster: "c1", Roots: c.roots, CallTimeout: 500 * time.Millisecond, Retries: 24})
	if err != nil {
		t.Fatal(err)
	}
	claimed := time.Now()
	ghostClaim(t, c.nc, s.ID, 1) // the session's first call
	a, err := s.Call(ctx, []byte("orphan"))
	if err != nil {
		t.Fatalf("a call claimed by a dead unit: %v", err)
	}
	if a.Unit == "ghost" || !strings.HasSuffix(string(a.Data), "heard: orphan") {
		t.Fatalf("answered by %s: %q", a.Unit, a.Data)
	}
	if waited := time.Since(claimed); waited < 3*time.Second {
		t.Errorf("the claim was taken over after %v, before its 3 s lease", waited)
	}
}

// TestClaimOfADeadUnitIsFinal: for a task not declared free of side
// effects (the default), a call claimed by a unit that died before it
// answered is never run again: the client hears "in progress" until its
// budget runs out, and fails.
func TestClaimOfADeadUnitIsFinal(t *testing.T) {
	var ran atomic.Int64
	c := startCluster(t, 2, "f", func(cfg *unit.Config) {
		cfg.App = func(context.Context, unit.Call) ([]byte, error) { ran.Add(1); return []byte("ran"), nil }
	})
	ctx := context.Background()
	s, err := client.Dial(ctx, client.Config{Conn: c.nc, User: "alice", Cluster: "c1", Roots: c.roots, CallTimeout: 500 * time.Millisecond, Retries: 10})
	if err != nil {
		t.Fatal(err)
	}
	ghostClaim(t, c.nc, s.ID, 1)
	if _, err := s.Call(ctx, []byte("orphan")); !errors.Is(err, messages.ErrInProgress) {
		t.Fatalf("a call claimed by a dead unit: %v, want it to fail in progress", err)
	}
	if n := ran.Load(); n != 0 {
		t.Fatalf("the call ran %d times", n)
	}
	if a, err := s.Call(ctx, []byte("next")); err != nil || string(a.Data) != "ran" {
		t.Fatalf("the next call: %v %v", a, err)
	}
}

// TestCallClaimsCannotBeRolledUpOrPurged: a cluster's calls stream refuses
// a roll-up and a purge, with which a writer of its claims could erase them,
// and other clusters' claims are in streams of their own.
func TestCallClaimsCannotBeRolledUpOrPurged(t *testing.T) {
	c := startCluster(t, 1, "r", nil)
	ctx := context.Background()
	js, err := jetstream.New(c.nc)
	if err != nil {
		t.Fatal(err)
	}
	claim := messages.ClaimSubject("c1", []byte{0, 0xff}, 1)
	if _, err := js.Publish(ctx, claim, []byte("a claim")); err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(messages.ClaimSubject("c1", []byte{0, 0xff}, 2))
	m.Header.Set("Nats-Rollup", "all")
	if _, err := js.PublishMsg(ctx, m); err == nil || !strings.Contains(err.Error(), "rollup not permitted") {
		t.Fatalf("a roll-up of the calls stream: %v, want it refused", err)
	}
	st, err := js.Stream(ctx, messages.CallsStreamOf("c1", []byte{0, 0xff}))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(claim)); err == nil {
		t.Fatal("a purge of the calls stream was taken")
	}
	if err := st.DeleteMsg(ctx, 1); err == nil {
		t.Fatal("a message of the calls stream was deleted")
	}
	if _, err := st.GetLastMsgForSubject(ctx, claim); err != nil {
		t.Fatalf("the claim is gone: %v", err)
	}
}
