package integration

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// A call of a task free of side effects is one durable write (its answer);
// any other task's is two (the claim, then the answer). Sent again, to any
// unit, the call is answered with the answer stored first: when two units
// run it at once, both answer with one answer.
func TestFreeCallIsOneWrite(t *testing.T) {
	for _, free := range []bool{true, false} {
		t.Run(fmt.Sprintf("side-effect-free=%v", free), func(t *testing.T) {
			var ran atomic.Int64
			c := startCluster(t, 3, "w", func(cfg *unit.Config) {
				cfg.SideEffectFree = free
				cfg.App = func(_ context.Context, call unit.Call) ([]byte, error) {
					n := ran.Add(1)
					return fmt.Appendf(nil, "run %d of %s", n, call.Data), nil
				}
			})
			ctx := context.Background()
			s, err := client.Dial(ctx, client.Config{Conn: c.nc, User: "alice", Cluster: "c1", Roots: c.roots})
			if err != nil {
				t.Fatal(err)
			}
			writes := func() (n uint64) {
				for _, stream := range messages.CallsStreams("c1") {
					n += streamState(t, c.nc, stream)[1]
				}
				return n
			}
			before := writes()
			const calls = 20
			for i := range calls {
				if _, err := s.Call(ctx, fmt.Appendf(nil, "call %d", i)); err != nil {
					t.Fatal(err)
				}
			}
			wrote := writes() - before
			want := uint64(2 * calls)
			if free {
				want = calls
			}
			if wrote != want {
				t.Fatalf("%d calls wrote %d messages to the calls streams, want %d", calls, wrote, want)
			}

			// The same call, sent four times at once: every answer is the
			// first stored, whichever units ran it.
			call := recordCall(t, c.nc, s)
			var wg sync.WaitGroup
			replies := make([][]byte, 4)
			for i := range replies {
				wg.Go(func() {
					m, err := c.nc.Request(messages.CallSubject("c1", "alice"), call, deadline)
					if err != nil {
						t.Error(err)
						return
					}
					var r messages.CallReply
					if err := messages.Decode(m.Data, messages.MaxCallReply, &r); err != nil {
						t.Errorf("reply %d: %q (%v): %v", i, m.Data, m.Header, err)
						return
					}
					replies[i] = r.Ciphertext
				})
			}
			wg.Wait()
			for i := range replies {
				if !bytes.Equal(replies[i], replies[0]) {
					t.Fatalf("the call sent again was answered with %d different answers", len(replies))
				}
			}
			if !free && ran.Load() != calls+1 {
				t.Fatalf("the task ran %d times for %d calls", ran.Load(), calls+1)
			}
		})
	}
}
