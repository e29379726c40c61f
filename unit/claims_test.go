package unit

import (
	"fmt"
	"testing"
	"time"
)

// A claim is judged stale only after this unit has seen the same revision
// for the lease on its own clock; a new revision starts the watch again.
func TestStaleClaimsOnOwnClock(t *testing.T) {
	var s staleClaims
	t0 := time.Unix(1000, 0)
	if s.expired("k", 1, t0) {
		t.Fatal("stale at first sight")
	}
	if s.expired("k", 1, t0.Add(claimLease-time.Millisecond)) {
		t.Fatal("stale before the lease")
	}
	if s.expired("k", 2, t0.Add(claimLease)) { // renewed meanwhile
		t.Fatal("a renewed claim is stale")
	}
	if s.expired("k", 2, t0.Add(2*claimLease-time.Millisecond)) {
		t.Fatal("stale before the lease of the new revision")
	}
	if !s.expired("k", 2, t0.Add(2*claimLease)) {
		t.Fatal("not stale after the lease")
	}
}

func TestStaleClaimsStayBounded(t *testing.T) {
	var s staleClaims
	now := time.Unix(1000, 0)
	for i := range 3 * maxStale {
		s.expired(fmt.Sprint(i), 1, now)
	}
	if len(s.seen) > maxStale {
		t.Fatalf("%d claims watched, more than %d", len(s.seen), maxStale)
	}
}
