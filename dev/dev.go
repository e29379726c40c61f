// Package dev runs the whole of cohort in one process on the simulated
// enclave backend: an embedded NATS server with JetStream, the issuer and a
// few units of a demo task. It backs `cohort dev`, which runs until stopped,
// and `cohort demo`, a walkthrough that prints each step and exits.
//
// Everything it keeps lives under one data folder: the JetStream store, the
// simulated CPU's seal secret, the issuer's sealed key cache, the
// development administrator key (which signs the policy update that accepts
// a new build of cohort, and holds the recovery share of the state key, so
// that a rebuild keeps the root), the policy in force and the NATS credentials
// of every identity (creds/): the issuer, the manager, the operator, each
// unit, and a few users (alice, bob and carol, and any user added with
// `cohort user add NAME --data DIR`, which a running dev admits within a
// second). The NATS server admits only those credentials, each in its
// account and held to its permissions (package access), and fsyncs every
// JetStream write before acknowledging it. It says everywhere that its
// attestation is simulated.
package dev

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/metricshttp"
	"github.com/cohort-dev/cohort/unit"
)

// DemoTask is the task dev's units run, and DemoCluster the cluster they
// form. DemoUser is the user the printed commands use; DemoUsers are the
// users dev admits besides any added.
const (
	DemoTask    = "demo"
	DemoCluster = "dev"
	DemoUser    = "alice"
)

// DemoUsers are the users dev mints credentials for.
var DemoUsers = []string{"alice", "bob", "carol"}

// UnitID is the id of dev's unit i (from 0) in its cluster.
func UnitID(i int) string { return fmt.Sprintf("%s-%d", DemoTask, i+1) }

const readyTimeout = 60 * time.Second

// Config configures a dev stack. Zero fields take the defaults noted.
type Config struct {
	DataDir   string // required
	Units     int    // default 3
	NATSPort  int    // default 4222; -1 picks a free port
	HTTPSBase int    // the first unit's HTTPS port, the next one up for the next; default 8443; -1 picks free ports
	// Tasks are tasks of the developer's own to host (see Task), besides
	// those the data folder hosts already; a task of the same name replaces
	// the folder's.
	Tasks []Task
	// MetricsAddr, when set, serves every role's metrics (issuer, manager,
	// each unit) and /healthz there.
	MetricsAddr string
	// NatsContext, when set, is the name of the natscli context dev writes
	// for the operator (nats --context NAME …); empty writes none.
	NatsContext string
	Out         io.Writer
	Logger      *slog.Logger
}

