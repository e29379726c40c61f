// Command cohort runs cohort's roles and tools. Built with -tags enclave
// (or ego) it is the measured binary: the issuer, a unit, the manager and the
// commands beside them (trust, measure, policy, recover, status, events, call,
// evidence, collateral), nothing else. Built without the tag it adds the
// tools of tools.go: the embedded development stack (dev), a walkthrough
// (demo), deployment files (deploy, user), fault injection (faults) and the
// benchmarks. Each subcommand maps its flags to a package's Config and runs
// it; the logic lives in the packages.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/collateral"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/metricshttp"
	"github.com/cohort-dev/cohort/status"
	"github.com/cohort-dev/cohort/unit"
)

// usage lists the commands of this build: the roles and the commands
// around them, then, in a build with them, the tools (toolsUsage).
var usage = `cohort: enclave replicas that behave as one trusted service, over NATS.

Usage:
` + toolsUsage + `  cohort measure issuer | cohort measure unit --task NAME [--exe PATH]
  cohort trust --nats URL --issuer-measurement HEX --out FILE | cohort trust --update --out FILE
  cohort issuer --nats URL --data DIR [--policy GENESIS-FILE] [--recover] [--ungoverned]
  cohort policy keygen --out FILE | pubkey --key FILE | sign --key FILE --policy FILE | apply --policy FILE SIG... | show [--document]
  cohort recover --nats URL --creds FILE --key FILE... --root root.pem --issuer-measurement HEX
  cohort evidence inspect [--collateral DIR] [--at TIME] [--json] FILE
  cohort collateral import --dir DIR FILE... | list --dir DIR [--at TIME]
  cohort unit --nats URL --creds FILE --task NAME --https ADDR --issuer-measurement HEX [--groups ID,...]
  cohort manager --nats URL (--issuer-measurement HEX | --root FILE)
  cohort status --nats URL [--json]
  cohort events --nats URL [--follow] [--since DURATION] [--json]
  cohort call --nats URL --creds FILE --cluster ID --trust root.pem [--task NAME] DATA...

Every command that connects takes --nats URLS, --creds FILE and --tls-ca FILE,
or the environment variables COHORT_NATS, COHORT_CREDS and COHORT_TLS_CA.
Run 'cohort COMMAND -h' for a command's flags.
` + buildNote

// command runs one subcommand: its arguments after the name, and where to
// write.
type command func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// errUsage marks an error in how the command was called (exit code 2).
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	commands := map[string]command{
		"measure": cmdMeasure, "trust": cmdTrust, "issuer": cmdIssuer, "unit": cmdUnit,
		"manager": cmdManager, "status": cmdStatus, "events": cmdEvents, "call": cmdCall,
		"policy": cmdPolicy, "recover": cmdRecover, "collateral": cmdCollateral, "evidence": cmdEvidence,
	}
	for name, cmd := range tools() {
		commands[name] = cmd
	}
	if args[0] == "help" && len(args) > 1 {
		// cohort help COMMAND [SUBCOMMAND]: that command's flags.
		args = append(slices.Clone(args[1:]), "-h")
	}
	cmd, ok := commands[args[0]]
	if !ok {
		if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "cohort: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	err := cmd(ctx, args[1:], stdout, stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "cohort %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "cohort %s: %v\n", args[0], err)
		return 1
	}
}

func flags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("cohort "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args and refuses stray arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := flagAfterArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	return nil
}

// flagAfterArgs reports a flag of fs given after the first argument, which
// the flag package takes for an argument, unless "--" ended the flags.
func flagAfterArgs(fs *flag.FlagSet, args []string) error {
	rest := fs.Args()
	if slices.Contains(args[:len(args)-len(rest)], "--") {
		return nil
	}
	for _, a := range rest[min(1, len(rest)):] {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && fs.Lookup(name) != nil {
			return fmt.Errorf("%w: flag %s comes after the argument %q: give flags before arguments (or -- before an argument that starts with '-')", errUsage, a, rest[0])
		}
	}
	return nil
}

func logLevel(fs *flag.FlagSet) *slog.LevelVar {
	var lv slog.LevelVar
	fs.TextVar(&lv, "log-level", &lv, "log level: debug, info, warn, error")
	return &lv
}

