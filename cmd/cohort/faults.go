//go:build !enclave && !ego

package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/faults"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/status"
)

func cmdFaults(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("faults", stderr)
	nf := addNATSFlags(fs, stderr)
	cluster := fs.String("cluster", "", "the cluster under load")
	trustFile := fs.String("trust", "", "the issuer's root CA certificate, PEM")
	task := fs.String("task", "", "the task the cluster must run; empty accepts any")
	statusCreds := fs.String("status-creds", "", "operator credentials, to read the manager's status (full service means every unit active)")
	units := fs.Int("units", 3, "units of the cluster that full service has active")
	health := fs.String("health", "", "URLs that must answer 200 for full service, comma-separated (the NATS servers' /healthz)")
	targets := fs.String("targets", "", "what to kill, in turn, comma-separated, each NAME or NAME=BAR (its own recovery bar, e.g. nats-1=10s); NAME is put in --kill for {}")
	kill := fs.String("kill", "", "shell command that kills target {} so that its supervisor restarts it, e.g. 'kill -9 $(docker inspect -f \"{{.State.Pid}}\" $(docker compose ps -q {}))' (docker compose kill counts as a manual stop: no restart)")
	stopAll := fs.String("stop-all", "", "shell command that stops everything, for a last, planned target; empty skips it")
	startAll := fs.String("start-all", "", "shell command that starts everything again after --stop-all")
	recovery := fs.Duration("recovery", 5*time.Second, "the most a kill may take to full service")
	retries := fs.Int("retries", 0, "the client's attempts per call; default the faults package's")
	callTimeout := fs.Duration("call-timeout", 0, "how long one attempt waits; default the faults package's")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	trace := fs.Bool("trace", false, "print why each probe found service not yet full")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "cluster", "trust", "targets", "kill"); err != nil {
		return err
	}
	if (*stopAll == "") != (*startAll == "") {
		return fmt.Errorf("%w: give both --stop-all and --start-all, or neither", errUsage)
	}
	root, err := issuerclient.LoadRoot(*trustFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	user, err := nf.user("")
	if err != nil {
		return err
	}
	nc, err := nf.connect("cohort faults", access.State, true, 5*time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	ready := func(ctx context.Context, _ time.Time) error { return checkHealth(ctx, splitList(*health)) }
	if *statusCreds != "" {
		op := *nf
		op.creds, op.cred = statusCreds, nil
		onc, err := op.connect("cohort faults status", access.State, true, 5*time.Second)
		if err != nil {
			return err
		}
		defer onc.Close()
		ready = func(ctx context.Context, since time.Time) error {
			if err := checkHealth(ctx, splitList(*health)); err != nil {
				return err
			}
			v, err := status.Fetch(ctx, onc, time.Second)
			if err != nil {
				return err
			}
			return v.Serving(*cluster, *units, since)
		}
	}
	var ts []faults.Target
	for _, t := range splitList(*targets) {
		name, bar, hasBar := strings.Cut(t, "=")
		target := faults.Target{Name: name, Kill: shell(strings.ReplaceAll(*kill, "{}", name), stderr)}
		if hasBar {
			if target.Recovery, err = time.ParseDuration(bar); err != nil || target.Recovery <= 0 {
				return fmt.Errorf("%w: --targets %q: the bar is not a duration", errUsage, t)
			}
		}
		ts = append(ts, target)
	}
	if *stopAll != "" {
		ts = append(ts, faults.Target{Name: "everything", Planned: true, Kill: shell(*stopAll, stderr), Restart: shell(*startAll, stderr)})
	}
	out := stdout
	if *asJSON {
		out = stderr
	}
	rep, err := faults.Run(ctx, faults.Config{
		Conn: nc, User: user, Cluster: *cluster, Roots: roots, Task: *task, Recovery: *recovery, Ready: ready, Out: out,
		Retries: *retries, CallTimeout: *callTimeout, Trace: *trace,
	}, ts)
	if err != nil {
		return err
	}
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(rep); err != nil {
			return err
		}
	}
	if !rep.OK {
		return errors.New("the deployment did not come through every fault: see the report")
	}
	return nil
}

// shell runs command with sh -c, its output to w.
func shell(command string, w io.Writer) func(context.Context) error {
	return func(ctx context.Context) error {
		c := exec.CommandContext(ctx, "sh", "-c", command)
		c.Stdout, c.Stderr = w, w
		if err := c.Run(); err != nil {
			return fmt.Errorf("%q: %w", command, err)
		}
		return nil
	}
}

// checkHealth asks each URL, which must answer 200.
func checkHealth(ctx context.Context, urls []string) error {
	hc := &http.Client{Timeout: time.Second}
	for _, u := range urls {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("health %s: %w", u, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("health %s: %s", u, resp.Status)
		}
	}
	return nil
}