func (c *Config) fill() error {
	if c.DataDir == "" {
		return errors.New("dev: Config.DataDir is required")
	}
	if c.Units == 0 {
		c.Units = 3
	}
	if c.Units < 1 || c.Units > 64 {
		return fmt.Errorf("dev: %d units, want 1 to 64", c.Units)
	}
	switch {
	case c.NATSPort == 0:
		c.NATSPort = 4222
	case c.NATSPort < 0:
		c.NATSPort = 0
	}
	switch {
	case c.HTTPSBase == 0:
		c.HTTPSBase = 8443
	case c.HTTPSBase < 0:
		c.HTTPSBase = 0
	}
	if c.HTTPSBase > 0 && c.HTTPSBase+c.Units-1 > 65535 {
		return fmt.Errorf("dev: HTTPS ports %d+%d run past 65535", c.HTTPSBase, c.Units)
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Stack is a running dev stack.
type Stack struct {
	NATS              *embednats.Server
	Deployment        access.Deployment
	Creds             map[access.Grant]*access.Credential
	CredsDir          string // the credentials files, one per grant, named by Grant.FileName
	Issuer            *issuer.Issuer
	Manager           *manager.Manager
	Units             []*unit.Unit
	stopUnit          []context.CancelFunc
	unitConns         [][2]*nats.Conn
	IssuerMeasurement []byte
	Policy            *issuer.Policy // the policy in force
	PolicyPath        string         // where dev writes it, for people to read
	PolicyHash        string         // hex SHA-256 of the policy in force
	Admin             *adminkey.Key  // the development administrator and recovery key
	Tasks             []Task         // the developer's own tasks dev hosts
	Metrics           *prometheus.Registry
	NatsContext       string // the natscli context dev wrote for the operator, if any
	NatsContextPath   string // its file
}

// PolicyFile is where, in its data folder, dev writes the policy in force,
// for people to read.
const PolicyFile = "policy.yaml"

// acceptErrorFile holds, while it exists, why the running dev could not
// apply the update that accepts the hosted tasks.
const acceptErrorFile = "accept-error.txt"

// RootFile is where dev keeps its root certificate, PEM: the development
// recovery holder checks a waiting issuer's state against it.
const RootFile = "root.pem"

// AdminKeyFile is the development administrator's key in dev's data folder:
// it signs the policy updates that accept a new build, and holds the
// recovery share of the state key. Development only: anyone who reads the
// folder can change the policy.
const AdminKeyFile = "dev-admin.key"

func loadOrCreateAdmin(path string) (*adminkey.Key, error) {
	k, err := adminkey.Load(path)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("dev: %w (remove the data folder to start afresh)", err)
	}
	if k, err = adminkey.Generate(rand.Reader); err != nil {
		return nil, err
	}
	if err := k.Save(path); err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	return k, nil
}

// recover restores the state key into dev's issuer with the development
// recovery key, over the operator's connection, as `cohort recover` does.
func (s *Stack) recover(ctx context.Context, cfg Config) error {
	nc, err := s.Connect(access.Grant{Role: access.Operator}, access.State)
	if err != nil {
		return err
	}
	defer nc.Close()
	root, err := issuerclient.LoadRoot(filepath.Join(cfg.DataDir, RootFile))
	if err != nil {
		return fmt.Errorf("dev: the root this data folder's state has is unknown (%w): remove %s to start afresh", err, cfg.DataDir)
	}
	ack, err := issuerclient.Recover(ctx, issuerclient.RecoverConfig{Conn: nc, Verifier: sim.Verifier(), IssuerMeasurement: s.IssuerMeasurement, AllowSimulated: true, Key: s.Admin, Root: root})
	if err != nil {
		return err
	}
	if !ack.Done {
		return fmt.Errorf("the state key needs %d recovery shares; dev holds one", ack.Need)
	}
	return nil
}

// acceptThisBuild makes the policy in force accept this build: when dev's
// policy for it differs from the one in force, it signs the update with the
// development administrator key and applies it.
func (s *Stack) acceptThisBuild(ctx context.Context, cfg Config) error {
	cur := s.Issuer.Policy()
	// The root generation in force is kept: dev's update accepts builds, it
	// does not rotate (nor undo a rotation).
	want, err := policyAt(cur.Version, cur.RootGeneration, s.Admin, s.Tasks)
	if err != nil {
		return err
	}
	if !bytes.Equal(want, cur.Document()) {
		if want, err = policyAt(cur.Version+1, cur.RootGeneration, s.Admin, s.Tasks); err != nil {
			return err
		}
		nc, err := s.Connect(access.Grant{Role: access.Operator}, access.State)
		if err != nil {
			return err
		}
		defer nc.Close()
		a, err := issuerclient.ApplyPolicy(ctx, nc, want, []messages.PolicySignature{s.Admin.Sign(want)}, 10*time.Second)
		if err != nil {
			return fmt.Errorf("dev: accepting this build: %w (the data folder's policy is not dev's: remove %s to start afresh)", err, cfg.DataDir)
		}
		fmt.Fprintf(cfg.Out, "cohort dev: policy version %d accepts this build's measurements%s (signed by the development administrator, %s)\n",
			a.Version, tasksNote(s.Tasks), filepath.Join(cfg.DataDir, AdminKeyFile))
	}
	root := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Issuer.Root().Raw})
	if err := os.WriteFile(filepath.Join(cfg.DataDir, RootFile), root, 0o644); err != nil {
		return fmt.Errorf("dev: write the root: %w", err)
	}
	s.Policy = s.Issuer.Policy()
	hash := s.Policy.Hash()
	s.PolicyHash = hex.EncodeToString(hash[:])
	if err := os.WriteFile(s.PolicyPath, s.Policy.Document(), 0o600); err != nil {
		return fmt.Errorf("dev: write policy: %w", err)
	}
	return nil
}