func newLogger(w io.Writer, lv *slog.LevelVar) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv}))
}

func required(fs *flag.FlagSet, names ...string) error {
	for _, n := range names {
		if fs.Lookup(n).Value.String() == "" {
			return fmt.Errorf("%w: --%s is required", errUsage, n)
		}
	}
	return nil
}

func cmdMeasure(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: measure issuer | measure unit --task NAME [--exe PATH]", errUsage)
	}
	var identity, exe string
	switch args[0] {
	case "issuer":
		fs := flags("measure issuer", stderr)
		fs.StringVar(&exe, "exe", "", "the executable to measure; default this one")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		identity = sim.IssuerIdentity
	case "unit":
		fs := flags("measure unit", stderr)
		task := fs.String("task", "", "the task the unit runs")
		fs.StringVar(&exe, "exe", "", "the executable to measure (your task's program); default this one")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if !messages.ValidTaskName(*task) {
			return fmt.Errorf("%w: --task %q is not a valid task name", errUsage, *task)
		}
		identity = sim.UnitIdentity(*task)
	default:
		return fmt.Errorf("%w: measure issuer | measure unit --task NAME [--exe PATH]", errUsage)
	}
	var m []byte
	var err error
	if exe != "" {
		m, err = sim.MeasureFile(exe, identity)
	} else {
		m, err = sim.Measure(identity)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, hex.EncodeToString(m))
	return nil
}

func cmdTrust(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("trust", stderr)
	nf := addNATSFlags(fs, stderr)
	pin := fs.String("issuer-measurement", os.Getenv("COHORT_ISSUER_MEASUREMENT"), "the issuer measurement to pin, hex (env COHORT_ISSUER_MEASUREMENT)")
	out := fs.String("out", "", "where to write the root CA certificate, PEM")
	allowSim := fs.Bool("allow-simulated", true, "accept an issuer on simulated attestation (this build verifies no other kind)")
	policyHash := fs.String("policy-hash", "", "optional: the SHA-256 of the policy the issuer must serve, hex")
	update := fs.Bool("update", false, "move the root in --out to the issuer's current one, which it must vouch for (after a rotation); no --issuer-measurement needed")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the issuer (its replicas answer under neither root for a moment while they rotate it)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "out"); err != nil {
		return err
	}
	var held *x509.Certificate
	var m []byte
	var err error
	if *update {
		if held, err = issuerclient.LoadRoot(*out); err != nil {
			return fmt.Errorf("%w: --update moves the root held in --out: %v", errUsage, err)
		}
		if *pin != "" {
			if m, err = measurement(*pin); err != nil {
				return err
			}
		}
	} else {
		if err := required(fs, "issuer-measurement"); err != nil {
			return err
		}
		if m, err = measurement(*pin); err != nil {
			return err
		}
	}
	ph, err := optionalHash("policy-hash", *policyHash)
	if err != nil {
		return err
	}
	if err := nf.mayPublish("trust", messages.SubjectEvidence); err != nil {
		return err
	}
	nc, err := nf.connect("cohort trust", access.State, false, *timeout)
	if err != nil {
		return err
	}
	defer nc.Close()
	trust, err := issuerclient.VerifyIssuer(ctx, issuerclient.Config{
		Conn: nc, Verifier: clientVerifier(), IssuerMeasurement: m, AllowSimulated: *allowSim, PolicyHash: ph, Timeout: *timeout, Root: held,
	})
	if err != nil {
		return err
	}
	if *update {
		if trust.Previous == nil {
			fmt.Fprintf(stdout, "the issuer serves the root held in %s (sha256 %x): nothing to update\n", *out, sha256.Sum256(held.Raw))
			return nil
		}
		fmt.Fprintf(stdout, "the root was rotated: %q (sha256 %x) vouches for %q (sha256 %x)\n",
			held.Subject.CommonName, sha256.Sum256(held.Raw), trust.Root.Subject.CommonName, sha256.Sum256(trust.Root.Raw))
	}
	if trust.Simulated {
		fmt.Fprintln(stderr, "WARNING: the issuer's evidence is SIMULATED. Anyone can forge simulated evidence: this root is fit for development only.")
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: trust.Root.Raw})
	if err := os.WriteFile(*out, pemBytes, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "issuer verified: measurement %x, backend %s, policy version %d sha256 %x\nroot CA %q written to %s\n",
		trust.Measurement, trust.Backend, trust.PolicyVersion, trust.PolicyHash, trust.Root.Subject.CommonName, *out)
	return nil
}

