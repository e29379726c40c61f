//go:build !enclave && !ego

package main

// This file holds the tools: commands that develop, demonstrate, measure the
// speed of, deploy and break a cohort, but are no part of a role. They build
// only without the enclave tag (and never with ego): the measured binary,
// built with -tags enclave, links none of them, nor what they import (an
// embedded NATS server, the benchmark harness, test signers). See lean.go.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/bench"
	"github.com/cohort-dev/cohort/deploy"
	"github.com/cohort-dev/cohort/dev"
	"github.com/cohort-dev/cohort/examples/mpc"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/messages"
)

// toolsUsage lists the tools, first in the usage.
const toolsUsage = `  cohort dev [--data DIR] [--task NAME=PATH]... [--units N] [--nats-port PORT] [--https-base PORT] [--metrics ADDR]
  cohort dev accept --data DIR [--task NAME=PATH]...
  cohort demo [replicas | mpc]
  cohort deploy --out DIR [--servers nats-1,nats-2,nats-3] [--policy FILE] [--exe MEASURED-BINARY] [--units ID,...] [--users NAME,...]
  cohort user add NAME (--out DEPLOYMENT-DIR | --data DEV-DATA-DIR)
  cohort faults --cluster ID --trust root.pem --targets A,B --kill 'CMD {}' [--status-creds FILE] [--health URLS]
  cohort bench certify [--duration D] [--groups N] [--json] | bench members | bench channel
`

// buildNote says which build this is.
const buildNote = `
This is the tools build. The roles' measured binary is built with -tags enclave
(go build -tags enclave ./cmd/cohort): the same roles, without the tools.
`

// childEnv is added to the environment of child processes; tests set it so
// that the test binary runs main for them.
var childEnv []string

// tools are the commands of the tools build.
func tools() map[string]command {
	return map[string]command{
		"dev": cmdDev, "demo": cmdDemo, "bench": cmdBench, "deploy": cmdDeploy,
		"user": cmdUser, "faults": cmdFaults,
	}
}

func cmdDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "accept" {
		return cmdDevAccept(ctx, args[1:], stdout, stderr)
	}
	fs := flags("dev", stderr)
	data := fs.String("data", "", "data folder (JetStream, seal secret, policy, credentials); default a fresh temporary folder, removed on exit")
	units := fs.Int("units", 3, "number of units of the demo task")
	natsPort := fs.Int("nats-port", 4222, "NATS port on 127.0.0.1")
	httpsBase := fs.Int("https-base", 8443, "HTTPS port of the first unit; the others count up from it")
	var tasks taskFlags
	fs.Var(&tasks, "task", "NAME=PATH: host your own task, the program at PATH (built with package task), in a cluster NAME of its own; repeatable")
	metricsAddr := fs.String("metrics", "", "serve every role's Prometheus metrics and /healthz on this address, e.g. 127.0.0.1:9100")
	natsContext := fs.String("nats-context", "cohort-dev", "the natscli context dev writes for the operator (nats --context NAME); empty writes none")
	lv := logLevel(fs)
	lv.Set(slog.LevelWarn)
	if err := parse(fs, args); err != nil {
		return err
	}
	dir := *data
	if dir == "" {
		tmp, err := os.MkdirTemp("", "cohort-dev-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	return dev.Run(ctx, dev.Config{
		DataDir: dir, Units: *units, NATSPort: *natsPort, HTTPSBase: *httpsBase, Tasks: tasks,
		MetricsAddr: *metricsAddr, NatsContext: *natsContext, Out: stdout, Logger: newLogger(stderr, lv),
	})
}

// taskFlags collects --task NAME=PATH, each measured as it is given.
type taskFlags []dev.Task

func (t *taskFlags) String() string { return "" }

func (t *taskFlags) Set(s string) error {
	task, err := dev.ParseTask(s)
	if err != nil {
		return err
	}
	*t = append(*t, task)
	return nil
}