// Run starts the stack, prints what it started to cfg.Out and runs until ctx
// is done or a part fails.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.fill(); err != nil {
		return err
	}
	return start(ctx, cfg, func(ctx context.Context, s *Stack) error {
		printStack(cfg.Out, cfg.DataDir, s)
		s.watch(ctx, cfg)
		fmt.Fprintln(cfg.Out, "cohort dev: stopping")
		return nil
	})
}

// start brings the stack up, calls use with it, and takes it down when use
// returns or a part fails; the first error wins.
func start(ctx context.Context, cfg Config, use func(context.Context, *Stack) error) error {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("dev: data folder: %w", err)
	}
	unlock, err := lock(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	secret, err := sim.LoadOrCreateSealSecret(filepath.Join(cfg.DataDir, sim.SealSecretFile))
	if err != nil {
		return unopenable(cfg.DataDir, err)
	}
	s := &Stack{PolicyPath: filepath.Join(cfg.DataDir, PolicyFile)}
	if s.IssuerMeasurement, err = sim.Measure(sim.IssuerIdentity); err != nil {
		return err
	}
	if s.Admin, err = loadOrCreateAdmin(filepath.Join(cfg.DataDir, AdminKeyFile)); err != nil {
		return unopenable(cfg.DataDir, err)
	}
	held, err := loadTasks(cfg.DataDir)
	if err != nil {
		return err
	}
	s.Tasks = merge(held, cfg.Tasks)
	if len(cfg.Tasks) > 0 {
		if err := saveTasks(cfg.DataDir, s.Tasks); err != nil {
			return err
		}
	}
	genesisYAML, err := Policy(1, s.Admin, s.Tasks)
	if err != nil {
		return err
	}
	genesis, err := issuer.ParsePolicy(genesisYAML)
	if err != nil {
		return err
	}
	s.CredsDir = filepath.Join(cfg.DataDir, "creds")
	users, err := usersIn(s.CredsDir)
	if err != nil {
		return err
	}
	s.Deployment = deployment(cfg.Units, s.Tasks, users)
	if s.Creds, err = access.LoadOrCreateAll(s.CredsDir, s.Deployment); err != nil {
		return unopenable(cfg.DataDir, err)
	}
	accounts, err := access.Accounts(s.Deployment, s.Creds)
	if err != nil {
		return err
	}
	s.NATS, err = embednats.Start(embednats.Config{
		Port: cfg.NATSPort, StoreDir: filepath.Join(cfg.DataDir, "jetstream"), Accounts: accounts, SyncAlways: true,
	})
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("dev: NATS port %d on 127.0.0.1: address in use: another cohort dev or NATS server runs there; stop it, or give --nats-port", cfg.NATSPort)
		}
		return unopenable(cfg.DataDir, fmt.Errorf("dev: NATS on port %d: %w", cfg.NATSPort, err))
	}
	defer s.NATS.Close()
	if cfg.MetricsAddr != "" {
		s.Metrics = metricshttp.NewRegistry()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	platform, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: secret})
	if err != nil {
		return err
	}
	inc, isc, err := s.ConnectBoth(access.Grant{Role: access.Issuer})
	if err != nil {
		return err
	}
	defer inc.Close()
	defer isc.Close()
	// A rebuild of cohort is another issuer build, whose key cache does not
	// open: dev, holding the recovery key, restores the state key into it,
	// then signs the update that accepts the new build's measurements. The
	// root stays.
	recovered := make(chan error, 1)
	if s.Issuer, err = issuer.New(issuer.Config{Conn: inc, Serve: isc, Platform: platform, Policy: genesis, Logger: cfg.Logger,
		KeyCache: issuer.FileKeyCache(filepath.Join(cfg.DataDir, issuer.KeyCacheFile)), AwaitRecovery: true, RecoverUnlisted: true, PeerTimeout: 200 * time.Millisecond,
		Metrics: s.registerer(),
		Lease:   3 * time.Second, // one NATS server: no leader elections to outlast
		// Called from within the issuer's Run, so the group still waits on
		// that when this joins it.
		Waiting: func(string) {
			g.Go(func() error {
				select { // the first recovery's outcome is the one awaited
				case recovered <- s.recover(ctx, cfg):
				default:
				}
				return nil
			})
		},
	}); err != nil {
		return err
	}
	g.Go(func() error { return s.Issuer.Run(ctx) })
	select {
	case err := <-recovered:
		if err != nil {
			return errors.Join(unopenable(cfg.DataDir, fmt.Errorf("dev: restoring the state key of %s: %w", cfg.DataDir, err)), stop(cancel, g))
		}
		fmt.Fprintln(cfg.Out, "cohort dev: this build of cohort is new to the data folder: the development recovery key restored the state key, same root")
	case <-s.Issuer.Ready():
	case <-ctx.Done():
	}
	if err := wait(ctx, s.Issuer.Ready(), "issuer"); err != nil {
		return errors.Join(err, stop(cancel, g))
	}
	if err := s.acceptThisBuild(ctx, cfg); err != nil {
		return errors.Join(err, stop(cancel, g))
	}
	mnc, msc, err := s.ConnectBoth(access.Grant{Role: access.Manager})
	if err != nil {
		return errors.Join(err, stop(cancel, g))
	}
	defer mnc.Close()
	defer msc.Close()
	follow := issuerclient.Follower{Config: issuerclient.Config{Conn: mnc, Verifier: sim.Verifier(), IssuerMeasurement: s.IssuerMeasurement, AllowSimulated: true}}
	if s.Manager, err = manager.New(manager.Config{Conn: mnc, Serve: msc, Root: s.Issuer.Root(), Roots: follow, Logger: cfg.Logger, Metrics: s.registerer()}); err != nil {
		return errors.Join(err, stop(cancel, g))
	}
	g.Go(func() error { return s.Manager.Run(ctx) })
	if err := wait(ctx, s.Manager.Ready(), "manager"); err != nil {
		return errors.Join(err, stop(cancel, g))
	}
	unitPlatform, err := sim.New(sim.Config{Identity: sim.UnitIdentity(DemoTask)})
	if err != nil {
		return err
	}
	for i := range cfg.Units {
		unc, usc, err := s.ConnectBoth(access.Grant{Role: access.Unit, Cluster: DemoCluster, Name: UnitID(i)})
		if err != nil {
			return errors.Join(err, stop(cancel, g))
		}
		defer unc.Close()
		defer usc.Close()
		s.unitConns = append(s.unitConns, [2]*nats.Conn{unc, usc})
		port := 0
		if cfg.HTTPSBase > 0 {
			port = cfg.HTTPSBase + i
		}
		u, err := unit.New(unit.Config{
			Conn: unc, Serve: usc, Platform: unitPlatform, Task: DemoTask,
			IssuerMeasurement: s.IssuerMeasurement, AllowSimulatedIssuer: true,
			HTTPSAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			Name:      UnitID(i), ID: UnitID(i), Cluster: DemoCluster, Logger: cfg.Logger,
			SideEffectFree: true, // the demo task echoes: running a call twice changes nothing
			Metrics:        s.registerer(),
		})
		if err != nil {
			return errors.Join(err, stop(cancel, g))
		}
		s.Units = append(s.Units, u)
		uctx, ucancel := context.WithCancel(ctx)
		s.stopUnit = append(s.stopUnit, ucancel)
		g.Go(func() error { return u.Run(uctx) })
	}
	for _, u := range s.Units {
		if err := wait(ctx, u.Ready(), "unit"); err != nil {
			return errors.Join(err, stop(cancel, g))
		}
	}
	if err := waitMembers(ctx, s.Manager, len(s.Units)); err != nil {
		return errors.Join(err, stop(cancel, g))
	}
	if cfg.MetricsAddr != "" {
		if _, _, err := metricshttp.Serve(ctx, metricshttp.Config{Addr: cfg.MetricsAddr, Registry: s.Metrics, Healthy: s.healthy, Logger: cfg.Logger}); err != nil {
			return errors.Join(fmt.Errorf("dev: %w", err), stop(cancel, g))
		}
	}
	if err := writeAdmitted(cfg.DataDir, s.Deployment.Users); err != nil {
		return errors.Join(unopenable(cfg.DataDir, err), stop(cancel, g))
	}
	if cfg.NatsContext != "" {
		operator := filepath.Join(s.CredsDir, access.Grant{Role: access.Operator}.FileName())
		if path, err := WriteNatsContext(cfg.NatsContext, s.NATS.ClientURL(), operator, cfg.DataDir); err != nil {
			cfg.Logger.Warn("no natscli context", "err", err)
		} else {
			s.NatsContext, s.NatsContextPath = cfg.NatsContext, path
		}
	}
	return errors.Join(use(ctx, s), stop(cancel, g))
}

