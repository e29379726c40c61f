package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/rate"
	"github.com/cohort-dev/cohort/service"
)

// The evidence endpoint's bounds (issue 25, point 2), on the real NATS
// server with cohort's accounts and permissions: every account may ask for
// the issuer's evidence, each answer costs an attestation, and no requester
// may starve the units' certification.

// evidenceStack is a permissioned server and one issuer: enough for units
// to certify and users to ask for evidence. Unlike secureStack it takes a
// testing.TB, for the benchmark too.
type evidenceStack struct {
	tb    testing.TB
	srv   *embednats.Server
	creds map[access.Grant]*access.Credential
	iss   *issuer.Issuer
}

// startEvidenceStack starts the server with d's accounts and an issuer on
// platform (a simulated one by default), its configuration adjusted by tune.
func startEvidenceStack(tb testing.TB, d access.Deployment, platform enclave.Platform, tune func(*issuer.Config)) *evidenceStack {
	tb.Helper()
	s := &evidenceStack{tb: tb}
	var err error
	if s.creds, err = access.LoadOrCreateAll(tb.TempDir(), d); err != nil {
		tb.Fatal(err)
	}
	accounts, err := access.Accounts(d, s.creds)
	if err != nil {
		tb.Fatal(err)
	}
	if s.srv, err = embednats.Start(embednats.Config{StoreDir: tb.TempDir(), Accounts: accounts}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.srv.Close)
	demo, err := sim.MeasurementHex(sim.UnitIdentity("demo"))
	if err != nil {
		tb.Fatal(err)
	}
	policy, err := issuer.ParsePolicy(fmt.Appendf(nil, "version: 1\naccept_simulated: true\ntasks:\n  - name: demo\n    measurements: [%s]\nclusters:\n  - id: c1\n    task: demo\n", demo))
	if err != nil {
		tb.Fatal(err)
	}
	if platform == nil {
		platform, err = sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: make([]byte, sim.SealSecretSize)})
		if err != nil {
			tb.Fatal(err)
		}
	}
	g := access.Grant{Role: access.Issuer}
	cfg := issuer.Config{Ungoverned: true, Conn: s.conn(g, access.State), Serve: s.conn(g, access.Serve), Platform: platform, Policy: policy,
		KeyCache: issuer.FileKeyCache(filepath.Join(tb.TempDir(), issuer.KeyCacheFile)), NoEvents: true}
	if tune != nil {
		tune(&cfg)
	}
	if s.iss, err = issuer.New(cfg); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.iss.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("issuer: %v", err)
		}
	})
	select {
	case <-s.iss.Ready():
	case err := <-done:
		tb.Fatalf("the issuer stopped before it was ready: %v", err)
	case <-time.After(deadline):
		tb.Fatal("the issuer was not ready in time")
	}
	return s
}

// conn connects as one key of a grant's credential.
func (s *evidenceStack) conn(g access.Grant, k access.Key) *nats.Conn {
	s.tb.Helper()
	nc, err := s.srv.Connect(s.creds[g].Options(k)...)
	if err != nil {
		s.tb.Fatal(err)
	}
	s.tb.Cleanup(nc.Close)
	return nc
}

// unitCertifier verifies the issuer as unit id of c1 does, on its
// credential, and returns the certifier it then certifies with.
func (s *evidenceStack) unitCertifier(ctx context.Context, id string) (*issuerclient.Certifier, error) {
	p, err := sim.New(sim.Config{Identity: sim.UnitIdentity("demo")})
	if err != nil {
		return nil, err
	}
	pin, err := sim.Measure(sim.IssuerIdentity)
	if err != nil {
		return nil, err
	}
	client := issuerclient.Config{Conn: s.conn(access.Grant{Role: access.Unit, Cluster: "c1", Name: id}, access.State), Verifier: p,
		IssuerMeasurement: pin, AllowSimulated: true, Timeout: deadline}
	trust, err := issuerclient.VerifyIssuer(ctx, client)
	if err != nil {
		return nil, err
	}
	return issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, Attester: p, Cluster: "c1"})
}

