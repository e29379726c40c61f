package integration

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/attest"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/snp/snptest"
	"github.com/cohort-dev/cohort/enclave/tdx"
	"github.com/cohort-dev/cohort/enclave/tdx/tdxtest"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
)

// Units in (fake) SEV-SNP guests: an issuer whose verifier trusts the fake's
// AMD roots certifies them for an snp task, they join and serve a cluster
// channel; the same evidence is refused for a task on another platform, and
// by a verifier with AMD's real roots.
func TestSNPUnitsServeACluster(t *testing.T) {
	fake, err := snptest.New(snptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	snpV, err := snp.New(fake.Config())
	if err != nil {
		t.Fatal(err)
	}
	v := attest.New(attest.Config{Simulated: sim.Verifier(), SNP: snpV})
	policy := parsePolicy(t, fmt.Appendf(nil, `version: 1
accept_simulated: true
tasks:
  - name: vm
    platform: snp
    measurements: [%x]
    dns_names: [localhost]
    ip_addresses: [127.0.0.1]
  - name: demo
    measurements: [%x]
clusters:
  - id: c1
    task: vm
`, snptest.DefaultMeasurement, measure(t, sim.UnitIdentity("demo"))))

	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	m := newMachine(t)
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: nc, Platform: m.platform(t), Verifier: v, Policy: policy, KeyCache: m.keyCache(), Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runUntilReady(t, iss.Run, iss.Ready())
	mgr := startManager(t, connect(t, srv), iss.Root(), heartbeat)

	platform := func() *attest.Platform {
		return &attest.Platform{Kind: enclave.PlatformSNP, Attester: fake.Attester(), Verifier: v, Self: snptest.DefaultMeasurement}
	}
	for i := range 2 {
		cfg := unitConfig(t, connect(t, srv), "vm", sim.UnitIdentity("vm")) // its Platform is replaced below
		cfg.Platform, cfg.Name, cfg.Cluster = platform(), fmt.Sprintf("vm%d", i), "c1"
		startUnit(t, cfg)
	}
	eventually(t, "two snp members active", func() bool { return mgr.Table().Counts(time.Now())[manager.Active] == 2 })
	for _, mem := range mgr.Table().Snapshot(time.Now()) {
		if hex.EncodeToString(mem.Member.Measurement) != hex.EncodeToString(snptest.DefaultMeasurement) {
			t.Errorf("member %s joined with measurement %x", mem.Member.Unit, mem.Member.Measurement)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(iss.Root())
	s, err := client.Dial(context.Background(), client.Config{Conn: connect(t, srv), User: "alice", Cluster: "c1", Task: "vm", Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if _, err := s.Call(context.Background(), []byte("hello from a confidential VM")); err != nil {
			t.Fatal(err)
		}
	}

	// The same evidence for a task that runs on SGX (or simulated): refused.
	ic := issuerclient.Config{Conn: nc, Verifier: v, IssuerMeasurement: measure(t, sim.IssuerIdentity), AllowSimulated: true}
	trust, err := issuerclient.VerifyIssuer(context.Background(), ic)
	if err != nil {
		t.Fatal(err)
	}
	c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: ic, Trust: trust, Attester: platform()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Certify(context.Background(), "demo"); !errors.Is(err, messages.ErrPlatform) {
		t.Fatalf("snp evidence for an sgx task: %v, want %s", err, messages.CodePlatform)
	}

	// Real SNP evidence bound to another request: refused for its binding.
	snpC, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: ic, Trust: trust, Attester: platform()})
	if err != nil {
		t.Fatal(err)
	}
	_, first, err := snpC.Prepare(t.Context(), "vm")
	if err != nil {
		t.Fatal(err)
	}
	_, second, err := snpC.Prepare(t.Context(), "vm")
	if err != nil {
		t.Fatal(err)
	}
	var a, b messages.CertifyRequest
	if err := messages.Decode(first, messages.MaxCertifyRequest, &a); err != nil {
		t.Fatal(err)
	}
	if err := messages.Decode(second, messages.MaxCertifyRequest, &b); err != nil {
		t.Fatal(err)
	}
	a.Evidence = b.Evidence
	swapped, err := messages.Marshal(&a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iss.Certify(context.Background(), swapped); !errors.Is(err, messages.ErrBinding) {
		t.Fatalf("snp evidence of another request: %v, want %s", err, messages.CodeBinding)
	}

	// AMD's real roots do not take the fake's evidence.
	ev, err := fake.Attester().Attest(t.Context(), enclave.Bind("test"))
	if err != nil {
		t.Fatal(err)
	}
	amd, err := snp.New(snp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := amd.Verify(t.Context(), ev); !errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Fatalf("the fake's evidence under AMD's roots: %v", err)
	}
}

// Units in (fake) TDX guests, beside units on simulated platforms, behind
// one issuer: certified for a tdx task with the fake's collateral (TCB up to
// date), joined and serving; without collateral their TCB is not evaluated
// and the policy refuses them; the fake is refused under Intel's real root.
func TestTDXUnitsServeACluster(t *testing.T) {
	signer, err := tdxtest.New(tdxtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	coll, err := signer.Collateral(tdxtest.CollateralConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tdxV, err := tdx.New(tdx.Config{Root: signer.Root(), Collateral: func([]byte) (*pcs.Collateral, error) { return coll, nil }})
	if err != nil {
		t.Fatal(err)
	}
	v := attest.New(attest.Config{Simulated: sim.Verifier(), TDX: tdxV})
	policy := parsePolicy(t, fmt.Appendf(nil, `version: 1
accept_simulated: true
tasks:
  - name: td
    platform: tdx
    measurements: [%x]
    dns_names: [localhost]
    ip_addresses: [127.0.0.1]
clusters:
  - id: t1
    task: td
`, tdxtest.DefaultMRTD))
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	m := newMachine(t)
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: nc, Platform: m.platform(t), Verifier: v, Policy: policy, KeyCache: m.keyCache(), Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runUntilReady(t, iss.Run, iss.Ready())
	mgr := startManager(t, connect(t, srv), iss.Root(), heartbeat)
	attester, err := tdx.NewAttester(tdx.AttesterConfig{Client: signer.ConfigFS(tdxtest.DefaultTD())})
	if err != nil {
		t.Fatal(err)
	}
	platform := &attest.Platform{Kind: enclave.PlatformTDX, Attester: attester, Verifier: v, Self: tdxtest.DefaultMRTD[:]}
	for i := range 2 {
		cfg := unitConfig(t, connect(t, srv), "td", sim.UnitIdentity("td")) // its Platform is replaced below
		cfg.Platform, cfg.Name, cfg.Cluster = platform, fmt.Sprintf("td%d", i), "t1"
		startUnit(t, cfg)
	}
	eventually(t, "two tdx members active", func() bool { return mgr.Table().Counts(time.Now())[manager.Active] == 2 })
	roots := x509.NewCertPool()
	roots.AddCert(iss.Root())
	s, err := client.Dial(context.Background(), client.Config{Conn: connect(t, srv), User: "alice", Cluster: "t1", Task: "td", Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Call(context.Background(), []byte("hello from a trust domain")); err != nil {
		t.Fatal(err)
	}

	// Without collateral the same evidence verifies, its TCB unevaluated:
	// an issuer refuses it.
	bare, err := tdx.New(tdx.Config{Root: signer.Root()})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := platform.Attest(t.Context(), enclave.Bind("test"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := attest.New(attest.Config{TDX: bare}).Verify(t.Context(), ev)
	if err != nil || c.TCBStatus != tdx.TCBNotEvaluated {
		t.Fatalf("without collateral: %q, %v", c.TCBStatus, err)
	}
	if _, err := attest.New(attest.Config{TDX: must(tdx.New(tdx.Config{}))}).Verify(t.Context(), ev); !errors.Is(err, enclave.ErrInvalidEvidence) {
		t.Fatalf("the fake under Intel's root: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
