package faults

import (
	"context"
	"crypto/x509"
	"testing"
	"time"
)

func TestRunRefusesAnIncompleteConfig(t *testing.T) {
	if _, err := Run(context.Background(), Config{Cluster: "dev", Roots: x509.NewCertPool()}, nil); err == nil {
		t.Error("ran without a connection")
	}
}

func TestResultOK(t *testing.T) {
	for _, tc := range []struct {
		r    Result
		want bool
	}{
		{Result{Judged: true, Bar: 5 * time.Second, Recovery: 4 * time.Second}, true},
		{Result{Judged: true, Bar: 5 * time.Second, Recovery: 6 * time.Second}, false},
		{Result{Judged: false, Bar: 5 * time.Second, Recovery: 20 * time.Second}, true}, // planned
		{Result{Judged: true, Bar: 5 * time.Second, Recovery: time.Second, Failed: 1}, false},
		{Result{Judged: false, Recovery: time.Second, Err: "never full"}, false},
	} {
		if got := tc.r.OK(); got != tc.want {
			t.Errorf("%+v: OK %v, want %v", tc.r, got, tc.want)
		}
	}
}