func cmdIssuer(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flags("issuer", stderr)
	nf := addNATSFlags(fs, stderr)
	policyPath := fs.String("policy", "", "the genesis policy, YAML: required for a new state; afterwards the state keeps the policy in force, changed only by 'cohort policy apply'")
	data := fs.String("data", "", "data folder: this machine's sealed key cache (and, simulated, its CPU's seal secret)")
	backend := fs.String("backend", "sim", "enclave backend: "+backends)
	collateralDir := fs.String("collateral", os.Getenv("COHORT_COLLATERAL"), "the collateral cache (VCEK/VLEK certificates, Intel PCS collateral) for verifying units on hardware; see 'cohort collateral' (env COHORT_COLLATERAL)")
	replicas := fs.Int("replicas", 1, "JetStream replicas of the issuer's state")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on this address, e.g. 127.0.0.1:9101")
	initState := fs.Bool("init", false, "make a new state key and a NEW ROOT even where a state exists: every user must trust again")
	ungoverned := fs.Bool("ungoverned", false, "accept a genesis policy without administrators: or recovery: (then the policy never changes, and losing every issuer machine loses the root)")
	awaitRecovery := fs.Bool("recover", false, "when no key cache opens and no running issuer gives the state key, wait for 'cohort recover'")
	instance := fs.String("instance", "", "this issuer's instance name (lower-case letters and digits); default random")
	lv := logLevel(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "data"); err != nil {
		return err
	}
	var policy *issuer.Policy
	if *policyPath != "" {
		raw, err := os.ReadFile(*policyPath)
		if err != nil {
			return err
		}
		if policy, err = issuer.ParsePolicy(raw); err != nil {
			return err
		}
	}
	// Simulated units are verified, and accepted only where the policy
	// says so.
	v, err := verifier(*collateralDir)
	if err != nil {
		return err
	}
	platform, err := issuerPlatform(ctx, *backend, *data, v)
	if err != nil {
		return err
	}
	nc, serve, err := nf.connectService(ctx, "cohort issuer", access.Issuer)
	if err != nil {
		return err
	}
	defer nc.Close()
	defer serve.Close()
	log := newLogger(stderr, lv)
	reg, health, err := serveMetrics(ctx, *metricsAddr, log)
	if err != nil {
		return err
	}
	if reg != nil && *collateralDir != "" {
		d, err := collateral.Open(*collateralDir)
		if err != nil {
			return err
		}
		if err := reg.Register(d.Collector(nil)); err != nil {
			return err
		}
	}
	iss, err := issuer.New(issuer.Config{Conn: nc, Serve: serve, Platform: platform, Verifier: v, Policy: policy, Replicas: *replicas, Metrics: reg, Logger: log,
		Init: *initState, Ungoverned: *ungoverned, AwaitRecovery: *awaitRecovery, Instance: *instance, KeyCache: issuer.FileKeyCache(filepath.Join(*data, issuer.KeyCacheFile))})
	if err != nil {
		return err
	}
	health.set(iss.Ready(), "the issuer")
	return iss.Run(ctx)
}