// evidenceRequest is an encoded evidence request.
func evidenceRequest(tb testing.TB) []byte {
	b, err := messages.Marshal(&messages.EvidenceRequest{V: messages.Version, Nonce: bytes.Repeat([]byte{9}, messages.NonceSize)})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// askEvidence asks for the issuer's evidence once; it returns the
// refusal's code and reason, or "" for an answer.
func askEvidence(ctx context.Context, nc *nats.Conn, req []byte) (messages.Code, string, error) {
	_, err := service.Request(ctx, nc, messages.SubjectEvidence, req, deadline)
	var refusal *messages.Error
	switch {
	case err == nil:
		return "", "", nil
	case errors.As(err, &refusal):
		return refusal.Code, refusal.Reason, nil
	}
	return "", "", err
}

// flood is a requester asking for evidence from several goroutines until
// stopped, counting the outcomes.
type flood struct {
	served, refused atomic.Int64
	mu              sync.Mutex
	other           []string // outcomes that are neither an answer nor rate_limited
	reason          string   // the last rate_limited reason
	stop            context.CancelFunc
	done            sync.WaitGroup
}

func startFlood(ctx context.Context, nc *nats.Conn, req []byte, goroutines int) *flood {
	f := &flood{}
	ctx, f.stop = context.WithCancel(ctx)
	for range goroutines {
		f.done.Go(func() {
			for ctx.Err() == nil {
				code, reason, err := askEvidence(ctx, nc, req)
				switch {
				case err != nil && ctx.Err() != nil:
				case err == nil && code == "":
					f.served.Add(1)
				case code == messages.CodeRateLimited:
					f.refused.Add(1)
					f.mu.Lock()
					f.reason = reason
					f.mu.Unlock()
				default:
					f.mu.Lock()
					f.other = append(f.other, fmt.Sprintf("%s %s %v", code, reason, err))
					f.mu.Unlock()
				}
			}
		})
	}
	return f
}

func (f *flood) end() {
	f.stop()
	f.done.Wait()
}

// TestEvidenceFloodIsRateLimited: a user floods the evidence endpoint from
// eight goroutines, far above its rate, while units of c1 verify the
// issuer and certify on their own credentials. The user is served its
// burst and then refused as rate_limited, with a reason that names it; the
// units verify the issuer and certify throughout; another user is served.
// The rate is set so low that no token comes back during the test, so the
// counts are exact.
func TestEvidenceFloodIsRateLimited(t *testing.T) {
	const burst = 5
	d := access.Deployment{Clusters: []access.Cluster{{ID: "c1", Units: []string{"u1", "u2"}}}, Users: []string{"alice", "bob"}}
	s := startEvidenceStack(t, d, nil, func(c *issuer.Config) {
		c.EvidenceRate = rate.Limit{Rate: 1e-6, Burst: burst}
		c.EvidenceTotal = rate.Limit{Rate: 1e-6, Burst: 1000}
	})
	ctx := testContext(t)
	req := evidenceRequest(t)
	alice := s.conn(access.Grant{Role: access.User, Name: "alice"}, access.State)
	f := startFlood(ctx, alice, req, 8)
	defer f.end()
	eventually(t, "the flooder refused beyond its burst", func() bool { return f.served.Load() == burst && f.refused.Load() >= 100 })

	// While the flood goes on: each unit verifies the issuer and certifies,
	// as it does when it starts and renews, three times over.
	for _, id := range []string{"u1", "u2"} {
		for range 3 {
			c, err := s.unitCertifier(ctx, id)
			if err != nil {
				t.Fatalf("unit %s verifying the issuer during the flood: %v", id, err)
			}
			if _, err := c.Certify(ctx, "demo"); err != nil {
				t.Fatalf("unit %s certifying during the flood: %v", id, err)
			}
		}
	}
	// Another user is served.
	bob := s.conn(access.Grant{Role: access.User, Name: "bob"}, access.State)
	if code, reason, err := askEvidence(ctx, bob, req); err != nil || code != "" {
		t.Fatalf("bob during alice's flood: %s %s %v", code, reason, err)
	}
	eventually(t, "more of the flood refused after the units certified", func() bool { return f.refused.Load() >= 200 })
	f.end()

	if got := f.served.Load(); got != burst {
		t.Errorf("the flooder was served %d times, want its burst of %d", got, burst)
	}
	if len(f.other) > 0 {
		t.Errorf("besides answers and rate_limited, the flooder heard %d others, first: %s", len(f.other), f.other[0])
	}
	if !strings.Contains(f.reason, "account user-alice key "+s.creds[access.Grant{Role: access.User, Name: "alice"}].Public(access.State)) {
		t.Errorf("the refusal does not name the requester: %q", f.reason)
	}
	t.Logf("the flooder: %d served, %d refused as rate_limited (%q)", f.served.Load(), f.refused.Load(), f.reason)
}

// TestEvidenceTotalsAreByClass: users together are held to the total of
// their class, which then refuses each of them with its reason; the units,
// a class of their own, are served meanwhile, each to its own rate.
func TestEvidenceTotalsAreByClass(t *testing.T) {
	d := access.Deployment{Clusters: []access.Cluster{{ID: "c1", Units: []string{"u1", "u2"}}}, Users: []string{"alice", "bob", "carol"}}
	s := startEvidenceStack(t, d, nil, func(c *issuer.Config) {
		c.EvidenceRate = rate.Limit{Rate: 1e-6, Burst: 3}
		c.EvidenceTotal = rate.Limit{Rate: 1e-6, Burst: 5}
	})
	ctx := testContext(t)
	req := evidenceRequest(t)
	ask := func(g access.Grant, n int) (served int, codes []string) {
		nc := s.conn(g, access.State)
		for range n {
			code, reason, err := askEvidence(ctx, nc, req)
			if err != nil {
				t.Fatalf("%s: %v", g, err)
			}
			if code == "" {
				served++
			} else {
				codes = append(codes, string(code)+": "+reason)
			}
		}
		return served, codes
	}
	user := func(name string) access.Grant { return access.Grant{Role: access.User, Name: name} }
	if served, codes := ask(user("alice"), 4); served != 3 || len(codes) != 1 || !strings.Contains(codes[0], "faster than") {
		t.Errorf("alice: %d served, refusals %q; want 3, then her own rate", served, codes)
	}
	// Bob takes what is left of the users' total, then the total refuses
	// him and carol, whose own rates are untouched.
	if served, codes := ask(user("bob"), 3); served != 2 || len(codes) != 1 || !strings.Contains(codes[0], "users, operators and managers") {
		t.Errorf("bob: %d served, refusals %q; want 2, then the users' total", served, codes)
	}
	if served, codes := ask(user("carol"), 1); served != 0 || len(codes) != 1 || !strings.HasPrefix(codes[0], string(messages.CodeRateLimited)) {
		t.Errorf("carol: %d served, refusals %q; want the users' total", served, codes)
	}
	// The units are a class of their own: served, and certified.
	for _, id := range []string{"u1", "u2"} {
		c, err := s.unitCertifier(ctx, id)
		if err != nil {
			t.Fatalf("unit %s, after the users' total ran out: %v", id, err)
		}
		if _, err := c.Certify(ctx, "demo"); err != nil {
			t.Fatalf("unit %s: %v", id, err)
		}
	}
}

// slowAttest stands for hardware: an attestation waits for the platform's
// firmware or quoting service (milliseconds on SEV-SNP and TDX), where the
// simulated platform signs in microseconds.
type slowAttest struct {
	enclave.Platform
	wait time.Duration
}

func (p slowAttest) Attest(ctx context.Context, reportData [enclave.ReportDataSize]byte) ([]byte, error) {
	t := time.NewTimer(p.wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
	}
	return p.Platform.Attest(ctx, reportData)
}

// BenchmarkCertifyUnderEvidenceFlood measures the rate at which units of
// c1 certify (each request attested, verified, sealed and signed; four
// units, two requests in flight each), without and with a flood of
// evidence requests from sixteen users, with the issuer's default bounds
// and an attestation that takes hardwareAttest. The flood is open-loop,
// each user sending at a fixed rate whatever the answers: 12 a second
// (above a requester's default rate of 5; the sixteen together at almost
// four times the users' default total of 50, which then binds), then 50.
// Quiet and flooded rounds of 50 certifications alternate, so that the
// machine's other load falls on both alike. It reports both rates
// (certify/s, flood-certify/s), their ratio, and the flood's evidence
// requests answered a second (over the whole run) and refused a second
// (while it floods).
//
// Everything runs in this one process: the NATS server, the issuer, the
// units and the flooders, so the flood's cost in NATS (a request and a
// refusal each cross an account's import: about 85 µs of CPU in all, of
// which the issuer's decision is 4 µs, BenchmarkEvidenceRefusal) is taken
// from the units' certifications too.
func BenchmarkCertifyUnderEvidenceFlood(b *testing.B) {
	for _, perUser := range []int{12, 50} {
		b.Run(fmt.Sprintf("flood=%dx%d/s", evidenceFlooders, perUser), func(b *testing.B) { benchCertifyUnderFlood(b, perUser) })
	}
}

// evidenceFlooders is the number of users who flood in the benchmark.
const evidenceFlooders = 16

func benchCertifyUnderFlood(b *testing.B, floodRate int) {
	const (
		units, inFlight = 4, 2
		hardwareAttest  = 20 * time.Millisecond
		chunk           = 50 // certifications in a round
	)
	d := access.Deployment{Clusters: []access.Cluster{{ID: "c1"}}}
	for i := range units {
		d.Clusters[0].Units = append(d.Clusters[0].Units, fmt.Sprintf("u%d", i))
	}
	for i := range evidenceFlooders {
		d.Users = append(d.Users, fmt.Sprintf("flood%d", i))
	}
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: make([]byte, sim.SealSecretSize)})
	if err != nil {
		b.Fatal(err)
	}
	s := startEvidenceStack(b, d, slowAttest{Platform: p, wait: hardwareAttest}, nil)
	ctx := context.Background()
	var certifiers []*issuerclient.Certifier
	for i := range units {
		c, err := s.unitCertifier(ctx, fmt.Sprintf("u%d", i))
		if err != nil {
			b.Fatal(err)
		}
		certifiers = append(certifiers, c)
	}
	req := evidenceRequest(b)
	var floodConns []*nats.Conn
	for i := range evidenceFlooders {
		floodConns = append(floodConns, s.conn(access.Grant{Role: access.User, Name: fmt.Sprintf("flood%d", i)}, access.State))
	}

	// certify makes n certifications, spread over the units' requests in
	// flight, and returns how long they took.
	certify := func(n int) time.Duration {
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for _, c := range certifiers {
			for range inFlight {
				wg.Go(func() {
					for next.Add(1) <= int64(n) {
						if _, err := c.Certify(ctx, "demo"); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
		}
		wg.Wait()
		return time.Since(start)
	}
	// Each flooder sends floodRate requests a second while on, whatever
	// the answers; the answers are counted by outcome.
	var on atomic.Bool
	var served, refused, other atomic.Int64
	fctx, stopFlood := context.WithCancel(ctx)
	var flooders sync.WaitGroup
	defer func() { stopFlood(); flooders.Wait() }()
	for _, nc := range floodConns {
		inbox := nc.NewRespInbox()
		if _, err := nc.Subscribe(inbox, func(m *nats.Msg) {
			switch m.Header.Get(service.ErrorCodeHeader) {
			case "":
				served.Add(1)
			case string(messages.CodeRateLimited):
				refused.Add(1)
			default:
				other.Add(1)
			}
		}); err != nil {
			b.Fatal(err)
		}
		flooders.Go(func() {
			t := time.NewTicker(time.Second / time.Duration(floodRate))
			defer t.Stop()
			for {
				select {
				case <-fctx.Done():
					return
				case <-t.C:
					if !on.Load() {
						continue
					}
					if err := nc.PublishRequest(messages.SubjectEvidence, inbox, req); err != nil {
						b.Error(err)
						return
					}
				}
			}
		})
	}

	certify(units * inFlight) // warm up
	// Short rounds, quiet and flooded in turn, in either order: what else
	// runs on the machine meanwhile weighs on both alike.
	rounds := max(2, (b.N+chunk-1)/chunk)
	var quiet, flooded time.Duration
	b.ResetTimer()
	for r := range rounds {
		if r%2 == 0 {
			quiet += certify(chunk)
		}
		on.Store(true)
		flooded += certify(chunk)
		on.Store(false)
		if r%2 == 1 {
			quiet += certify(chunk)
		}
	}
	b.StopTimer()
	q, f := float64(rounds*chunk)/quiet.Seconds(), float64(rounds*chunk)/flooded.Seconds()
	b.ReportMetric(q, "certify/s")
	b.ReportMetric(f, "flood-certify/s")
	b.ReportMetric(f/q, "flood/quiet")
	// Answered over the whole run: the buckets fill again while the flood
	// pauses, so what the totals bound is the rate over the whole.
	b.ReportMetric(float64(served.Load())/(quiet+flooded).Seconds(), "flood-served/s")
	b.ReportMetric(float64(refused.Load())/flooded.Seconds(), "flood-refused/s")
	if other.Load() > 0 {
		b.Errorf("%d flood requests answered neither with evidence nor rate_limited", other.Load())
	}
}