// stop cancels the parts and waits for them.
func stop(cancel context.CancelFunc, g *errgroup.Group) error {
	cancel()
	return g.Wait()
}

// waitMembers waits until the manager counts n active members.
func waitMembers(ctx context.Context, m *manager.Manager, n int) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	deadline := time.Now().Add(readyTimeout)
	for m.Table().Counts(time.Now())[manager.Active] < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("dev: the units did not join within %v", readyTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func wait(ctx context.Context, ready <-chan struct{}, what string) error {
	t := time.NewTimer(readyTimeout)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("dev: %s did not start", what)
	case <-t.C:
		return fmt.Errorf("dev: %s not ready within %v", what, readyTimeout)
	}
}

// DemoPolicy is dev's policy, version version: the demo task, accepted for
// this build's simulated measurement, with certificates for localhost and
// 127.0.0.1; this build's issuer; admin as its one administrator and its
// one recovery holder.
func DemoPolicy(version uint64, admin *adminkey.Key) ([]byte, error) {
	return Policy(version, admin, nil)
}

// DemoPolicyOf is DemoPolicy for another build of cohort: the issuer and
// the demo task measured as the executable at exe (a deployment's measured
// binary, say), rather than as this one.
func DemoPolicyOf(exe string, version uint64, admin *adminkey.Key) ([]byte, error) {
	return policyOf(exe, version, 1, admin, nil)
}

