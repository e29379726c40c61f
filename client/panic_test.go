package client

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/cohort-dev/cohort/unit"
)

// lockedBuffer is a log sink that several goroutines write.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A task that panics on one call: that call fails with "the task failed",
// the unit answers the calls after it, and the panic is in the log (with
// its stack, without the request) and in the metrics.
func TestTaskPanicIsContained(t *testing.T) {
	const secret = "card 4111-1111-1111-1111 of alice"
	app := func(_ context.Context, c unit.Call) ([]byte, error) {
		if bytes.Contains(c.Data, []byte("4111")) {
			var table map[string]int
			//lint:ignore SA5000 the task panics on purpose
			table[string(c.Data)]++ // a nil map: the task panics, quoting nothing
		}
		if bytes.HasPrefix(c.Data, []byte("value ")) {
			panic(fmt.Sprintf("cannot parse %q", c.Data)) // a panic value that quotes the request
		}
		return append([]byte("ok: "), c.Data...), nil
	}
	var logs lockedBuffer
	reg := prometheus.NewRegistry()
	st := newStack(t, 1, app, nil, func(c *unit.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.Metrics = reg
	})
	ctx := context.Background()
	s, err := Dial(ctx, Config{Conn: st.conn(), User: "alice", Cluster: "c1", Roots: st.roots})
	if err != nil {
		t.Fatal(err)
	}
	call := func(req string) (string, error) {
		a, err := s.Call(ctx, []byte(req))
		if err != nil {
			return "", err
		}
		return string(a.Data), nil
	}
	if got, err := call("first"); err != nil || got != "ok: first" {
		t.Fatalf("first call: %q, %v", got, err)
	}
	for _, req := range []string{secret, "value forty-two"} {
		if _, err := call(req); err == nil || !strings.Contains(err.Error(), "the task failed") {
			t.Fatalf("the panicking call: %v, want \"the task failed\"", err)
		}
	}
	for i := range 5 {
		req := fmt.Sprint("after ", i)
		if got, err := call(req); err != nil || got != "ok: "+req {
			t.Fatalf("call %d after the panic: %q, %v", i, got, err)
		}
	}
	log := logs.String()
	for _, want := range []string{"the task panicked on a call", "assignment to entry in nil map", "stack=", "TestTaskPanicIsContained", "(...)", "a string (its value is not logged"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
	for _, leak := range []string{"4111", "forty-two", "cannot parse"} {
		if strings.Contains(log, leak) {
			t.Errorf("the log quotes the request (%q):\n%s", leak, log)
		}
	}
	if got := metric(t, reg, "cohort_unit_task_panics_total", ""); got != 2 {
		t.Errorf("cohort_unit_task_panics_total = %v, want 2", got)
	}
	if got := metric(t, reg, "cohort_unit_calls_total", "panicked"); got != 2 {
		t.Errorf("calls panicked = %v, want 2", got)
	}
	if got := metric(t, reg, "cohort_unit_calls_total", "answered"); got != 6 {
		t.Errorf("calls answered = %v, want 6", got)
	}
	if got := metric(t, reg, "cohort_unit_handshakes_total", "opened"); got != 1 {
		t.Errorf("handshakes opened = %v, want 1", got)
	}
	if got := metric(t, reg, "cohort_unit_sessions", ""); got != 1 {
		t.Errorf("sessions held = %v, want 1", got)
	}
}

// metric reads one series of reg: name's, with outcome label outcome (any
// when empty).
func metric(t *testing.T, reg *prometheus.Registry, name, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if outcome != "" && label(m, "outcome") != outcome {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{outcome=%q}", name, outcome)
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// A unit without HTTPS (a channel-only task) joins and answers calls.
func TestChannelOnlyUnit(t *testing.T) {
	st := newStack(t, 2, nil, nil, func(c *unit.Config) { c.HTTPSAddr = "" })
	for _, u := range st.units {
		if u.Addr() != nil {
			t.Fatalf("a unit without HTTPSAddr listens on %v", u.Addr())
		}
	}
	ctx := context.Background()
	s, err := Dial(ctx, Config{Conn: st.conn(), User: "alice", Cluster: "c1", Roots: st.roots})
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Call(ctx, []byte("hi"))
	if err != nil || !strings.Contains(string(a.Data), "heard: hi") {
		t.Fatalf("call: %v, %v", a, err)
	}
}
