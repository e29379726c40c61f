package issuer

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/messages"
)

// wedgedPlatform is the simulated platform behind a device that, once
// armed, does not answer until released; it is called as the hardware
// backends call theirs, through an enclave.Gate.
type wedgedPlatform struct {
	*sim.Platform
	gate             *enclave.Gate
	armed            atomic.Bool
	entered, release chan struct{}
}

func (w *wedgedPlatform) Attest(ctx context.Context, rd [enclave.ReportDataSize]byte) ([]byte, error) {
	if !w.armed.Load() {
		return w.Platform.Attest(ctx, rd)
	}
	return enclave.Call(ctx, w.gate, "wedged device", func() ([]byte, error) {
		w.entered <- struct{}{}
		<-w.release
		return nil, errors.New("released")
	})
}

// An evidence request whose attestation does not return holds the issuer's
// stop up only until the service gives up on it: Run returns, the request's
// Attest is given up on, and the device's call is left to end on its own.
func TestStopWithWedgedHardware(t *testing.T) {
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	admin, err := adminkey.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: bytes.Repeat([]byte{0xc}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	w := &wedgedPlatform{Platform: p, gate: enclave.NewGate(1), entered: make(chan struct{}, 1), release: make(chan struct{})}
	defer close(w.release)
	iss, err := New(Config{Conn: nc, Platform: w, Policy: lifecyclePolicy(t, 1, admin, bytes.Repeat([]byte{1}, 32)), Ungoverned: true,
		KeyCache: FileKeyCache(t.TempDir() + "/" + KeyCacheFile), PolicyPoll: 20 * time.Millisecond, Lease: 300 * time.Millisecond,
		PeerTimeout: time.Second, NoEvents: true, stopTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- iss.Run(ctx) }()
	select {
	case <-iss.Ready():
	case err := <-done:
		t.Fatalf("the issuer stopped: %v", err)
	case <-time.After(testDeadline):
		t.Fatal("the issuer is not ready")
	}

	w.armed.Store(true)
	req, err := messages.Marshal(&messages.EvidenceRequest{V: messages.Version, Nonce: make([]byte, messages.NonceSize)})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest(messages.SubjectEvidence, nc.NewInbox(), req); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.entered:
	case <-time.After(testDeadline):
		t.Fatal("the evidence request never reached the device")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(testDeadline):
		t.Fatal("Run did not return while its device was wedged")
	}
}
