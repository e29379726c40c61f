package issuer

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/messages"
)

// lockedBuffer is a log sink safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// A refusal goes out signed by the root, or not at all: where signing it
// fails, the issuer logs so and answers an internal error, unsigned, which
// decides nothing, in its place.
func TestRefusalsAreSignedOrNotSent(t *testing.T) {
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	admin, _ := adminkey.Generate(rand.Reader)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: bytes.Repeat([]byte{0xb}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	iss, err := New(Config{Conn: nc, Platform: p, Policy: lifecyclePolicy(t, 1, admin, bytes.Repeat([]byte{1}, 32)), Ungoverned: true,
		NoEvents: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- iss.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-iss.Ready():
	case err := <-done:
		t.Fatalf("issuer stopped: %v", err)
	case <-time.After(testDeadline):
		t.Fatal("issuer not ready")
	}

	// A request that decodes, so that its refusal is signed: a KEM the
	// issuer does not take.
	body, err := messages.Marshal(&messages.CertifyBody{V: messages.Version, Task: "demo", KEM: 0xfff0, PublicKey: []byte{1},
		Nonce: make([]byte, messages.NonceSize), Time: time.Now().UnixNano()})
	if err != nil {
		t.Fatal(err)
	}
	req, err := messages.Marshal(&messages.CertifyRequest{V: messages.Version, Body: body, Evidence: []byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	reply, refusal := iss.certify(ctx, req)
	if reply != nil || refusal == nil || refusal.Code != messages.CodeUnsupportedKEM || len(refusal.Proof) == 0 {
		t.Fatalf("with a signer: %v, %+v; want a signed refusal", reply, refusal)
	}

	iss.signRefusal = func(io.Reader, *ecdsa.PrivateKey, []byte) ([]byte, error) { return nil, errors.New("the key is gone") }
	reply, refusal = iss.certify(ctx, req)
	if reply != nil || refusal == nil || refusal.Code != messages.CodeInternal || len(refusal.Proof) != 0 ||
		strings.Contains(refusal.Reason, string(messages.CodeUnsupportedKEM)) {
		t.Fatalf("with a signer that fails: %v, %+v; want an unsigned internal error, and nothing of the refusal", reply, refusal)
	}
	if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "signing a refusal failed") ||
		!strings.Contains(l, "component=issuer") || !strings.Contains(l, "the key is gone") {
		t.Fatalf("the log says nothing of it:\n%s", l)
	}
}
