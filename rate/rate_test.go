package rate

import (
	"fmt"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func TestBurstThenRate(t *testing.T) {
	b := New(Limit{Rate: 2, Burst: 3}, 16)
	for i := range 3 {
		if ok, _ := b.Take("alice", 1, t0); !ok {
			t.Fatalf("take %d of the burst refused", i+1)
		}
	}
	for range 2 {
		if ok, _ := b.Take("alice", 1, t0); ok {
			t.Fatal("a take beyond the burst")
		}
	}
	if ok, _ := b.Take("bob", 1, t0); !ok {
		t.Fatal("bob's bucket is alice's")
	}
	ok, held := b.Take("alice", 1, t0.Add(500*time.Millisecond)) // one token a half second
	if !ok || held != 2 {
		t.Fatalf("after half a second: %v, %d held, want a take and the 2 refused", ok, held)
	}
	if ok, _ := b.Take("alice", 1, t0.Add(time.Hour)); !ok {
		t.Fatal("a full bucket refused")
	}
	if ok, _ := b.Take("alice", 5, t0.Add(2*time.Hour)); ok {
		t.Fatal("more than the bucket holds taken at once")
	}
}

func TestChargeGoesIntoDebt(t *testing.T) {
	b := New(Limit{Rate: 10, Burst: 10}, 16)
	b.Charge("alice", 15, t0)
	if ok, _ := b.Take("alice", 1, t0.Add(500*time.Millisecond)); ok {
		t.Fatal("taken while in debt")
	}
	if ok, _ := b.Take("alice", 1, t0.Add(700*time.Millisecond)); !ok {
		t.Fatal("refused after the debt was paid")
	}
}

func TestKeysAreBounded(t *testing.T) {
	b := New(Limit{Rate: 1, Burst: 1}, 8)
	for i := range 100 {
		b.Take(fmt.Sprint(i), 1, t0)
	}
	if n := b.Len(); n > 8 {
		t.Fatalf("%d keys held, at most 8", n)
	}
	b.Take("x", 1, t0)
	for i := range 7 {
		b.Take(fmt.Sprint("y", i), 1, t0.Add(time.Hour)) // full again by then: forgotten first
	}
	if n := b.Len(); n > 8 {
		t.Fatalf("%d keys held, at most 8", n)
	}
}
