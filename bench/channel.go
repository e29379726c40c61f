package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// ChannelConfig configures the channel benchmark.
type ChannelConfig struct {
	Units       int           // of each cluster; default 5
	Clusters    int           // clusters, each of Units units, the load spread over them; default 1
	Duration    time.Duration // each phase; default 5s
	Concurrency int           // handshakes or calls in flight; default 8 × GOMAXPROCS
	KEM         uint16        // default ML-KEM-768+X25519
	// NATS is where it runs: NoSync, one embedded server that leaves fsync
	// to its interval (what a process crash does not lose, an operating
	// system's crash may); Single, one embedded server that fsyncs every
	// JetStream write before acknowledging it (as cohort dev runs);
	// Cluster, three embedded servers whose JetStream keeps every stream on
	// all three, fsync left to the interval; or ClusterFsync, the same
	// fsyncing every write (as cohort deploy configures by default).
	// Default Single.
	NATS string
	// SideEffectFree declares the task free of side effects: a call is
	// then one durable write (its answer) rather than two (a claim before
	// it runs, the answer after).
	SideEffectFree bool
	JSON           bool
	Out            io.Writer
	// Logger takes the parts' warnings (a unit that cannot make its
	// cluster's streams, say); default none.
	Logger *slog.Logger
}

// waitMembers waits until the manager counts n active members.
func waitMembers(ctx context.Context, m *manager.Manager, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for m.Table().Counts(time.Now())[manager.Active] < n {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		if !backoff.Wait(ctx, 10*time.Millisecond) {
			return ctx.Err()
		}
	}
	return nil
}

