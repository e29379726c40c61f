package manager

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// register registers the manager's Prometheus metrics, read from its
// counters and its table when scraped. Labels are bounded: outcomes and
// states; nothing is labelled per unit.
func (m *Manager) register(reg prometheus.Registerer) error {
	counter := func(name, help string, labels prometheus.Labels, v func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "cohort", Subsystem: "manager", Name: name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v()) })
	}
	s := &m.stats
	cs := []prometheus.Collector{
		counter("joins_total", "Joins by outcome.", prometheus.Labels{"outcome": "admitted"}, s.Joins.Load),
		counter("joins_total", "Joins by outcome.", prometheus.Labels{"outcome": "refused"}, s.JoinsRefused.Load),
		counter("heartbeats_total", "Heartbeats by outcome.", prometheus.Labels{"outcome": "known"},
			func() int64 { return s.Heartbeats.Load() - s.HeartbeatsUnknown.Load() }),
		counter("heartbeats_total", "Heartbeats by outcome.", prometheus.Labels{"outcome": "unknown"}, s.HeartbeatsUnknown.Load),
		counter("leaves_total", "Units that left politely.", nil, s.Leaves.Load),
		counter("evictions_total", "Units evicted by this manager for missed heartbeats.", nil, s.Evictions.Load),
		m.joinLatency,
	}
	for _, state := range []State{Active, Late, Due} {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "cohort", Subsystem: "manager", Name: "members",
			Help: "Members by state.", ConstLabels: prometheus.Labels{"state": string(state)},
		}, func() float64 { return float64(m.table.Counts(m.cfg.Now())[state]) }))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func newJoinLatency() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "cohort", Subsystem: "manager", Name: "join_seconds",
		Help:    "Time to decide a join, from decoding to the stored member.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
	})
}

func (m *Manager) observeJoin(took time.Duration) { m.joinLatency.Observe(took.Seconds()) }