func cmdUnit(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flags("unit", stderr)
	nf := addNATSFlags(fs, stderr)
	task := fs.String("task", "", "the task this unit runs")
	https := fs.String("https", "", "HTTPS listen address, e.g. 127.0.0.1:8443")
	pin := fs.String("issuer-measurement", os.Getenv("COHORT_ISSUER_MEASUREMENT"), "the issuer measurement to pin, hex (env COHORT_ISSUER_MEASUREMENT)")
	name := fs.String("name", "", "this replica's name; default the HTTPS address")
	cluster := fs.String("cluster", "", "the cluster to join at the manager; default the credential's, empty without one: join none")
	groups := fs.String("groups", "", "comma-separated groups of the task whose pairs to obtain with the task's")
	id := fs.String("id", "", "this unit's id in its cluster; default the credential's, or derived from --name")
	replicas := fs.Int("replicas", 1, "JetStream replicas of the cluster's streams, if this unit makes them")
	sessionsMax, callsMax := byteSize(unit.DefaultSessionsMaxBytes), byteSize(unit.DefaultCallsMaxBytes)
	fs.Var(&sessionsMax, "sessions-max-bytes", "the bound of the cluster's session records, if this unit makes their stream; JetStream reserves it (e.g. 256MiB)")
	fs.Var(&callsMax, "calls-max-bytes", "the bound of the cluster's call claims, if this unit makes their stream; JetStream reserves it (e.g. 2GiB)")
	sideEffectFree := fs.Bool("side-effect-free", false, "the task's calls change nothing but their answers: a call whose unit died may run again elsewhere")
	backend := fs.String("backend", "sim", "enclave backend: "+backends)
	allowSim := fs.Bool("allow-simulated-issuer", true, "accept an issuer on simulated attestation")
	policyHash := fs.String("policy-hash", "", "optional: the SHA-256 of the policy the issuer must serve, hex")
	lv := logLevel(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "task", "https", "issuer-measurement"); err != nil {
		return err
	}
	m, err := measurement(*pin)
	if err != nil {
		return err
	}
	ph, err := optionalHash("policy-hash", *policyHash)
	if err != nil {
		return err
	}
	v, err := verifier(os.Getenv("COHORT_COLLATERAL"))
	if err != nil {
		return err
	}
	platform, err := unitPlatform(ctx, *backend, *task, v)
	if err != nil {
		return err
	}
	cred, err := nf.credential(access.Unit)
	if err != nil {
		return err
	}
	if cred != nil {
		// A unit's credential names its cluster and id: the NATS server lets
		// it speak for no other.
		g := cred.Grant
		if (*cluster != "" && *cluster != g.Cluster) || (*id != "" && *id != g.Name) {
			return fmt.Errorf("%w: --cluster %q --id %q, but --creds is unit %s of cluster %s", errUsage, *cluster, *id, g.Name, g.Cluster)
		}
		*cluster, *id = g.Cluster, g.Name
	}
	nc, serve, err := nf.connectService(ctx, "cohort unit "+*task, access.Unit)
	if err != nil {
		return err
	}
	defer nc.Close()
	defer serve.Close()
	u, err := unit.New(unit.Config{
		Conn: nc, Serve: serve, Platform: platform, Task: *task, IssuerMeasurement: m, AllowSimulatedIssuer: *allowSim, PolicyHash: ph,
		HTTPSAddr: *https, Name: *name, Cluster: *cluster, Groups: splitList(*groups), ID: *id, Replicas: *replicas,
		SessionsMaxBytes: int64(sessionsMax), CallsMaxBytes: int64(callsMax), SideEffectFree: *sideEffectFree, Logger: newLogger(stderr, lv),
	})
	if err != nil {
		return err
	}
	return u.Run(ctx)
}

// splitList splits a comma-separated flag; empty gives nil.
func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// optionalHash decodes an optional 32-byte hex flag; empty gives nil.
func optionalHash(name, s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	h, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(h) != 32 {
		return nil, fmt.Errorf("%w: --%s must be 32 bytes of hex", errUsage, name)
	}
	return h, nil
}

func measurement(s string) ([]byte, error) {
	m, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || !enclave.ValidMeasurement(m) {
		return nil, fmt.Errorf("%w: --issuer-measurement must be 32 or 48 bytes of hex (see 'cohort measure issuer', or 'cohort evidence inspect' for an SEV-SNP or TDX guest)", errUsage)
	}
	return m, nil
}