// waitReady waits until u is ready, for at most d.
func waitReady(ctx context.Context, u *unit.Unit, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-u.Ready():
		return nil
	case <-t.C:
		return fmt.Errorf("not ready within %v (its warnings say why)", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// benchUser is the user the channel benchmark's load speaks as.
const benchUser = "bench"

// Where the channel benchmark runs.
const (
	NoSync       = "nosync"
	Single       = "single"
	Cluster      = "cluster"
	ClusterFsync = "cluster-fsync"
)

// ChannelResult is what the channel benchmark measured.
type ChannelResult struct {
	NATS              string  `json:"nats"`
	Clusters          int     `json:"clusters"`
	Units             int     `json:"units"`
	KEM               string  `json:"kem"`
	Concurrency       int     `json:"concurrency"`
	HandshakesPerS    float64 `json:"handshakes_per_s"`
	HandshakeP50Ms    float64 `json:"handshake_p50_ms"`
	HandshakeP99Ms    float64 `json:"handshake_p99_ms"`
	UsableP50Ms       float64 `json:"usable_on_all_units_p50_ms"`
	UsableP99Ms       float64 `json:"usable_on_all_units_p99_ms"`
	SessionsMeasured  int     `json:"sessions_measured"`
	SessionsNotOnAll  int     `json:"sessions_not_on_all_units"`
	CallsPerS         float64 `json:"calls_per_s"`
	CallP50Ms         float64 `json:"call_p50_ms"`
	CallP99Ms         float64 `json:"call_p99_ms"`
	CallBytes         int     `json:"call_bytes"`
	SideEffectFree    bool    `json:"side_effect_free"`
	WritesPerCall     int     `json:"durable_writes_per_call"`
	TLSHandshakeP50Ms float64 `json:"tls13_full_handshake_p50_ms"`
	TLSToAllUnitsMs   float64 `json:"tls13_to_all_units_p50_ms"`
	Errors            int     `json:"errors"`
	FirstError        string  `json:"first_error,omitempty"`
	// The figures as a share of the first run's of the same command (the
	// cost of durability when that one is NoSync); set by Compare.
	HandshakesRatio float64 `json:"handshakes_ratio_to_first,omitempty"`
	CallsRatio      float64 `json:"calls_ratio_to_first,omitempty"`
}

// Compare sets each result's ratios to the first's figures and prints them
// as one table.
func Compare(w io.Writer, results []*ChannelResult) error {
	if len(results) < 2 {
		return nil
	}
	first := results[0]
	if _, err := fmt.Fprintf(w, "cohort bench channel: each run beside the first (%s)\n  %-14s %14s %8s %12s %8s %18s\n", first.NATS, "where", "handshakes/s", "ratio", "calls/s", "ratio", "usable on all p99"); err != nil {
		return err
	}
	for _, r := range results {
		if first.HandshakesPerS > 0 {
			r.HandshakesRatio = r.HandshakesPerS / first.HandshakesPerS
		}
		if first.CallsPerS > 0 {
			r.CallsRatio = r.CallsPerS / first.CallsPerS
		}
		if _, err := fmt.Fprintf(w, "  %-14s %14.0f %7.2f× %12.0f %7.2f× %15.2f ms\n", r.NATS, r.HandshakesPerS, r.HandshakesRatio, r.CallsPerS, r.CallsRatio, r.UsableP99Ms); err != nil {
			return err
		}
	}
	return nil
}

// Channel measures the cluster channel with Units units on one embedded
// NATS server: handshakes a second, each durably stored before it is
// answered, and how long until each new session is usable on every unit;
// then calls a second and their latency with 1 KiB payloads; and, as the
// baseline the channel replaces, full TLS 1.3 handshakes with each unit.
func Channel(ctx context.Context, cfg ChannelConfig) (*ChannelResult, error) {
	if cfg.Units <= 0 {
		cfg.Units = 5
	}
	if cfg.Clusters <= 0 {
		cfg.Clusters = 1
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 5 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8 * runtime.GOMAXPROCS(0)
	}
	if cfg.KEM == 0 {
		cfg.KEM = messages.KEMMLKEM768X25519
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	dir, err := os.MkdirTemp("", "cohort-bench-channel-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// The deployment as dev and deploy make it: cohort's accounts, each
	// part on its own credential's connections.
	d := access.Deployment{Users: []string{benchUser}}
	for c := range cfg.Clusters {
		cl := access.Cluster{ID: fmt.Sprintf("bench-%d", c+1)}
		for i := range cfg.Units {
			cl.Units = append(cl.Units, fmt.Sprintf("b%d", i))
		}
		d.Clusters = append(d.Clusters, cl)
	}
	creds, err := access.LoadOrCreateAll(filepath.Join(dir, "creds"), d)
	if err != nil {
		return nil, err
	}
	accounts, err := access.Accounts(d, creds)
	if err != nil {
		return nil, err
	}
	var srv bus
	replicas := 1
	switch cfg.NATS {
	case "", Single, NoSync:
		if cfg.NATS == "" {
			cfg.NATS = Single
		}
		one, err := embednats.Start(embednats.Config{StoreDir: filepath.Join(dir, "js"), SyncAlways: cfg.NATS == Single, Accounts: accounts})
		if err != nil {
			return nil, err
		}
		defer one.Close()
		srv = one
	case Cluster, ClusterFsync:
		three, err := embednats.StartCluster(embednats.ClusterConfig{Dir: dir, Accounts: accounts, SyncAlways: cfg.NATS == ClusterFsync})
		if err != nil {
			return nil, err
		}
		defer three.Close()
		srv, replicas = three, 3
	default:
		return nil, fmt.Errorf("bench: NATS %q: want %s, %s, %s or %s", cfg.NATS, NoSync, Single, Cluster, ClusterFsync)
	}
	var conns []*nats.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	connect := func(g access.Grant, k access.Key) (*nats.Conn, error) {
		nc, err := srv.Connect(creds[g].Options(k)...)
		if err == nil {
			conns = append(conns, nc)
		}
		return nc, err
	}

	m, err := sim.MeasurementHex(sim.UnitIdentity("bench"))
	if err != nil {
		return nil, err
	}
	policy := fmt.Sprintf("version: 1\naccept_simulated: true\ntasks:\n  - name: bench\n    measurements: [%s]\n    dns_names: [localhost]\n    ip_addresses: [127.0.0.1]\nclusters:\n", m)
	for _, c := range d.Clusters {
		policy += fmt.Sprintf("  - id: %s\n    task: bench\n", c.ID)
	}
	iss, stopIssuer, err := startIssuerReplicated(ctx, func(k access.Key) (*nats.Conn, error) { return connect(access.Grant{Role: access.Issuer}, k) }, []byte(policy), replicas)
	if err != nil {
		return nil, err
	}
	defer stopIssuer()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var parts sync.WaitGroup
	defer parts.Wait()
	defer cancel()
	mg := access.Grant{Role: access.Manager}
	mnc, err := connect(mg, access.State)
	if err != nil {
		return nil, err
	}
	msc, err := connect(mg, access.Serve)
	if err != nil {
		return nil, err
	}
	mgr, err := manager.New(manager.Config{Conn: mnc, Serve: msc, Root: iss.Root(), Replicas: replicas})
	if err != nil {
		return nil, err
	}
	parts.Go(func() { _ = mgr.Run(ctx) })
	<-mgr.Ready()

	seen := newSightings()
	pin, err := sim.Measure(sim.IssuerIdentity)
	if err != nil {
		return nil, err
	}
	platform, err := sim.New(sim.Config{Identity: sim.UnitIdentity("bench")})
	if err != nil {
		return nil, err
	}
	var units []*unit.Unit
	for _, c := range d.Clusters {
		for _, id := range c.Units {
			g := access.Grant{Role: access.Unit, Cluster: c.ID, Name: id}
			nc, err := connect(g, access.State)
			if err != nil {
				return nil, err
			}
			sc, err := connect(g, access.Serve)
			if err != nil {
				return nil, err
			}
			u, err := unit.New(unit.Config{
				Conn: nc, Serve: sc, Platform: platform, Task: "bench", IssuerMeasurement: pin, AllowSimulatedIssuer: true,
				HTTPSAddr: "127.0.0.1:0", Name: c.ID + "-" + id, ID: id, Cluster: c.ID, OnSession: seen.saw, Replicas: replicas,
				Quota:          unit.Unlimited, // one user is the whole load
				SideEffectFree: cfg.SideEffectFree,
				Logger:         cfg.Logger,
			})
			if err != nil {
				return nil, err
			}
			parts.Go(func() { _ = u.Run(ctx) })
			if err := waitReady(ctx, u, time.Minute); err != nil {
				return nil, fmt.Errorf("bench: unit %s of cluster %s: %w", id, c.ID, err)
			}
			units = append(units, u)
		}
	}
	if err := waitMembers(ctx, mgr, cfg.Units*cfg.Clusters); err != nil {
		return nil, fmt.Errorf("bench: units did not join: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(iss.Root())
	cnc, err := connect(access.Grant{Role: access.User, Name: benchUser}, access.State)
	if err != nil {
		return nil, err
	}
	// Each worker keeps to one cluster, the workers spread over them.
	ccfg := func(w int) client.Config {
		return client.Config{Conn: cnc, User: benchUser, Cluster: d.Clusters[w%len(d.Clusters)].ID, Task: "bench", Roots: roots, KEM: cfg.KEM}
	}
	res := &ChannelResult{NATS: cfg.NATS, Clusters: cfg.Clusters, Units: cfg.Units, KEM: kemName(cfg.KEM), Concurrency: cfg.Concurrency, CallBytes: 1024,
		SideEffectFree: cfg.SideEffectFree, WritesPerCall: 2}
	if cfg.SideEffectFree {
		res.WritesPerCall = 1
	}

	// Handshakes.
	var startsMu sync.Mutex
	starts := map[string]time.Time{}
	hs := run(ctx, cfg.Duration, cfg.Concurrency, func(ctx context.Context, w int) error {
		t := time.Now()
		s, err := client.Dial(ctx, ccfg(w))
		if err != nil {
			return err
		}
		startsMu.Lock()
		starts[hex.EncodeToString(s.ID)] = t
		startsMu.Unlock()
		return nil
	})
	res.HandshakesPerS, res.HandshakeP50Ms, res.HandshakeP99Ms = hs.rate(), hs.percentile(0.5), hs.percentile(0.99)
	res.Errors += hs.errors
	if hs.firstErr != nil {
		res.FirstError = hs.firstErr.Error()
	}
	// Give the last sessions a moment to reach every unit, then read when each did.
	backoff.Wait(ctx, 200*time.Millisecond)
	var usable []time.Duration
	for id, start := range starts {
		if at, ok := seen.onAll(id, cfg.Units); ok {
			usable = append(usable, at.Sub(start))
		} else {
			res.SessionsNotOnAll++
		}
	}
	slices.Sort(usable)
	u := &phase{latencies: usable}
	res.SessionsMeasured, res.UsableP50Ms, res.UsableP99Ms = len(usable), u.percentile(0.5), u.percentile(0.99)

	// Calls: each worker its own session, 1 KiB a call.
	sessions := make([]*client.Session, cfg.Concurrency)
	for i := range sessions {
		if sessions[i], err = client.Dial(ctx, ccfg(i)); err != nil {
			return nil, err
		}
	}
	payload := make([]byte, 1024)
	calls := run(ctx, cfg.Duration, cfg.Concurrency, func(ctx context.Context, w int) error {
		_, err := sessions[w].Call(ctx, payload)
		return err
	})
	res.CallsPerS, res.CallP50Ms, res.CallP99Ms = calls.rate(), calls.percentile(0.5), calls.percentile(0.99)
	res.Errors += calls.errors
	if calls.firstErr != nil && res.FirstError == "" {
		res.FirstError = calls.firstErr.Error()
	}

	// The baseline: a full TLS 1.3 handshake with each unit, no resumption.
	tlsConf := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	var one, all []time.Duration
	deadline := time.Now().Add(cfg.Duration / 2)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		t0 := time.Now()
		for _, un := range units[:cfg.Units] { // one cluster's
			t := time.Now()
			c, err := tls.Dial("tcp", un.Addr().String(), tlsConf)
			if err != nil {
				return nil, fmt.Errorf("bench: TLS baseline: %w", err)
			}
			one = append(one, time.Since(t))
			c.Close()
		}
		all = append(all, time.Since(t0))
	}
	slices.Sort(one)
	slices.Sort(all)
	res.TLSHandshakeP50Ms = (&phase{latencies: one}).percentile(0.5)
	res.TLSToAllUnitsMs = (&phase{latencies: all}).percentile(0.5)

	if err := res.print(cfg.Out, cfg.JSON); err != nil {
		return nil, err
	}
	if res.Errors > 0 {
		return res, fmt.Errorf("bench: %d operations failed; first: %s", res.Errors, res.FirstError)
	}
	return res, nil
}

func (r *ChannelResult) print(w io.Writer, asJSON bool) error {
	if asJSON {
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(r)
	}
	where := "one embedded NATS server, fsync on every JetStream write"
	switch r.NATS {
	case NoSync:
		where = "one embedded NATS server, fsync left to its interval (a process crash loses nothing acknowledged; an OS crash may)"
	case Cluster:
		where = "a cluster of three embedded NATS servers, every stream on all three, fsync left to the interval"
	case ClusterFsync:
		where = "a cluster of three embedded NATS servers, every stream on all three, fsync on every write (as cohort deploy)"
	}
	_, err := fmt.Fprintf(w, `cohort bench channel: %d cluster(s) of %d units, %s, cohort's accounts and credentials, KEM %s, %d in flight
  handshakes       %8.0f /s   p50 %.2f ms   p99 %.2f ms   (each stored durably before it is answered)
  usable on all    p50 %.2f ms   p99 %.2f ms   (%d sessions measured, %d not on every unit)
  calls, 1 KiB     %8.0f /s   p50 %.2f ms   p99 %.2f ms   (%s)
  baseline         a full TLS 1.3 handshake %.2f ms (p50); one with each of the %d units %.2f ms
  errors           %d
`, r.Clusters, r.Units, where, r.KEM, r.Concurrency, r.HandshakesPerS, r.HandshakeP50Ms, r.HandshakeP99Ms, r.UsableP50Ms, r.UsableP99Ms,
		r.SessionsMeasured, r.SessionsNotOnAll, r.CallsPerS, r.CallP50Ms, r.CallP99Ms, callKind(r), r.TLSHandshakeP50Ms, r.Units, r.TLSToAllUnitsMs, r.Errors)
	return err
}

// callKind says what each call of the run stored.
func callKind(r *ChannelResult) string {
	if r.SideEffectFree {
		return "a task free of side effects: one durable write a call, its answer"
	}
	return "claimed before it runs: two durable writes a call, the claim and the answer"
}

// sightings records when each unit first held each session.
type sightings struct {
	mu sync.Mutex
	m  map[string]*sighting
}

type sighting struct {
	count int
	last  time.Time
}

func newSightings() *sightings { return &sightings{m: map[string]*sighting{}} }

func (s *sightings) saw(id []byte) {
	now := time.Now()
	k := hex.EncodeToString(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[k]
	if e == nil {
		e = &sighting{}
		s.m[k] = e
	}
	e.count++
	e.last = now
}

// onAll reports when the n-th unit came to hold session id.
func (s *sightings) onAll(id string, n int) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[id]
	if e == nil || e.count < n {
		return time.Time{}, false
	}
	return e.last, true
}