func cmdDevAccept(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("dev accept", stderr)
	data := fs.String("data", "", "the data folder of the dev to update")
	var tasks taskFlags
	fs.Var(&tasks, "task", "NAME=PATH: a task to accept as built now (or to host anew); default every hosted task, measured again where it was given")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for the running dev to apply the update")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "data"); err != nil {
		return err
	}
	r, err := dev.Accept(ctx, dev.AcceptConfig{DataDir: *data, Tasks: tasks, Wait: *wait})
	if err != nil {
		return err
	}
	for _, t := range r.Changed {
		fmt.Fprintf(stdout, "task %s: measurement %s (%s) accepted\n", t.Name, t.Measurement, t.Exe)
	}
	if len(r.Changed) == 0 {
		fmt.Fprintln(stdout, "no task changed: the policy in force accepts every hosted task as built")
	}
	switch {
	case r.Running:
		fmt.Fprintf(stdout, "policy version %d in force, signed by dev's development administrator; the root is unchanged\nrestart your task's units to run the new build\n", r.Version)
	default:
		fmt.Fprintf(stdout, "no dev runs on %s: the next 'cohort dev --data %s' applies the update\n", *data, *data)
	}
	return nil
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	part := "all"
	if len(args) > 0 && (args[0] == "replicas" || args[0] == "mpc") {
		part, args = args[0], args[1:]
	}
	if err := parse(flags("demo", stderr), args); err != nil {
		return fmt.Errorf("%w (demo [replicas | mpc])", err)
	}
	if part != "mpc" {
		if err := dev.Demo(ctx, stdout); err != nil {
			return err
		}
	}
	if part == "replicas" {
		return nil
	}
	fmt.Fprintln(stdout, "\ncohort demo mpc: three clinics compute over mutual TLS with a group certificate (SIMULATED attestation)")
	if _, err := mpc.Run(ctx, mpc.Config{Out: stdout}); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "cohort demo mpc: done.")
	return nil
}

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "members" {
		return cmdBenchMembers(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "channel" {
		return cmdBenchChannel(ctx, args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "certify" {
		return fmt.Errorf("%w: bench certify [--duration D] [--groups N] [--json] | bench members [--units N] [--clusters N] [--json]", errUsage)
	}
	fs := flags("bench certify", stderr)
	d := fs.Duration("duration", 5*time.Second, "how long each phase runs")
	asJSON := fs.Bool("json", false, "print one JSON object")
	conc := fs.Int("concurrency", 0, "round trips in flight; default 8 × GOMAXPROCS")
	kem := fs.String("kem", "mlkem768x25519", "HPKE KEM for the report: mlkem768x25519 or x25519")
	groups := fs.Int("groups", 0, fmt.Sprintf("group pairs each round trip asks for besides the task's, 0 to %d", messages.MaxGroups))
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	kemID, err := kemFlag(*kem)
	if err != nil {
		return err
	}
	if *groups < 0 || *groups > messages.MaxGroups {
		return fmt.Errorf("%w: --groups %d, want 0 to %d", errUsage, *groups, messages.MaxGroups)
	}
	_, err = bench.Certify(ctx, bench.CertifyConfig{Duration: *d, Concurrency: *conc, KEM: kemID, Groups: *groups, JSON: *asJSON, Out: stdout})
	return err
}

func cmdBenchMembers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("bench members", stderr)
	units := fs.Int("units", 1000, "units that join")
	clusters := fs.Int("clusters", 100, "clusters they join, one task each")
	hb := fs.Duration("heartbeat", time.Second, "heartbeat interval")
	steady := fs.Duration("steady", 10*time.Second, "how long steady state is measured")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parse(fs, args); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// The manager runs as a child process of this very binary, so that its
	// CPU and memory are measured alone.
	mgr := exec.CommandContext(ctx, exe, "manager")
	mgr.Env = append(os.Environ(), childEnv...)
	_, err = bench.Members(ctx, bench.MembersConfig{
		Units: *units, Clusters: *clusters, Heartbeat: *hb, Steady: *steady, Manager: mgr, JSON: *asJSON, Out: stdout,
	})
	return err
}

func cmdBenchChannel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("bench channel", stderr)
	units := fs.Int("units", 5, "units of each cluster")
	clusters := fs.Int("clusters", 1, "clusters, each of --units units; the load is spread over them")
	d := fs.Duration("duration", 5*time.Second, "how long each phase runs")
	conc := fs.Int("concurrency", 0, "handshakes or calls in flight; default 8 × GOMAXPROCS")
	kem := fs.String("kem", "mlkem768x25519", "key agreement: mlkem768x25519 or x25519")
	on := fs.String("on", "nosync,single,cluster,cluster-fsync", "where to run, in turn: nosync (one embedded NATS server, fsync left to its interval), single (one, fsync on every write, as cohort dev), cluster (three servers, three replicas, fsync left to the interval) and cluster-fsync (the same, fsync on every write, as cohort deploy); each is compared with the first")
	free := fs.Bool("side-effect-free", false, "declare the task free of side effects: one durable write a call (its answer) instead of two (a claim before it runs, then the answer)")
	asJSON := fs.Bool("json", false, "print a JSON array, one object for each of --on")
	if err := parse(fs, args); err != nil {
		return err
	}
	kemID, err := kemFlag(*kem)
	if err != nil {
		return err
	}
	var results []*bench.ChannelResult
	for _, where := range splitList(*on) {
		cfg := bench.ChannelConfig{Units: *units, Clusters: *clusters, Duration: *d, Concurrency: *conc, KEM: kemID, NATS: where, SideEffectFree: *free, Out: stdout,
			Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
		if *asJSON {
			cfg.Out = io.Discard
		}
		r, err := bench.Channel(ctx, cfg)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	out := stdout
	if *asJSON {
		out = io.Discard
	}
	if err := bench.Compare(out, results); err != nil {
		return err
	}
	if *asJSON {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(results)
	}
	return nil
}

func cmdUser(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "add" {
		return fmt.Errorf("%w: user add NAME (--out DEPLOYMENT-DIR | --data DEV-DATA-DIR)", errUsage)
	}
	fs := flags("user add", stderr)
	out := fs.String("out", "", "a deployment's folder, as 'cohort deploy --out' wrote it")
	data := fs.String("data", "", "or: the data folder of a 'cohort dev'")
	if len(args) < 2 || strings.HasPrefix(args[1], "-") {
		return fmt.Errorf("%w: user add NAME: give the user's name first", errUsage)
	}
	name := args[1]
	if err := parse(fs, args[2:]); err != nil {
		return err
	}
	if (*out == "") == (*data == "") {
		return fmt.Errorf("%w: give one of --out and --data", errUsage)
	}
	if !messages.ValidUserName(name) {
		return fmt.Errorf("%w: user name %q: lower-case letters, digits and inner '-', at most 63", errUsage, name)
	}
	if *data != "" {
		path, err := dev.AddUser(*data, name)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		switch err := dev.WaitAdmitted(wctx, *data, name); {
		case errors.Is(err, dev.ErrNotRunning):
			fmt.Fprintf(stdout, "user %s: credentials %s\nno cohort dev runs on %s: the next 'cohort dev --data %s' admits the user; use --creds %s\n", name, path, *data, *data, path)
		case err != nil:
			return err
		default:
			fmt.Fprintf(stdout, "user %s: credentials %s\nadmitted by the running cohort dev; use --creds %s\n", name, path, path)
		}
		return nil
	}
	path, err := deploy.AddUser(*out, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "user %s: credentials %s\nthe servers' configurations in %s/nats/ admit the user once reloaded: send each server SIGHUP twice (deploy/reload.sh for docker-compose.yml)\n", name, path, *out)
	return nil
}

func cmdDeploy(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("deploy", stderr)
	out := fs.String("out", "", "folder to write the deployment's configuration into")
	servers := fs.String("servers", "nats-1,nats-2,nats-3", "the NATS servers' host names, comma-separated")
	policyPath := fs.String("policy", "", "the issuer's policy; default the demo policy for the build at --exe (SIMULATED attestation)")
	exe := fs.String("exe", "", "with the demo policy: the binary the deployment runs, whose measurement the policy pins (the measured build, go build -tags enclave); default this one")
	root := fs.String("root", "/etc/cohort", "where the folder is mounted in the servers' containers")
	names := fs.String("names", "localhost,127.0.0.1", "further names and addresses of the servers' certificates, for clients outside")
	sync := fs.String("sync", "always", "JetStream fsync interval: always (every write fsynced before it is acknowledged: it survives a power loss of every server) or an interval such as 2m, the server's own default (replication only: it survives the crash of fewer than a majority at once)")
	units := fs.String("units", "unit-1,unit-2,unit-3", "the ids of each cluster's units, comma-separated: one credential each")
	users := fs.String("users", "alice", "the users, comma-separated: one credential each ('cohort user add' adds more)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "out"); err != nil {
		return err
	}
	if *exe != "" && *policyPath != "" {
		return fmt.Errorf("%w: --exe measures the binary for the demo policy; a --policy of your own names its measurements itself", errUsage)
	}
	var raw []byte
	var err error
	if *policyPath != "" {
		raw, err = os.ReadFile(*policyPath)
	} else {
		// The demo policy names one administrator and recovery holder,
		// whose key the deployment folder keeps outside what the
		// containers mount.
		var admin *adminkey.Key
		if admin, err = loadOrCreateKey(filepath.Join(*out, "admin.key")); err == nil {
			raw, err = dev.DemoPolicyOf(*exe, 1, admin)
		}
	}
	if err != nil {
		return err
	}
	policy, err := issuer.ParsePolicy(raw)
	if err != nil {
		return err
	}
	if len(policy.Clusters) == 0 {
		return fmt.Errorf("%w: the policy %s declares no clusters: a deployment gives each cluster's units their credentials; add one, e.g.\nclusters:\n  - {id: demo, task: %s}",
			errUsage, *policyPath, firstTask(policy))
	}
	d := access.Deployment{Users: splitList(*users)}
	for _, c := range policy.Clusters {
		d.Clusters = append(d.Clusters, access.Cluster{ID: c.ID, Units: splitList(*units)})
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := deploy.Generate(deploy.Config{
		Dir: *out, Servers: splitList(*servers), Deployment: d, Policy: raw, Root: *root, ExtraNames: splitList(*names), Sync: *sync,
	}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "deployment written to %s: NATS server configurations (nats/), TLS CA and certificates (tls/), credentials of each identity (creds/), policy.yaml, %s\n", *out, deploy.ManifestFile)
	return nil
}

// loadOrCreateKey loads an administrator's key file, or makes one.
func loadOrCreateKey(path string) (*adminkey.Key, error) {
	k, err := adminkey.Load(path)
	if !errors.Is(err, os.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if k, err = adminkey.Generate(rand.Reader); err != nil {
		return nil, err
	}
	return k, k.Save(path)
}

// firstTask names a task of the policy, for an example line.
func firstTask(p *issuer.Policy) string {
	if len(p.Tasks) == 0 {
		return "TASK"
	}
	return p.Tasks[0].Name
}