func cmdManager(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flags("manager", stderr)
	nf := addNATSFlags(fs, stderr)
	pin := fs.String("issuer-measurement", os.Getenv("COHORT_ISSUER_MEASUREMENT"), "verify the issuer against this measurement and take its root (env COHORT_ISSUER_MEASUREMENT)")
	rootFile := fs.String("root", "", "or: the issuer's root CA certificate, PEM (as 'cohort trust' writes it)")
	interval := fs.Duration("heartbeat", time.Second, "heartbeat interval units are told to keep")
	misses := fs.Int("misses", 3, "heartbeats missed in a row before a unit is evicted")
	replicas := fs.Int("replicas", 1, "JetStream replicas of the members bucket and the event stream")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on this address, e.g. 127.0.0.1:9102")
	lv := logLevel(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*pin == "") == (*rootFile == "") {
		return fmt.Errorf("%w: give one of --issuer-measurement and --root", errUsage)
	}
	if *misses < 1 || *misses > manager.MaxMisses {
		return fmt.Errorf("%w: --misses %d: want 1 to %d heartbeats", errUsage, *misses, manager.MaxMisses)
	}
	if *interval <= 0 {
		return fmt.Errorf("%w: --heartbeat %v: want a positive interval", errUsage, *interval)
	}
	nc, serve, err := nf.connectService(ctx, "cohort manager", access.Manager)
	if err != nil {
		return err
	}
	defer nc.Close()
	defer serve.Close()
	var root *x509.Certificate
	// The manager follows the issuer's root: a rotation it vouches for.
	follow := issuerclient.Config{Conn: nc, Verifier: clientVerifier(), AllowSimulated: true}
	if *rootFile != "" {
		if root, err = issuerclient.LoadRoot(*rootFile); err != nil {
			return err
		}
	} else {
		m, err := measurement(*pin)
		if err != nil {
			return err
		}
		follow.IssuerMeasurement = m
		if root, err = awaitIssuer(ctx, follow, newLogger(stderr, lv)); err != nil {
			return err
		}
	}
	log := newLogger(stderr, lv)
	reg, health, err := serveMetrics(ctx, *metricsAddr, log)
	if err != nil {
		return err
	}
	mgr, err := manager.New(manager.Config{
		Conn: nc, Serve: serve, Root: root, Roots: issuerclient.Follower{Config: follow}, Interval: *interval, Misses: *misses, Replicas: *replicas, Metrics: reg, Logger: log,
	})
	if err != nil {
		return err
	}
	health.set(mgr.Ready(), "the manager")
	return mgr.Run(ctx)
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("status", stderr)
	nf := addNATSFlags(fs, stderr)
	asJSON := fs.Bool("json", false, "print one JSON object")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the issuer and the manager")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := nf.mayPublish("status", messages.SubjectStatus); err != nil {
		return err
	}
	nc, err := nf.connect("cohort status", access.State, false, *timeout)
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := status.Fetch(ctx, nc, *timeout)
	if err != nil {
		return err
	}
	if *asJSON {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		if err := e.Encode(st); err != nil {
			return err
		}
	} else {
		st.Print(stdout)
	}
	switch {
	case st.Manager == nil:
		return fmt.Errorf("the manager did not answer within %v: is one running on %s?", *timeout, *nf.url)
	case st.Issuer == nil:
		return fmt.Errorf("the issuer did not answer within %v: is one running on %s?", *timeout, *nf.url)
	}
	return nil
}

func cmdEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("events", stderr)
	nf := addNATSFlags(fs, stderr)
	follow := fs.Bool("follow", false, "keep printing new events until interrupted")
	fs.BoolVar(follow, "f", false, "short for --follow")
	since := fs.Duration("since", 0, "only events newer than this, e.g. 1h; default all")
	asJSON := fs.Bool("json", false, "print each event as one JSON line")
	if err := parse(fs, args); err != nil {
		return err
	}
	// The manager's own credential, or none, reads the audit stream in its
	// own account; any other reaches it in the manager's, as the operator
	// may.
	prefix := access.APIPrefix(access.ManagerAccount)
	c, err := nf.credential("")
	if err != nil {
		return err
	}
	if c == nil || c.Grant.Role == access.Manager {
		prefix = "$JS.API"
	}
	if err := nf.mayPublish("events", prefix+".DIRECT.GET."+events.StreamName); err != nil {
		return err
	}
	nc, err := nf.connect("cohort events", access.State, false, 0)
	if err != nil {
		return err
	}
	defer nc.Close()
	err = events.Follow(ctx, nc, events.FollowConfig{Since: *since, Follow: *follow, APIPrefix: prefix}, func(e *events.Event, err error) error {
		switch {
		case err != nil:
			fmt.Fprintf(stderr, "skipping an event that does not decode: %v\n", err)
		case *asJSON:
			b, _ := json.Marshal(e)
			fmt.Fprintln(stdout, string(b))
		default:
			fmt.Fprintln(stdout, e.String())
		}
		return nil
	})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// serveMetrics serves a fresh Prometheus registry and /healthz on addr
