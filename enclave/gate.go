package enclave

import (
	"context"
	"fmt"
)

// Gate bounds the calls into the hardware that a backend has running at
// once: calls that cannot be interrupted (an ioctl, a configfs-tsm write and
// read, an EGo cgo call, a collateral fetch), which Call runs on a goroutine
// of their own so that the caller can give up on them. A call given up on
// keeps its slot until the hardware returns, so a wedged device holds at most
// the Gate's slots and their goroutines, and the callers after them wait for
// a slot only as long as their context lets them.
type Gate struct {
	slots chan struct{}
}

// NewGate returns a Gate of n slots (at least 1).
func NewGate(n int) *Gate {
	return &Gate{slots: make(chan struct{}, max(n, 1))}
}

// Call runs f once g has a free slot, and returns what f returns. When ctx is
// done first, whether Call is still waiting for a slot or f is running, it
// returns at once an error that names what and wraps ctx.Err(); f, when it
// started, runs on until the hardware returns, holding its slot, and its
// result is dropped. f must not touch what the caller may reuse once Call
// returns (give it copies).
func Call[T any](ctx context.Context, g *Gate, what string, f func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, fmt.Errorf("%s: %w", what, err)
	}
	select {
	case g.slots <- struct{}{}:
	case <-ctx.Done():
		return zero, fmt.Errorf("%s: waiting for a call in flight to return: %w", what, ctx.Err())
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1) // buffered: an abandoned call does not block
	go func() {
		defer func() { <-g.slots }()
		var r result
		defer func() {
			if p := recover(); p != nil {
				r = result{err: fmt.Errorf("%s: panicked: %v", what, p)}
			}
			done <- r
		}()
		r.v, r.err = f()
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		return zero, fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// Outstanding is how many calls hold a slot: running, or given up on and not
// yet returned.
func (g *Gate) Outstanding() int { return len(g.slots) }
