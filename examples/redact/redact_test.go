package main

import (
	"context"
	"strings"
	"testing"

	"github.com/cohort-dev/cohort/task"
)

func TestRedact(t *testing.T) {
	for _, c := range []struct {
		in, want string
		n        int
	}{
		{"write to alice@example.com today", "write to [redacted email] today", 1},
		{"card 4111 1111 1111 1111, exp 12/29", "card [redacted card], exp 12/29", 1},
		{"card 4111-1111-1111-1112 fails Luhn", "card 4111-1111-1111-1112 fails Luhn", 0},
		{"call +44 20 7946 0958 or (555) 010-4477", "call [redacted phone] or [redacted phone]", 2},
		{"order 12345 of 2026-12-02", "order 12345 of 2026-12-02", 0},
		{"nothing here", "nothing here", 0},
	} {
		got, n := Redact(c.in)
		if got != c.want || n != c.n {
			t.Errorf("Redact(%q) = %q, %d; want %q, %d", c.in, got, n, c.want, c.n)
		}
	}
}

func TestHandle(t *testing.T) {
	out, err := handle(context.Background(), task.Call{Data: []byte("mail bob@example.org")})
	if err != nil || string(out) != "mail [redacted email]" {
		t.Fatalf("handle: %q, %v", out, err)
	}
}

func FuzzRedact(f *testing.F) {
	f.Add("alice@example.com 4111 1111 1111 1111 +1 555 010 4477")
	f.Fuzz(func(t *testing.T, s string) {
		out, n := Redact(s)
		if n == 0 && out != s {
			t.Fatalf("nothing redacted, yet %q became %q", s, out)
		}
		if n > 0 && !strings.Contains(out, "["+Label+" ") {
			t.Fatalf("%d redacted, no mark in %q", n, out)
		}
	})
}
