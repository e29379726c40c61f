package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/manager"
)

// metric returns the value of the series of name whose labels include
// labels, from what reg gathers now.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return -1
}

func TestMetricsCountWhatHappened(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	nc := connect(t, srv)
	issuerReg, managerReg := prometheus.NewRegistry(), prometheus.NewRegistry()

	p := newMachine(t).platform(t)
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: nc, Platform: p, Policy: parsePolicy(t, policyYAML(t, true, time.Hour)), Metrics: issuerReg})
	if err != nil {
		t.Fatal(err)
	}
	runUntilReady(t, iss.Run, iss.Ready())
	m, err := manager.New(manager.Config{Conn: connect(t, srv), Root: iss.Root(), Interval: heartbeat, Metrics: managerReg})
	if err != nil {
		t.Fatal(err)
	}
	runUntilReady(t, m.Run, m.Ready())

	for i := range 2 {
		cfg := unitConfig(t, connect(t, srv), "demo", sim.UnitIdentity("demo"))
		cfg.Name, cfg.Cluster = fmt.Sprintf("m%d", i), "c1"
		startUnit(t, cfg)
	}
	_, _ = certifier(t, nc, sim.UnitIdentity("rogue")).Certify(context.Background(), "demo")

	eventually(t, "two members active", func() bool {
		return metric(t, managerReg, "cohort_manager_members", map[string]string{"state": "active"}) == 2
	})
	// The member is in the table (the manager's watch of the bucket may put
	// it there first) a moment before the join's handler counts it.
	eventually(t, "two joins admitted", func() bool {
		return metric(t, managerReg, "cohort_manager_joins_total", map[string]string{"outcome": "admitted"}) == 2
	})
	if got := metric(t, issuerReg, "cohort_issuer_certify_total", map[string]string{"outcome": "issued"}); got != 2 {
		t.Errorf("certificates issued: %v, want 2", got)
	}
	if got := metric(t, issuerReg, "cohort_issuer_certify_total", map[string]string{"outcome": "measurement_not_accepted"}); got != 1 {
		t.Errorf("certify refused for the measurement: %v, want 1", got)
	}
	if got := metric(t, issuerReg, "cohort_issuer_certify_seconds", nil); got != 3 {
		t.Errorf("certify latency samples: %v, want 3", got)
	}
	// All three verified, as simulated evidence, before the policy judged them.
	if got := metric(t, issuerReg, "cohort_issuer_verifications_total", map[string]string{"platform": "sim", "tcb_status": "Simulated", "result": "verified"}); got != 3 {
		t.Errorf("verifications of simulated evidence: %v, want 3", got)
	}
}
