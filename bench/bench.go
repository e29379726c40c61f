// Package bench measures cohort end to end and prints figures: rates and
// latency percentiles from real round trips over NATS on loopback, beside the
// same run's ceiling for the work without the transport. It backs
// `cohort bench`. Figures are measurements of this machine, never targets
// asserted by tests.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/attest"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/snp/snptest"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/rate"
)

// CertifyConfig configures the certify benchmark.
type CertifyConfig struct {
	Duration    time.Duration // each phase; default 5s
	Concurrency int           // round trips in flight; default 8 × GOMAXPROCS
	Conns       int           // unit-side NATS connections; default 4
	KEM         uint16        // default ML-KEM-768+X25519
	Groups      int           // group pairs each round trip asks for besides the task's: 0 to messages.MaxGroups
	JSON        bool
	Out         io.Writer
}

// CertifyResult is what the certify benchmark measured.
type CertifyResult struct {
	RatePerS           float64 `json:"rate_per_s"`
	P50Ms              float64 `json:"p50_ms"`
	P99Ms              float64 `json:"p99_ms"`
	CryptoCeilingPerS  float64 `json:"crypto_ceiling_per_s"`
	CeilingP50Ms       float64 `json:"crypto_ceiling_p50_ms"`
	RoundTrips         int     `json:"round_trips"`
	Errors             int     `json:"errors"`
	DurationS          float64 `json:"duration_s"`
	Concurrency        int     `json:"concurrency"`
	Groups             int     `json:"groups"`
	KEM                string  `json:"kem"`
	Transport          string  `json:"transport"`
	Attestation        string  `json:"attestation"`
	GOMAXPROCS         int     `json:"gomaxprocs"`
	FirstError         string  `json:"first_error,omitempty"`
	CeilingDescription string  `json:"crypto_ceiling_is"`
	// The same round trips over NATS with two issuer replicas answering,
	// the second on another simulated machine that obtained the state key
	// from the first. The one-replica figures above are the mean of a phase
	// before and a phase after this one.
	TwoReplicasPerS  float64    `json:"two_replicas_rate_per_s"`
	TwoReplicasP50Ms float64    `json:"two_replicas_p50_ms"`
	TwoReplicasP99Ms float64    `json:"two_replicas_p99_ms"`
	TwoReplicasRatio float64    `json:"two_replicas_ratio"`
	OneReplicaPhases [2]float64 `json:"one_replica_phases_per_s"`
	// The same round trips over NATS with one issuer, the units' evidence
	// from a fake SEV-SNP signer (go-sev-guest's test signer, under roots
	// only this benchmark trusts): the issuer verifies a real report format,
	// its VCEK chain (cached) and its signature.
	SNPPerS  float64 `json:"snp_rate_per_s"`
	SNPP50Ms float64 `json:"snp_p50_ms"`
	SNPP99Ms float64 `json:"snp_p99_ms"`
	SNPRatio float64 `json:"snp_ratio"`
}

