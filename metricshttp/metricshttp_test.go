package metricshttp

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	reg, addr, err := Serve(ctx, Config{Addr: "127.0.0.1:0", Healthy: Ready(ready, "the unit")})
	if err != nil {
		t.Fatal(err)
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "cohort_test_total", Help: "a test"})
	reg.MustRegister(c)
	c.Inc()
	base := "http://" + addr.String()
	if code, body := get(t, base+"/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "the unit not ready") {
		t.Fatalf("healthz before ready: %d %q", code, body)
	}
	close(ready)
	if code, body := get(t, base+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("healthz when ready: %d %q", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != http.StatusOK || !strings.Contains(body, "cohort_test_total 1") || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("metrics: %d %q", code, body)
	}
	// The address is taken: the second server fails at once.
	if _, _, err := Serve(ctx, Config{Addr: addr.String()}); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("a second server on %s: %v", addr, err)
	}
}
