package faults

import (
	"context"
	"crypto/x509"
	"errors"
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

// A planned target whose kill fails ends the run with the error; the load
// it paused is not left waiting (the run returns at all).
func TestApplyLiftsThePauseOnFailure(t *testing.T) {
	l := &load{cfg: &Config{Now: time.Now}}
	_, err := apply(context.Background(), l, Target{Name: "x", Planned: true, Kill: func(context.Context) error { return errors.New("no") }})
	if err == nil {
		t.Fatal("a failed kill was taken")
	}
	if !l.gate.TryLock() {
		t.Fatal("the load is still paused")
	}
}
