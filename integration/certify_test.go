package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// Three replicas of one task attest, receive the byte-identical certificate
// and key, and serve HTTPS that verifies against the issuer's root.
func TestReplicasShareOneIdentity(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	iss := startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))

	var units []*unit.Unit
	for i := range 3 {
		cfg := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
		cfg.Name = fmt.Sprintf("demo-%d", i)
		units = append(units, startUnit(t, cfg))
	}
	roots := x509.NewCertPool()
	roots.AddCert(iss.Root())
	first := units[0].Pair()
	for i, u := range units {
		p := u.Pair()
		if !bytes.Equal(p.Leaf.Raw, first.Leaf.Raw) {
			t.Errorf("unit %d holds another certificate", i)
		}
		if !p.Key.Equal(first.Key) {
			t.Errorf("unit %d holds another key", i)
		}
		if p.Identity.Name != "demo" || !p.Identity.Simulated {
			t.Errorf("unit %d: identity %+v, want task demo, simulated", i, p.Identity)
		}
		// Over real TLS: the served leaf is the shared one and verifies to the root.
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}}
		resp, err := client.Get("https://" + u.Addr().String() + "/")
		if err != nil {
			t.Fatalf("unit %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "task demo") {
			t.Errorf("unit %d: %d %q", i, resp.StatusCode, body)
		}
		if got := resp.TLS.PeerCertificates[0].Raw; !bytes.Equal(got, first.Leaf.Raw) {
			t.Errorf("unit %d serves another certificate", i)
		}
	}
	id, err := identity.FromCertificate(first.Leaf)
	if err != nil || id.Name != "demo" || len(id.Measurements) != 1 {
		t.Errorf("identity extension: %+v, %v", id, err)
	}
}

// A unit whose measurement the policy does not accept for the task is
// refused with the reason, and Run ends with it.
func TestRefusesMeasurementNotInPolicy(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))

	// Code measured as task "rogue" asks for task "demo".
	u, err := unit.New(unitConfig(t, nc, "demo", sim.UnitIdentity("rogue")))
	if err != nil {
		t.Fatal(err)
	}
	err = u.Run(context.Background())
	if !errors.Is(err, messages.ErrMeasurement) {
		t.Fatalf("Run: %v, want %v", err, messages.ErrMeasurement)
	}
	if !strings.Contains(err.Error(), "not accepted for task \"demo\"") {
		t.Errorf("reason does not name the task: %v", err)
	}
	// The other task's code is accepted for its own task, not for demo.
	_, err = certifier(t, nc, sim.UnitIdentity("other")).Certify(context.Background(), "demo")
	if !errors.Is(err, messages.ErrMeasurement) {
		t.Errorf("other code for demo: %v", err)
	}
}

func TestRefusesSimulatedUnlessPolicyAccepts(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	startIssuer(t, nc, parsePolicy(t, policyYAML(t, false, time.Hour)), newMachine(t))
	_, err := certifier(t, nc, sim.UnitIdentity("demo")).Certify(context.Background(), "demo")
	if !errors.Is(err, messages.ErrSimulated) {
		t.Fatalf("got %v, want %v", err, messages.ErrSimulated)
	}
}

