package issuer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
)

// rotationPolicy is lifecyclePolicy at a root generation.
func rotationPolicy(t *testing.T, version uint64, gen uint32, admin *adminkey.Key, m []byte) *Policy {
	t.Helper()
	doc := fmt.Sprintf("version: %d\nroot_generation: %d\naccept_simulated: true\nadministrators:\n  threshold: 1\n  keys:\n    - {name: ada, key: %x}\n"+
		"tasks:\n  - name: demo\n    measurements: [%x]\nclusters:\n  - {id: c1, task: demo}\n", version, gen, admin.AdminPublic(), m)
	p, err := ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func signedApply(t *testing.T, admin *adminkey.Key, p *Policy) []byte {
	t.Helper()
	req, err := messages.Marshal(&messages.PolicyApply{V: messages.Version, Document: p.Document(), Signatures: []messages.PolicySignature{admin.Sign(p.Document())}})
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestRotationServesOneRootAtATime: a rotation signed by the administrators,
// applied to one replica while another serves, while a user asks for the
// issuer's evidence again and again (as `cohort trust --update` does, with
// the root it holds): every answer is the old root or the new, vouched for
// by the old, and never the old after the new; at the end both replicas
// serve the new root, the task certificate chains to it with the same key,
// the policy history keeps every version, and a rotation that skips a
// generation or goes back is refused.
func TestRotationServesOneRootAtATime(t *testing.T) {
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	admin, err := adminkey.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m := bytes.Repeat([]byte{1}, 32)
	a := startReplica(t, srv, bytes.Repeat([]byte{0xa}, 32), t.TempDir(), rotationPolicy(t, 1, 1, admin, m), nil)
	b := startReplica(t, srv, bytes.Repeat([]byte{0xb}, 32), t.TempDir(), nil, nil)
	old := a.iss.Root()
	oldTask, _ := a.iss.TaskCertificate("demo")
	if !bytes.Equal(b.iss.Root().Raw, old.Raw) {
		t.Fatal("the replicas serve two roots before the rotation")
	}

	user, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close()
	pin, _ := sim.Measure(sim.IssuerIdentity)
	type seen struct {
		root    []byte
		rotated bool
	}
	answers := make(chan []seen, 1)
	rotated := make(chan struct{})
	go func() {
		// At least 100 answers, and on until 20 came under the new root
		// once the rotation is applied (or an answer fails).
		var got []seen
		newSeen, applied := 0, false
		for len(got) < 100 || !applied || newSeen < 20 {
			select {
			case <-rotated:
				applied = true
			default:
			}
			tr, err := issuerclient.VerifyIssuer(context.Background(), issuerclient.Config{Conn: user, Verifier: sim.Verifier(), IssuerMeasurement: pin, AllowSimulated: true, Root: old, Timeout: 5 * time.Second})
			if err != nil || len(got) > 5000 {
				got = append(got, seen{root: fmt.Appendf(nil, "%v", err)})
				break
			}
			if tr.Previous != nil {
				newSeen++
			}
			got = append(got, seen{root: tr.Root.Raw, rotated: tr.Previous != nil})
		}
		answers <- got
	}()

	// Generation 3 skips one; the rotation is one step.
	if _, err := a.iss.Apply(context.Background(), signedApply(t, admin, rotationPolicy(t, 2, 3, admin, m))); !errors.Is(err, messages.ErrPolicyInvalid) {
		t.Fatalf("a rotation that skips a generation: %v, want %v", err, messages.ErrPolicyInvalid)
	}
	start := time.Now()
	if _, err := a.iss.Apply(context.Background(), signedApply(t, admin, rotationPolicy(t, 2, 2, admin, m))); err != nil {
		t.Fatalf("the rotation: %v", err)
	}
	close(rotated)
	got := <-answers
	newRoot := a.iss.Root()
	if bytes.Equal(newRoot.Raw, old.Raw) {
		t.Fatal("the rotation kept the root")
	}
	var olds, news int
	for k, s := range got {
		switch {
		case bytes.Equal(s.root, old.Raw) && !s.rotated:
			olds++
			if news > 0 {
				t.Fatalf("answer %d: the old root after the new", k)
			}
		case bytes.Equal(s.root, newRoot.Raw) && s.rotated:
			news++
		default:
			t.Fatalf("answer %d: neither root: %q", k, s.root)
		}
	}
	if news < 20 {
		t.Fatalf("%d answers under the new root (%d under the old)", news, olds)
	}
	t.Logf("%d answers: %d under the old root, then %d under the new; %v from the rotation to the last", len(got), olds, news, time.Since(start))
	waitFor(t, "the other replica serves the new root", func() bool { return bytes.Equal(b.iss.Root().Raw, newRoot.Raw) })

	// The new root's vouchers lead from the old; task certificates chain to
	// the new root, with the same key; the history keeps both versions.
	if err := issuerclient.VerifyVouchers(old, newRoot, a.iss.view.Load().root.vouchers); err != nil {
		t.Fatal(err)
	}
	task, _ := b.iss.TaskCertificate("demo")
	pool := x509.NewCertPool()
	pool.AddCert(newRoot)
	if _, err := task.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the task certificate under the new root: %v", err)
	}
	if !bytes.Equal(task.RawSubjectPublicKeyInfo, oldTask.RawSubjectPublicKeyInfo) {
		t.Error("the rotation changed the task key")
	}
	if h := b.iss.view.Load().record.History; len(h) != 2 || h[0].Version != 1 || h[1].Version != 2 {
		t.Errorf("history %+v, want versions 1 and 2", h)
	}
	// Back to generation 1: refused.
	if _, err := b.iss.Apply(context.Background(), signedApply(t, admin, rotationPolicy(t, 3, 1, admin, m))); !errors.Is(err, messages.ErrPolicyInvalid) {
		t.Fatalf("a rotation back: %v, want %v", err, messages.ErrPolicyInvalid)
	}
	// A restarted replica serves the new root.
	b.cancel()
	<-b.done
	c := startReplica(t, srv, bytes.Repeat([]byte{0xb}, 32), t.TempDir(), nil, nil)
	if !bytes.Equal(c.iss.Root().Raw, newRoot.Raw) {
		t.Fatal("a replica started after the rotation serves another root")
	}
}

// The fence, by its clock: no answer before the first confirmation, nor
// after a lease without one, nor for a lease after a switch of roots; a
// confirmation older than the last does not move it back.
func TestFence(t *testing.T) {
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	f := newFence(time.Second, func() time.Time { return now })
	code := func() messages.Code {
		if r := f.check(); r != nil {
			return r.Code
		}
		return ""
	}
	if c := code(); c != messages.CodeUnconfirmed {
		t.Fatalf("before any confirmation: %q", c)
	}
	f.confirm(now)
	if c := code(); c != "" {
		t.Fatalf("just confirmed: %q", c)
	}
	now = now.Add(time.Second + time.Nanosecond)
	if c := code(); c != messages.CodeUnconfirmed {
		t.Fatalf("a lease after the confirmation: %q", c)
	}
	f.confirm(now.Add(-2 * time.Second)) // a read sent before the last: changes nothing
	if c := code(); c != messages.CodeUnconfirmed {
		t.Fatalf("after an older confirmation: %q", c)
	}
	f.confirm(now)
	f.switching()
	if c := code(); c != messages.CodeRotating {
		t.Fatalf("switching roots: %q", c)
	}
	now = now.Add(time.Second - time.Nanosecond)
	f.confirm(now)
	if c := code(); c != messages.CodeRotating {
		t.Fatalf("still within the switch's lease: %q", c)
	}
	now = now.Add(time.Nanosecond)
	if c := code(); c != "" {
		t.Fatalf("after the switch's lease, confirmed: %q", c)
	}
}