// Policy is DemoPolicy with the tasks of the developer's own that dev hosts:
// each accepted for the measurement recorded, with certificates for
// localhost and 127.0.0.1, and a cluster of its name.
func Policy(version uint64, admin *adminkey.Key, tasks []Task) ([]byte, error) {
	return policyAt(version, 1, admin, tasks)
}

// policyAt is Policy at a root generation.
func policyAt(version uint64, rootGeneration uint32, admin *adminkey.Key, tasks []Task) ([]byte, error) {
	return policyOf("", version, rootGeneration, admin, tasks)
}

// policyOf is policyAt for the build at exe; "" is this one.
func policyOf(exe string, version uint64, rootGeneration uint32, admin *adminkey.Key, tasks []Task) ([]byte, error) {
	measure := sim.Measure
	if exe != "" {
		measure = func(identity string) ([]byte, error) { return sim.MeasureFile(exe, identity) }
	}
	m, err := measure(sim.UnitIdentity(DemoTask))
	if err != nil {
		return nil, err
	}
	im, err := measure(sim.IssuerIdentity)
	if err != nil {
		return nil, err
	}
	gen := ""
	if rootGeneration > 1 {
		gen = fmt.Sprintf("root_generation: %d\n", rootGeneration)
	}
	return fmt.Appendf(nil, `# Written by cohort dev for this build. SIMULATED attestation: not for production.
version: %d
%saccept_simulated: true
validity:
  root: 87600h
  task: 24h
issuers: [%s]   # this build's simulated issuer measurement
administrators:
  threshold: 1
  keys:
    - {name: dev, key: %x}
recovery:
  threshold: 1
  keys:
    - {name: dev, key: %x}
tasks:
  - name: %s
    measurements: [%s]   # this build's simulated measurement of the demo task
    dns_names: [localhost]
    ip_addresses: [127.0.0.1]
%sclusters:
  - id: %s
    task: %s
%s`, version, gen, hex.EncodeToString(im), admin.AdminPublic(), admin.RecoveryPublic(), DemoTask, hex.EncodeToString(m), hostedTasks(tasks), DemoCluster, DemoTask, hostedClusters(tasks)), nil
}

