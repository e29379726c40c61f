package integration

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/unit"
)

// secureDeployment is who the permissioned tests admit: cluster c1 of task
// demo with units u1, u2 and u3 (u3 starts later, or never), cluster o1 of
// task other with unit v1, and users alice and bob.
var secureDeployment = access.Deployment{
	Clusters: []access.Cluster{{ID: "c1", Units: []string{"u1", "u2", "u3", "u9"}}, {ID: "o1", Units: []string{"v1"}}},
	Users:    []string{"alice", "bob"},
}

// secured is a NATS server that admits exactly cohort's credentials, each
// in its account with its permissions, as dev and deploy configure it, and
// the test's taps: observers that may subscribe to everything in their
// account and publish nowhere, which no deployment has.
type secured struct {
	t     *testing.T
	srv   *embednats.Server
	creds map[access.Grant]*access.Credential
	taps  map[string]*access.Credential // by account
	mu    sync.Mutex
	errs  map[*nats.Conn][]error // asynchronous errors (permission violations) by connection
}

// startSecured starts a server with the accounts of d, and a tap in each of
// the accounts named.
func startSecured(t *testing.T, d access.Deployment, tapAccounts ...string) *secured {
	t.Helper()
	s := &secured{t: t, taps: map[string]*access.Credential{}, errs: map[*nats.Conn][]error{}}
	var err error
	if s.creds, err = access.LoadOrCreateAll(t.TempDir(), d); err != nil {
		t.Fatal(err)
	}
	accounts, err := access.Accounts(d, s.creds)
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range tapAccounts {
		c, err := access.NewCredential(access.Grant{Role: access.User, Name: fmt.Sprintf("tap%d", i)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		acct := accounts[a].(map[string]any)
		acct["users"] = append(acct["users"].([]any), map[string]any{
			"nkey":        c.Public(access.State),
			"permissions": map[string]any{"publish": map[string]any{"deny": []string{">"}}, "subscribe": map[string]any{"allow": []string{">"}}},
		})
		s.taps[a] = c
	}
	if s.srv, err = embednats.Start(embednats.Config{StoreDir: t.TempDir(), Accounts: accounts}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.srv.Close)
	return s
}

// conn connects as one key of a grant's credential. Asynchronous errors
// are kept, for lastErrors.
func (s *secured) conn(g access.Grant, k access.Key) *nats.Conn {
	s.t.Helper()
	c, ok := s.creds[g]
	if !ok {
		s.t.Fatalf("no credential for %s", g)
	}
	return s.dial(c.Options(k)...)
}

// tap connects the observer of an account.
func (s *secured) tap(account string) *nats.Conn {
	s.t.Helper()
	c, ok := s.taps[account]
	if !ok {
		s.t.Fatalf("no tap in account %s", account)
	}
	return s.dial(c.Options(access.State)...)
}

func (s *secured) dial(opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	var nc *nats.Conn
	opts = append(opts, nats.ErrorHandler(func(c *nats.Conn, _ *nats.Subscription, err error) {
		s.mu.Lock()
		s.errs[c] = append(s.errs[c], err)
		s.mu.Unlock()
	}))
	nc, err := s.srv.Connect(opts...)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(nc.Close)
	return nc
}

// violated reports whether the server refused nc something naming
// subject. The server answers a refused operation before the PONG of a
// flush after it, and nats.go hands the refusal to the error handler on
// another goroutine: it waits for it, up to the deadline.
func (s *secured) violated(nc *nats.Conn, subject string) bool {
	s.t.Helper()
	if err := nc.Flush(); err != nil {
		s.t.Fatal(err)
	}
	end := time.Now().Add(deadline)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		found := slices.ContainsFunc(s.errs[nc], func(err error) bool {
			return strings.Contains(err.Error(), "Permissions Violation") && strings.Contains(err.Error(), `"`+subject+`"`)
		})
		s.mu.Unlock()
		if found || time.Now().After(end) {
			return found
		}
		<-tick.C
	}
}

// secureStack is the permissioned stack: the secured server, the issuer, a
// manager and the units, each part on its own credential's two connections.
type secureStack struct {
	*secured
	policy *issuer.Policy
	iss    *runningIssuer
	mgr    *runningManager
	units  map[string]*unit.Unit
	stops  map[string]func()
	conns  map[string][2]*nats.Conn // each unit's
	roots  *x509.CertPool
	secret *machine
}

// startSecureStack starts the stack with units u1 and u2 of c1 and v1 of
// o1; tune, if not nil, adjusts each unit's configuration.
func startSecureStack(t *testing.T, tune func(*unit.Config), tapAccounts ...string) *secureStack {
	t.Helper()
	s := &secureStack{
		secured: startSecured(t, secureDeployment, tapAccounts...),
		policy:  parsePolicy(t, policyYAML(t, true, time.Hour)),
		units:   map[string]*unit.Unit{}, stops: map[string]func(){}, conns: map[string][2]*nats.Conn{}, secret: newMachine(t),
	}
	s.iss = s.startIssuer()
	s.mgr = s.startManager()
	for _, u := range []struct{ cluster, id, task string }{{"c1", "u1", "demo"}, {"c1", "u2", "demo"}, {"o1", "v1", "other"}} {
		s.startUnit(u.cluster, u.id, u.task, tune)
	}
	eventually(t, "three members active", func() bool { return s.mgr.Table().Counts(time.Now())[manager.Active] == 3 })
	s.roots = x509.NewCertPool()
	s.roots.AddCert(s.iss.Root())
	return s
}

func (s *secureStack) startIssuer() *runningIssuer {
	t := s.t
	g := access.Grant{Role: access.Issuer}
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: s.conn(g, access.State), Serve: s.conn(g, access.Serve), Platform: s.secret.platform(t),
		Policy: s.policy, KeyCache: s.secret.keyCache(), Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return &runningIssuer{Issuer: iss, stop: runUntilReady(t, iss.Run, iss.Ready())}
}

func (s *secureStack) startManager() *runningManager {
	t := s.t
	g := access.Grant{Role: access.Manager}
	m, err := manager.New(manager.Config{Conn: s.conn(g, access.State), Serve: s.conn(g, access.Serve), Root: s.iss.Root(), Interval: heartbeat, Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return &runningManager{Manager: m, stop: runUntilReady(t, m.Run, m.Ready())}
}

// startUnit starts unit id of cluster on its credential.
func (s *secureStack) startUnit(cluster, id, task string, tune func(*unit.Config)) *unit.Unit {
	t := s.t
	g := access.Grant{Role: access.Unit, Cluster: cluster, Name: id}
	state, serve := s.conn(g, access.State), s.conn(g, access.Serve)
	s.conns[id] = [2]*nats.Conn{state, serve}
	cfg := unitConfig(t, state, task, sim.UnitIdentity(task))
	cfg.Serve, cfg.Cluster, cfg.ID, cfg.Name = serve, cluster, id, id
	if tune != nil {
		tune(&cfg)
	}
	u, err := unit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.stops[id] = runUntilReady(t, u.Run, u.Ready())
	s.units[id] = u
	return u
}

// user connects as a user.
func (s *secureStack) user(name string) *nats.Conn {
	return s.conn(access.Grant{Role: access.User, Name: name}, access.State)
}

// stopServices stops every service of the stack and waits for each: once
// it returns, everything they were asked has been answered or dropped. The
// units are killed (their connections cut first), so that they do not
// leave.
func (s *secureStack) stopServices() {
	for id, stop := range s.stops {
		s.conns[id][0].Close()
		s.conns[id][1].Close()
		stop()
	}
	s.mgr.stop()
	s.iss.stop()
}

// grants lists every grant of the deployment with its keys.
func grantKeys(d access.Deployment) []struct {
	g access.Grant
	k access.Key
} {
	var out []struct {
		g access.Grant
		k access.Key
	}
	for _, g := range d.Grants() {
		for _, k := range g.Keys() {
			out = append(out, struct {
				g access.Grant
				k access.Key
			}{g, k})
		}
	}
	return out
}

// stopIn waits for ctx, for tests that need one bounded by the deadline.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}
