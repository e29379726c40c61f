package enclave_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
)

// TestGate: a call that does not return is given up on once the caller's
// context is done; it keeps its slot, so the next caller waits for it only
// as long as its own context lets it; once the call returns, the slot serves
// again. A context done before the call is asked for runs nothing.
func TestGate(t *testing.T) {
	g := enclave.NewGate(1)
	entered, release := make(chan struct{}, 4), make(chan struct{})
	wedged := func() (int, error) {
		entered <- struct{}{}
		<-release
		return 1, nil
	}

	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-entered; cancel() }()
	if _, err := enclave.Call(ctx, g, "wedged", wedged); !errors.Is(err, context.Canceled) {
		t.Fatalf("a wedged call, cancelled: %v, want context.Canceled", err)
	}
	if n := g.Outstanding(); n != 1 {
		t.Errorf("outstanding %d, want the abandoned call's 1", n)
	}

	short, stop := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer stop()
	if _, err := enclave.Call(short, g, "second", wedged); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting for the slot: %v, want context.DeadlineExceeded", err)
	}
	if len(entered) != 0 {
		t.Fatal("a second call ran beside the wedged one")
	}

	done, cancelDone := context.WithCancel(t.Context())
	cancelDone()
	ran := false
	if _, err := enclave.Call(done, g, "late", func() (int, error) { ran = true; return 0, nil }); !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("a done context: %v, ran %v", err, ran)
	}

	close(release)
	if v, err := enclave.Call(t.Context(), g, "after", wedged); err != nil || v != 1 {
		t.Fatalf("after the wedged call returned: %d, %v", v, err)
	}
	if n := g.Outstanding(); n > 1 {
		t.Errorf("outstanding %d once every call returned", n)
	}
}

// TestGatePanic: a call that panics is an error, not the process's end.
func TestGatePanic(t *testing.T) {
	g := enclave.NewGate(1)
	if _, err := enclave.Call(t.Context(), g, "panicky", func() (int, error) { panic("boom") }); err == nil {
		t.Fatal("a panic returned no error")
	}
	if _, err := enclave.Call(t.Context(), g, "after", func() (int, error) { return 0, nil }); err != nil {
		t.Fatalf("the slot after a panic: %v", err)
	}
}
