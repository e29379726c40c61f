// Package dev runs the whole of cohort in one process on the simulated
// enclave backend: an embedded NATS server with JetStream, the issuer and a
// few units of a demo task. It backs `cohort dev`, which runs until stopped,
// and `cohort demo`, a walkthrough that prints each step and exits.
//
// Everything it keeps lives under one data folder: the JetStream store, the
// simulated CPU's seal secret, the policy it wrote and the NATS credentials
// of each role (creds/). The NATS server admits only those credentials,
// each held to its role's permissions, and fsyncs every JetStream write
// before acknowledging it. It says everywhere that its attestation is
// simulated.
package dev

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/unit"
)

// DemoTask is the task dev's units run, and DemoCluster the cluster they form.
const (
	DemoTask    = "demo"
	DemoCluster = "dev"
)

const readyTimeout = 60 * time.Second

// Config configures a dev stack. Zero fields take the defaults noted.
type Config struct {
	DataDir   string // required
	Units     int    // default 3
	NATSPort  int    // default 4222; -1 picks a free port
	HTTPSBase int    // the first unit's HTTPS port, the next one up for the next; default 8443; -1 picks free ports
	Out       io.Writer
	Logger    *slog.Logger
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
	Creds             map[access.Grant]*access.Credential
	CredsDir          string // the credentials files, one per grant, named by Grant.FileName
	Issuer            *issuer.Issuer
	Manager           *manager.Manager
	Units             []*unit.Unit
	stopUnit          []context.CancelFunc
	unitConns         []*nats.Conn
	IssuerMeasurement []byte
	Policy            *issuer.Policy
	PolicyPath        string
	PolicyHash        string // hex SHA-256 of the policy file
}

// Run starts the stack, prints what it started to cfg.Out and runs until ctx
// is done or a part fails.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.fill(); err != nil {
		return err
	}
	return start(ctx, cfg, func(ctx context.Context, s *Stack) error {
		printStack(cfg.Out, cfg.DataDir, s)
		<-ctx.Done()
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
	secret, err := sim.LoadOrCreateSealSecret(filepath.Join(cfg.DataDir, sim.SealSecretFile))
	if err != nil {
		return err
	}
	s := &Stack{PolicyPath: filepath.Join(cfg.DataDir, "policy.yaml")}
	if s.IssuerMeasurement, err = sim.Measure(sim.IssuerIdentity); err != nil {
		return err
	}
	policyYAML, err := DemoPolicy()
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.PolicyPath, policyYAML, 0o600); err != nil {
		return fmt.Errorf("dev: write policy: %w", err)
	}
	policy, err := issuer.ParsePolicy(policyYAML)
	if err != nil {
		return err
	}
	s.Policy = policy
	hash := policy.Hash()
	s.PolicyHash = hex.EncodeToString(hash[:])
	s.CredsDir = filepath.Join(cfg.DataDir, "creds")
	if s.Creds, err = LoadOrCreateCreds(s.CredsDir, DemoCluster); err != nil {
		return err
	}
	users := make([]*access.Credential, 0, len(s.Creds))
	for _, c := range s.Creds {
		users = append(users, c)
	}
	nkeyUsers, err := access.Users(users...)
	if err != nil {
		return err
	}
	s.NATS, err = embednats.Start(embednats.Config{
		Port: cfg.NATSPort, StoreDir: filepath.Join(cfg.DataDir, "jetstream"), Users: nkeyUsers, SyncAlways: true,
	})
	if err != nil {
		return fmt.Errorf("dev: NATS on port %d: %w", cfg.NATSPort, err)
	}
	defer s.NATS.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	platform, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: secret})
	if err != nil {
		return err
	}
	nc, err := s.Connect(access.Grant{Role: access.Issuer})
	if err != nil {
		return err
	}
	defer nc.Close()
	if s.Issuer, err = issuer.New(issuer.Config{Conn: nc, Platform: platform, Policy: policy, Logger: cfg.Logger}); err != nil {
		return err
	}
	g.Go(func() error { return s.Issuer.Run(ctx) })
	if err := wait(ctx, s.Issuer.Ready(), "issuer"); err != nil {
		return errors.Join(err, stop(cancel, g))
	}
	mnc, err := s.Connect(access.Grant{Role: access.Manager})
	if err != nil {
		return errors.Join(err, stop(cancel, g))
	}
	defer mnc.Close()
	if s.Manager, err = manager.New(manager.Config{Conn: mnc, Root: s.Issuer.Root(), Logger: cfg.Logger}); err != nil {
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
		unc, err := s.Connect(access.Grant{Role: access.Unit, Cluster: DemoCluster})
		if err != nil {
			return errors.Join(err, stop(cancel, g))
		}
		defer unc.Close()
		s.unitConns = append(s.unitConns, unc)
		port := 0
		if cfg.HTTPSBase > 0 {
			port = cfg.HTTPSBase + i
		}
		u, err := unit.New(unit.Config{
			Conn: unc, Platform: unitPlatform, Task: DemoTask,
			IssuerMeasurement: s.IssuerMeasurement, AllowSimulatedIssuer: true,
			HTTPSAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			Name:      fmt.Sprintf("%s-%d", DemoTask, i+1), Cluster: DemoCluster, Logger: cfg.Logger,
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

// DemoPolicy is the policy dev writes: the demo task, accepted for this
// build's simulated measurement, with certificates for localhost and
// 127.0.0.1.
func DemoPolicy() ([]byte, error) {
	m, err := sim.Measure(sim.UnitIdentity(DemoTask))
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, `# Written by cohort dev for this build. SIMULATED attestation: not for production.
version: 1
accept_simulated: true
validity:
  root: 87600h
  task: 24h
tasks:
  - name: %s
    measurements: [%s]   # this build's simulated measurement of the demo task
    dns_names: [localhost]
    ip_addresses: [127.0.0.1]
clusters:
  - id: %s
    task: %s
`, DemoTask, hex.EncodeToString(m), DemoCluster, DemoTask), nil
}

// LoadOrCreateCreds reads the credentials of every role from dir, making
// the missing ones: issuer, manager, user, operator, and the units of
// cluster.
func LoadOrCreateCreds(dir, cluster string) (map[access.Grant]*access.Credential, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dev: credentials folder: %w", err)
	}
	creds := map[access.Grant]*access.Credential{}
	for _, g := range access.Grants(cluster) {
		c, err := access.LoadOrCreate(filepath.Join(dir, g.FileName()), g)
		if err != nil {
			return nil, err
		}
		creds[g] = c
	}
	return creds, nil
}

// Connect opens a connection to the stack's NATS server as grant.
func (s *Stack) Connect(g access.Grant) (*nats.Conn, error) {
	c, ok := s.Creds[g]
	if !ok {
		return nil, fmt.Errorf("dev: no credentials for %s", g)
	}
	return s.NATS.Connect(c.Options()...)
}

// KillUnit stops unit i as if its process died: its NATS connection is cut
// first, so it neither answers nor leaves politely.
func (s *Stack) KillUnit(i int) {
	s.unitConns[i].Close()
	s.stopUnit[i]()
}
