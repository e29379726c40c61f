package replay

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// nonce returns a nonce whose first byte is b and whose next bytes are i.
func nonce(b byte, i uint32) []byte {
	n := make([]byte, replayNonceKeySize)
	n[0] = b
	binary.BigEndian.PutUint32(n[1:], i)
	return n
}

// inShard returns the count next nonces, after from, that c keeps in shard.
func inShard(c *Cache, shard uint64, from uint32, count int) ([][]byte, uint32) {
	var out [][]byte
	for i := from; len(out) < count; i++ {
		n := nonce(0xee, i)
		var k [replayNonceKeySize]byte
		copy(k[:], n)
		if c.shard(&k) == shard {
			out = append(out, n)
		}
		from = i + 1
	}
	return out, from
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
	full, next := inShard(c, 0, 0, maxReplayPerShard+3)
	for i, n := range full[:maxReplayPerShard] {
		if v := c.Check(n, t0); v != Fresh {
			t.Fatalf("nonce %d: %v, want fresh", i, v)
		}
	}
	if v := c.Check(full[maxReplayPerShard], t0); v != Full {
		t.Fatalf("nonce beyond the shard's capacity: %v, want full", v)
	}
	if v := c.Check(full[maxReplayPerShard+1], t0); v != Full {
		t.Fatalf("another nonce of the full shard: %v, want full", v)
	}
	// A known nonce is still reported as seen, not full.
	if v := c.Check(full[5], t0); v != Seen {
		t.Fatalf("known nonce in a full shard: %v, want seen", v)
	}
	// Other shards are unaffected.
	other, _ := inShard(c, 1, next, 1)
	if v := c.Check(other[0], t0); v != Fresh {
		t.Fatalf("nonce of another shard: %v, want fresh", v)
	}
	// After a window the shard takes new nonces again and still knows the old.
	if v := c.Check(full[maxReplayPerShard+2], t0.Add(w)); v != Fresh {
		t.Fatalf("after a window: %v, want fresh", v)
	}
	if v := c.Check(full[6], t0.Add(w)); v != Seen {
		t.Fatalf("old nonce after a window: %v, want seen", v)
	}
}

// TestChosenNoncesDoNotConcentrate: nonces a requester chooses, all with
// one first byte (which once picked the shard) or differing in one byte
// only, spread over the shards as random ones do: no shard holds more than
// three times its share, and two caches place them differently.
func TestChosenNoncesDoNotConcentrate(t *testing.T) {
	const n = 64 * replayShards
	for _, chosen := range []func(i uint32) []byte{
		func(i uint32) []byte { return nonce(0, i) },
		func(i uint32) []byte {
			n := make([]byte, replayNonceKeySize)
			n[31] = byte(i)
			n[30] = byte(i >> 8)
			return n
		},
	} {
		a, b := New(time.Minute, t0), New(time.Minute, t0)
		var countA [replayShards]int
		same := 0
		for i := range uint32(n) {
			var k [replayNonceKeySize]byte
			copy(k[:], chosen(i))
			sa := a.shard(&k)
			countA[sa]++
			if sa == b.shard(&k) {
				same++
			}
		}
		for s, c := range countA {
			if c > 3*n/replayShards {
				t.Fatalf("shard %d holds %d of %d chosen nonces, more than three times its share", s, c, n)
			}
		}
		if same > n/4 {
			t.Errorf("two caches put %d of %d nonces in the same shard: the seed does not place them", same, n)
		}
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
