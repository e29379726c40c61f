// Package replay remembers the nonces of requests recently accepted, so
// that a request sent again while its time is still accepted is refused. It
// is what the issuer (certify requests), the manager (joins) and the units
// (hellos) keep.
//
// Guarantees: a nonce checked at t is reported Seen by every check until at
// least t + window; the cache is bounded (MaxNonces in all), and a full
// shard refuses new nonces (Full) rather than grow or forget one early; it
// is sharded so that concurrent checks rarely share a lock. A nonce's shard
// is a hash of it under a seed drawn for each cache: whoever chooses nonces
// (a requester) cannot aim them at one shard to fill it, and so cannot make
// others' requests fail as Full sooner than by filling the whole cache.
package replay

import (
	"hash/maphash"
	"sync"
	"time"
)

const (
	replayShards       = 64
	maxReplayPerShard  = 1 << 15
	replayNonceKeySize = 32
)

// MaxNonces is how many nonces a cache holds at most: 2M, about 100 MB.
const MaxNonces = replayShards * maxReplayPerShard

// Cache remembers nonces for at least a window. Nonces are compared on
// their first 32 bytes: give it at least that much randomness.
type Cache struct {
	window time.Duration
	seed   maphash.Seed
	shards [replayShards]replayShard
}

type replayShard struct {
	mu        sync.Mutex
	cur, prev map[[replayNonceKeySize]byte]struct{}
	rotated   time.Time
}

// New returns an empty cache whose nonces live at least window.
func New(window time.Duration, now time.Time) *Cache {
	c := &Cache{window: window, seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].cur = make(map[[replayNonceKeySize]byte]struct{})
		c.shards[i].prev = make(map[[replayNonceKeySize]byte]struct{})
		c.shards[i].rotated = now
	}
	return c
}

// Verdict is what Check found.
type Verdict int

// The verdicts.
const (
	Fresh Verdict = iota // not seen: now recorded
	Seen                 // seen within the window: a replay
	Full                 // not seen, and no room to record it: refuse the request
)

// Check records nonce at now and says whether it was fresh. An entry lives
// between one and two windows: shards rotate their maps once per window.
func (c *Cache) Check(nonce []byte, now time.Time) Verdict {
	var k [replayNonceKeySize]byte
	copy(k[:], nonce)
	s := &c.shards[c.shard(&k)]
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.rotated) >= c.window {
		s.prev, s.cur = s.cur, s.prev
		clear(s.cur)
		if now.Sub(s.rotated) >= 2*c.window {
			clear(s.prev) // idle for two windows: everything has expired
		}
		s.rotated = now
	}
	if _, ok := s.cur[k]; ok {
		return Seen
	}
	if _, ok := s.prev[k]; ok {
		return Seen
	}
	if len(s.cur) >= maxReplayPerShard {
		return Full
	}
	s.cur[k] = struct{}{}
	return Fresh
}

// shard is a nonce's shard: its seeded hash.
func (c *Cache) shard(k *[replayNonceKeySize]byte) uint64 {
	return maphash.Bytes(c.seed, k[:]) % replayShards
}
