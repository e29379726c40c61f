package issuer

import (
	"bytes"
	"context"
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
	"github.com/cohort-dev/cohort/issuerclient"
)

// The issuer's own secrets, its root key, the task keys, the group keys and
// the cluster keys, cross NATS only sealed: to its enclave in the state bucket, and to a
// requesting unit's ephemeral key in a report. Every message of a run is
// recorded and searched for them, raw, hex and base64.
func TestIssuerSecretsNeverCrossNATS(t *testing.T) {
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tap, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	var mu sync.Mutex
	var captured [][]byte
	if _, err := tap.Subscribe(">", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		captured = append(captured, append([]byte(m.Subject+" "), m.Data...))
	}); err != nil {
		t.Fatal(err)
	}
	if err := tap.Flush(); err != nil {
		t.Fatal(err)
	}
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m, _ := sim.MeasurementHex(sim.UnitIdentity("demo"))
	policy, err := ParsePolicy(fmt.Appendf(nil, "version: 1\naccept_simulated: true\ntasks:\n  - name: demo\n    measurements: [%s]\n"+
		"  - name: peer\n    measurements: [%s]\nclusters:\n  - id: c1\n    task: demo\ngroups:\n  - id: g1\n    tasks: [demo, peer]\n", m, m))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: bytes.Repeat([]byte{7}, sim.SealSecretSize)})
	iss, err := New(Config{Conn: nc, Platform: p, Policy: policy, Ungoverned: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, finished := make(chan error, 1), make(chan struct{})
	go func() {
		done <- iss.Run(ctx)
		close(finished)
	}()
	defer func() { cancel(); <-finished }()
	select {
	case <-iss.Ready():
	case err := <-done:
		t.Fatal(err)
	case <-time.After(60 * time.Second):
		t.Fatal("issuer not ready")
	}

	unitP, _ := sim.New(sim.Config{Identity: sim.UnitIdentity("demo")})
	pin, _ := sim.Measure(sim.IssuerIdentity)
	client := issuerclient.Config{Conn: nc, Verifier: unitP, IssuerMeasurement: pin, AllowSimulated: true}
	trust, err := issuerclient.VerifyIssuer(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, Attester: unitP, Cluster: "c1", Groups: []string{"g1"}})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := c.Certify(ctx, "demo"); err != nil {
			t.Fatal(err)
		}
	}
	if err := tap.Flush(); err != nil {
		t.Fatal(err)
	}

	secrets := map[string][]byte{}
	add := func(name string, k interface{ Bytes() ([]byte, error) }, pk any) {
		raw, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(pk)
		if err != nil {
			t.Fatal(err)
		}
		secrets[name] = raw
		secrets[name+", PKCS #8"] = der
	}
	add("root key", iss.view.Load().root.cred.key, iss.view.Load().root.cred.key)
	secrets["state key"] = iss.store.key.raw
	v := iss.view.Load()
	for name, s := range v.tasks {
		k := s.cur.Load().cred.key
		add("task key of "+name, k, k)
	}
	for id, s := range v.groups {
		k := s.cur.Load().cred.key
		add("group key of "+id, k, k)
	}
	for id, ck := range v.clusters {
		secrets["cluster key of "+id] = ck.Key
	}
	mu.Lock()
	defer mu.Unlock()
	if len(captured) < 20 {
		t.Fatalf("only %d messages captured", len(captured))
	}
	for name, sec := range secrets {
		for _, form := range [][]byte{sec, []byte(hex.EncodeToString(sec)), []byte(base64.StdEncoding.EncodeToString(sec))} {
			for _, msg := range captured {
				if bytes.Contains(msg, form) {
					t.Fatalf("the %s crossed NATS: %.100q", name, msg)
				}
			}
		}
	}
	t.Logf("%d messages captured; none holds any of %d issuer secrets", len(captured), len(secrets))
}