func hostedTasks(tasks []Task) string {
	var b strings.Builder
	for _, t := range tasks {
		fmt.Fprintf(&b, "  - name: %s\n    measurements: [%s]   # %s, as built when dev accepted it\n    dns_names: [localhost]\n    ip_addresses: [127.0.0.1]\n", t.Name, t.Measurement, t.Exe)
	}
	return b.String()
}

func hostedClusters(tasks []Task) string {
	var b strings.Builder
	for _, t := range tasks {
		fmt.Fprintf(&b, "  - id: %s\n    task: %s\n", t.Name, t.Name)
	}
	return b.String()
}

// tasksNote names the hosted tasks in a line of dev's output.
func tasksNote(tasks []Task) string {
	if len(tasks) == 0 {
		return ""
	}
	names := make([]string, len(tasks))
	for i, t := range tasks {
		names[i] = fmt.Sprintf("%s (%.12s…)", t.Name, t.Measurement)
	}
	return " and of " + strings.Join(names, ", ")
}

// usersIn lists the users dev admits: DemoUsers, and those whose
// credentials are in dir (added with `cohort user add NAME --data DIR`).
func usersIn(dir string) ([]string, error) {
	users := slices.Clone(DemoUsers)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return users, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dev: credentials folder: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(strings.TrimPrefix(e.Name(), "user-"), ".creds")
		if ok && strings.HasPrefix(e.Name(), "user-") && messages.ValidUserName(name) && !slices.Contains(users, name) {
			users = append(users, name)
		}
	}
	return users, nil
}

// AddUser writes the credentials of another user into dev's data folder and
// returns the file's path; a running dev admits the user within a second,
// one started later at once.
func AddUser(dataDir, name string) (string, error) {
	g := access.Grant{Role: access.User, Name: name}
	if err := g.Validate(); err != nil {
		return "", err
	}
	dir := filepath.Join(dataDir, "creds")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("dev: credentials folder: %w", err)
	}
	path := filepath.Join(dir, g.FileName())
	if _, err := access.LoadOrCreate(path, g); err != nil {
		return "", err
	}
	return path, nil
}

// watch follows the data folder until ctx is done: the users added to the
// credentials folder are admitted, and the hosted tasks that `cohort dev
// accept` recorded anew are accepted by a policy update.
func (s *Stack) watch(ctx context.Context, cfg Config) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	// What failed is tried again only once the folder says something else:
	// a failure is neither signed and sent nor printed every tick.
	var failedUsers []string
	var failedTasks []Task
	failed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		users, err := usersIn(s.CredsDir)
		if err != nil {
			cfg.Logger.Warn("reading the credentials folder", "err", err)
			continue
		}
		tasks, err := loadTasks(cfg.DataDir)
		if err != nil {
			s.acceptFailed(cfg, err)
			continue
		}
		if slices.Equal(users, s.Deployment.Users) && slices.Equal(tasks, s.Tasks) ||
			failed && slices.Equal(users, failedUsers) && slices.Equal(tasks, failedTasks) {
			continue
		}
		fail := func(err error) {
			failed, failedUsers, failedTasks = true, users, tasks
			s.acceptFailed(cfg, err)
		}
		if err := s.admit(cfg, users, tasks); err != nil {
			fail(fmt.Errorf("admitting the users and tasks added to the data folder: %w", err))
			continue
		}
		if !slices.Equal(tasks, s.Tasks) {
			old := s.Tasks
			s.Tasks = tasks
			if err := s.acceptThisBuild(ctx, cfg); err != nil {
				s.Tasks = old
				fail(err)
				continue
			}
			failed = false
			_ = os.Remove(filepath.Join(cfg.DataDir, acceptErrorFile))
			printTasks(cfg.Out, s, changed(old, tasks))
		}
	}
}

