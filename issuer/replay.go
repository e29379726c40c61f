package issuer

import (
	"sync"
	"time"
)

const (
	replayShards       = 64
	maxReplayPerShard  = 1 << 15 // 2M nonces in all, about 100 MB at the most
	replayNonceKeySize = 32
)

// replayCache remembers the nonces of accepted certify requests for at least
// window, so that a request replayed while its timestamp is still acceptable
// is refused. It is sharded by nonce so that concurrent requests rarely share
// a lock, and bounded: a full shard refuses new nonces rather than grow.
type replayCache struct {
	window time.Duration
	shards [replayShards]replayShard
}

type replayShard struct {
	mu        sync.Mutex
	cur, prev map[[replayNonceKeySize]byte]struct{}
	rotated   time.Time
}

func newReplayCache(window time.Duration, now time.Time) *replayCache {
	c := &replayCache{window: window}
	for i := range c.shards {
		c.shards[i].cur = make(map[[replayNonceKeySize]byte]struct{})
		c.shards[i].prev = make(map[[replayNonceKeySize]byte]struct{})
		c.shards[i].rotated = now
	}
	return c
}

type replayVerdict int

const (
	replayFresh replayVerdict = iota
	replaySeen
	replayFull
)

// check records nonce at now and says whether it was fresh. An entry lives
// between one and two windows: shards rotate their maps once per window.
func (c *replayCache) check(nonce []byte, now time.Time) replayVerdict {
	var k [replayNonceKeySize]byte
	copy(k[:], nonce)
	s := &c.shards[k[0]%replayShards]
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
		return replaySeen
	}
	if _, ok := s.prev[k]; ok {
		return replaySeen
	}
	if len(s.cur) >= maxReplayPerShard {
		return replayFull
	}
	s.cur[k] = struct{}{}
	return replayFresh
}
