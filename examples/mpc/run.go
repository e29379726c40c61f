package mpc

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// Group is the group the example's policy declares, and Outsider a task the
// policy knows that is not of the group.
const (
	Group    = "clinics"
	Outsider = "auditor"
)

// DefaultFigures are the clinics' private figures when Config.Figures is nil.
var DefaultFigures = map[string]int64{"clinic-north": 41, "clinic-south": 17, "clinic-east": 58}

// Config configures Run.
type Config struct {
	Figures map[string]int64 // task → private figure; default DefaultFigures; 2 to 8 parties
	Out     io.Writer        // the walkthrough; default discard
	Logger  *slog.Logger
}

// Report is what Run observed.
type Report struct {
	Results     map[string]Result // what each party learned, by task
	GroupSHA256 string            // the one group certificate every party held
	Refusal     error             // the issuer's answer to the outsider's request for the group
}

// Run runs the example in one process on the simulated enclave backend: an
// embedded NATS server, the issuer with a policy of one task per clinic plus
// an outsider, the clinics' group, one unit per task, and the computation. It
// returns an error if any step does not behave as described.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Figures == nil {
		cfg.Figures = DefaultFigures
	}
	if len(cfg.Figures) < 2 || len(cfg.Figures) > messages.MaxGroups {
		return nil, fmt.Errorf("mpc: %d parties, want 2 to %d", len(cfg.Figures), messages.MaxGroups)
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tasks := slices.Sorted(maps.Keys(cfg.Figures))
	say := func(format string, args ...any) { fmt.Fprintf(cfg.Out, format+"\n", args...) }

	srv, err := embednats.StartTemp("cohort-mpc-")
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	policyYAML, err := Policy(tasks)
	if err != nil {
		return nil, err
	}
	policy, err := issuer.ParsePolicy(policyYAML)
	if err != nil {
		return nil, err
	}
	issuerMeasurement, err := sim.Measure(sim.IssuerIdentity)
	if err != nil {
		return nil, err
	}
	secret := make([]byte, sim.SealSecretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	defer func() { cancel(); _ = g.Wait() }()

	nc, err := srv.Connect()
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	platform, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: secret})
	if err != nil {
		return nil, err
	}
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: nc, Platform: platform, Policy: policy, Logger: cfg.Logger, NoEvents: true})
	if err != nil {
		return nil, err
	}
	g.Go(func() error { return iss.Run(gctx) })
	if err := wait(gctx, iss.Ready(), "the issuer"); err != nil {
		return nil, err
	}
	groupCert, _ := iss.GroupCertificate(Group)
	say("The policy declares group %q of tasks %s, one per clinic, each with its own measured code.", Group, strings.Join(tasks, ", "))
	say("The issuer made the group's key pair and certificate when it loaded the policy (sha256 %s).", sha256Hex(groupCert.Raw))

	// One unit per clinic, each asking for its task's pair and the group's.
	// start runs a unit of task asking for groups; stop ends it and returns
	// what Run returned; done reports it.
	start := func(task string, groups []string) (u *unit.Unit, done <-chan error, stop func() error, err error) {
		unc, err := srv.Connect()
		if err != nil {
			return nil, nil, nil, err
		}
		up, err := sim.New(sim.Config{Identity: sim.UnitIdentity(task)})
		if err != nil {
			unc.Close()
			return nil, nil, nil, err
		}
		u, err = unit.New(unit.Config{
			Conn: unc, Platform: up, Task: task, IssuerMeasurement: issuerMeasurement, AllowSimulatedIssuer: true,
			HTTPSAddr: "127.0.0.1:0", Groups: groups, Logger: cfg.Logger, RetryMin: 50 * time.Millisecond,
		})
		if err != nil {
			unc.Close()
			return nil, nil, nil, err
		}
		uctx, ucancel := context.WithCancel(gctx)
		ran := make(chan error, 1)
		ended := make(chan error, 1)
		go func() { err := u.Run(uctx); ran <- err; ended <- err }()
		var once sync.Once
		var result error
		return u, ended, func() error {
			once.Do(func() { ucancel(); result = <-ran; unc.Close() })
			return result
		}, nil
	}
	units := map[string]*unit.Unit{}
	for _, task := range tasks {
		u, _, stop, err := start(task, []string{Group})
		if err != nil {
			return nil, err
		}
		defer func() { _ = stop() }()
		units[task] = u
	}
	rep := &Report{Results: map[string]Result{}, GroupSHA256: sha256Hex(groupCert.Raw)}
	for _, task := range tasks {
		if err := wait(gctx, units[task].Ready(), "unit "+task); err != nil {
			return nil, err
		}
		held := units[task].Pair().Groups[Group]
		if held == nil || !bytes.Equal(held.Leaf.Raw, groupCert.Raw) {
			return nil, fmt.Errorf("mpc: unit %s does not hold the group certificate", task)
		}
		say("  unit of %-13s attested (measurement %x…), received its task pair and the group pair", task, units[task].Pair().Identity.Measurements[0][:6])
	}

	// The outsider's unit asks for the group too, and is refused, whole.
	u, done, stop, err := start(Outsider, []string{Group})
	if err != nil {
		return nil, err
	}
	select { // the refusal is terminal: Run ends by itself
	case rep.Refusal = <-done:
	case <-time.After(time.Minute):
	}
	_ = stop()
	if !errors.Is(rep.Refusal, messages.ErrNotInGroup) || u.Pair() != nil {
		return nil, fmt.Errorf("mpc: the outsider was not refused the group: %v", rep.Refusal)
	}
	say("A unit of task %q, which the policy knows but the group does not count, asks for the group:\n  refused, nothing handed out: %v", Outsider, rep.Refusal)

	// The computation: every party listens, then all compute at once.
	parties := map[string]*Party{}
	addrs := map[string]string{}
	for _, task := range tasks {
		gt, err := units[task].Group(Group)
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		parties[task] = &Party{Task: task, Figure: cfg.Figures[task], TLS: gt, Listener: ln}
		addrs[task] = ln.Addr().String()
	}
	var mu sync.Mutex
	cg, cctx := errgroup.WithContext(gctx)
	for _, task := range tasks {
		peers := maps.Clone(addrs)
		delete(peers, task)
		cg.Go(func() error {
			r, err := parties[task].Compute(cctx, peers)
			mu.Lock()
			rep.Results[task] = r
			mu.Unlock()
			return err
		})
	}
	if err := cg.Wait(); err != nil {
		return nil, err
	}
	first := rep.Results[tasks[0]]
	for _, task := range tasks {
		if !rep.Results[task].Equal(first) {
			return nil, fmt.Errorf("mpc: the parties disagree: %v", rep.Results)
		}
	}
	say("Each pair of clinics connected with mutual TLS on the group certificate, and each side proved its task\n  with its task key over the connection's exported keying material. The figures crossed only those connections.")
	say("Who learned what:")
	for _, task := range tasks {
		say("  %-13s knows its own figure %d, and learned sum %d, mean %.2f, max %d over %d clinics",
			task, cfg.Figures[task], rep.Results[task].Sum, rep.Results[task].Mean, rep.Results[task].Max, len(rep.Results[task].Parties))
	}
	say("  the hosts and NATS learned no figure: the figures left an enclave only inside TLS to another\n  enclave of the group, whose code computes these results and reveals nothing else.")
	return rep, nil
}

// Policy is the example's policy: one task per clinic and the outsider, each
// accepted for this build's simulated measurement of it, and the group of
// the clinics.
func Policy(clinics []string) ([]byte, error) {
	var b strings.Builder
	b.WriteString("# The multi-party example's policy. SIMULATED attestation: not for production.\nversion: 1\naccept_simulated: true\ntasks:\n")
	for _, task := range append(slices.Clone(clinics), Outsider) {
		m, err := sim.Measure(sim.UnitIdentity(task))
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "  - name: %s\n    measurements: [%s]\n", task, hex.EncodeToString(m))
	}
	fmt.Fprintf(&b, "groups:\n  - id: %s\n    tasks: [%s]\n", Group, strings.Join(clinics, ", "))
	return []byte(b.String()), nil
}

func wait(ctx context.Context, ready <-chan struct{}, what string) error {
	t := time.NewTimer(60 * time.Second)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mpc: %s did not start: %w", what, context.Cause(ctx))
	case <-t.C:
		return fmt.Errorf("mpc: %s not ready within a minute", what)
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