// acceptFailed records why the hosted tasks could not be accepted, for
// `cohort dev accept` to report.
// The same reason is told once.
func (s *Stack) acceptFailed(cfg Config, err error) {
	path, msg := filepath.Join(cfg.DataDir, acceptErrorFile), []byte(err.Error()+"\n")
	if old, rerr := os.ReadFile(path); rerr == nil && bytes.Equal(old, msg) {
		return
	}
	fmt.Fprintf(cfg.Out, "cohort dev: %v\n", err)
	_ = writeFileAtomic(path, msg, 0o600)
}

// changed lists the tasks of now that are not in before.
func changed(before, now []Task) []Task {
	var out []Task
	for _, t := range now {
		if !slices.Contains(before, t) {
			out = append(out, t)
		}
	}
	return out
}

// admit has the NATS server admit the deployment of users and tasks: new
// users' and new tasks' units' credentials.
func (s *Stack) admit(cfg Config, users []string, tasks []Task) error {
	d := deployment(cfg.Units, tasks, users)
	if slices.EqualFunc(d.Clusters, s.Deployment.Clusters, func(a, b access.Cluster) bool { return a.ID == b.ID && slices.Equal(a.Units, b.Units) }) &&
		slices.Equal(d.Users, s.Deployment.Users) {
		return nil
	}
	creds, err := access.LoadOrCreateAll(s.CredsDir, d)
	if err != nil {
		return err
	}
	accounts, err := access.Accounts(d, creds)
	if err != nil {
		return err
	}
	if err := s.NATS.ReloadAccounts(accounts); err != nil {
		return err
	}
	added := slices.DeleteFunc(slices.Clone(users), func(u string) bool { return slices.Contains(s.Deployment.Users, u) })
	s.Deployment, s.Creds = d, creds
	if err := writeAdmitted(cfg.DataDir, d.Users); err != nil {
		return err
	}
	if len(added) > 0 {
		fmt.Fprintf(cfg.Out, "cohort dev: admitted user %s (credentials %s)\n", strings.Join(added, ", "), s.CredsDir)
	}
	return nil
}

// Connect opens a connection to the stack's NATS server as one key of a
// grant's credential.
func (s *Stack) Connect(g access.Grant, k access.Key) (*nats.Conn, error) {
	c, ok := s.Creds[g]
	if !ok {
		return nil, fmt.Errorf("dev: no credentials for %s", g)
	}
	return s.NATS.Connect(c.Options(k)...)
}

// ConnectBoth opens a service's two connections: the one that writes state
// and asks, and the one it answers on.
func (s *Stack) ConnectBoth(g access.Grant) (state, serve *nats.Conn, err error) {
	if state, err = s.Connect(g, access.State); err != nil {
		return nil, nil, err
	}
	if serve, err = s.Connect(g, access.Serve); err != nil {
		state.Close()
		return nil, nil, err
	}
	return state, serve, nil
}

// KillUnit stops unit i as if its process died: its NATS connections are
// cut first, so it neither answers nor leaves politely.
func (s *Stack) KillUnit(i int) {
	s.unitConns[i][0].Close()
	s.unitConns[i][1].Close()
	s.stopUnit[i]()
}