// Certify runs full certify round trips against an embedded issuer: the
// unit's key generation and evidence, the issuer's checks, sealing and
// signing, and the unit's opening and checks, over NATS on TCP loopback. Then
// it runs the same round trips with the issuer called in process, which is
// the ceiling the cryptography and encoding allow on this machine.
func Certify(ctx context.Context, cfg CertifyConfig) (*CertifyResult, error) {
	if cfg.Duration <= 0 {
		cfg.Duration = 5 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8 * runtime.GOMAXPROCS(0)
	}
	if cfg.Conns <= 0 {
		cfg.Conns = 4
	}
	if cfg.KEM == 0 {
		cfg.KEM = messages.KEMMLKEM768X25519
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Groups < 0 || cfg.Groups > messages.MaxGroups {
		return nil, fmt.Errorf("bench: %d groups, want 0 to %d", cfg.Groups, messages.MaxGroups)
	}
	groups := make([]string, cfg.Groups)
	for i := range groups {
		groups[i] = fmt.Sprintf("g%d", i+1)
	}
	srv, err := embednats.StartTemp("cohort-bench-")
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	// Fake SEV-SNP hardware beside the simulated platform: a test signer
	// whose AMD roots only this benchmark's issuer trusts.
	fake, err := snptest.New(snptest.Options{})
	if err != nil {
		return nil, err
	}
	snpV, err := snp.New(fake.Config())
	if err != nil {
		return nil, err
	}
	verifier := attest.New(attest.Config{Simulated: sim.Verifier(), SNP: snpV})
	iss, stopIssuer, err := startIssuer(ctx, srv, groups, verifier, snptest.DefaultMeasurement)
	if err != nil {
		return nil, err
	}
	defer stopIssuer()

	unitPlatform, err := sim.New(sim.Config{Identity: sim.UnitIdentity("bench")})
	if err != nil {
		return nil, err
	}
	measurement, err := sim.Measure(sim.IssuerIdentity)
	if err != nil {
		return nil, err
	}
	var certifiers, snpCertifiers []*issuerclient.Certifier
	for range cfg.Conns {
		nc, err := srv.Connect()
		if err != nil {
			return nil, err
		}
		defer nc.Close()
		client := issuerclient.Config{Conn: nc, Verifier: unitPlatform, IssuerMeasurement: measurement, AllowSimulated: true}
		trust, err := issuerclient.VerifyIssuer(ctx, client)
		if err != nil {
			return nil, err
		}
		c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, Attester: unitPlatform, KEM: cfg.KEM, Groups: groups})
		if err != nil {
			return nil, err
		}
		certifiers = append(certifiers, c)
		s, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, KEM: cfg.KEM, Groups: groups,
			Attester: &attest.Platform{Kind: enclave.PlatformSNP, Attester: fake.Attester(), Verifier: verifier, Self: snptest.DefaultMeasurement}})
		if err != nil {
			return nil, err
		}
		snpCertifiers = append(snpCertifiers, s)
	}
	// Warm up: one round trip per connection, outside the measurement.
	for i, c := range certifiers {
		if _, err := c.Certify(ctx, "bench"); err != nil {
			return nil, fmt.Errorf("bench: warm-up round trip: %w", err)
		}
		if _, err := snpCertifiers[i].Certify(ctx, "bench-snp"); err != nil {
			return nil, fmt.Errorf("bench: warm-up round trip with SEV-SNP evidence: %w", err)
		}
	}

	overNATS := func() *phase {
		return run(ctx, cfg.Duration, cfg.Concurrency, func(ctx context.Context, w int) error {
			_, err := certifiers[w%len(certifiers)].Certify(ctx, "bench")
			return err
		})
	}
	before := overNATS()
	// A second replica, on another machine: it obtains the state key from
	// the first by mutual attestation; the queue group splits the load.
	second, stopSecond, err := startIssuerOn(ctx, func(access.Key) (*nats.Conn, error) { return srv.Connect() }, nil, 1, 1)
	if err != nil {
		return nil, fmt.Errorf("bench: second issuer: %w", err)
	}
	if !slices.Equal(second.Root().Raw, iss.Root().Raw) {
		stopSecond()
		return nil, errors.New("bench: the second issuer serves another root")
	}
	two := overNATS()
	stopSecond()
	after := overNATS()
	withSNP := run(ctx, cfg.Duration, cfg.Concurrency, func(ctx context.Context, w int) error {
		_, err := snpCertifiers[w%len(snpCertifiers)].Certify(ctx, "bench-snp")
		return err
	})
	inProcess := run(ctx, cfg.Duration, cfg.Concurrency, func(ctx context.Context, w int) error {
		p, req, err := certifiers[w%len(certifiers)].Prepare(ctx, "bench")
		if err != nil {
			return err
		}
		reply, err := iss.Certify(ctx, req)
		if err != nil {
			return err
		}
		_, err = p.Open(reply)
		return err
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	one := merge(before, after)
	res := &CertifyResult{
		RatePerS:           one.rate(),
		P50Ms:              one.percentile(0.50),
		P99Ms:              one.percentile(0.99),
		CryptoCeilingPerS:  inProcess.rate(),
		CeilingP50Ms:       inProcess.percentile(0.50),
		RoundTrips:         len(one.latencies),
		Errors:             one.errors + two.errors + inProcess.errors + withSNP.errors,
		SNPPerS:            withSNP.rate(),
		SNPP50Ms:           withSNP.percentile(0.50),
		SNPP99Ms:           withSNP.percentile(0.99),
		DurationS:          one.elapsed.Seconds(),
		TwoReplicasPerS:    two.rate(),
		TwoReplicasP50Ms:   two.percentile(0.50),
		TwoReplicasP99Ms:   two.percentile(0.99),
		OneReplicaPhases:   [2]float64{before.rate(), after.rate()},
		Concurrency:        cfg.Concurrency,
		Groups:             cfg.Groups,
		KEM:                kemName(cfg.KEM),
		Transport:          "NATS over TCP loopback, embedded server",
		Attestation:        "simulated (Ed25519 platform signature)",
		GOMAXPROCS:         runtime.GOMAXPROCS(0),
		CeilingDescription: "the same round trips with the issuer called in process: key generation, evidence, verification, HPKE, signing, opening; no NATS",
	}
	if res.RatePerS > 0 {
		res.TwoReplicasRatio = res.TwoReplicasPerS / res.RatePerS
	}
	if res.RatePerS > 0 {
		res.SNPRatio = res.SNPPerS / res.RatePerS
	}
	for _, p := range []*phase{one, two, inProcess, withSNP} {
		if p.firstErr != nil {
			res.FirstError = p.firstErr.Error()
			break
		}
	}
	if err := res.print(cfg.Out, cfg.JSON); err != nil {
		return nil, err
	}
	if res.Errors > 0 {
		return res, fmt.Errorf("bench: %d round trips failed; first: %s", res.Errors, res.FirstError)
	}
	return res, nil
}

func (r *CertifyResult) print(w io.Writer, asJSON bool) error {
	if asJSON {
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(r)
	}
	_, err := fmt.Fprintf(w, `cohort bench certify: full round trips with %d group pairs each, %d in flight, GOMAXPROCS %d, KEM %s, %s attestation
  over NATS (TCP loopback)   %8.0f round trips/s   p50 %.2f ms   p99 %.2f ms   (%d in %.1fs, %d errors; one issuer: phases %.0f and %.0f/s)
  two issuer replicas        %8.0f round trips/s   p50 %.2f ms   p99 %.2f ms   (%.2f× one; the second obtained the state key from the first)
  ceiling without NATS       %8.0f round trips/s   p50 %.2f ms   (same work, issuer called in process)
  SEV-SNP evidence (fake)    %8.0f round trips/s   p50 %.2f ms   p99 %.2f ms   (%.2f× simulated; a test signer signs each report here, the issuer verifies it as a real one)
`, r.Groups, r.Concurrency, r.GOMAXPROCS, r.KEM, "simulated", r.RatePerS, r.P50Ms, r.P99Ms, r.RoundTrips, r.DurationS, r.Errors,
		r.OneReplicaPhases[0], r.OneReplicaPhases[1], r.TwoReplicasPerS, r.TwoReplicasP50Ms, r.TwoReplicasP99Ms, r.TwoReplicasRatio,
		r.CryptoCeilingPerS, r.CeilingP50Ms, r.SNPPerS, r.SNPP50Ms, r.SNPP99Ms, r.SNPRatio)
	return err
}

func kemName(id uint16) string {
	switch id {
	case messages.KEMMLKEM768X25519:
		return "ML-KEM-768+X25519"
	case messages.KEMX25519:
		return "X25519"
	}
	return fmt.Sprintf("0x%04x", id)
}

// startIssuer runs an issuer for the bench task on its own connection. Each
// of groups joins the bench task and a second task, bench-peer.
// A task bench-snp accepts units of the SEV-SNP measurement snpMeasurement,
// whose evidence verifier checks.
func startIssuer(ctx context.Context, srv *embednats.Server, groups []string, verifier enclave.Verifier, snpMeasurement []byte) (*issuer.Issuer, func(), error) {
	m, err := sim.MeasurementHex(sim.UnitIdentity("bench"))
	if err != nil {
		return nil, nil, err
	}
	peer, err := sim.MeasurementHex(sim.UnitIdentity("bench-peer"))
	if err != nil {
		return nil, nil, err
	}
	y := fmt.Appendf(nil, "version: 1\naccept_simulated: true\ntasks:\n  - name: bench\n    measurements: [%s]\n    dns_names: [localhost]\n"+
		"  - name: bench-peer\n    measurements: [%s]\n  - name: bench-snp\n    platform: snp\n    measurements: [%x]\n    dns_names: [localhost]\n", m, peer, snpMeasurement)
	if len(groups) > 0 {
		y = append(y, "groups:\n"...)
		for _, g := range groups {
			y = fmt.Appendf(y, "  - id: %s\n    tasks: [bench, bench-peer, bench-snp]\n", g)
		}
	}
	return startIssuerVerified(ctx, func(access.Key) (*nats.Conn, error) { return srv.Connect() }, y, 1, 0, verifier)
}

// startIssuerWith runs an issuer with the given policy on its own connection.
func startIssuerWith(ctx context.Context, srv bus, policyYAML []byte) (*issuer.Issuer, func(), error) {
	return startIssuerReplicated(ctx, func(access.Key) (*nats.Conn, error) { return srv.Connect() }, policyYAML, 1)
}

// bus is where a benchmark's parts connect: one embedded server, or a
// cluster of them.
type bus interface {
	Connect(opts ...nats.Option) (*nats.Conn, error)
}

// startIssuerReplicated runs an issuer whose state JetStream keeps on
// replicas servers.
func startIssuerReplicated(ctx context.Context, connect func(access.Key) (*nats.Conn, error), policyYAML []byte, replicas int) (*issuer.Issuer, func(), error) {
	return startIssuerOn(ctx, connect, policyYAML, replicas, 0)
}

// startIssuerOn runs an issuer on simulated machine number machine; without
// a policy it joins the state another issuer made.
func startIssuerOn(ctx context.Context, connect func(access.Key) (*nats.Conn, error), policyYAML []byte, replicas int, machine byte) (*issuer.Issuer, func(), error) {
	return startIssuerVerified(ctx, connect, policyYAML, replicas, machine, nil)
}

// startIssuerVerified is startIssuerOn with the verifier of units' evidence;
// nil: the simulated platform's.
func startIssuerVerified(ctx context.Context, connect func(access.Key) (*nats.Conn, error), policyYAML []byte, replicas int, machine byte, verifier enclave.Verifier) (*issuer.Issuer, func(), error) {
	var policy *issuer.Policy
	if policyYAML != nil {
		var err error
		if policy, err = issuer.ParsePolicy(policyYAML); err != nil {
			return nil, nil, err
		}
	}
	secret := make([]byte, sim.SealSecretSize)
	secret[0] = machine
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: secret})
	if err != nil {
		return nil, nil, err
	}
	nc, err := connect(access.State)
	if err != nil {
		return nil, nil, err
	}
	serve, err := connect(access.Serve)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	// The benchmarks' units verify the issuer as fast as they start: no
	// evidence rate holds them (without accounts they are all one
	// requester to the issuer).
	unlimited := rate.Limit{Rate: 1e9, Burst: 1e9}
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: nc, Serve: serve, Platform: p, Verifier: verifier, Policy: policy, Queue: 4096, Replicas: replicas,
		EvidenceRate: unlimited, EvidenceTotal: unlimited})
	if err != nil {
		nc.Close()
		serve.Close()
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- iss.Run(ctx) }()
	stop := func() { cancel(); <-done; nc.Close(); serve.Close() }
	select {
	case <-iss.Ready():
		return iss, stop, nil
	case err := <-done:
		cancel()
		nc.Close()
		serve.Close()
		return nil, nil, errors.Join(errors.New("bench: issuer stopped"), err)
	}
}

