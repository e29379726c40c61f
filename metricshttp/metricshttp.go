// Package metricshttp serves a role's Prometheus metrics and its health over
// HTTP: /metrics from a registry, /healthz from a check the role supplies.
// Every long-running role of cohort (issuer, manager, unit, dev) serves it
// with --metrics ADDR.
//
// Guarantees: /healthz answers 200 "ok" only while the check passes, and 503
// with the check's reason otherwise; the listener is bound before Serve
// returns, so an address in use is an error at once; the server stops when
// the context is done.
package metricshttp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures Serve.
type Config struct {
	Addr string // required: where to listen, e.g. 127.0.0.1:9101
	// Registry is what /metrics serves; default a fresh one with the Go and
	// process collectors.
	Registry *prometheus.Registry
	// Healthy is /healthz's check: nil error is healthy. Default: always
	// healthy once serving.
	Healthy func() error
	Logger  *slog.Logger
}

// NewRegistry is a registry with the Go runtime's and the process's
// collectors, as every role serves.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Serve listens on cfg.Addr and serves until ctx is done. It returns the
// registry served and the address bound.
func Serve(ctx context.Context, cfg Config) (*prometheus.Registry, net.Addr, error) {
	if cfg.Addr == "" {
		return nil, nil, errors.New("metricshttp: Config.Addr is required")
	}
	if cfg.Registry == nil {
		cfg.Registry = NewRegistry()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if cfg.Healthy != nil {
			if err := cfg.Healthy(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "unhealthy: %v\n", err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Warn("metrics server", "err", err)
		}
	}()
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	cfg.Logger.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics", "health", "http://"+ln.Addr().String()+"/healthz")
	return cfg.Registry, ln.Addr(), nil
}

// Ready is a Healthy check that passes once ready is closed.
func Ready(ready <-chan struct{}, what string) func() error {
	return func() error {
		select {
		case <-ready:
			return nil
		default:
			return fmt.Errorf("%s not ready", what)
		}
	}
}