// Evidence that binds another request is refused: the issuer checks that the
// report data binds exactly the body it reads.
func TestRefusesEvidenceNotBindingRequest(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	c := certifier(t, nc, sim.UnitIdentity("demo"))

	_, reqA, err := c.Prepare(t.Context(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	_, reqB, err := c.Prepare(t.Context(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	var a, b messages.CertifyRequest
	mustDecode(t, reqA, &a)
	mustDecode(t, reqB, &b)
	// A's body (its public key and nonce) with B's evidence.
	spliced, _ := messages.Marshal(&messages.CertifyRequest{V: messages.Version, Body: a.Body, Evidence: b.Evidence})
	if _, err := certifyRaw(t, nc, spliced); !errors.Is(err, messages.ErrBinding) {
		t.Fatalf("spliced request: %v, want %v", err, messages.ErrBinding)
	}
	// A body whose public key an attacker swapped, under the original evidence.
	var body messages.CertifyBody
	mustDecode(t, a.Body, &body)
	body.PublicKey = bytes.Clone(body.PublicKey)
	body.PublicKey[0] ^= 1
	swapped, _ := messages.Marshal(&body)
	forged, _ := messages.Marshal(&messages.CertifyRequest{V: messages.Version, Body: swapped, Evidence: a.Evidence})
	if _, err := certifyRaw(t, nc, forged); !errors.Is(err, messages.ErrBinding) {
		t.Fatalf("swapped key: %v, want %v", err, messages.ErrBinding)
	}
}

// A replayed request is refused; and even where a replay is answered (by an
// issuer that has not seen the nonce), the answer is sealed to the original
// requester's ephemeral key and gives the replayer nothing it can open.
func TestReplayYieldsNothingUsable(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	policy := parsePolicy(t, policyYAML(t, true, time.Hour))
	secret := newMachine(t)
	iss := startIssuer(t, nc, policy, secret)
	victim := certifier(t, nc, sim.UnitIdentity("demo"))

	pending, req, err := victim.Prepare(t.Context(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	reply, err := certifyRaw(t, nc, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pending.Open(reply); err != nil {
		t.Fatalf("the requester opens its own report: %v", err)
	}
	if _, err := certifyRaw(t, nc, req); !errors.Is(err, messages.ErrReplay) {
		t.Fatalf("replay: %v, want %v", err, messages.ErrReplay)
	}

	// A restarted issuer has forgotten the nonce and answers the replay...
	iss.stop()
	startIssuer(t, nc, policy, secret)
	replayed, err := certifyRaw(t, nc, req)
	if err != nil {
		t.Fatal(err)
	}
	// ...but the replayer, holding its own ephemeral keys, cannot open it.
	replayer := certifier(t, nc, sim.UnitIdentity("demo"))
	mine, _, err := replayer.Prepare(t.Context(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mine.Open(replayed); !errors.Is(err, issuerclient.ErrUnauthentic) {
		t.Fatalf("replayer opened the report: %v", err)
	}
	var r messages.CertifyReply
	mustDecode(t, replayed, &r)
	if bytes.Contains(r.Body, []byte("PRIVATE")) {
		t.Fatal("report carries something in the clear")
	}
}

// A unit and a user pinning another issuer measurement refuse the issuer.
func TestIssuerNotMatchingPinIsRefused(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))

	wrong := measure(t, sim.UnitIdentity("demo")) // a real measurement, but not the issuer's
	cfg := unitConfig(t, nc, "demo", sim.UnitIdentity("demo"))
	cfg.IssuerMeasurement = wrong
	u, err := unit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Run(context.Background()); !errors.Is(err, issuerclient.ErrMeasurement) {
		t.Fatalf("unit: %v, want %v", err, issuerclient.ErrMeasurement)
	}
	_, err = issuerclient.VerifyIssuer(context.Background(), issuerclient.Config{
		Conn: nc, Verifier: sim.Verifier(), IssuerMeasurement: wrong, AllowSimulated: true,
	})
	if !errors.Is(err, issuerclient.ErrMeasurement) {
		t.Fatalf("trust: %v, want %v", err, issuerclient.ErrMeasurement)
	}
	_, err = issuerclient.VerifyIssuer(context.Background(), issuerclient.Config{
		Conn: nc, Verifier: sim.Verifier(), IssuerMeasurement: measure(t, sim.IssuerIdentity),
	})
	if !errors.Is(err, issuerclient.ErrSimulated) {
		t.Fatalf("simulated issuer not allowed: %v, want %v", err, issuerclient.ErrSimulated)
	}
}

// The issuer restarted on the same data (the NATS server too) gives back the
// same root and the same task certificate.
func TestIssuerRestartKeepsRootAndTaskCertificate(t *testing.T) {
	dir := t.TempDir()
	policy := parsePolicy(t, policyYAML(t, true, time.Hour))
	secret := newMachine(t)

	srv := startNATS(t, dir)
	iss := startIssuer(t, connect(t, srv), policy, secret)
	root := iss.Root().Raw
	task, _ := iss.TaskCertificate("demo")
	iss.stop()
	srv.Close()

	srv = startNATS(t, dir)
	nc := connect(t, srv)
	iss = startIssuer(t, nc, policy, secret)
	if !bytes.Equal(iss.Root().Raw, root) {
		t.Error("restarted issuer has another root")
	}
	again, _ := iss.TaskCertificate("demo")
	if !bytes.Equal(again.Raw, task.Raw) {
		t.Error("restarted issuer has another task certificate")
	}
	pair, err := certifier(t, nc, sim.UnitIdentity("demo")).Certify(context.Background(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pair.Leaf.Raw, task.Raw) {
		t.Error("restarted issuer hands out another certificate")
	}
}

// An issuer on another machine (another seal secret), started while no
// issuer runs and with no key cache that opens there, cannot read the state:
// it refuses to start, says what to do, and writes nothing, rather than make
// new keys over it.
func TestIssuerRefusesStateSealedElsewhere(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	policy := parsePolicy(t, policyYAML(t, true, time.Hour))
	startIssuer(t, nc, policy, newMachine(t)).stop()
	before := streamState(t, nc, "KV_"+issuer.DefaultBucket)

	other := newMachine(t)
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: nc, Platform: other.platform(t), Policy: policy, KeyCache: other.keyCache(), PeerTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	err = iss.Run(ctx)
	if !errors.Is(err, issuer.ErrNoStateKey) || !strings.Contains(err.Error(), "no running issuer answered") || !strings.Contains(err.Error(), "cohort recover") {
		t.Fatalf("Run: %v, want ErrNoStateKey saying what to do", err)
	}
	if after := streamState(t, nc, "KV_"+issuer.DefaultBucket); after != before {
		t.Fatalf("the refused issuer wrote: state %+v, was %+v", after, before)
	}
}

// Two issuers started together on an empty bucket agree on one root.
func TestConcurrentIssuersAgree(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	policy := parsePolicy(t, policyYAML(t, true, time.Hour))
	secret := newMachine(t)
	var wg sync.WaitGroup
	issuers := make([]*runningIssuer, 2)
	for i := range issuers {
		wg.Go(func() { issuers[i] = startIssuer(t, connect(t, srv), policy, secret) })
	}
	wg.Wait()
	if !bytes.Equal(issuers[0].Root().Raw, issuers[1].Root().Raw) {
		t.Fatal("two issuers made two roots")
	}
	a, _ := issuers[0].TaskCertificate("demo")
	b, _ := issuers[1].TaskCertificate("demo")
	if !bytes.Equal(a.Raw, b.Raw) {
		t.Fatal("two issuers made two task certificates")
	}
}

// Units renew at two thirds of the lifetime and receive the next
// certificate, for the same key, still shared by every replica.
func TestUnitsRenew(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, 3*time.Second)), newMachine(t))
	a := startUnit(t, unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo")))
	b := startUnit(t, unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo")))
	first := a.Pair()
	eventually(t, "both units renewed", func() bool {
		return a.Pair().Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0 &&
			b.Pair().Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0
	})
	if !a.Pair().Key.Equal(first.Key) {
		t.Error("renewal changed the task key")
	}
	eventually(t, "replicas converge on one certificate", func() bool {
		return bytes.Equal(a.Pair().Leaf.Raw, b.Pair().Leaf.Raw)
	})
}

// Garbage, oversized, wrong-version and unknown-task requests are refused
// with a reason, and the issuer keeps serving.
func TestBadRequestsAreRefusedWithReason(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	c := certifier(t, nc, sim.UnitIdentity("demo"))

	wrongVersion, _ := messages.Marshal(&messages.CertifyRequest{V: 99, Body: []byte{1}, Evidence: []byte{1}})
	_, unknown, _ := c.Prepare(t.Context(), "nosuch")
	cases := []struct {
		name string
		data []byte
		code messages.Code
	}{
		{"garbage", []byte("\xc1 not msgpack"), messages.CodeMalformed},
		{"empty", nil, messages.CodeMalformed},
		{"oversized", make([]byte, messages.MaxCertifyRequest+1), messages.CodeTooLarge},
		{"huge length header", []byte{0x81, 0xa4, 'b', 'o', 'd', 'y', 0xc6, 0xff, 0xff, 0xff, 0xff}, messages.CodeMalformed},
		{"wrong version", wrongVersion, messages.CodeVersion},
		{"unknown task", unknown, messages.CodeUnknownTask},
	}
	for _, tc := range cases {
		_, err := certifyRaw(t, nc, tc.data)
		var e *messages.Error
		if !errors.As(err, &e) || e.Code != tc.code || e.Reason == "" {
			t.Errorf("%s: %v, want code %s with a reason", tc.name, err, tc.code)
		}
	}
	if _, err := c.Certify(context.Background(), "demo"); err != nil {
		t.Fatalf("the issuer stopped serving: %v", err)
	}
}

func certifyRaw(t *testing.T, nc *nats.Conn, data []byte) ([]byte, error) {
	t.Helper()
	msg, err := nc.Request(messages.SubjectCertify, data, deadline)
	if err != nil {
		t.Fatal(err)
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
		return nil, messages.DecodeError(code, msg.Data)
	}
	return msg.Data, nil
}

func mustDecode(t *testing.T, data []byte, v messages.Validator) {
	t.Helper()
	if err := messages.Decode(data, 1<<20, v); err != nil {
		t.Fatal(err)
	}
}
