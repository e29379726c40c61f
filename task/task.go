// Package task runs your own code as a cohort task. A task is a Go program:
// its main calls Main with the task's name and a Handle function, and every
// process of that program is one unit, a replica of the task in its
// cluster. The unit attests to the issuer, obtains the task's certificate,
// key and cluster key (the same for every replica), joins its cluster at the
// manager, and answers the cluster channel's calls with Handle: a user opens
// one session with any unit of the cluster, and any unit answers each call.
//
// The program is what is measured. On the simulated backend the measurement
// is a hash of the executable file and the task's name, so a policy accepts
// exactly the build it names: `cohort measure unit --task NAME --exe PATH`
// prints it, and `cohort dev --task NAME=PATH` hosts it.
//
// Guarantees:
//   - Handle runs only for calls that authenticated under a session of the
//     cluster; Call.User is the user the NATS server let publish the call,
//     and no other user's session reaches Handle.
//   - A call runs at most once (unless Config.SideEffectFree): it is
//     claimed in the cluster's stream before Handle runs, and a retry gets
//     the stored answer. A task free of side effects saves the claim (one
//     durable write a call, not two): a call sent again while it runs may
//     run twice, and every retry gets the answer stored first.
//   - An error or a panic in Handle answers that call with "the task
//     failed", is logged (a panic with its stack, never with the request),
//     is counted in the unit's metrics, and the unit goes on serving.
//   - Handle's answer is encrypted to the user; what Handle logs is its own
//     affair: never log a request.
package task

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/attest"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/metricshttp"
	"github.com/cohort-dev/cohort/unit"
)

// Call is one call of a session, as Handle sees it.
type Call = unit.Call

// Config is a task: its name and its code.
type Config struct {
	// Name is the task's name, as the policy names it (lower-case letters,
	// digits and '-'); required.
	Name string
	// Handle answers one call; required. Its answer is encrypted to the
	// caller. It must return when ctx is done (the call's deadline).
	Handle func(ctx context.Context, c Call) ([]byte, error)
	// SideEffectFree declares that a call changes nothing but its answer:
	// it is then not claimed before it runs (one durable write a call, its
	// answer, rather than two), and may run again on another unit when sent
	// again while it runs or when its unit died. By default a claimed call
	// never runs twice.
	SideEffectFree bool
	// HTTP, when set, is served over HTTPS with the task's certificate on
	// the address --https gives (the same certificate on every replica).
	HTTP http.Handler
}

// ErrUsage marks an error in the command line (exit code 2).
var ErrUsage = errors.New("usage")

// Main runs one unit of the task with the flags of the command line until
// SIGINT or SIGTERM, and exits: 0 when stopped, 2 for a bad command line, 1
// on any other failure. Run the program with -h for its flags.
func Main(cfg Config) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Run(ctx, cfg, os.Args[1:], os.Stderr)
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, ErrUsage):
		fmt.Fprintf(os.Stderr, "%s: %v\n", cfg.Name, err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "%s: %v\n", cfg.Name, err)
		os.Exit(1)
	}
}

// Run is Main without the exit: it parses args (without the program's
// name), connects to NATS, and runs the unit until ctx is done. Logs and
// the flags' help go to stderr.
func Run(ctx context.Context, cfg Config, args []string, stderr io.Writer) error {
	if !messages.ValidTaskName(cfg.Name) {
		return fmt.Errorf("task: Config.Name %q is not a valid task name: lower-case letters, digits and '-'", cfg.Name)
	}
	if cfg.Handle == nil {
		return errors.New("task: Config.Handle is required")
	}
	f, err := parseFlags(cfg.Name, args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: &f.level}))
	platform, err := f.platform(ctx, cfg.Name)
	if err != nil {
		return err
	}
	cred, err := f.credential()
	if err != nil {
		return err
	}
	cluster, id := f.cluster, f.id
	if cred != nil {
		g := cred.Grant
		if (cluster != "" && cluster != g.Cluster) || (id != "" && id != g.Name) {
			return fmt.Errorf("%w: --cluster %q --id %q, but --creds is unit %s of cluster %s", ErrUsage, cluster, id, g.Name, g.Cluster)
		}
		cluster, id = g.Cluster, g.Name
	}
	if cluster == "" {
		return fmt.Errorf("%w: no cluster to join: give --creds (cohort dev prints the command with it) or --cluster and --id", ErrUsage)
	}
	state, err := f.connect(cred, access.State, cfg.Name, log)
	if err != nil {
		return err
	}
	defer state.Close()
	serve, err := f.connect(cred, access.Serve, cfg.Name, log)
	if err != nil {
		return err
	}
	defer serve.Close()
	ucfg := unit.Config{
		Conn: state, Serve: serve, Platform: platform, Task: cfg.Name,
		IssuerMeasurement: f.issuerMeasurement, AllowSimulatedIssuer: f.allowSimulated,
		HTTPSAddr: f.https, Handler: cfg.HTTP, Name: f.name, Cluster: cluster, ID: id,
		App: cfg.Handle, SideEffectFree: cfg.SideEffectFree, Replicas: f.replicas, Logger: log,
	}
	var reg *prometheus.Registry
	if f.metrics != "" {
		reg = metricshttp.NewRegistry()
		ucfg.Metrics = reg
	}
	u, err := unit.New(ucfg)
	if err != nil {
		return err
	}
	if f.metrics != "" {
		if _, _, err := metricshttp.Serve(ctx, metricshttp.Config{Addr: f.metrics, Registry: reg,
			Healthy: metricshttp.Ready(u.Ready(), "the unit"), Logger: log}); err != nil {
			return err
		}
	}
	return u.Run(ctx)
}

