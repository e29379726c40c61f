package integration

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// requestCode sends raw bytes and returns the refusal code of the answer, or
// "" for an answer that is not a refusal.
func requestCode(t *testing.T, nc *nats.Conn, subject string, data []byte) messages.Code {
	t.Helper()
	msg, err := nc.Request(subject, data, deadline)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	code := msg.Header.Get("Nats-Service-Error-Code")
	if code != "" {
		if e := messages.DecodeError(code, msg.Data); e.Reason == "" {
			t.Errorf("%s: refusal %s names no reason", subject, code)
		}
	}
	return messages.Code(code)
}

// Forged, truncated and oversized handshakes, calls and session records are
// refused with a reason and change nothing; a unit of another cluster cannot
// open this cluster's session records.
func TestChannelRefusesBadInput(t *testing.T) {
	c := startCluster(t, 2, "b", nil)
	nc, units, roots := c.nc, c.units, c.roots
	user := connect(t, c.srv)
	s, err := client.Dial(context.Background(), client.Config{Conn: user, User: "alice", Cluster: "c1", Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "both units hold the session", func() bool { return units[0].HasSession(s.ID) && units[1].HasSession(s.ID) })
	call := recordCall(t, user, s)

	otherCluster, _ := messages.Marshal(&messages.Hello{V: messages.Version, Cluster: "o1", KEM: messages.KEMX25519, PublicKey: make([]byte, 32), Nonce: make([]byte, 32), Time: time.Now().UnixNano()})
	var forged messages.Call
	mustDecode(t, call, &forged)
	forged.Seq, forged.Ciphertext = 1<<40, bytes.Repeat([]byte{7}, len(forged.Ciphertext))
	forgedCall, _ := messages.Marshal(&forged)
	unknown := forged
	unknown.Session = bytes.Repeat([]byte{9}, messages.SessionIDSize)
	unknownCall, _ := messages.Marshal(&unknown)
	for _, tc := range []struct {
		name, subject string
		data          []byte
		code          messages.Code
	}{
		{"garbage hello", messages.HandshakeSubject("c1", "alice"), []byte("garbage"), messages.CodeMalformed},
		{"oversized hello", messages.HandshakeSubject("c1", "alice"), make([]byte, messages.MaxHello+1), messages.CodeTooLarge},
		{"hello for another cluster", messages.HandshakeSubject("c1", "alice"), otherCluster, messages.CodeWrongCluster},
		{"garbage call", messages.CallSubject("c1", "alice"), []byte{0x81, 0xa1, 'v'}, messages.CodeMalformed},
		{"truncated call", messages.CallSubject("c1", "alice"), call[:len(call)/2], messages.CodeMalformed},
		{"oversized call", messages.CallSubject("c1", "alice"), make([]byte, messages.MaxCall+1), messages.CodeTooLarge},
		{"forged call", messages.CallSubject("c1", "alice"), forgedCall, messages.CodeAuth},
		{"call of an unknown session", messages.CallSubject("c1", "alice"), unknownCall, messages.CodeNoSession},
		{"replayed call", messages.CallSubject("c1", "alice"), call, messages.CodeReplay},
		{"session record from no member", messages.ManagerSubject(messages.VerbSession, "c1", "nobody"), mustMarshal(t, &messages.SessionRecord{
			V: messages.Version, Cluster: "c1", Session: bytes.Repeat([]byte{1}, 16), Epoch: 1, Expires: time.Now().Add(time.Hour).UnixNano(),
			Sealed: []byte("forged"), Unit: "nobody", Token: make([]byte, 32),
		}), messages.CodeUnknownUnit},
		{"garbage session record", messages.ManagerSubject(messages.VerbSession, "c1", "nobody"), []byte("garbage"), messages.CodeMalformed},
		{"oversized session record", messages.ManagerSubject(messages.VerbSession, "c1", "nobody"), make([]byte, messages.MaxSessionRecord+1), messages.CodeTooLarge},
	} {
		if got := requestCode(t, user, tc.subject, tc.data); got != tc.code {
			t.Errorf("%s: code %q, want %s", tc.name, got, tc.code)
		}
	}
	// The session still works: nothing above changed it.
	if _, err := s.Call(context.Background(), []byte("still here")); err != nil {
		t.Fatalf("the session after the bad input: %v", err)
	}

	// A forged record stored by a member (a unit's token is no secret from
	// NATS) opens on no unit: the cluster key seals records, not the manager.
	forgedID := bytes.Repeat([]byte{0x42}, messages.SessionIDSize)
	if _, err := client.Dial(context.Background(), client.Config{Conn: user, User: "alice", Cluster: "c1", Roots: roots}); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(context.Background(), messages.SessionSubject("c1", forgedID), mustMarshal(t, &messages.SessionRecord{
		V: messages.Version, Cluster: "c1", Session: forgedID, Epoch: 1, Expires: time.Now().Add(time.Hour).UnixNano(), Sealed: bytes.Repeat([]byte{3}, 64),
	})); err != nil {
		t.Fatal(err)
	}
	if code := requestCode(t, user, messages.CallSubject("c1", "alice"), mustMarshal(t, &messages.Call{
		V: messages.Version, Session: forgedID, Seq: 1, Time: time.Now().UnixNano(), Ciphertext: bytes.Repeat([]byte{1}, 32),
	})); code != messages.CodeNoSession {
		t.Errorf("a call of a forged session: %q, want %s", code, messages.CodeNoSession)
	}
	for _, u := range units {
		if u.HasSession(forgedID) {
			t.Fatal("a unit took a forged session record")
		}
	}

	// A unit of another cluster holds another key: this cluster's record does
	// not open under it.
	st, err := js.Stream(context.Background(), messages.SessionsStream("c1"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetLastMsgForSubject(context.Background(), messages.SessionSubject("c1", s.ID))
	if err != nil {
		t.Fatal(err)
	}
	var rec messages.SessionRecord
	mustDecode(t, raw.Data, &rec)
	other, err := clusterCertifier(t, nc, sim.UnitIdentity("other"), "o1").Certify(context.Background(), "other")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := channel.OpenRecord(other.ClusterKey.Key, rec.Epoch, rec.Cluster, rec.Session, rec.Sealed); !errors.Is(err, channel.ErrAuth) {
		t.Fatalf("another cluster's key opened this cluster's record: %v", err)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := messages.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A cluster's calls stream made beforehand with what could lose a claim
// (roll-ups allowed) is not served over: the units join, but answer no
// handshake, and say why.
func TestUntrustedStreamsAreRefused(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: messages.CallsStream("c1", 2), Subjects: []string{messages.ClaimsOfShard("c1", 2)}, MaxMsgsPerSubject: 1,
		AllowRollup: true, AllowDirect: true, AllowMsgTTL: true,
	}); err != nil {
		t.Fatal(err)
	}
	iss := startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	startManager(t, connect(t, srv), iss.Root(), heartbeat)
	var logs syncLog
	cfg := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
	cfg.Cluster, cfg.Logger = "c1", slog.New(slog.NewTextHandler(&logs, nil))
	startUnit(t, cfg)
	eventually(t, "the unit says why it does not serve", func() bool { return strings.Contains(logs.String(), "could lose what it keeps") })
	roots := x509.NewCertPool()
	roots.AddCert(iss.Root())
	if _, err := client.Dial(context.Background(), client.Config{Conn: nc, User: "alice", Cluster: "c1", Roots: roots, Timeout: time.Second}); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("a handshake with a cluster over an untrusted stream: %v, want no responders", err)
	}
}

// A cluster's one calls stream, as cohort made it before its claims were
// spread over shards, holds the subjects of every shard: a unit of this
// build does not serve beside it, and says what to remove.
func TestLegacyCallsStreamIsNamed(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: messages.LegacyCallsStream("c1"), Subjects: []string{messages.ClaimsOfCluster("c1")}, MaxMsgsPerSubject: 1,
		AllowDirect: true, AllowMsgTTL: true, DenyDelete: true, DenyPurge: true,
	}); err != nil {
		t.Fatal(err)
	}
	iss := startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	startManager(t, connect(t, srv), iss.Root(), heartbeat)
	var logs syncLog
	cfg := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
	cfg.Cluster, cfg.Logger = "c1", slog.New(slog.NewTextHandler(&logs, nil))
	u, err := unit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "the unit names the stream to remove", func() bool {
		return strings.Contains(logs.String(), "nats stream rm "+messages.LegacyCallsStream("c1"))
	})
	select {
	case <-u.Ready():
		t.Fatal("a unit is ready beside the legacy calls stream")
	default:
	}
	roots := x509.NewCertPool()
	roots.AddCert(iss.Root())
	if _, err := client.Dial(context.Background(), client.Config{Conn: nc, User: "alice", Cluster: "c1", Roots: roots, Timeout: time.Second}); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("a handshake with a cluster beside the legacy calls stream: %v, want no responders", err)
	}
}

