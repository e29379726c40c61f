package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// clusterCertifier is certifier for a unit of a cluster.
func clusterCertifier(t *testing.T, nc *nats.Conn, identity, cluster string) *issuerclient.Certifier {
	t.Helper()
	p := unitPlatform(t, identity)
	client := issuerclient.Config{Conn: nc, Verifier: p, IssuerMeasurement: measure(t, sim.IssuerIdentity), AllowSimulated: true}
	trust, err := issuerclient.VerifyIssuer(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, Attester: p, Cluster: cluster})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The units of a cluster receive its key, sealed like the task key; a unit
// of another task cannot get it; a restarted issuer gives back the same key.
func TestClusterKeyOnlyForItsUnits(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	policy := parsePolicy(t, policyYAML(t, true, time.Hour))
	secret := newMachine(t)
	iss := startIssuer(t, nc, policy, secret)
	ctx := context.Background()

	a, err := clusterCertifier(t, nc, sim.UnitIdentity("demo"), "c1").Certify(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	b, err := clusterCertifier(t, nc, sim.UnitIdentity("demo"), "c1").Certify(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if a.ClusterKey == nil || len(a.ClusterKey.Key) != messages.ClusterKeySize || a.ClusterKey.Epoch != 1 || a.ClusterKey.Cluster != "c1" {
		t.Fatalf("cluster key %+v", a.ClusterKey)
	}
	if !bytes.Equal(a.ClusterKey.Key, b.ClusterKey.Key) {
		t.Fatal("two units of one cluster hold different keys")
	}
	other, err := clusterCertifier(t, nc, sim.UnitIdentity("other"), "o1").Certify(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other.ClusterKey.Key, a.ClusterKey.Key) {
		t.Fatal("two clusters share a key")
	}
	// The other task's code asking for c1 is refused, and so is a cluster no
	// policy declares.
	if _, err := clusterCertifier(t, nc, sim.UnitIdentity("other"), "c1").Certify(ctx, "other"); !errors.Is(err, messages.ErrClusterNotCovered) {
		t.Errorf("other task for c1: %v, want %v", err, messages.ErrClusterNotCovered)
	}
	if _, err := clusterCertifier(t, nc, sim.UnitIdentity("demo"), "nosuch").Certify(ctx, "demo"); !errors.Is(err, messages.ErrClusterNotCovered) {
		t.Errorf("undeclared cluster: %v, want %v", err, messages.ErrClusterNotCovered)
	}
	// A pair asked for without a cluster carries no cluster key.
	plain, err := certifier(t, nc, sim.UnitIdentity("demo")).Certify(ctx, "demo")
	if err != nil || plain.ClusterKey != nil {
		t.Fatalf("pair without a cluster: %+v, %v", plain.ClusterKey, err)
	}
	iss.stop()
	startIssuer(t, nc, policy, secret)
	again, err := clusterCertifier(t, nc, sim.UnitIdentity("demo"), "c1").Certify(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.ClusterKey.Key, a.ClusterKey.Key) || again.ClusterKey.Epoch != a.ClusterKey.Epoch {
		t.Fatal("a restarted issuer gives another cluster key")
	}
}

// A TLS session begun on one unit of a cluster resumes on another: their
// session-ticket keys derive from the cluster key.
func TestTLSSessionResumesOnAnotherReplica(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	iss := startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	var units []*unit.Unit
	for _, name := range []string{"r1", "r2"} {
		cfg := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
		cfg.Name, cfg.Cluster = name, "c1"
		units = append(units, startUnit(t, cfg))
	}
	roots := x509.NewCertPool()
	roots.AddCert(iss.Root())
	conf := &tls.Config{RootCAs: roots, ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	get := func(u *unit.Unit) tls.ConnectionState {
		c, err := tls.Dial("tcp", u.Addr().String(), conf)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A request and its answer: the TLS 1.3 ticket comes after the handshake.
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(c); err != nil {
			t.Fatal(err)
		}
		return c.ConnectionState()
	}
	if first := get(units[0]); first.DidResume {
		t.Fatal("the first connection resumed a session it cannot have")
	}
	if second := get(units[1]); !second.DidResume {
		t.Fatal("the session begun on r1 did not resume on r2")
	}
}