// until ctx is done, and returns the registry and where to say the role is
// ready; with no addr it serves nothing and returns nil.
func serveMetrics(ctx context.Context, addr string, log *slog.Logger) (prometheus.Registerer, *readiness, error) {
	r := &readiness{}
	if addr == "" {
		return nil, r, nil
	}
	reg, bound, err := metricshttp.Serve(ctx, metricshttp.Config{Addr: addr, Healthy: r.healthy, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	log.Info("serving metrics", "addr", "http://"+bound.String()+"/metrics")
	return reg, r, nil
}

// readiness is /healthz's answer: starting until set, then the role's Ready.
type readiness struct{ check atomic.Pointer[func() error] }

func (r *readiness) set(ready <-chan struct{}, what string) {
	f := metricshttp.Ready(ready, what)
	r.check.Store(&f)
}

func (r *readiness) healthy() error {
	if f := r.check.Load(); f != nil {
		return (*f)()
	}
	return errors.New("starting")
}

func cmdCall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("call", stderr)
	nf := addNATSFlags(fs, stderr)
	cluster := fs.String("cluster", "", "the cluster to call")
	trustFile := fs.String("trust", "", "the issuer's root CA certificate, PEM (as 'cohort trust' writes it)")
	task := fs.String("task", "", "the task the cluster must run; empty accepts any")
	userFlag := fs.String("user", "", "the user to speak as; default the credential's (guest without one)")
	kem := fs.String("kem", "mlkem768x25519", "key agreement: mlkem768x25519 or x25519")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the handshake")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := flagAfterArgs(fs, args); err != nil {
		return err
	}
	if err := required(fs, "cluster", "trust"); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: nothing to send: give DATA", errUsage)
	}
	kemID, err := kemFlag(*kem)
	if err != nil {
		return err
	}
	root, err := issuerclient.LoadRoot(*trustFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	user, err := nf.user(*userFlag)
	if err != nil {
		return err
	}
	nc, err := nf.connect("cohort call", access.State, false, *timeout)
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := client.Dial(ctx, client.Config{Conn: nc, User: user, Cluster: *cluster, Task: *task, Roots: roots, KEM: kemID, Timeout: *timeout})
	if err != nil {
		return err
	}
	a, err := s.Call(ctx, []byte(strings.Join(fs.Args(), " ")))
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "session %x opened through unit %s; answered by unit %s\n", s.ID, s.Unit, a.Unit)
	fmt.Fprintln(stdout, string(a.Data))
	return nil
}

func kemFlag(s string) (uint16, error) {
	switch strings.ToLower(s) {
	case "mlkem768x25519", "x-wing", "xwing":
		return messages.KEMMLKEM768X25519, nil
	case "x25519":
		return messages.KEMX25519, nil
	}
	return 0, fmt.Errorf("%w: --kem %q: want mlkem768x25519 or x25519", errUsage, s)
}

// awaitIssuer verifies the issuer and returns its root, waiting while no
// issuer answers (it may be starting beside us); a refusal ends the wait.
func awaitIssuer(ctx context.Context, cfg issuerclient.Config, log *slog.Logger) (*x509.Certificate, error) {
	for failures := 0; ; failures++ {
		trust, err := issuerclient.VerifyIssuer(ctx, cfg)
		if err == nil {
			return trust.Root, nil
		}
		if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		wait := backoff.Policy{Min: 100 * time.Millisecond, Max: 2 * time.Second}.Delay(failures)
		log.Warn("no issuer answers yet; waiting", "err", err, "retry_in", wait)
		if !backoff.Wait(ctx, wait) {
			return nil, ctx.Err()
		}
	}
}
