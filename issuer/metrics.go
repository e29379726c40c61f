package issuer

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/enclave"
)

// metrics are the issuer's Prometheus metrics. A nil *metrics records
// nothing. Labels are bounded: the outcome is "issued" or one of the refusal
// codes; nothing is labelled per unit.
type metrics struct {
	certify  *prometheus.CounterVec
	latency  prometheus.Histogram
	verified *prometheus.CounterVec
	evidence *prometheus.CounterVec
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
		verified: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cohort", Subsystem: "issuer", Name: "verifications_total",
			Help: "Evidence verified in certify requests, by platform, TCB status and result (verified, invalid, collateral: missing or expired at the issuer).",
		}, []string{"platform", "tcb_status", "result"}),
		evidence: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cohort", Subsystem: "issuer", Name: "evidence_total",
			Help: "Evidence requests by outcome: answered, or the refusal code (rate_limited: beyond a requester's rate or its class's total, refused before any attestation).",
		}, []string{"outcome"}),
	}
	for _, c := range []prometheus.Collector{m.certify, m.latency, m.verified, m.evidence} {
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

// Bounded label values: what a verifier may say beyond these is "other".
var (
	platformLabels  = []string{enclave.PlatformSim, enclave.PlatformSGX, enclave.PlatformSNP, enclave.PlatformTDX}
	tcbStatusLabels = append([]string{enclave.TCBUpToDate, enclave.TCBSimulated}, knownTCBStatuses...)
)

func (m *metrics) verification(platform, tcbStatus, result string) {
	if m == nil {
		return
	}
	if !slices.Contains(platformLabels, platform) {
		platform = "other"
	}
	if !slices.Contains(tcbStatusLabels, tcbStatus) {
		tcbStatus = "other"
	}
	m.verified.WithLabelValues(platform, tcbStatus, result).Inc()
}

func (m *metrics) evidenceOutcome(outcome string) {
	if m == nil {
		return
	}
	m.evidence.WithLabelValues(outcome).Inc()
}