// syncLog is a log sink safe for concurrent writers.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *syncLog) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// A cluster's streams reserve their bounds from JetStream's storage. Where
// the server cannot reserve them, the unit is not ready and says why and
// what to change; with bounds that fit, a unit of the same cluster makes
// the streams with them and serves.
func TestStreamsThatDoNotFitAreNamed(t *testing.T) {
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir(), MaxStore: 3 << 29}) // 1.5 GiB: the events stream reserves 1 GiB
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	nc := connect(t, srv)
	iss := startIssuer(t, nc, parsePolicy(t, policyYAML(t, true, time.Hour)), newMachine(t))
	mgr := startManager(t, connect(t, srv), iss.Root(), heartbeat)

	var logs syncLog
	cfg := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
	cfg.Name, cfg.Cluster, cfg.Logger = "big", "c1", slog.New(slog.NewTextHandler(&logs, nil))
	big, err := unit.New(cfg) // the default bounds, 2.25 GiB
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- big.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "the unit names the storage it lacks", func() bool {
		return strings.Contains(logs.String(), "cannot reserve the cluster's streams") && strings.Contains(logs.String(), "--calls-max-bytes")
	})
	select {
	case <-big.Ready():
		t.Fatal("a unit without its cluster's streams is ready")
	default:
	}

	cfg = unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
	cfg.Name, cfg.Cluster, cfg.SessionsMaxBytes, cfg.CallsMaxBytes = "small", "c1", 32<<20, 64<<20
	startUnit(t, cfg)
	js, _ := jetstream.New(nc)
	// The first unit made the sessions stream, which fitted; the second the
	// calls stream, with its bound.
	bounds := map[string]int64{messages.SessionsStream("c1"): unit.DefaultSessionsMaxBytes}
	for _, name := range messages.CallsStreams("c1") {
		bounds[name] = 64 << 20 / messages.CallShards // the bound is the shards' together
	}
	for stream, want := range bounds {
		st, err := js.Stream(context.Background(), stream)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.CachedInfo().Config.MaxBytes; got != want {
			t.Errorf("stream %s bounded to %d bytes, want %d", stream, got, want)
		}
	}
	// The first unit's next try takes the streams there are: both serve.
	eventually(t, "the first unit ready", func() bool {
		select {
		case <-big.Ready():
			return true
		default:
			return false
		}
	})
	eventually(t, "both members active", func() bool { return mgr.Table().Counts(time.Now())[manager.Active] == 2 })
	if _, err := unit.New(unit.Config{Conn: nc, Platform: unitPlatform(t, "x"), Task: "demo", IssuerMeasurement: make([]byte, 32), HTTPSAddr: ":0", CallsMaxBytes: 1 << 10}); err == nil || !strings.Contains(err.Error(), "at least") {
		t.Errorf("a 1 KiB bound: %v, want refused", err)
	}
}