// merge is the phases taken together, as one phase of their total time.
func merge(ps ...*phase) *phase {
	m := &phase{}
	for _, p := range ps {
		m.latencies = append(m.latencies, p.latencies...)
		m.errors += p.errors
		m.elapsed += p.elapsed
		if m.firstErr == nil {
			m.firstErr = p.firstErr
		}
	}
	slices.Sort(m.latencies)
	return m
}

type phase struct {
	latencies []time.Duration
	errors    int
	firstErr  error
	elapsed   time.Duration
}

func (p *phase) rate() float64 {
	if p.elapsed <= 0 {
		return 0
	}
	return float64(len(p.latencies)) / p.elapsed.Seconds()
}

func (p *phase) percentile(q float64) float64 {
	if len(p.latencies) == 0 {
		return 0
	}
	i := min(int(q*float64(len(p.latencies))), len(p.latencies)-1)
	return float64(p.latencies[i]) / float64(time.Millisecond)
}

// run calls op from n workers until d has passed, and records each
// successful call's latency.
func run(ctx context.Context, d time.Duration, n int, op func(context.Context, int) error) *phase {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu    sync.Mutex
		all   []time.Duration
		errs  atomic.Int64
		first error
		wg    sync.WaitGroup
		start = time.Now()
	)
	for w := range n {
		wg.Go(func() {
			var mine []time.Duration
			for ctx.Err() == nil {
				t := time.Now()
				err := op(context.WithoutCancel(ctx), w)
				if ctx.Err() != nil && err != nil {
					break // the phase ended under this call
				}
				if err != nil {
					errs.Add(1)
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					continue
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(all)
	return &phase{latencies: all, errors: int(errs.Load()), firstErr: first, elapsed: time.Since(start)}
}
