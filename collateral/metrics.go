package collateral

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	ageDesc = prometheus.NewDesc("cohort_collateral_age_seconds",
		"Time since each piece of cached collateral was issued.", []string{"kind", "platform", "id"}, nil)
	expiresDesc = prometheus.NewDesc("cohort_collateral_expires_in_seconds",
		"Time until each piece of cached collateral expires; negative once it has, and verification with it fails closed.", []string{"kind", "platform", "id"}, nil)
	unreadableDesc = prometheus.NewDesc("cohort_collateral_unreadable_files",
		"Files in the collateral cache that do not parse or are misplaced.", nil, nil)
)

// collector reports the cache's collateral at each scrape.
type collector struct {
	d   *Dir
	now func() time.Time
}

// Collector is a Prometheus collector of the age and the time to expiry of
// each entry of the cache, read at each scrape; now is the clock (nil:
// time.Now). The labels are bounded by what an operator imports.
func (d *Dir) Collector(now func() time.Time) prometheus.Collector {
	if now == nil {
		now = time.Now
	}
	return collector{d: d, now: now}
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ageDesc
	ch <- expiresDesc
	ch <- unreadableDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	entries, errs := c.d.List()
	for _, e := range entries {
		ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, now.Sub(e.Issued).Seconds(), e.Kind, e.Platform, e.ID)
		ch <- prometheus.MustNewConstMetric(expiresDesc, prometheus.GaugeValue, e.Expires.Sub(now).Seconds(), e.Kind, e.Platform, e.ID)
	}
	ch <- prometheus.MustNewConstMetric(unreadableDesc, prometheus.GaugeValue, float64(len(errs)))
}
