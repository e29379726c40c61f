package replay

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// nonce returns a nonce whose first byte is shard (which picks the shard)
// and whose next bytes are i.
func nonce(shard byte, i uint32) []byte {
	n := make([]byte, replayNonceKeySize)
	n[0] = shard
	binary.BigEndian.PutUint32(n[1:], i)
	return n
}

func TestReplayFreshThenSeen(t *testing.T) {
	const w = time.Minute
	c := New(w, t0)
	n := nonce(7, 1)
	if v := c.Check(n, t0); v != Fresh {
		t.Fatalf("first use: %v, want fresh", v)
	}
	if v := c.Check(n, t0); v != Seen {
		t.Fatalf("second use: %v, want seen", v)
	}
	if v := c.Check(n, t0.Add(w-time.Nanosecond)); v != Seen {
		t.Fatalf("just before one window: %v, want seen", v)
	}
	if v := c.Check(n, t0.Add(w)); v != Seen {
		t.Fatalf("after one window: %v, want seen", v)
	}
	if v := c.Check(n, t0.Add(2*w)); v != Fresh {
		t.Fatalf("after two windows: %v, want forgotten (fresh)", v)
	}
	// Nonces differing in any byte are different nonces.
	for i := range replayNonceKeySize {
		m := nonce(7, 1)
		m[i] ^= 0x80
		if v := c.Check(m, t0.Add(2*w)); v != Fresh {
			t.Fatalf("nonce differing in byte %d: %v, want fresh", i, v)
		}
	}
}

func TestReplayForgottenAfterIdleWindows(t *testing.T) {
	const w = time.Minute
	c := New(w, t0)
	n := nonce(3, 9)
	c.Check(n, t0)
	if v := c.Check(n, t0.Add(2*w)); v != Fresh {
		t.Fatalf("after two idle windows: %v, want fresh", v)
	}
}

// TestReplayRemembersAtLeastOneWindow: a nonce recorded just before its
// shard rotates is still remembered a whole window later.
func TestReplayRemembersAtLeastOneWindow(t *testing.T) {
	const w = time.Minute
	c := New(w, t0)
	n := nonce(5, 1)
	added := t0.Add(w - time.Nanosecond)
	if v := c.Check(n, added); v != Fresh {
		t.Fatalf("first use: %v", v)
	}
	for _, at := range []time.Time{t0.Add(w), added.Add(w - time.Nanosecond)} {
		if v := c.Check(n, at); v != Seen {
			t.Fatalf("at %v after it was recorded: %v, want seen", at.Sub(added), v)
		}
	}
	// A clock that goes backwards neither rotates nor forgets.
	if v := c.Check(n, t0.Add(-time.Hour)); v != Seen {
		t.Fatalf("clock going backwards: %v, want seen", v)
	}
}

func TestReplayFullShard(t *testing.T) {
	const w = time.Minute
	c := New(w, t0)
	for i := range uint32(maxReplayPerShard) {
		if v := c.Check(nonce(0, i), t0); v != Fresh {
			t.Fatalf("nonce %d: %v, want fresh", i, v)
		}
	}
	if v := c.Check(nonce(0, maxReplayPerShard), t0); v != Full {
		t.Fatalf("nonce beyond the shard's capacity: %v, want full", v)
	}
	// 64 is the same shard as 0.
	if v := c.Check(nonce(replayShards, 1<<30), t0); v != Full {
		t.Fatalf("another nonce of the full shard: %v, want full", v)
	}
	// A known nonce is still reported as seen, not full.
	if v := c.Check(nonce(0, 5), t0); v != Seen {
		t.Fatalf("known nonce in a full shard: %v, want seen", v)
	}
	// Other shards are unaffected.
	if v := c.Check(nonce(1, 0), t0); v != Fresh {
		t.Fatalf("nonce of another shard: %v, want fresh", v)
	}
	// After a window the shard takes new nonces again and still knows the old.
	if v := c.Check(nonce(0, maxReplayPerShard), t0.Add(w)); v != Fresh {
		t.Fatalf("after a window: %v, want fresh", v)
	}
	if v := c.Check(nonce(0, 6), t0.Add(w)); v != Seen {
		t.Fatalf("old nonce after a window: %v, want seen", v)
	}
}

func TestReplayConcurrent(t *testing.T) {
	c := New(time.Minute, t0)
	const goroutines, each = 8, 200
	var fresh atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				// Every goroutine offers the same nonces: each must be
				// fresh exactly once.
				if c.Check(nonce(byte(i), uint32(i)), t0.Add(time.Duration(g))) == Fresh {
					fresh.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := fresh.Load(); got != each {
		t.Fatalf("%d nonces fresh, want %d", got, each)
	}
}
