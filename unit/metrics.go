package unit

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a unit's Prometheus metrics. Every series carries the unit's
// id and cluster as constant labels, so that the units of one process (dev
// runs several) share a registry; other labels are bounded outcomes. A nil
// *metrics records nothing.
type metrics struct {
	handshakes *prometheus.CounterVec
	calls      *prometheus.CounterVec
	conflicts  prometheus.Counter
	panics     prometheus.Counter
	callTime   prometheus.Histogram
	taskTime   prometheus.Histogram
}

// Call outcomes, the label values of cohort_unit_calls_total.
const (
	outcomeAnswered = "answered" // the task answered
	outcomeRefused  = "refused"  // refused before the task ran: unknown session, replay, quota…
	outcomeFailed   = "failed"   // the task returned an error
	outcomePanicked = "panicked" // the task panicked
	outcomeResent   = "resent"   // run before: the stored answer was sent again
)

func newMetrics(reg prometheus.Registerer, u *Unit) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	labels := prometheus.Labels{"unit": u.cfg.ID, "cluster": u.cfg.Cluster}
	buckets := prometheus.ExponentialBuckets(0.0001, 2, 16)
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cohort", Subsystem: "unit", Name: "handshakes_total", ConstLabels: labels,
			Help: "Handshakes by outcome: opened, or refused (with the reason in the reply).",
		}, []string{"outcome"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cohort", Subsystem: "unit", Name: "calls_total", ConstLabels: labels,
			Help: "Calls and closes by outcome: answered, refused (before the task ran), failed (the task's error), panicked, resent (a stored answer).",
		}, []string{"outcome"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "cohort", Subsystem: "unit", Name: "claim_conflicts_total", ConstLabels: labels,
			Help: "Calls found claimed already when this unit tried to claim them (retries, or another unit's run).",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "cohort", Subsystem: "unit", Name: "task_panics_total", ConstLabels: labels,
			Help: "Panics of the task's code, each contained to its call.",
		}),
		callTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "cohort", Subsystem: "unit", Name: "call_seconds", ConstLabels: labels, Buckets: buckets,
			Help: "Time to serve a call, from its arrival to the answer stored with its claim.",
		}),
		taskTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "cohort", Subsystem: "unit", Name: "task_seconds", ConstLabels: labels, Buckets: buckets,
			Help: "Time the task's code took over a call.",
		}),
	}
	held := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "cohort", Subsystem: "unit", Name: "sessions", ConstLabels: labels,
		Help: "Sessions of the cluster this unit holds, open or closed, until they expire.",
	}, func() float64 { return float64(u.sessions.len()) })
	for _, c := range []prometheus.Collector{m.handshakes, m.calls, m.conflicts, m.panics, m.callTime, m.taskTime, held} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Every outcome exists from the start, at zero.
	for _, o := range []string{"opened", "refused"} {
		m.handshakes.WithLabelValues(o)
	}
	for _, o := range []string{outcomeAnswered, outcomeRefused, outcomeFailed, outcomePanicked, outcomeResent} {
		m.calls.WithLabelValues(o)
	}
	return m, nil
}

func (m *metrics) handshake(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.handshakes.WithLabelValues("opened").Inc()
	} else {
		m.handshakes.WithLabelValues("refused").Inc()
	}
}

func (m *metrics) call(outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.calls.WithLabelValues(outcome).Inc()
	if outcome != outcomeRefused {
		m.callTime.Observe(took.Seconds())
	}
}

func (m *metrics) task(took time.Duration) {
	if m != nil {
		m.taskTime.Observe(took.Seconds())
	}
}

func (m *metrics) conflict() {
	if m != nil {
		m.conflicts.Inc()
	}
}

func (m *metrics) panicked() {
	if m != nil {
		m.panics.Inc()
	}
}
