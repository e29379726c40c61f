package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
	"github.com/cohort-dev/cohort/unit"
)

// lifecycle is the trust lifecycle's test bed: the secured server, with
// cohort's real accounts and permissions, three administrators (threshold
// two) and three recovery holders (threshold two).
type lifecycle struct {
	*secured
	admins   []*adminkey.Key
	recovery []*adminkey.Key
	op       *nats.Conn // the operator's: administrators and holders use it
}

var lifecycleDeployment = access.Deployment{
	Clusters: []access.Cluster{{ID: "c1", Units: []string{"u1", "u2", "u3"}}},
	Users:    []string{"alice"},
}

func newLifecycle(t *testing.T) *lifecycle {
	t.Helper()
	l := &lifecycle{secured: startSecured(t, lifecycleDeployment)}
	for range 3 {
		a, err := adminkey.Generate(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		r, err := adminkey.Generate(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		l.admins, l.recovery = append(l.admins, a), append(l.recovery, r)
	}
	l.op = l.conn(access.Grant{Role: access.Operator}, access.State)
	return l
}

// doc is a policy of version v accepting the demo task's measurements and
// the issuer builds listed; extra is appended.
func (l *lifecycle) doc(v uint64, taskValidity time.Duration, demo, issuers [][]byte, extra string) []byte {
	hexes := func(ms [][]byte) string {
		var s []string
		for _, m := range ms {
			s = append(s, hex.EncodeToString(m))
		}
		return "[" + strings.Join(s, ", ") + "]"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version: %d\naccept_simulated: true\nvalidity:\n  task: %s\nissuers: %s\n", v, taskValidity, hexes(issuers))
	b.WriteString("administrators:\n  threshold: 2\n  keys:\n")
	for k, a := range l.admins {
		fmt.Fprintf(&b, "    - {name: admin%d, key: %x}\n", k, a.AdminPublic())
	}
	b.WriteString("recovery:\n  threshold: 2\n  keys:\n")
	for k, r := range l.recovery {
		fmt.Fprintf(&b, "    - {name: holder%d, key: %x}\n", k, r.RecoveryPublic())
	}
	fmt.Fprintf(&b, "tasks:\n  - name: demo\n    measurements: %s\n    dns_names: [localhost]\nclusters:\n  - id: c1\n    task: demo\n%s", hexes(demo), extra)
	return []byte(b.String())
}

func (l *lifecycle) sign(doc []byte, admins ...int) []messages.PolicySignature {
	var sigs []messages.PolicySignature
	for _, k := range admins {
		sigs = append(sigs, l.admins[k].Sign(doc))
	}
	return sigs
}

// apply submits an update as an administrator does, over the operator's
// connection.
func (l *lifecycle) apply(doc []byte, sigs []messages.PolicySignature) (*messages.PolicyApplied, error) {
	return issuerclient.ApplyPolicy(context.Background(), l.op, doc, sigs, deadline)
}

// certifier is unit u1's certifier for the demo task, pinning issuer
// measurement pin, asking for cluster c1's key.
func (l *lifecycle) certifier(pin []byte) *issuerclient.Certifier {
	t := l.t
	t.Helper()
	p := unitPlatform(t, sim.UnitIdentity("demo"))
	uc := l.conn(access.Grant{Role: access.Unit, Cluster: "c1", Name: "u1"}, access.State)
	client := issuerclient.Config{Conn: uc, Verifier: p, IssuerMeasurement: pin, AllowSimulated: true}
	trust, err := issuerclient.VerifyIssuer(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, Attester: p, Cluster: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func encodeApply(t *testing.T, doc []byte, sigs []messages.PolicySignature) []byte {
	t.Helper()
	b, err := messages.Marshal(&messages.PolicyApply{V: messages.Version, Document: doc, Signatures: sigs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// issuerConfig is an issuer of build on machine m, on the issuer's
// credential.
func (l *lifecycle) issuerConfig(m *machine, build string, genesis []byte) issuer.Config {
	t := l.t
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: m.secret, Build: build})
	if err != nil {
		t.Fatal(err)
	}
	g := access.Grant{Role: access.Issuer}
	cfg := issuer.Config{Ungoverned: true, Conn: l.conn(g, access.State), Serve: l.conn(g, access.Serve), Platform: p, KeyCache: m.keyCache(),
		PeerTimeout: time.Second, PolicyPoll: 50 * time.Millisecond, Logger: logger(t)}
	if genesis != nil {
		cfg.Policy = parsePolicy(t, genesis)
	}
	return cfg
}

// run runs an issuer until it is ready and returns it with a channel that
// gets what Run returns.
func (l *lifecycle) run(cfg issuer.Config) (*issuer.Issuer, context.CancelFunc, <-chan error) {
	t := l.t
	t.Helper()
	iss, err := issuer.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, finished := make(chan error, 1), make(chan struct{})
	go func() {
		done <- iss.Run(ctx)
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	return iss, cancel, done
}

func (l *lifecycle) startIssuer(m *machine, build string, genesis []byte) (*issuer.Issuer, context.CancelFunc, <-chan error) {
	l.t.Helper()
	return l.startIssuerTuned(m, genesis, func(*issuer.Config) {}, build)
}

// startIssuerTuned starts an issuer of build (default "") on machine m, its
// configuration adjusted by tune.
func (l *lifecycle) startIssuerTuned(m *machine, genesis []byte, tune func(*issuer.Config), build ...string) (*issuer.Issuer, context.CancelFunc, <-chan error) {
	l.t.Helper()
	cfg := l.issuerConfig(m, strings.Join(build, ""), genesis)
	tune(&cfg)
	iss, cancel, done := l.run(cfg)
	select {
	case <-iss.Ready():
	case err := <-done:
		l.t.Fatalf("issuer stopped before it was ready: %v", err)
	case <-time.After(deadline):
		l.t.Fatal("issuer not ready in time")
	}
	return iss, cancel, done
}

func (l *lifecycle) startManager(root *x509.Certificate) *manager.Manager {
	t := l.t
	g := access.Grant{Role: access.Manager}
	m, err := manager.New(manager.Config{Conn: l.conn(g, access.State), Serve: l.conn(g, access.Serve), Root: root, Interval: heartbeat, Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runUntilReady(t, m.Run, m.Ready())
	return m
}

// unitOf is the configuration of unit id of c1, build build of the demo
// task.
func (l *lifecycle) unitOf(id, build string, validity time.Duration) unit.Config {
	t := l.t
	g := access.Grant{Role: access.Unit, Cluster: "c1", Name: id}
	state, serve := l.conn(g, access.State), l.conn(g, access.Serve)
	cfg := unitConfig(t, state, "demo", sim.UnitIdentity("demo"))
	p, err := sim.New(sim.Config{Identity: sim.UnitIdentity("demo"), Build: build})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Platform, cfg.Serve, cfg.Cluster, cfg.ID, cfg.Name = p, serve, "c1", id, id
	cfg.SideEffectFree = true
	return cfg
}

// runUnit runs a unit until it is ready, and returns a channel that gets
// what its Run returns.
func runUnit(t *testing.T, cfg unit.Config) (*unit.Unit, <-chan error) {
	t.Helper()
	u, err := unit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, finished := make(chan error, 1), make(chan struct{})
	go func() {
		done <- u.Run(ctx)
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	select {
	case <-u.Ready():
	case err := <-done:
		t.Fatalf("unit stopped before it was ready: %v", err)
	case <-time.After(deadline):
		t.Fatal("unit not ready in time")
	}
	return u, done
}

func buildMeasure(t *testing.T, identity, build string) []byte {
	t.Helper()
	m, err := sim.MeasureBuild(identity, build)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (l *lifecycle) events() []*events.Event {
	return allEvents(l.t, l.conn(access.Grant{Role: access.Manager}, access.State))
}

// eventsOnce waits until the audit stream holds n events of kind (the
// issuer keeps a lifecycle event until the stream stores it, once), and
// then checks that it holds no more.
func (l *lifecycle) eventsOnce(kind string, n int) {
	l.t.Helper()
	var got int
	eventually(l.t, kind+" events stored", func() bool { got = countEvents(l.events(), kind, ""); return got >= n })
	if got != n {
		l.t.Errorf("%d %s events, want %d, once each", got, kind, n)
	}
}

func countEvents(evs []*events.Event, kind, code string) int {
	n := 0
	for _, e := range evs {
		if e.Kind == kind && (code == "" || e.Code == code) {
			n++
		}
	}
	return n
}

// selfSigned is a root nobody's state has.
func selfSigned(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not cohort's root"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// junkShare asks the waiting issuer for holder's offer, as anyone with the
// operator's credential can (the hello names only a public key), and hands
// it 32 random bytes sealed to the offer's key.
func junkShare(op *nats.Conn, holder *adminkey.Key) error {
	hello, _ := messages.Marshal(&messages.RecoverHello{V: messages.Version, Nonce: make([]byte, messages.NonceSize), RecoveryKey: holder.RecoveryPublic()})
	data, err := service.Request(context.Background(), op, messages.SubjectRecoverHello, hello, deadline)
	if err != nil {
		return err
	}
	var rep messages.RecoverReply
	if err := messages.Decode(data, messages.MaxRecoverReply, &rep); err != nil {
		return err
	}
	var offer messages.RecoverOffer
	if err := messages.Decode(rep.Body, messages.MaxRecoverOffer, &offer); err != nil {
		return err
	}
	kem, _ := hpke.NewKEM(offer.KEM)
	pub, err := kem.NewPublicKey(offer.PublicKey)
	if err != nil {
		return err
	}
	oh := sha256.Sum256(rep.Body)
	junk := make([]byte, messages.StateKeySize)
	_, _ = rand.Read(junk)
	sealed, err := hpke.Seal(pub, hpke.HKDFSHA256(), hpke.AES256GCM(), messages.RecoverShareInfo(oh[:]), junk)
	if err != nil {
		return err
	}
	req, _ := messages.Marshal(&messages.RecoverShare{V: messages.Version, OfferHash: oh[:], Sealed: sealed})
	_, err = service.Request(context.Background(), op, messages.RecoverSubject(offer.Instance), req, deadline)
	return err
}

// A refusal counts for a unit only when its root signed it for the very
// request the unit sent: the unit's body with other evidence attached (a
// build the policy refuses, say) gets a signed refusal that the unit does
// not take for its own; and a unit renewing holds to its root, so an
// issuer of the pinned build over another state is not its issuer.
func TestSignedRefusalsAnswerOneRequest(t *testing.T) {
	l := newLifecycle(t)
	ib1 := buildMeasure(t, sim.IssuerIdentity, "")
	b1 := buildMeasure(t, sim.UnitIdentity("demo"), "")
	iss, _, _ := l.startIssuer(newMachine(t), "", l.doc(1, time.Hour, [][]byte{b1}, [][]byte{ib1}, ""))
	uc := l.conn(access.Grant{Role: access.Unit, Cluster: "c1", Name: "u1"}, access.State)

	rogue := unitPlatform(t, sim.UnitIdentity("rogue"))
	client := issuerclient.Config{Conn: uc, Verifier: rogue, IssuerMeasurement: ib1, AllowSimulated: true}
	trust, err := issuerclient.VerifyIssuer(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, Attester: rogue})
	if err != nil {
		t.Fatal(err)
	}
	// Refused for itself: signed, and for this request.
	p, req, err := c.Prepare(t.Context(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	_, err = service.Request(context.Background(), uc, messages.SubjectCertify, req, deadline)
	if err = p.Refusal(err); !errors.Is(err, messages.ErrMeasurement) || !errors.Is(err, issuerclient.ErrAuthenticRefusal) {
		t.Fatalf("a refusal of the unit's own request: %v, want a signed measurement refusal", err)
	}
	// An accepted unit's request with the rogue's evidence attached.
	good := unitPlatform(t, sim.UnitIdentity("demo"))
	gc, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: issuerclient.Config{Conn: uc, Verifier: good, IssuerMeasurement: ib1, AllowSimulated: true}, Trust: trust, Attester: good})
	if err != nil {
		t.Fatal(err)
	}
	gp, greq, err := gc.Prepare(t.Context(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	var m messages.CertifyRequest
	mustDecode(t, greq, &m)
	if m.Evidence, err = rogue.Attest(t.Context(), messages.CertifyBinding(m.Body)); err != nil {
		t.Fatal(err)
	}
	forged, _ := messages.Marshal(&m)
	_, err = service.Request(context.Background(), uc, messages.SubjectCertify, forged, deadline)
	var e *messages.Error
	if !errors.As(err, &e) || len(e.Proof) == 0 {
		t.Fatalf("the forged request: %v, want a signed refusal", err)
	}
	if errors.Is(gp.Refusal(err), issuerclient.ErrAuthenticRefusal) {
		t.Fatal("the unit took a refusal of another request for its own")
	}

	// A unit renewing against an issuer of the pinned build over another
	// state (another root) refuses it.
	other := startNATS(t, t.TempDir())
	onc := connect(t, other)
	startIssuer(t, onc, parsePolicy(t, l.doc(1, time.Hour, [][]byte{b1}, [][]byte{ib1}, "")), newMachine(t))
	renew := issuerclient.Config{Conn: onc, Verifier: good, IssuerMeasurement: ib1, AllowSimulated: true, Root: iss.Root()}
	if _, err := issuerclient.VerifyIssuer(context.Background(), renew); !errors.Is(err, issuerclient.ErrUnauthentic) {
		t.Fatalf("renewing against another root: %v, want %v", err, issuerclient.ErrUnauthentic)
	}
}

func poolOf(root *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(root)
	return p
}

// A new release of a task: an update signed by two of three administrators
// adds build 2's measurement, and units of build 2 are certified under the
// same root, which a user's root.pem from before verifies. A later update
// removes build 1: its unit is refused at renewal (a refusal its root
// signed), leaves its cluster, and the manager records it.
func TestNewRelease(t *testing.T) {
	l := newLifecycle(t)
	ib1 := buildMeasure(t, sim.IssuerIdentity, "")
	b1, b2 := buildMeasure(t, sim.UnitIdentity("demo"), ""), buildMeasure(t, sim.UnitIdentity("demo"), "2")
	iss, _, _ := l.startIssuer(newMachine(t), "", l.doc(1, 3*time.Second, [][]byte{b1}, [][]byte{ib1}, ""))
	rootPEM := iss.Root() // what the user's root.pem holds
	mgr := l.startManager(iss.Root())
	_, oldDone := runUnit(t, l.unitOf("u1", "", 3*time.Second))

	// Build 2 is not accepted yet.
	early, err := unit.New(l.unitOf("u2", "2", 3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := early.Run(testContext(t)); !errors.Is(err, messages.ErrMeasurement) {
		t.Fatalf("build 2 before the update: %v, want %v", err, messages.ErrMeasurement)
	}

	v2 := l.doc(2, 3*time.Second, [][]byte{b1, b2}, [][]byte{ib1}, "")
	a, err := l.apply(v2, l.sign(v2, 0, 2))
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != 2 || strings.Join(a.Signers, ",") != "admin0,admin2" || !contains(a.Reissued, "task/demo") {
		t.Fatalf("applied %+v", a)
	}
	if !bytes.Equal(iss.Root().Raw, rootPEM.Raw) {
		t.Fatal("the update changed the root")
	}
	nu, _ := runUnit(t, l.unitOf("u2", "2", 3*time.Second))
	if _, err := nu.Pair().Leaf.Verify(x509.VerifyOptions{Roots: poolOf(rootPEM), DNSName: "localhost"}); err != nil {
		t.Fatalf("the old root.pem does not verify build 2's certificate: %v", err)
	}
	trust, err := issuerclient.VerifyIssuer(context.Background(), issuerclient.Config{Conn: l.op, Verifier: sim.Verifier(), IssuerMeasurement: ib1, AllowSimulated: true})
	if err != nil || trust.PolicyVersion != 2 || !bytes.Equal(trust.Root.Raw, rootPEM.Raw) {
		t.Fatalf("the evidence after the update: %+v, %v", trust, err)
	}
	eventually(t, "both builds are members", func() bool { return mgr.Table().Counts(time.Now())[manager.Active] == 2 })

	before, _ := iss.TaskCertificate("demo")
	v3 := l.doc(3, 3*time.Second, [][]byte{b2}, [][]byte{ib1}, "")
	if _, err := l.apply(v3, l.sign(v3, 1, 2)); err != nil {
		t.Fatal(err)
	}
	// The task key build 1 held is replaced: the next certificates vouch
	// for a key its units never had, and build 2's units renew onto it.
	after, _ := iss.TaskCertificate("demo")
	if after.PublicKey.(*ecdsa.PublicKey).Equal(before.PublicKey) {
		t.Fatal("the task key survived the removal of a build that held it")
	}
	eventually(t, "build 2's unit renews onto the new task key", func() bool {
		return nu.Pair().Key.PublicKey.Equal(after.PublicKey)
	})
	select {
	case err := <-oldDone:
		if !errors.Is(err, messages.ErrMeasurement) || !errors.Is(err, issuerclient.ErrAuthenticRefusal) {
			t.Fatalf("build 1's unit stopped with %v, want a signed measurement refusal", err)
		}
	case <-time.After(deadline):
		t.Fatal("build 1's unit still runs")
	}
	eventually(t, "build 1's unit is out of the cluster", func() bool {
		return mgr.Table().Counts(time.Now())[manager.Active] == 1
	})
	l.eventsOnce(events.PolicyApplied, 2)
	l.eventsOnce(events.IssuerGenesis, 1)
	evs := l.events()
	if !hasEvent(t, l.conn(access.Grant{Role: access.Manager}, access.State), events.UnitLeft, "u1", "") {
		t.Error("no event of build 1's unit leaving")
	}
	if countEvents(evs, events.CertificateRefused, string(messages.CodeMeasurement)) < 2 {
		t.Error("the refusals of build 1 are not recorded")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Each bad update is refused with its reason by every replica, and the
// policy in force is unchanged on each; each refusal is an event.
func TestBadUpdatesAreRefused(t *testing.T) {
	l := newLifecycle(t)
	ib1 := buildMeasure(t, sim.IssuerIdentity, "")
	b1, b2 := buildMeasure(t, sim.UnitIdentity("demo"), ""), buildMeasure(t, sim.UnitIdentity("demo"), "2")
	genesis := l.doc(1, time.Hour, [][]byte{b1}, [][]byte{ib1}, "")
	a, _, _ := l.startIssuer(newMachine(t), "", genesis)
	l.startManager(a.Root())                         // it keeps the audit stream
	b, _, _ := l.startIssuer(newMachine(t), "", nil) // another machine: the key from a
	replicas := []*issuer.Issuer{a, b}

	v2 := l.doc(2, time.Hour, [][]byte{b1, b2}, [][]byte{ib1}, "")
	other := l.doc(2, time.Hour, [][]byte{b2}, [][]byte{ib1}, "")
	stranger, err := adminkey.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	invalid := []byte(strings.Replace(string(l.doc(2, time.Hour, [][]byte{b1}, [][]byte{ib1}, "")), "task: demo", "task: nosuch", 1))
	sameVersion := l.doc(1, time.Hour, [][]byte{b1, b2}, [][]byte{ib1}, "")

	check := func(name string, data []byte, code messages.Code, inForce *issuer.Policy) {
		t.Helper()
		for k, r := range replicas {
			_, err := r.Apply(context.Background(), data)
			var e *messages.Error
			if !errors.As(err, &e) || e.Code != code || e.Reason == "" {
				t.Errorf("%s on replica %d: %v, want %s with a reason", name, k, err, code)
			}
			if r.Policy().Hash() != inForce.Hash() {
				t.Fatalf("%s changed replica %d's policy", name, k)
			}
		}
		// And over NATS, from the operator's account.
		if _, err := service.Request(context.Background(), l.op, messages.SubjectPolicyApply, data, deadline); !errors.Is(err, &messages.Error{Code: code}) {
			t.Errorf("%s over NATS: %v, want %s", name, err, code)
		}
	}
	g := a.Policy()
	check("one signature of two", encodeApply(t, v2, l.sign(v2, 0)), messages.CodePolicySignatures, g)
	check("a stranger's signature", encodeApply(t, v2, append(l.sign(v2, 0), stranger.Sign(v2))), messages.CodePolicySignatures, g)
	check("signatures over another document", encodeApply(t, v2, l.sign(other, 0, 1)), messages.CodePolicySignatures, g)
	check("one administrator twice", encodeApply(t, v2, l.sign(v2, 1, 1)), messages.CodePolicySignatures, g)
	check("a version not higher", encodeApply(t, sameVersion, l.sign(sameVersion, 0, 1)), messages.CodePolicyVersion, g)
	check("a policy that does not validate", encodeApply(t, invalid, l.sign(invalid, 0, 1)), messages.CodePolicyInvalid, g)
	check("not a policy update", []byte("junk"), messages.CodeMalformed, g)

	// A good update, then the same update again (a lost answer: accepted,
	// nothing changes), then an older one replayed.
	if _, err := l.apply(v2, l.sign(v2, 0, 1)); err != nil {
		t.Fatal(err)
	}
	v3 := l.doc(3, time.Hour, [][]byte{b2}, [][]byte{ib1}, "")
	if _, err := l.apply(v3, l.sign(v3, 1, 2)); err != nil {
		t.Fatal(err)
	}
	for _, r := range replicas {
		eventually(t, "every replica serves version 3", func() bool { return r.Policy().Version == 3 })
	}
	if again, err := l.apply(v3, l.sign(v3, 1, 2)); err != nil || again.Version != 3 {
		t.Fatalf("applying the policy in force again: %+v, %v", again, err)
	}
	check("an old update replayed", encodeApply(t, v2, l.sign(v2, 0, 1)), messages.CodePolicyVersion, a.Policy())

	evs := l.events()
	for _, code := range []messages.Code{messages.CodePolicySignatures, messages.CodePolicyVersion, messages.CodePolicyInvalid, messages.CodeMalformed} {
		if countEvents(evs, events.PolicyRefused, string(code)) == 0 {
			t.Errorf("no policy.refused event with code %s", code)
		}
	}
}

// An issuer on another machine obtains the state key from a running issuer
// and serves the same root and certificates; killed, the first leaves the
// second to serve alone. An issuer started while none runs, with no key
// cache that opens, refuses to start, says why and writes nothing. A
// request for the key with evidence that does not bind it is refused.
func TestIssuerOnAnotherMachine(t *testing.T) {
	l := newLifecycle(t)
	ib1 := buildMeasure(t, sim.IssuerIdentity, "")
	b1 := buildMeasure(t, sim.UnitIdentity("demo"), "")
	a, killA, aDone := l.startIssuer(newMachine(t), "", l.doc(1, time.Hour, [][]byte{b1}, [][]byte{ib1}, ""))
	l.startManager(a.Root())
	b, killB, bDone := l.startIssuer(newMachine(t), "", nil)
	if !bytes.Equal(a.Root().Raw, b.Root().Raw) {
		t.Fatal("the second issuer serves another root")
	}
	ta, _ := a.TaskCertificate("demo")
	tb, _ := b.TaskCertificate("demo")
	if !bytes.Equal(ta.Raw, tb.Raw) {
		t.Fatal("the second issuer serves another task certificate")
	}
	l.eventsOnce(events.StateKeyGranted, 1)

	// Evidence that binds another request than the one sent.
	kem, key := messages.KEMX25519, make([]byte, 32)
	body, _ := messages.Marshal(&messages.StateKeyBody{V: messages.Version, KeyID: make([]byte, 16), KEM: kem, PublicKey: key, Nonce: make([]byte, 32), Time: time.Now().UnixNano()})
	p, _ := sim.New(sim.Config{Identity: sim.IssuerIdentity})
	ev, _ := p.Attest(t.Context(), messages.StateKeyRequestBinding([]byte("another body")))
	req, _ := messages.Marshal(&messages.StateKeyRequest{V: messages.Version, Body: body, Evidence: ev})
	issConn := l.conn(access.Grant{Role: access.Issuer}, access.State)
	if _, err := service.Request(context.Background(), issConn, messages.SubjectPeerStateKey, req, deadline); !errors.Is(err, &messages.Error{Code: messages.CodeBinding}) {
		t.Errorf("evidence that does not bind the request: %v, want %s", err, messages.CodeBinding)
	}
	eventually(t, "the refused request is recorded", func() bool {
		return countEvents(l.events(), events.StateKeyRefused, string(messages.CodeBinding)) == 1
	})

	killA()
	<-aDone
	pair, err := l.certifier(ib1).Certify(context.Background(), "demo")
	if err != nil || !bytes.Equal(pair.Leaf.Raw, ta.Raw) {
		t.Fatalf("certify with the second issuer alone: %v", err)
	}

	killB()
	<-bDone
	before := streamState(t, issConn, "KV_"+issuer.DefaultBucket)
	cfg := l.issuerConfig(newMachine(t), "", nil)
	iss, err := issuer.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = iss.Run(testContext(t))
	if !errors.Is(err, issuer.ErrNoStateKey) || !strings.Contains(err.Error(), "no running issuer answered") || !strings.Contains(err.Error(), "--recover") {
		t.Fatalf("an issuer with no way to the key: %v, want ErrNoStateKey saying what to do", err)
	}
	if after := streamState(t, issConn, "KV_"+issuer.DefaultBucket); after != before {
		t.Fatalf("the refused issuer wrote: %v, was %v", after, before)
	}
}

// An issuer upgrade: an update lists issuer build 2; build 2 joins from
// build 1 and serves the same root; an update that drops build 1 stops it;
// units renew and users call without a new trust. A build the policy does
// not list is refused the state key.
func TestIssuerUpgrade(t *testing.T) {
	l := newLifecycle(t)
	ib1, ib2 := buildMeasure(t, sim.IssuerIdentity, ""), buildMeasure(t, sim.IssuerIdentity, "2")
	b1 := buildMeasure(t, sim.UnitIdentity("demo"), "")
	old, _, oldDone := l.startIssuer(newMachine(t), "", l.doc(1, 3*time.Second, [][]byte{b1}, [][]byte{ib1}, ""))
	roots := poolOf(old.Root())
	l.startManager(old.Root())
	u1, _ := runUnit(t, l.unitOf("u1", "", 3*time.Second)) // pins build 1
	u2, _ := runUnit(t, l.unitOf("u2", "", 3*time.Second))
	user := l.conn(access.Grant{Role: access.User, Name: "alice"}, access.State)
	var s *client.Session
	eventually(t, "the cluster serves a handshake", func() bool {
		var err error
		s, err = client.Dial(testContext(t), client.Config{Conn: user, User: "alice", Cluster: "c1", Roots: roots})
		return err == nil
	})

	// Build 2 before the update lists it: refused the key, it does not start.
	early, err := issuer.New(l.issuerConfig(newMachine(t), "2", nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := early.Run(testContext(t)); !errors.Is(err, issuer.ErrNoStateKey) || !strings.Contains(err.Error(), string(messages.CodeIssuerNotAccepted)) {
		t.Fatalf("an unlisted issuer build: %v, want a refusal of the state key", err)
	}
	v2 := l.doc(2, 3*time.Second, [][]byte{b1}, [][]byte{ib1, ib2}, "")
	if _, err := l.apply(v2, l.sign(v2, 0, 1)); err != nil {
		t.Fatal(err)
	}
	next, _, nextDone := l.startIssuer(newMachine(t), "2", nil)
	if !bytes.Equal(next.Root().Raw, old.Root().Raw) {
		t.Fatal("build 2 serves another root")
	}
	// Build 3, never listed, is refused the key.
	third, err := issuer.New(l.issuerConfig(newMachine(t), "3", nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := third.Run(testContext(t)); !errors.Is(err, issuer.ErrNoStateKey) || !strings.Contains(err.Error(), string(messages.CodeIssuerNotAccepted)) {
		t.Fatalf("issuer build 3: %v, want a refusal of the state key", err)
	}

	v3 := l.doc(3, 3*time.Second, [][]byte{b1}, [][]byte{ib2}, "")
	if _, err := l.apply(v3, l.sign(v3, 1, 2)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-oldDone:
		if !errors.Is(err, issuer.ErrRemoved) {
			t.Fatalf("build 1 stopped with %v, want ErrRemoved", err)
		}
	case <-time.After(deadline):
		t.Fatal("build 1 still runs after an update dropped it")
	}
	// The units, which pinned build 1, renew from build 2 with the root
	// they hold; the user calls with the root.pem from before.
	for _, u := range []*unit.Unit{u1, u2} {
		first := u.Pair().Leaf.SerialNumber
		eventually(t, "the unit renews from build 2", func() bool { return u.Pair().Leaf.SerialNumber.Cmp(first) != 0 })
	}
	if _, err := s.Call(testContext(t), []byte("after the upgrade")); err != nil {
		t.Fatalf("the user's call after the upgrade: %v", err)
	}
	trust, err := issuerclient.VerifyIssuer(context.Background(), issuerclient.Config{Conn: user, Verifier: sim.Verifier(), IssuerMeasurement: ib1, AllowSimulated: true})
	if !errors.Is(err, issuerclient.ErrMeasurement) || !strings.Contains(err.Error(), "cohort policy show") {
		t.Fatalf("a user who pinned build 1: %+v, %v; want to be told how to check build 2", trust, err)
	}
	select {
	case err := <-nextDone:
		t.Fatalf("build 2 stopped: %v", err)
	default:
	}
	if n := countEvents(l.events(), events.StateKeyRefused, string(messages.CodeIssuerNotAccepted)); n < 2 {
		t.Errorf("%d refusals of unlisted issuer builds recorded, want at least 2", n)
	}
	// Build 1's stop, once; the grants to build 2 and the two updates.
	l.eventsOnce(events.IssuerStopped, 1)
	l.eventsOnce(events.PolicyApplied, 2)
	l.eventsOnce(events.IssuerGenesis, 1)
}

// Recovery: with every issuer's local data gone, k of the n recovery keys
// restore the state key into a fresh issuer, after checking its evidence:
// the same root and the same task keys. k−1 keys leave it waiting; a key
// that is not a holder's is refused.
func TestRecovery(t *testing.T) {
	l := newLifecycle(t)
	ib1 := buildMeasure(t, sim.IssuerIdentity, "")
	b1 := buildMeasure(t, sim.UnitIdentity("demo"), "")
	first, stop, done := l.startIssuer(newMachine(t), "", l.doc(1, time.Hour, [][]byte{b1}, [][]byte{ib1}, ""))
	root := first.Root()
	task, _ := first.TaskCertificate("demo")
	l.startManager(root)
	stop()
	<-done

	waiting := make(chan string, 1)
	cfg := l.issuerConfig(newMachine(t), "", nil) // a fresh machine: nothing local
	cfg.AwaitRecovery = true
	cfg.Waiting = func(instance string) { waiting <- instance }
	fresh, _, freshDone := l.run(cfg)
	var instance string
	select {
	case instance = <-waiting:
	case err := <-freshDone:
		t.Fatalf("the fresh issuer stopped: %v", err)
	case <-time.After(deadline):
		t.Fatal("the fresh issuer does not wait for recovery")
	}
	// Garbage is refused with a reason, on both recovery subjects.
	for _, subject := range []string{messages.SubjectRecoverHello, messages.RecoverSubject(instance)} {
		for _, junk := range [][]byte{nil, []byte("garbage"), []byte(`{}`), {0x85, 0xa1}, bytes.Repeat([]byte{0xc1}, 100)} {
			msg, err := l.op.Request(subject, junk, deadline)
			if err != nil {
				t.Fatalf("%s %q: %v", subject, junk, err)
			}
			if code := msg.Header.Get(service.ErrorCodeHeader); code != string(messages.CodeMalformed) && code != string(messages.CodeVersion) {
				t.Errorf("%s %q: answered %q with code %q, want a refusal as malformed", subject, junk, msg.Data, code)
			}
		}
	}
	rcRoot := func(k *adminkey.Key, pin []byte, trusted *x509.Certificate) (*messages.RecoverAck, error) {
		return issuerclient.Recover(context.Background(), issuerclient.RecoverConfig{Conn: l.op, Verifier: sim.Verifier(), IssuerMeasurement: pin, AllowSimulated: true, Key: k, Root: trusted})
	}
	rc := func(k *adminkey.Key, pin []byte) (*messages.RecoverAck, error) { return rcRoot(k, pin, root) }
	// A holder who trusts another root hands nothing over.
	if _, err := rcRoot(l.recovery[1], ib1, selfSigned(t)); !errors.Is(err, issuerclient.ErrUnauthentic) {
		t.Fatalf("a holder trusting another root: %v, want %v", err, issuerclient.ErrUnauthentic)
	}
	// Junk handed over for a holder's share is refused, and spoils nothing.
	if err := junkShare(l.op, l.recovery[1]); !errors.Is(err, messages.ErrRecoveryShare) || !strings.Contains(err.Error(), "commitment") {
		t.Fatalf("a junk share: %v, want a refusal naming the commitment", err)
	}
	stranger, _ := adminkey.Generate(rand.Reader)
	if _, err := rc(stranger, ib1); !errors.Is(err, messages.ErrRecoveryShare) {
		t.Fatalf("a key that is not a holder's: %v, want %v", err, messages.ErrRecoveryShare)
	}
	if _, err := rc(l.recovery[0], buildMeasure(t, sim.IssuerIdentity, "9")); !errors.Is(err, issuerclient.ErrMeasurement) {
		t.Fatalf("a holder expecting another issuer build: %v, want %v", err, issuerclient.ErrMeasurement)
	}
	ack, err := rc(l.recovery[0], ib1)
	if err != nil || ack.Done || ack.Have != 1 || ack.Need != 2 {
		t.Fatalf("one share of two: %+v, %v", ack, err)
	}
	if ack, err = rc(l.recovery[0], ib1); err != nil || ack.Done || ack.Have != 1 {
		t.Fatalf("the same holder again counts once: %+v, %v", ack, err)
	}
	select {
	case <-fresh.Ready():
		t.Fatal("the issuer started with k-1 shares")
	default:
	}
	if ack, err = rc(l.recovery[2], ib1); err != nil || !ack.Done {
		t.Fatalf("the second share: %+v, %v", ack, err)
	}
	readyAfterRecovery(t, fresh, freshDone)
	if !bytes.Equal(fresh.Root().Raw, root.Raw) {
		t.Fatal("recovery gave another root")
	}
	again, _ := fresh.TaskCertificate("demo")
	if !bytes.Equal(again.Raw, task.Raw) {
		t.Fatal("recovery gave another task certificate")
	}
	pair, err := l.certifier(ib1).Certify(context.Background(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	if !pair.Key.PublicKey.Equal(task.PublicKey.(*ecdsa.PublicKey)) {
		t.Fatal("recovery gave another task key")
	}
	// Once each: the genesis, each share taken (three: the first holder's
	// twice, the second's), the recovery.
	l.eventsOnce(events.IssuerGenesis, 1)
	l.eventsOnce(events.RecoveryShare, 3)
	l.eventsOnce(events.IssuerRecovered, 1)
	if countEvents(l.events(), events.RecoveryRefused, "") == 0 {
		t.Error("the refusals of recovery shares are not recorded")
	}
}

// readyAfterRecovery waits until an issuer that took its last share serves.
func readyAfterRecovery(t *testing.T, iss *issuer.Issuer, done <-chan error) {
	t.Helper()
	select {
	case <-iss.Ready():
	case err := <-done:
		t.Fatalf("the recovered issuer stopped: %v", err)
	case <-time.After(deadline):
		t.Fatal("the recovered issuer is not ready")
	}
}
