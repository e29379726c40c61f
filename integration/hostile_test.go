package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// The tests of this file attack a permissioned stack (secure_test.go) as
// the holders of its credentials would: with the real NATS server, cohort's
// real accounts and permissions, and every key of every identity. Each
// attack fails with the server's refusal or the service's reason, and
// nothing stored changes.

// target is a subject an attacker names as a request's reply, so that an
// answer would be written there, and how to read what is stored there.
type target struct {
	subject string
	account string // the account whose state it is
	stream  string // the stream that keeps it; for a JetStream API subject, the stream it would act on
	reader  access.Grant
	api     bool // a JetStream API subject: an answer there would be a request
}

// lastSeq is the sequence of the last message stored on t's subject, 0 for
// none; for an API target, the stream's first sequence and message count.
func (s *secureStack) lastSeq(ctx context.Context, t target) string {
	s.t.Helper()
	js, err := jetstream.New(s.conn(t.reader, access.State))
	if err != nil {
		s.t.Fatal(err)
	}
	st, err := js.Stream(ctx, t.stream)
	if err != nil {
		s.t.Fatalf("stream %s of %s: %v", t.stream, t.account, err)
	}
	if t.api {
		// Not purged, not made again: the writes of the attack's own keys
		// to their own streams change the sequences, nothing else.
		info := st.CachedInfo()
		return fmt.Sprintf("stream %s made %s, holding messages: %v", t.stream, info.Created, info.State.Msgs > 0)
	}
	m, err := st.GetLastMsgForSubject(ctx, t.subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return "none"
	}
	if err != nil {
		s.t.Fatalf("%s: %v", t.subject, err)
	}
	return fmt.Sprintf("seq %d: %x", m.Sequence, m.Data)
}

// concrete turns a permission's subject into subjects to publish to.
func concrete(pattern string) []string {
	out := []string{""}
	for i, tok := range strings.Split(pattern, ".") {
		choices := []string{tok}
		switch tok {
		case "*":
			choices = []string{"join", "c1", "handshake"}
		case ">":
			choices = []string{"x"}
		}
		var next []string
		for _, o := range out {
			for _, c := range choices {
				if i > 0 {
					next = append(next, o+"."+c)
				} else {
					next = append(next, c)
				}
			}
		}
		out = next
	}
	return out
}