type flags struct {
	nats, creds, tlsCA   string
	issuerMeasurement    []byte
	https, metrics, name string
	cluster, id, backend string
	collateral           string
	replicas             int
	allowSimulated       bool
	level                slog.LevelVar
	measurementFlag      string
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func parseFlags(name string, args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "%s: a unit of the cohort task %q. It joins the cluster its credential names and answers its calls.\n\nUsage: %s --creds FILE --issuer-measurement HEX [flags]\n\n", name, name, name)
		fs.PrintDefaults()
	}
	fs.StringVar(&f.nats, "nats", env("COHORT_NATS", "nats://127.0.0.1:4222"), "NATS server URLs, comma-separated (env COHORT_NATS)")
	fs.StringVar(&f.creds, "creds", os.Getenv("COHORT_CREDS"), "this unit's NATS credentials, as 'cohort dev' or 'cohort deploy' writes them (env COHORT_CREDS)")
	fs.StringVar(&f.tlsCA, "tls-ca", os.Getenv("COHORT_TLS_CA"), "CA certificates, PEM, that verify the NATS servers' TLS (env COHORT_TLS_CA)")
	fs.StringVar(&f.measurementFlag, "issuer-measurement", os.Getenv("COHORT_ISSUER_MEASUREMENT"), "the issuer measurement to pin, hex: 'cohort measure issuer' (env COHORT_ISSUER_MEASUREMENT)")
	fs.StringVar(&f.https, "https", "", "serve HTTPS with the task's certificate on this address, e.g. 127.0.0.1:9443; default none")
	fs.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics and /healthz on this address, e.g. 127.0.0.1:9103")
	fs.StringVar(&f.name, "name", "", "this replica's name in logs; default its id")
	fs.StringVar(&f.cluster, "cluster", "", "the cluster to join; default the credential's")
	fs.StringVar(&f.id, "id", "", "this unit's id in its cluster; default the credential's")
	fs.StringVar(&f.backend, "backend", enclave.PlatformSim, "enclave backend: sim, snp or tdx")
	fs.StringVar(&f.collateral, "collateral", os.Getenv("COHORT_COLLATERAL"), "collateral cache for checking an issuer on hardware (env COHORT_COLLATERAL)")
	fs.IntVar(&f.replicas, "replicas", 1, "JetStream replicas of the cluster's streams, if this unit makes them")
	fs.BoolVar(&f.allowSimulated, "allow-simulated-issuer", true, "accept an issuer on simulated attestation (development)")
	fs.TextVar(&f.level, "log-level", &f.level, "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q (flags only; -h lists them)", ErrUsage, fs.Args())
	}
	if f.measurementFlag == "" {
		return nil, fmt.Errorf("%w: --issuer-measurement is required: the issuer's measurement, as 'cohort measure issuer' or 'cohort dev' prints it", ErrUsage)
	}
	m, err := hex.DecodeString(strings.TrimSpace(f.measurementFlag))
	if err != nil || !enclave.ValidMeasurement(m) {
		return nil, fmt.Errorf("%w: --issuer-measurement must be 32 or 48 bytes of hex", ErrUsage)
	}
	f.issuerMeasurement = m
	return f, nil
}

func (f *flags) credential() (*access.Credential, error) {
	if f.creds == "" {
		return nil, nil
	}
	c, err := access.LoadCredential(f.creds)
	if err != nil {
		return nil, err
	}
	if c.Grant.Role != access.Unit {
		return nil, fmt.Errorf("%w: --creds %s holds the credential of %s, not of a unit: use one of the unit credentials 'cohort dev' printed", ErrUsage, f.creds, c.Grant)
	}
	return c, nil
}

// platform is the unit's enclave platform; its verifier checks the issuer.
func (f *flags) platform(ctx context.Context, task string) (unit.Platform, error) {
	v, err := attest.Everything(f.collateral, nil)
	if err != nil {
		return nil, err
	}
	if f.backend == enclave.PlatformSim {
		p, err := sim.New(sim.Config{Identity: sim.UnitIdentity(task)})
		if err != nil {
			return nil, err
		}
		return &simUnit{Platform: p, v: v}, nil
	}
	p, err := attest.Guest(ctx, f.backend, v)
	if err != nil {
		return nil, fmt.Errorf("%w: --backend: %v", ErrUsage, err)
	}
	return p, nil
}

// simUnit is a simulated unit that checks its issuer with every platform's
// verifier, so that it can trust an issuer on hardware.
type simUnit struct {
	*sim.Platform
	v enclave.Verifier
}

func (s *simUnit) Verify(ctx context.Context, evidence []byte) (enclave.Claims, error) {
	return s.v.Verify(ctx, evidence)
}

// connect opens one of the unit's two connections, reconnecting without end
// once connected.
func (f *flags) connect(c *access.Credential, k access.Key, name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name + " (" + string(k) + ")"), nats.Timeout(2 * time.Second),
		nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond), nats.ReconnectJitter(100*time.Millisecond, 100*time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("NATS", "err", err) // a permissions violation comes this way
		}),
	}
	if c != nil {
		opts = append(opts, c.Options(k)...)
	}
	if f.tlsCA != "" {
		opts = append(opts, nats.RootCAs(f.tlsCA))
	}
	nc, err := nats.Connect(f.nats, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", f.nats, err)
	}
	return nc, nil
}
