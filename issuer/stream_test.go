package issuer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/streamcheck/streamchecktest"
)

// Every untrusted setting of the state bucket's stream, made by whoever
// holds the issuer's credential or runs NATS before the issuer takes the
// stream, is refused as tampered with, and named.
func TestUntrustedStateStreamIsRefused(t *testing.T) {
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := streamchecktest.Keep(ctx, js); err != nil {
		t.Fatal(err)
	}
	// A bucket of its own for each mutation (see package streamchecktest).
	for k, m := range streamchecktest.Mutations() {
		bucket := fmt.Sprintf("state_%d", k)
		want := stateStream(bucket, 1)
		if !m.Applies(want) {
			continue
		}
		t.Run(m.Setting, func(t *testing.T) {
			defer func() {
				if err := streamchecktest.Remove(ctx, js, want.Name); err != nil {
					t.Fatal(err)
				}
			}()
			if err := m.Make(ctx, js, want); err != nil {
				t.Fatalf("making the stream: %v", err)
			}
			if _, _, err := openStore(ctx, nc, js, bucket, 1); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), m.Setting) {
				t.Fatalf("openStore: %v; want ErrTampered, naming %s", err, m.Setting)
			}
		})
	}
	if _, empty, err := openStore(ctx, nc, js, "state", 1); err != nil || !empty {
		t.Fatalf("the stream as the issuer makes it: %v, empty %v", err, empty)
	}
}
