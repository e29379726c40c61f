// Package rate holds token buckets, one a key, in bounded memory: how often
// each user may open sessions or make calls on a unit, how often each source
// of refusals may fill the audit stream.
//
// Guarantees: a key takes at most Burst at once and Rate a second after;
// time is passed in, never read; memory is bounded by the keys allowed
// (MaxKeys): beyond, the keys whose buckets are full again are forgotten
// (forgetting a full bucket changes nothing), and if none is, every key is,
// which errs on the side of letting a request through rather than refusing
// everyone.
package rate

import (
	"sync"
	"time"
)

// Limit is a rate and a burst.
type Limit struct {
	Rate  float64 // tokens a second
	Burst float64 // tokens at once, and the bucket's size
}

// Buckets is a token bucket for each key. It is safe for concurrent use.
type Buckets struct {
	limit   Limit
	maxKeys int
	mu      sync.Mutex
	m       map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
	held   int64 // refused since the last take that succeeded
}

// New returns buckets of limit, for at most maxKeys keys at once.
func New(limit Limit, maxKeys int) *Buckets {
	return &Buckets{limit: limit, maxKeys: max(maxKeys, 1), m: map[string]*bucket{}}
}

// Limit is the buckets' limit.
func (b *Buckets) Limit() Limit { return b.limit }

// Take takes n tokens of key's bucket at now if it holds them. It reports
// whether it did, and, when it did, how many takes were refused since the
// last that succeeded.
func (b *Buckets) Take(key string, n float64, now time.Time) (ok bool, held int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.get(key, now)
	if k.tokens < n {
		k.held++
		return false, 0
	}
	k.tokens -= n
	held, k.held = k.held, 0
	return true, held
}

// Charge takes n tokens of key's bucket at now even if it holds fewer: the
// debt is paid before the next Take succeeds. For costs known only after
// the fact (the size of an answer).
func (b *Buckets) Charge(key string, n float64, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.get(key, now)
	k.tokens = max(k.tokens-n, -b.limit.Burst)
}

// Len is the number of keys held.
func (b *Buckets) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}

// get returns key's bucket, refilled to now. Called with b.mu held.
func (b *Buckets) get(key string, now time.Time) *bucket {
	k, ok := b.m[key]
	if !ok {
		if len(b.m) >= b.maxKeys {
			b.prune(now)
		}
		k = &bucket{tokens: b.limit.Burst, at: now}
		b.m[key] = k
		return k
	}
	if d := now.Sub(k.at); d > 0 {
		k.tokens = min(b.limit.Burst, k.tokens+d.Seconds()*b.limit.Rate)
		k.at = now
	}
	return k
}

func (b *Buckets) prune(now time.Time) {
	for key, k := range b.m {
		if k.held == 0 && k.tokens+now.Sub(k.at).Seconds()*b.limit.Rate >= b.limit.Burst {
			delete(b.m, key)
		}
	}
	if len(b.m) >= b.maxKeys {
		clear(b.m)
	}
}
