package integration

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
)

// Stopping the issuer while requests pour in neither panics nor races (run
// under -race): workers never touch a request after its handler returned,
// and the queue is never closed under a running handler.
func TestIssuerStopsCleanlyUnderLoad(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	iss := startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	c := certifier(t, connect(t, srv), sim.UnitIdentity("demo"))

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var answered atomic.Int64
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				_, req, err := c.Prepare(t.Context(), "demo")
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := nc.Request(messages.SubjectCertify, req, time.Second); err == nil {
					answered.Add(1)
				}
			}
		})
	}
	eventually(t, "requests answered", func() bool { return answered.Load() > 50 })
	iss.stop()
	cancel()
	wg.Wait()
}

// The policy in force is the state's: an issuer started with a changed
// policy file serves the policy in force and ignores the file, so that
// whoever starts the issuer cannot put a policy of their choosing in front
// of the root. Only a signed update changes it.
func TestIssuerStateIsBoundToItsPolicy(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	m := newMachine(t)
	genesis := parsePolicy(t, policyYAML(t, true, time.Hour))
	startIssuer(t, nc, genesis, m).stop()

	// The same policy, but for one more cluster of the demo task.
	changed := parsePolicy(t, append(policyYAML(t, true, time.Hour), "  - id: rogue\n    task: demo\n"...))
	iss := startIssuer(t, nc, changed, m)
	if got, want := iss.Policy().Hash(), genesis.Hash(); got != want {
		t.Fatalf("the issuer serves policy %x, want the one in force %x", got, want)
	}
	trust, err := issuerclient.VerifyIssuer(context.Background(), issuerclient.Config{
		Conn: nc, Verifier: sim.Verifier(), IssuerMeasurement: measure(t, sim.IssuerIdentity), AllowSimulated: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if h := genesis.Hash(); !bytes.Equal(trust.PolicyHash, h[:]) || trust.PolicyVersion != 1 {
		t.Fatalf("the evidence binds policy %x version %d, want the genesis", trust.PolicyHash, trust.PolicyVersion)
	}
	if _, err := certifierFor(t, nc, sim.UnitIdentity("demo"), "rogue").Certify(context.Background(), "demo"); !errors.Is(err, &messages.Error{Code: messages.CodeClusterNotCovered}) {
		t.Fatalf("a cluster only the file names: %v, want cluster_not_covered", err)
	}
}

// debugVerifier verifies real simulated evidence and reports it as coming
// from a debug enclave, which the simulated platform cannot produce.
type debugVerifier struct{ enclave.Verifier }

func (v debugVerifier) Verify(ctx context.Context, ev []byte) (enclave.Claims, error) {
	c, err := v.Verifier.Verify(ctx, ev)
	c.Debug = true
	return c, err
}

func TestVerifyIssuerRefusesDebugAndUnpinnedPolicy(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	policy := parsePolicy(t, policyYAML(t, true, time.Hour))
	startIssuer(t, nc, policy, newMachine(t))
	base := issuerclient.Config{Conn: nc, Verifier: sim.Verifier(), IssuerMeasurement: measure(t, sim.IssuerIdentity), AllowSimulated: true}

	debug := base
	debug.Verifier = debugVerifier{sim.Verifier()}
	if _, err := issuerclient.VerifyIssuer(context.Background(), debug); !errors.Is(err, issuerclient.ErrDebug) {
		t.Errorf("debug issuer: %v, want %v", err, issuerclient.ErrDebug)
	}
	pinned := base
	hash := policy.Hash()
	pinned.PolicyHash = hash[:]
	if _, err := issuerclient.VerifyIssuer(context.Background(), pinned); err != nil {
		t.Errorf("the right policy pin: %v", err)
	}
	pinned.PolicyHash = bytes.Repeat([]byte{1}, 32)
	if _, err := issuerclient.VerifyIssuer(context.Background(), pinned); !errors.Is(err, issuerclient.ErrPolicy) {
		t.Errorf("another policy pin: %v, want %v", err, issuerclient.ErrPolicy)
	}
}

// Refusals are not authenticated: a forged one, answered by anybody on NATS,
// must not stop a unit that already serves. It keeps its pair, retries, and
// renews once the forger is gone.
func TestForgedRefusalDoesNotStopServingUnit(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, 3*time.Second)), newMachine(t))
	cfg := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
	u := startUnit(t, cfg)
	first := u.Pair().Leaf.SerialNumber

	forger := connect(t, srv)
	var forged atomic.Int64
	refuse := func(m *nats.Msg) {
		e, _ := messages.Marshal(messages.Refusal(messages.CodeMeasurement, "forged"))
		reply := nats.NewMsg(m.Reply)
		reply.Header.Set("Nats-Service-Error-Code", string(messages.CodeMeasurement))
		reply.Data = e
		if forger.PublishMsg(reply) == nil {
			forged.Add(1)
		}
	}
	subs := make([]*nats.Subscription, 0, 2)
	for _, subject := range []string{messages.SubjectEvidence, messages.SubjectCertify} {
		s, err := forger.Subscribe(subject, refuse)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if err := forger.Flush(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the forger answered renewals", func() bool { return forged.Load() >= 3 })
	for _, s := range subs {
		if err := s.Unsubscribe(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the unit renewed after the forger left", func() bool {
		return u.Pair().Leaf.SerialNumber.Cmp(first) != 0
	})
	select {
	case <-u.Ready():
	default:
		t.Fatal("unit not serving")
	}
}