// A hello whose key share does not check out is refused without its nonce
// being remembered: the same nonce in a hello that checks out opens a
// session; that hello sent again is a replay.
func TestBadHelloTakesNoNonce(t *testing.T) {
	c := startCluster(t, 1, "n", nil)
	user := connect(t, c.srv)
	nonce := bytes.Repeat([]byte{0x5a}, messages.NonceSize)
	hello := func(pub []byte) []byte {
		return mustMarshal(t, &messages.Hello{V: messages.Version, Cluster: "c1", KEM: messages.KEMX25519, PublicKey: pub, Nonce: nonce, Time: time.Now().UnixNano()})
	}
	subject := messages.HandshakeSubject("c1", "alice")
	if code := requestCode(t, user, subject, hello(make([]byte, 31))); code != messages.CodeUnsupportedKEM {
		t.Fatalf("a hello with a key share of 31 bytes: %q, want %s", code, messages.CodeUnsupportedKEM)
	}
	_, pub, err := channel.NewClient(messages.KEMX25519)
	if err != nil {
		t.Fatal(err)
	}
	good := hello(pub)
	if code := requestCode(t, user, subject, good); code != "" {
		t.Fatalf("the same nonce in a hello that checks out: %q, want a session", code)
	}
	if code := requestCode(t, user, subject, good); code != messages.CodeReplay {
		t.Fatalf("that hello again: %q, want %s", code, messages.CodeReplay)
	}
}