// TestNoRequestWritesWhereItsRequesterPoints: with every key of every
// identity, requests to every endpoint of every service (the issuer's, the
// manager's, the units', the discovery subjects $SRV.*, and the JetStream
// API and stream subjects the key may publish to), naming as their reply
// the issuer's state, the call claims and closed marks, another cluster's
// session records, the membership, the audit stream and the JetStream API,
// write nothing there.
//
// Not attacked, by design (THREATS.md): what a key may write itself, and,
// for a unit's key, its own cluster's state, which the units of the cluster
// share one account for; a unit's host can deny service to its own cluster,
// and nothing it does there makes a call run twice.
func TestNoRequestWritesWhereItsRequesterPoints(t *testing.T) {
	s := startSecureStack(t, nil)
	ctx := testContext(t)
	alice := s.user("alice")
	sess, err := client.Dial(ctx, client.Config{Conn: alice, User: "alice", Cluster: "c1", Roots: s.roots})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Call(ctx, []byte("one")); err != nil {
		t.Fatal(err)
	}
	other, err := client.Dial(ctx, client.Config{Conn: alice, User: "alice", Cluster: "o1", Roots: s.roots})
	if err != nil {
		t.Fatal(err)
	}
	iss, mgr := access.Grant{Role: access.Issuer}, access.Grant{Role: access.Manager}
	u1, v1 := access.Grant{Role: access.Unit, Cluster: "c1", Name: "u1"}, access.Grant{Role: access.Unit, Cluster: "o1", Name: "v1"}
	issuerStream, membersStream := "KV_"+messages.IssuerStateBucket, "KV_"+messages.MembersBucket
	targets := []target{
		{subject: "$KV." + messages.IssuerStateBucket + ".root", account: "issuer", stream: issuerStream, reader: iss},
		{subject: "$KV." + messages.IssuerStateBucket + ".task.demo", account: "issuer", stream: issuerStream, reader: iss},
		{subject: messages.ClaimSubject("c1", sess.ID, 1), account: "cluster-c1", stream: messages.CallsStreamOf("c1", sess.ID), reader: u1},
		{subject: messages.ClaimSubject("c1", sess.ID, 2), account: "cluster-c1", stream: messages.CallsStreamOf("c1", sess.ID), reader: u1},
		{subject: messages.ClosedSubject("c1", sess.ID), account: "cluster-c1", stream: messages.CallsStreamOf("c1", sess.ID), reader: u1},
		{subject: messages.SessionSubject("c1", sess.ID), account: "cluster-c1", stream: messages.SessionsStream("c1"), reader: u1},
		{subject: messages.SessionSubject("o1", other.ID), account: "cluster-o1", stream: messages.SessionsStream("o1"), reader: v1},
		{subject: "$KV." + messages.MembersBucket + ".c1.u1", account: "manager", stream: membersStream, reader: mgr},
		{subject: "$KV." + messages.MembersBucket + ".o1.v1", account: "manager", stream: membersStream, reader: mgr},
		{subject: messages.SubjectEventsPrefix + events.SessionClosed, account: "manager", stream: messages.EventsStream, reader: mgr},
		{subject: "$JS.API.STREAM.PURGE." + issuerStream, account: "issuer", stream: issuerStream, reader: iss, api: true},
		{subject: "$JS.API.STREAM.DELETE." + messages.CallsStreamOf("c1", sess.ID), account: "cluster-c1", stream: messages.CallsStreamOf("c1", sess.ID), reader: u1, api: true},
		{subject: "$JS.API.STREAM.PURGE." + messages.SessionsStream("o1"), account: "cluster-o1", stream: messages.SessionsStream("o1"), reader: v1, api: true},
		{subject: "$JS.API.STREAM.PURGE." + messages.EventsStream, account: "manager", stream: messages.EventsStream, reader: mgr, api: true},
		{subject: "$JS.API.STREAM.DELETE." + membersStream, account: "manager", stream: membersStream, reader: mgr, api: true},
	}
	before := map[string]string{}
	for _, tg := range targets {
		before[tg.subject] = s.lastSeq(ctx, tg)
	}

	// Every service's endpoints, as any key may try them, with payloads that
	// reach as far as each gets.
	evidence := mustMarshal(t, &messages.EvidenceRequest{V: messages.Version, Nonce: bytes.Repeat([]byte{7}, messages.NonceSize)})
	endpoints := []string{messages.SubjectEvidence, messages.SubjectCertify, messages.SubjectStatus,
		"$SRV.PING", "$SRV.INFO", "$SRV.STATS", "$SRV.PING." + messages.IssuerService, "$SRV.INFO." + messages.ManagerService,
		"$SRV.STATS." + messages.IssuerService, "$SRV.STATS." + messages.ManagerService}
	for _, verb := range []string{messages.VerbJoin, messages.VerbHeartbeat, messages.VerbLeave, messages.VerbSession} {
		endpoints = append(endpoints, messages.ManagerSubject(verb, "c1", "u1"), messages.ManagerSubject(verb, "c1", "u2"), messages.ManagerSubject(verb, "o1", "v1"))
	}
	for _, c := range []string{"c1", "o1"} {
		for _, verb := range []string{messages.VerbHandshake, messages.VerbCall, messages.VerbClose} {
			endpoints = append(endpoints, messages.ClusterSubject(c, verb, "alice"), messages.ClusterSubject(c, verb, "bob"))
		}
	}
	tried, skipped := 0, 0
	for _, gk := range grantKeys(secureDeployment) {
		if gk.g.Role == access.Unit && gk.g.Name != "u1" && gk.g.Name != "v1" {
			continue // u1 and v1 stand for their clusters' units
		}
		pub, _, err := gk.g.Subjects(gk.k)
		if err != nil {
			t.Fatal(err)
		}
		subjects := append([]string(nil), endpoints...)
		for _, p := range pub {
			if strings.HasPrefix(p, messages.SubjectEventsPrefix) {
				continue // the audit stream's writers write events: that is no reply
			}
			subjects = append(subjects, concrete(p)...)
		}
		nc := s.conn(gk.g, gk.k)
		for _, tg := range targets {
			mayWrite := tg.account == gk.g.Account()
			for _, p := range pub {
				mayWrite = mayWrite || access.Matches(p, tg.subject)
			}
			if mayWrite {
				skipped++
				continue
			}
			for _, subject := range subjects {
				payloads := [][]byte{[]byte("garbage"), evidence}
				switch {
				case strings.HasPrefix(subject, "$JS.API.CONSUMER.CREATE."):
					stream, _, _ := strings.Cut(strings.TrimPrefix(subject, "$JS.API.CONSUMER.CREATE."), ".")
					payloads = [][]byte{fmt.Appendf(nil, `{"stream_name":%q,"config":{"deliver_subject":%q,"ack_policy":"none","deliver_policy":"all"}}`, stream, tg.subject)}
				case strings.HasPrefix(subject, "$JS."):
					payloads = [][]byte{[]byte(`{}`), []byte(`{"seq":1}`)}
				}
				for _, data := range payloads {
					if err := nc.PublishRequest(subject, tg.subject, data); err != nil {
						t.Fatal(err)
					}
					tried++
				}
			}
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// Once every service has stopped, everything they were asked has been
	// answered, or dropped; the server's own answers are written before the
	// stream's information is.
	s.stopServices()
	for _, tg := range targets {
		if got := s.lastSeq(ctx, tg); got != before[tg.subject] {
			t.Errorf("%s (%s): %s, was %s", tg.subject, tg.account, got, before[tg.subject])
		}
	}
	// What the audit stream took meanwhile is events, all of them.
	op := s.conn(access.Grant{Role: access.Operator}, access.State)
	n := 0
	if err := events.Follow(ctx, op, events.FollowConfig{APIPrefix: access.APIPrefix(access.ManagerAccount)}, func(e *events.Event, err error) error {
		n++
		if err != nil {
			t.Errorf("a message of the audit stream is no event: %v", err)
		} else if e.Source != "issuer" && !strings.HasPrefix(e.Source, "manager/") {
			t.Errorf("an event from %q", e.Source)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d requests naming a target as their reply, from %d keys; %d key-target pairs not tried (the key writes there itself); %d events recorded meanwhile, every one an event",
		tried, len(grantKeys(secureDeployment)), skipped, n)

	// The control: the same attack within an account does land, so the
	// checks above would see one that did. A unit's credential has the
	// JetStream API answer onto a claim of its own cluster (which it may
	// write itself anyway); the claim is then refused as tampered.
	control := target{subject: messages.ClaimSubject("c1", sess.ID, 7), account: "cluster-c1", stream: messages.CallsStreamOf("c1", sess.ID), reader: u1}
	if err := s.conn(u1, access.State).PublishRequest("$JS.API.INFO", control.subject, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the control attack landed", func() bool { return s.lastSeq(ctx, control) != "none" })
}

// capture starts recording the messages on subject in an account, through
// the account's tap.
func capture(t *testing.T, s *secured, account, subject string) *nats.Subscription {
	t.Helper()
	nc := s.tap(account)
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

// next is the next message recorded.
func next(t *testing.T, sub *nats.Subscription) *nats.Msg {
	t.Helper()
	m, err := sub.NextMsg(deadline)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// refusalOf sends raw bytes as a user's request and returns the refusal's
// code, "" for an answer.
func refusalOf(t *testing.T, nc *nats.Conn, subject string, data []byte) messages.Code {
	t.Helper()
	msg, err := nc.Request(subject, data, deadline)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	return messages.Code(msg.Header.Get("Nats-Service-Error-Code"))
}

// TestClaimsAndClosedMarksAreFinal: the holder of a unit's credential
// writes over a call's claim (a delete marker, something else, an old claim
// again), tries to purge, roll up or delete it, and then the captured call
// is sent again: it does not run. The same with a session's closed mark,
// and the session's old open record written again: no unit, not even one
// started after the close, runs a call of the closed session.
func TestClaimsAndClosedMarksAreFinal(t *testing.T) {
	var ran atomic.Int64
	app := func(cfg *unit.Config) {
		cfg.App = func(_ context.Context, c unit.Call) ([]byte, error) { ran.Add(1); return c.Data, nil }
	}
	s := startSecureStack(t, app, "cluster-c1")
	ctx := testContext(t)
	alice := s.user("alice")
	sess, err := client.Dial(ctx, client.Config{Conn: alice, User: "alice", Cluster: "c1", Roots: s.roots})
	if err != nil {
		t.Fatal(err)
	}
	calls := capture(t, s.secured, "cluster-c1", messages.ClusterFilter("c1", messages.VerbCall))
	attacker := s.conn(access.Grant{Role: access.Unit, Cluster: "c1", Name: "u2"}, access.State)
	js, err := jetstream.New(attacker)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, messages.CallsStreamOf("c1", sess.ID))
	if err != nil {
		t.Fatal(err)
	}
	callSubject := messages.CallSubject("c1", "alice")

	type attack struct {
		name string
		do   func(subject string) error
	}
	attacks := []attack{
		{"a delete marker", func(subject string) error {
			m := nats.NewMsg(subject)
			m.Header.Set("KV-Operation", "DEL")
			_, err := js.PublishMsg(ctx, m)
			return err
		}},
		{"a purge marker", func(subject string) error {
			m := nats.NewMsg(subject)
			m.Header.Set("KV-Operation", "PURGE")
			_, err := js.PublishMsg(ctx, m)
			return err
		}},
		{"an overwrite", func(subject string) error {
			_, err := js.Publish(ctx, subject, []byte("a claim of nobody's"))
			return err
		}},
		{"the claim written again", func(subject string) error {
			last, err := st.GetLastMsgForSubject(ctx, subject)
			if err != nil {
				return err
			}
			_, err = js.Publish(ctx, subject, last.Data, jetstream.WithExpectLastSequencePerSubject(last.Sequence))
			return err
		}},
	}
	for i, a := range attacks {
		if _, err := sess.Call(ctx, fmt.Appendf(nil, "call %d", i)); err != nil {
			t.Fatal(err)
		}
		var c messages.Call
		var captured []byte
		for c.Seq != uint64(i+1) { // past the calls sent again before
			captured = next(t, calls).Data
			mustDecode(t, captured, &c)
		}
		claim := messages.ClaimSubject("c1", sess.ID, c.Seq)
		if code := refusalOf(t, alice, callSubject, captured); code != messages.CodeReplay {
			t.Fatalf("before %s: the call sent again: %q, want %s", a.name, code, messages.CodeReplay)
		}
		runs := ran.Load()
		if err := a.do(claim); err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		for range 3 { // to any unit the queue group picks
			if code := refusalOf(t, alice, callSubject, captured); code != messages.CodeTampered {
				t.Errorf("after %s, the call sent again: %q, want %s", a.name, code, messages.CodeTampered)
			}
		}
		if ran.Load() != runs {
			t.Fatalf("after %s, the call ran again", a.name)
		}
	}
	// What JetStream would take to erase the claims, it refuses; what NATS
	// would, it refuses.
	rollup := nats.NewMsg(messages.ClaimSubject("c1", sess.ID, 1))
	rollup.Header.Set("Nats-Rollup", "sub")
	if _, err := js.PublishMsg(ctx, rollup); err == nil || !strings.Contains(err.Error(), "rollup not permitted") {
		t.Errorf("a roll-up: %v, want it refused", err)
	}
	for _, subject := range []string{
		"$JS.API.STREAM.PURGE." + messages.CallsStreamOf("c1", sess.ID), "$JS.API.STREAM.DELETE." + messages.CallsStreamOf("c1", sess.ID),
		"$JS.API.STREAM.MSG.DELETE." + messages.CallsStreamOf("c1", sess.ID), "$JS.API.STREAM.UPDATE." + messages.CallsStreamOf("c1", sess.ID),
	} {
		if err := attacker.PublishRequest(subject, attacker.NewRespInbox(), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if !s.violated(attacker, subject) {
			t.Errorf("%s: not refused by the server", subject)
		}
	}

	// The closed mark. The session's keys and its open record, as a unit of
	// the cluster holds them, before the close.
	keys := sessionKeys(t, s, sess.ID)
	sessions, err := js.Stream(ctx, messages.SessionsStream("c1"))
	if err != nil {
		t.Fatal(err)
	}
	open, err := sessions.GetLastMsgForSubject(ctx, messages.SessionSubject("c1", sess.ID))
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	closed := messages.ClosedSubject("c1", sess.ID)
	for _, a := range attacks[:3] {
		if err := a.do(closed); err != nil {
			t.Fatalf("%s of the closed mark: %v", a.name, err)
		}
	}
	// The open record written again over the closed one, as the units'
	// credential can in its own account: a copy put where it may write, and
	// a direct get of it answered onto the session's subject.
	stash := messages.ClaimSubject("c1", []byte("stash"), 1)
	if _, err := js.Publish(ctx, stash, open.Data); err != nil {
		t.Fatal(err)
	}
	if err := attacker.PublishRequest("$JS.API.DIRECT.GET."+messages.CallsStreamOf("c1", []byte("stash")), messages.SessionSubject("c1", sess.ID),
		fmt.Appendf(nil, `{"last_by_subj":%q}`, stash)); err != nil {
		t.Fatal(err)
	}
	// Written again: the session's record is the open one's bytes, and the
	// open record's own message is gone (one message a subject). Its
	// sequence is not a witness: the copy carries the direct get's
	// Nats-Sequence header, which may equal the open record's.
	eventually(t, "the open record written again", func() bool {
		m, err := sessions.GetLastMsgForSubject(ctx, messages.SessionSubject("c1", sess.ID))
		if err != nil || !bytes.Equal(m.Data, open.Data) {
			return false
		}
		_, err = sessions.GetMsg(ctx, open.Sequence)
		return errors.Is(err, jetstream.ErrMsgNotFound)
	})
	// A unit started now learns the open record last; the closed mark, of
	// whatever it holds, still closes the session.
	s.startUnit("c1", "u3", "demo", app)
	eventually(t, "u3 joined", func() bool { return s.mgr.Table().Counts(time.Now())[manager.Active] == 4 })
	runs := ran.Load()
	for i := range 8 {
		if code := sealedCall(t, alice, keys, sess.ID, uint64(100+i), []byte("after the close")); code != messages.CodeNoSession {
			t.Errorf("a call of the closed session: %q, want %s", code, messages.CodeNoSession)
		}
	}
	if ran.Load() != runs {
		t.Fatalf("a call of the closed session ran")
	}
}

// sessionKeys are a session's keys, as the units of its cluster hold them:
// the test obtains the cluster key as a unit does, and opens the record.
func sessionKeys(t *testing.T, s *secureStack, id []byte) *channel.Keys {
	t.Helper()
	ctx := testContext(t)
	nc := s.conn(access.Grant{Role: access.Unit, Cluster: "c1", Name: "u9"}, access.State)
	pair, err := clusterCertifier(t, nc, sim.UnitIdentity("demo"), "c1").Certify(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, messages.SessionsStream("c1"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, messages.SessionSubject("c1", id))
	if err != nil {
		t.Fatal(err)
	}
	var r messages.SessionRecord
	mustDecode(t, m.Data, &r)
	plain, err := channel.OpenRecord(pair.ClusterKey.Key, r.Epoch, r.Cluster, r.Session, r.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	var k messages.SessionKeys
	mustDecode(t, plain, &k)
	return &channel.Keys{C2S: k.C2S, S2C: k.S2C}
}

// sealedCall seals call seq of a session with its keys, as its user would,
// sends it as alice, and returns the refusal's code.
func sealedCall(t *testing.T, nc *nats.Conn, keys *channel.Keys, session []byte, seq uint64, data []byte) messages.Code {
	t.Helper()
	sent := time.Now().UnixNano()
	ct, err := channel.SealCall(keys, channel.KindCall, session, seq, sent, data)
	if err != nil {
		t.Fatal(err)
	}
	return refusalOf(t, nc, messages.CallSubject("c1", "alice"), mustMarshal(t, &messages.Call{V: messages.Version, Session: session, Seq: seq, Time: sent, Ciphertext: ct}))
}

// TestUsersAreApart: a user can neither read another's replies nor have
// them sent where the other would read them, nor call, close or block
// another's session.
func TestUsersAreApart(t *testing.T) {
	s := startSecureStack(t, nil)
	ctx := testContext(t)
	alice, bob := s.user("alice"), s.user("bob")
	bobs, err := client.Dial(ctx, client.Config{Conn: bob, User: "bob", Cluster: "c1", Roots: s.roots})
	if err != nil {
		t.Fatal(err)
	}
	for _, subject := range []string{"_INBOX.user.bob.>", "_INBOX.>", ">", messages.ClusterFilter("c1", messages.VerbCall)} {
		if _, err := alice.SubscribeSync(subject); err != nil {
			t.Fatal(err)
		}
		if !s.violated(alice, subject) {
			t.Errorf("alice subscribed to %s", subject)
		}
	}
	for _, subject := range []string{"_INBOX.user.bob.x", messages.CallSubject("c1", "bob"), messages.CloseSubject("c1", "bob"), messages.HandshakeSubject("c1", "bob")} {
		if err := alice.Publish(subject, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if !s.violated(alice, subject) {
			t.Errorf("alice published to %s", subject)
		}
	}
	// Answers alice has sent towards bob's inbox, or onto bob's session's
	// closed mark and next claim, stay in alice's account: bob hears
	// nothing, and his session goes on.
	inbox, err := bob.SubscribeSync("_INBOX.user.bob.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, reply := range []string{"_INBOX.user.bob.x.y", messages.ClosedSubject("c1", bobs.ID), messages.ClaimSubject("c1", bobs.ID, 1)} {
		if err := alice.PublishRequest(messages.HandshakeSubject("c1", "alice"), reply, []byte("garbage")); err != nil {
			t.Fatal(err)
		}
		if err := alice.PublishRequest(messages.SubjectEvidence, reply, []byte("garbage")); err != nil {
			t.Fatal(err)
		}
	}
	// A call of bob's session from alice, under her own name, is refused as
	// unknown: the session is bob's.
	keys := sessionKeys(t, s, bobs.ID)
	if code := sealedCall(t, alice, keys, bobs.ID, 1, []byte("as bob")); code != messages.CodeNoSession {
		t.Errorf("alice calling bob's session: %q, want %s", code, messages.CodeNoSession)
	}
	s.stopServices()
	if m, err := inbox.NextMsg(10 * time.Millisecond); err == nil {
		t.Errorf("bob heard %q on %s", m.Data, m.Subject)
	}
	s.iss = s.startIssuer()
	s.mgr = s.startManager()
	s.startUnit("c1", "u3", "demo", nil)
	if _, err := bobs.Call(ctx, []byte("still mine")); err != nil {
		t.Fatalf("bob's session after alice's attempts: %v", err)
	}
}

// TestUnitsAreApart: a unit's credential reads no peer's replies (its
// membership token among them), speaks to the manager for no peer and for
// no other cluster, and serves no other cluster.
func TestUnitsAreApart(t *testing.T) {
	s := startSecureStack(t, nil)
	u2 := s.conn(access.Grant{Role: access.Unit, Cluster: "c1", Name: "u2"}, access.State)
	u2serve := s.conn(access.Grant{Role: access.Unit, Cluster: "c1", Name: "u2"}, access.Serve)
	for _, subject := range []string{"_INBOX.unit.c1.u1.>", "_INBOX.unit.c1.>", "_INBOX.unit.o1.v1.>"} {
		if _, err := u2.SubscribeSync(subject); err != nil {
			t.Fatal(err)
		}
		if !s.violated(u2, subject) {
			t.Errorf("u2 subscribed to %s", subject)
		}
	}
	for _, subject := range []string{
		messages.ManagerSubject(messages.VerbHeartbeat, "c1", "u1"), messages.ManagerSubject(messages.VerbLeave, "c1", "u1"),
		messages.ManagerSubject(messages.VerbJoin, "o1", "u2"), messages.ManagerSubject(messages.VerbSession, "o1", "v1"),
		messages.SessionSubject("c1", bytes.Repeat([]byte{1}, 16)), "$KV." + messages.MembersBucket + ".c1.u1",
	} {
		if err := u2.Publish(subject, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if !s.violated(u2, subject) {
			t.Errorf("u2 published to %s", subject)
		}
	}
	if _, err := u2serve.QueueSubscribe(messages.ClusterFilter("o1", messages.VerbCall), "q", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if !s.violated(u2serve, messages.ClusterFilter("o1", messages.VerbCall)) {
		t.Error("u2 serves o1's calls")
	}
	// On its own subject, naming a peer: refused by the manager.
	hb := mustMarshal(t, &messages.Heartbeat{V: messages.Version, Cluster: "c1", Unit: "u1", Token: make([]byte, messages.TokenSize)})
	if code := refusalOf(t, u2, messages.ManagerSubject(messages.VerbLeave, "c1", "u2"), hb); code != messages.CodeWrongSubject {
		t.Errorf("u2 leaving for u1: %q, want %s", code, messages.CodeWrongSubject)
	}
	if n := s.mgr.Table().Counts(time.Now())[manager.Active]; n != 3 {
		t.Errorf("%d members active, want 3", n)
	}
}

// TestReplayedJoinAndHelloAreRefused: a join sent again, to either of two
// managers, is refused and rotates no token; a hello sent again, to any
// unit, opens no session.
func TestReplayedJoinAndHelloAreRefused(t *testing.T) {
	s := startSecureStack(t, nil)
	second := s.startManager()
	ctx := testContext(t)
	u9 := s.conn(access.Grant{Role: access.Unit, Cluster: "c1", Name: "u9"}, access.State)
	pair, err := clusterCertifier(t, u9, sim.UnitIdentity("demo"), "c1").Certify(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	join, err := unit.JoinRequest(pair, "c1", "u9", measure(t, sim.UnitIdentity("demo")), "127.0.0.1:1", time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unit.Join(ctx, u9, "c1", "u9", join, deadline); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both managers know u9", func() bool {
		return s.mgr.Table().Counts(time.Now())[manager.Active] == 4 && second.Table().Counts(time.Now())[manager.Active] == 4
	})
	token := func(m *runningManager) []byte {
		for _, v := range m.Table().Snapshot(time.Now()) {
			if v.Member.Unit == "u9" {
				return v.Member.Token
			}
		}
		return nil
	}
	before := token(s.mgr)
	for range 6 { // to either manager of the queue group
		if _, err := unit.Join(ctx, u9, "c1", "u9", join, deadline); !errors.Is(err, messages.ErrReplay) {
			t.Errorf("a join sent again: %v, want %v", err, messages.ErrReplay)
		}
	}
	if !bytes.Equal(token(s.mgr), before) || !bytes.Equal(token(second), before) {
		t.Error("a join sent again rotated the member's token")
	}

	alice := s.user("alice")
	_, pub, err := channel.NewClient(messages.KEMX25519)
	if err != nil {
		t.Fatal(err)
	}
	hello := mustMarshal(t, &messages.Hello{V: messages.Version, Cluster: "c1", KEM: messages.KEMX25519, PublicKey: pub,
		Nonce: bytes.Repeat([]byte{5}, messages.NonceSize), Time: time.Now().UnixNano()})
	if code := refusalOf(t, alice, messages.HandshakeSubject("c1", "alice"), hello); code != "" {
		t.Fatalf("the hello: %q", code)
	}
	id := channel.SessionID(hello)
	eventually(t, "both units hold the session", func() bool { return s.units["u1"].HasSession(id) && s.units["u2"].HasSession(id) })
	live := s.units["u1"].LiveSessions("alice")
	for range 6 {
		if code := refusalOf(t, alice, messages.HandshakeSubject("c1", "alice"), hello); code != messages.CodeReplay {
			t.Errorf("a hello sent again: %q, want %s", code, messages.CodeReplay)
		}
	}
	if got := s.units["u1"].LiveSessions("alice"); got != live {
		t.Errorf("alice holds %d sessions after the replays, %d before", got, live)
	}
}

// TestHandshakeQuota: a user's handshakes beyond its quota of live
// sessions, or faster than its rate, are refused with the reason; another
// user is served meanwhile; once the sessions expire, the units hold none
// and the user is served again.
func TestHandshakeQuota(t *testing.T) {
	const quota = 5
	s := startSecureStack(t, func(cfg *unit.Config) {
		cfg.SessionTTL = 3 * time.Second
		cfg.Quota = unit.Quota{Sessions: quota, Handshakes: 1000, HandshakeBurst: 1000}
	})
	ctx := testContext(t)
	alice, bob := s.user("alice"), s.user("bob")
	baseline := s.units["u1"].Sessions()
	dial := func(nc *nats.Conn, user string) error {
		_, err := client.Dial(ctx, client.Config{Conn: nc, User: user, Cluster: "c1", Roots: s.roots})
		return err
	}
	for i := range quota {
		if err := dial(alice, "alice"); err != nil {
			t.Fatalf("alice's session %d: %v", i+1, err)
		}
	}
	eventually(t, "every unit counts alice's sessions", func() bool {
		return s.units["u1"].LiveSessions("alice") == quota && s.units["u2"].LiveSessions("alice") == quota
	})
	for range 4 { // to any unit
		err := dial(alice, "alice")
		var e *messages.Error
		if !errors.As(err, &e) || e.Code != messages.CodeQuota || !strings.Contains(e.Reason, "alice holds 5 live sessions") {
			t.Fatalf("alice's session beyond her quota: %v, want %s naming it", err, messages.CodeQuota)
		}
	}
	if err := dial(bob, "bob"); err != nil {
		t.Fatalf("bob, while alice is at her quota: %v", err)
	}
	eventually(t, "the units drop the expired sessions", func() bool {
		return s.units["u1"].Sessions() == baseline && s.units["u2"].Sessions() == baseline && s.units["u1"].LiveSessions("alice") == 0
	})
	if err := dial(alice, "alice"); err != nil {
		t.Fatalf("alice once her sessions expired: %v", err)
	}

	// The rate: a burst beyond it is refused as such, and counts nothing.
	r := startSecureStack(t, func(cfg *unit.Config) { cfg.Quota = unit.Quota{Handshakes: 0.01, HandshakeBurst: 2} })
	carol := r.user("alice")
	refused := 0
	for range 10 {
		_, err := client.Dial(ctx, client.Config{Conn: carol, User: "alice", Cluster: "c1", Roots: r.roots})
		switch {
		case err == nil:
		case errors.Is(err, messages.ErrRateLimited):
			refused++
		default:
			t.Fatalf("a handshake: %v", err)
		}
	}
	if refused < 6 { // two units, a burst of two each
		t.Errorf("%d of 10 handshakes refused as too fast, want at least 6", refused)
	}
	if _, err := client.Dial(ctx, client.Config{Conn: r.user("bob"), User: "bob", Cluster: "c1", Roots: r.roots}); err != nil {
		t.Errorf("bob, while alice is too fast: %v", err)
	}
}

// TestRefusalEventsAreLimited: a flood of bad joins, which anyone with a
// unit's credential can send, records a bounded number of refusals on the
// audit stream, and says how many more there were.
func TestRefusalEventsAreLimited(t *testing.T) {
	s := startSecureStack(t, nil)
	ctx := testContext(t)
	u2 := s.conn(access.Grant{Role: access.Unit, Cluster: "c1", Name: "u2"}, access.State)
	start := time.Now()
	const flood = 300
	for range flood {
		if _, err := unit.Join(ctx, u2, "c1", "u2", []byte("garbage"), deadline); !errors.Is(err, &messages.Error{Code: messages.CodeMalformed}) {
			t.Fatalf("a garbage join: %v", err)
		}
	}
	elapsed := time.Since(start)
	s.stopServices() // the manager flushes its events as it stops
	op := s.conn(access.Grant{Role: access.Operator}, access.State)
	refusals, noted := 0, false
	if err := events.Follow(ctx, op, events.FollowConfig{APIPrefix: access.APIPrefix(access.ManagerAccount)}, func(e *events.Event, err error) error {
		if err == nil && e.Kind == events.UnitJoinRefused {
			refusals++
			noted = noted || strings.Contains(e.Reason, "more like it not recorded")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	most := events.RefusalBurst + int(elapsed.Seconds()*events.RefusalRate) + 1
	if refusals == 0 || refusals > most {
		t.Errorf("%d refusals recorded of %d in %v, want 1 to %d", refusals, flood, elapsed.Round(time.Millisecond), most)
	}
	t.Logf("%d bad joins in %v: %d refusals recorded (noted the rest: %v)", flood, elapsed.Round(time.Millisecond), refusals, noted)
}

// TestStoreTimeoutReachesTheUser: when the manager cannot store a session,
// the unit gives up before the user does, and the user hears why.
func TestStoreTimeoutReachesTheUser(t *testing.T) {
	s := startSecureStack(t, nil)
	s.mgr.stop()
	_, err := client.Dial(testContext(t), client.Config{Conn: s.user("alice"), User: "alice", Cluster: "c1", Roots: s.roots})
	if !errors.Is(err, messages.ErrOverloaded) || !strings.Contains(err.Error(), "the manager did not confirm within 3s") {
		t.Fatalf("a handshake without a manager: %v, want the unit's reason", err)
	}
}

// TestServerMadeAnswersAreNoUnit: a unit's real credential aims the
// answers of every JetStream API subject it may publish to (and a push
// consumer's deliveries) at every manager subject of a peer. The server
// publishes them inside the cluster's account, which imports the manager's
// subjects, so they land there; but it stamps each with its sender, the
// server's own JetStream, and the manager takes none of them as the peer.
// The peer's own requests carry its key as their sender.
func TestServerMadeAnswersAreNoUnit(t *testing.T) {
	s := startSecureStack(t, nil, "manager")
	ctx := testContext(t)
	u1 := access.Grant{Role: access.Unit, Cluster: "c1", Name: "u1"}
	attackerGrant := access.Grant{Role: access.Unit, Cluster: "c1", Name: "u2"}
	attacker := s.conn(attackerGrant, access.State)
	landed := capture(t, s.secured, "manager", messages.SubjectManagerPrefix+"*.c1.u1")
	before := s.mgr.Table().Snapshot(time.Now())
	stats := s.mgr.Stats()
	leaves := stats.Leaves.Load()

	// A message of the peer's shape, stored where the attacker may write,
	// for the direct gets and the consumer to hand over.
	js, err := jetstream.New(attacker)
	if err != nil {
		t.Fatal(err)
	}
	stash := messages.ClaimSubject("c1", []byte("stash"), 1)
	hb := mustMarshal(t, &messages.Heartbeat{V: messages.Version, Cluster: "c1", Unit: "u1", Token: make([]byte, messages.TokenSize)})
	if _, err := js.Publish(ctx, stash, hb); err != nil {
		t.Fatal(err)
	}
	stashStream := messages.CallsStreamOf("c1", []byte("stash"))
	pub, _, err := attackerGrant.Subjects(access.State)
	if err != nil {
		t.Fatal(err)
	}
	// Every JetStream API request the key may send that the server answers
	// at once (a pull's next message waits; acks are not answered).
	type request struct {
		subject string
		data    []byte
	}
	var answered []request
	seen := map[string]bool{}
	for _, p := range pub {
		if !strings.HasPrefix(p, "$JS.API.") || strings.Contains(p, ".MSG.NEXT.") {
			continue
		}
		for _, subject := range concrete(p) {
			data := []byte(`{}`)
			if strings.HasPrefix(subject, "$JS.API.DIRECT.GET.") {
				subject = "$JS.API.DIRECT.GET." + stashStream
				data = fmt.Appendf(nil, `{"last_by_subj":%q}`, stash)
			}
			if seen[subject] {
				continue
			}
			seen[subject] = true
			if _, err := attacker.Request(subject, data, deadline); err != nil {
				t.Fatalf("%s: %v", subject, err)
			}
			answered = append(answered, request{subject, data})
		}
	}
	sent := 0
	for _, verb := range []string{messages.VerbJoin, messages.VerbHeartbeat, messages.VerbLeave, messages.VerbSession} {
		target := messages.ManagerSubject(verb, "c1", "u1")
		for _, r := range answered {
			if err := attacker.PublishRequest(r.subject, target, r.data); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		// A push consumer delivering the stored message to the target.
		create := fmt.Appendf(nil, `{"stream_name":%q,"config":{"deliver_subject":%q,"ack_policy":"none","deliver_policy":"all","filter_subject":%q}}`, stashStream, target, stash)
		if err := attacker.PublishRequest("$JS.API.CONSUMER.CREATE."+stashStream, attacker.NewRespInbox(), create); err != nil {
			t.Fatal(err)
		}
	}
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}

	// They land (the direct gets' answers, at least, on each of u1's
	// subjects), stamped by the server as its own; u1's heartbeats land
	// stamped as u1's key.
	made, own := map[string]int{}, 0
	for end := time.Now().Add(deadline); (len(made) < 4 || own == 0) && time.Now().Before(end); {
		m, err := landed.NextMsg(time.Until(end))
		if err != nil {
			break
		}
		var ci struct{ Kind, User string }
		if err := json.Unmarshal([]byte(m.Header.Get("Nats-Request-Info")), &ci); err != nil {
			t.Fatalf("a message on %s without the server's stamp: %v (%q)", m.Subject, err, m.Header.Get("Nats-Request-Info"))
		}
		switch {
		case ci.Kind == "Client" && ci.User == s.creds[u1].Public(access.State):
			own++
		case ci.Kind == "Client":
			t.Errorf("a message on %s stamped as client %s, not u1's key", m.Subject, ci.User)
		default:
			made[m.Subject]++
		}
	}
	if len(made) < 4 || own == 0 {
		t.Fatalf("server-made answers landed on %d of u1's 4 manager subjects (%v), %d of u1's own requests: the attack did not reach", len(made), made, own)
	}
	t.Logf("of %d requests aimed at u1's manager subjects, server-made answers landed %v, each stamped as the server's; u1's own requests stamped as its key", sent, made)

	// The manager took none as u1: u1 is the member it was, with its token.
	after := s.mgr.Table().Snapshot(time.Now())
	for _, b := range before {
		if b.Member.Unit != "u1" {
			continue
		}
		found := false
		for _, a := range after {
			if a.Member.Unit == "u1" && a.Member.Cluster == "c1" {
				found = true
				if !bytes.Equal(a.Member.Token, b.Member.Token) || a.State != manager.Active {
					t.Errorf("u1 changed: %+v, was %+v", a, b)
				}
			}
		}
		if !found {
			t.Error("u1 is no member any more")
		}
	}
	if stats.Leaves.Load() != leaves {
		t.Error("the manager took a leave")
	}
}
