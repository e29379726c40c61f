package issuer

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the issuer's Prometheus metrics. A nil *metrics records
// nothing. Labels are bounded: the outcome is "issued" or one of the refusal
// codes; nothing is labelled per unit.
type metrics struct {
	certify *prometheus.CounterVec
	latency prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		certify: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cohort", Subsystem: "issuer", Name: "certify_total",
			Help: "Certify requests by outcome: issued, or the refusal code.",
		}, []string{"outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "cohort", Subsystem: "issuer", Name: "certify_seconds",
			Help:    "Time to decide a certify request, from decoding to the signed reply.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
		}),
	}
	for _, c := range []prometheus.Collector{m.certify, m.latency} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observe(outcome string, took time.Duration) {
	if m == nil {
		return
	}
	m.certify.WithLabelValues(outcome).Inc()
	m.latency.Observe(took.Seconds())
}
