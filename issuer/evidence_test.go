package issuer

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/rate"
	"github.com/cohort-dev/cohort/service"
)

func stamped(info string) service.Msg {
	return service.Msg{Subject: messages.SubjectEvidence, Header: nats.Header{service.RequestInfoHeader: []string{info}}}
}

// TestEvidenceRequester: the requester is the account and key the NATS
// server stamped; a cluster's account is the units' class; a request with
// no stamp is the one requester of the issuer's own class; a stamp that
// does not decode is refused.
func TestEvidenceRequester(t *testing.T) {
	for _, c := range []struct {
		name       string
		msg        service.Msg
		key, class string
		refused    bool
	}{
		{"a unit", stamped(`{"acc":"cluster-c1","user":"UUNIT","kind":"Client"}`), "account cluster-c1 key UUNIT", classUnits, false},
		{"a user", stamped(`{"acc":"user-alice","user":"UALICE","kind":"Client"}`), "account user-alice key UALICE", classOthers, false},
		{"the operator", stamped(`{"acc":"operator","user":"UOP","kind":"Client"}`), "account operator key UOP", classOthers, false},
		{"an import that does not share", stamped(`{"acc":"user-bob"}`), "account user-bob", classOthers, false},
		{"no stamp", service.Msg{Subject: messages.SubjectEvidence}, "", classOwn, false},
		{"a stamp that does not decode", stamped(`{"acc":`), "", "", true},
	} {
		key, class, unshared, refusal := requester(c.msg)
		if key != c.key || class != c.class || (refusal != nil) != c.refused {
			t.Errorf("%s: %q %q %v, want %q %q refused %v", c.name, key, class, refusal, c.key, c.class, c.refused)
		}
		if want := c.name == "an import that does not share"; unshared != want {
			t.Errorf("%s: unshared %v, want %v", c.name, unshared, want)
		}
		if refusal != nil && refusal.Code != messages.CodeMalformed {
			t.Errorf("%s: %v, want %s", c.name, refusal, messages.CodeMalformed)
		}
	}
}

// TestEvidenceGate: each requester gets its burst, then its rate; the
// requesters of a class together get the class's total, and the other
// classes theirs; the unstamped are one requester held to the total. Time
// is the gate's own clock, set here.
func TestEvidenceGate(t *testing.T) {
	at := time.Unix(1_000_000, 0)
	g := newEvidenceGate(rate.Limit{Rate: 1, Burst: 2}, rate.Limit{Rate: 2, Burst: 5})
	g.now = func() time.Time { return at }
	take := func(key, class string, n int) (served int, reasons []string) {
		for range n {
			if r := g.take(key, class); r == nil {
				served++
			} else if r.Code != messages.CodeRateLimited {
				t.Fatalf("%s: %v, want %s", key, r, messages.CodeRateLimited)
			} else {
				reasons = append(reasons, r.Reason)
			}
		}
		return served, reasons
	}
	if served, reasons := take("alice", classOthers, 3); served != 2 || !strings.Contains(reasons[0], "alice asks for the issuer's evidence faster than 1 a second (2 at once)") {
		t.Errorf("alice: %d served, %q", served, reasons)
	}
	if served, _ := take("bob", classOthers, 2); served != 2 {
		t.Errorf("bob: %d served, want 2", served)
	}
	// Five taken by the users together: carol meets the users' total.
	if served, reasons := take("carol", classOthers, 2); served != 1 || !strings.Contains(reasons[0], "users, operators and managers at most 2 evidence requests a second together (5 at once)") {
		t.Errorf("carol: %d served, %q", served, reasons)
	}
	// The units are a class of their own, each held to its own rate.
	if served, _ := take("u1", classUnits, 3); served != 2 {
		t.Errorf("u1: %d served, want 2", served)
	}
	if served, _ := take("u2", classUnits, 1); served != 1 {
		t.Errorf("u2: %d served, want 1", served)
	}
	// The unstamped: one requester, held to the total only.
	if served, _ := take("", classOwn, 6); served != 5 {
		t.Errorf("unstamped: %d served, want the total's burst of 5", served)
	}
	// A second later: each requester has one more, within what the class
	// got back (two).
	at = at.Add(time.Second)
	if served, _ := take("alice", classOthers, 2); served != 1 {
		t.Errorf("alice a second later: %d served, want 1", served)
	}
	if served, _ := take("bob", classOthers, 1); served != 1 {
		t.Errorf("bob a second later: %d served, want 1", served)
	}
	if served, reasons := take("dave", classOthers, 1); served != 0 || !strings.Contains(reasons[0], "together") {
		t.Errorf("dave a second later: %d served, %q; want the users' total", served, reasons)
	}
}

// TestEvidenceConfig: the evidence bounds' defaults, and the limits that
// are refused.
func TestEvidenceConfig(t *testing.T) {
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Conn: &nats.Conn{}, Platform: p}
	if err := cfg.fill(); err != nil {
		t.Fatal(err)
	}
	if cfg.EvidenceWorkers != DefaultEvidenceWorkers || cfg.EvidenceRate != DefaultEvidenceRate || cfg.EvidenceTotal != DefaultEvidenceTotal {
		t.Errorf("defaults: %d %+v %+v", cfg.EvidenceWorkers, cfg.EvidenceRate, cfg.EvidenceTotal)
	}
	for name, c := range map[string]Config{
		"a rate of 0":                 {EvidenceRate: rate.Limit{Burst: 1}},
		"a negative rate":             {EvidenceTotal: rate.Limit{Rate: -1, Burst: 10}},
		"a burst below 1":             {EvidenceRate: rate.Limit{Rate: 1, Burst: 0.5}},
		"one above all":               {EvidenceRate: rate.Limit{Rate: 100, Burst: 5}},
		"one's burst above all's":     {EvidenceRate: rate.Limit{Rate: 1, Burst: 500}},
		"a total below one's default": {EvidenceTotal: rate.Limit{Rate: 0.5, Burst: 5}},
	} {
		c.Conn, c.Platform = &nats.Conn{}, p
		if err := c.fill(); err == nil || !strings.Contains(err.Error(), "Evidence") {
			t.Errorf("%s: %v, want it refused", name, err)
		}
	}
}

// BenchmarkEvidenceRefusal is what the issuer spends deciding to refuse an
// evidence request as rate_limited, before any attestation: reading the
// server's stamp, the requester's bucket, the refusal and its log's limit
// (not the sending).
func BenchmarkEvidenceRefusal(b *testing.B) {
	i := &Issuer{gate: newEvidenceGate(rate.Limit{Rate: 1e-9, Burst: 1}, DefaultEvidenceTotal), log: slog.New(slog.DiscardHandler)}
	m := stamped(`{"start":"2026-12-07T14:00:00.000000001Z","host":"127.0.0.1","id":12,"acc":"user-alice","user":"UAIJRJM7RUV7DJZ4R4QOEJKVTJX4ZKNC3H5TVDMQZOWNMJQ4HFEC7R22",` +
		`"lang":"go","ver":"1.48.0","rtt":"151µs","server":"NCXYZ","kind":"Client","client_type":"nats"}`)
	i.admitEvidence(m)
	for b.Loop() {
		if i.admitEvidence(m) == nil {
			b.Fatal("served")
		}
	}
}
