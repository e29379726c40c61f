package issuer

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cohort-dev/cohort/streamcheck/streamchecktest"
)

// Every untrusted setting of the state bucket's stream, made by whoever
// holds the issuer's credential or runs NATS before the issuer takes the
// stream, is refused as tampered with, and named.
func TestUntrustedStateStreamIsRefused(t *testing.T) {
	nc, js, ctx := streamchecktest.Server(t)
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
