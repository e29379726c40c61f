package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

// MembersConfig configures the membership benchmark.
type MembersConfig struct {
	Units     int           // default 1000
	Clusters  int           // default 100
	Heartbeat time.Duration // default 1s
	Steady    time.Duration // how long steady state is measured; default 10s
	// Manager is the command that runs a manager: it is given
	// "--nats URL --root FILE --heartbeat D" and must run until SIGTERM.
	Manager *exec.Cmd
	JSON    bool
	Out     io.Writer
}

// MembersResult is what the membership benchmark measured.
type MembersResult struct {
	Units             int     `json:"units"`
	Clusters          int     `json:"clusters"`
	JoinStormS        float64 `json:"join_storm_s"`
	ViewCompleteS     float64 `json:"view_complete_s"`
	SteadyS           float64 `json:"steady_s"`
	ManagerCPUPercent float64 `json:"manager_cpu_percent_of_one_core"`
	ManagerRSSMB      float64 `json:"manager_rss_mb"`
	HeartbeatsPerS    float64 `json:"heartbeats_per_s"`
	HeartbeatErrors   int64   `json:"heartbeat_errors"`
	ActiveAtEnd       int     `json:"active_at_end"`
	Evicted           int     `json:"evicted_during_steady_state"`
}

// Members joins Units units across Clusters clusters into one manager, run
// as its own process so that its CPU and memory are its own, and holds them
// at one heartbeat per interval. It reports the join storm's duration, how
// long until the manager's view was complete, and the manager's CPU share
// and resident memory at steady state.
func Members(ctx context.Context, cfg MembersConfig) (*MembersResult, error) {
	if cfg.Units <= 0 {
		cfg.Units = 1000
	}
	if cfg.Clusters <= 0 {
		cfg.Clusters = 100
	}
	if cfg.Clusters > cfg.Units {
		return nil, fmt.Errorf("bench: %d clusters for %d units", cfg.Clusters, cfg.Units)
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.Steady <= 0 {
		cfg.Steady = 10 * time.Second
	}
	if cfg.Manager == nil {
		return nil, errors.New("bench: MembersConfig.Manager is required")
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	dir, err := os.MkdirTemp("", "cohort-bench-members-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	srv, err := embednats.Start(embednats.Config{StoreDir: filepath.Join(dir, "js")})
	if err != nil {
		return nil, err
	}
	defer srv.Close()

	// One task per cluster, each with its own code: the issuer certifies one
	// pair per task, which all of that cluster's units share, as replicas do.
	iss, stopIssuer, err := startMembersIssuer(ctx, srv, cfg.Clusters)
	if err != nil {
		return nil, err
	}
	defer stopIssuer()
	pairs, measurements, err := certifyTasks(ctx, srv, cfg.Clusters)
	if err != nil {
		return nil, err
	}
	rootPath := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(rootPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: iss.Root().Raw}), 0o600); err != nil {
		return nil, err
	}

	mgr := cfg.Manager
	mgr.Args = append(mgr.Args, "--nats", srv.ClientURL(), "--root", rootPath, "--heartbeat", cfg.Heartbeat.String())
	mgr.Stdout, mgr.Stderr = io.Discard, io.Discard
	if err := mgr.Start(); err != nil {
		return nil, fmt.Errorf("bench: start manager: %w", err)
	}
	defer func() {
		_ = mgr.Process.Signal(syscall.SIGTERM)
		_ = mgr.Wait()
	}()

	nc, err := srv.Connect()
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if err := waitStatus(ctx, nc, func(*manager.Status) bool { return true }); err != nil {
		return nil, fmt.Errorf("bench: manager did not start: %w", err)
	}

	// The units: a handful of connections, as from a handful of hosts.
	conns := make([]*nats.Conn, 8)
	for i := range conns {
		if conns[i], err = srv.Connect(); err != nil {
			return nil, err
		}
		defer conns[i].Close()
	}
	type member struct {
		cluster, id string
		token       []byte
		conn        *nats.Conn
	}
	members := make([]member, cfg.Units)
	for i := range members {
		c := i % cfg.Clusters
		members[i] = member{cluster: fmt.Sprintf("c%d", c), id: fmt.Sprintf("u%d", i), conn: conns[i%len(conns)]}
	}

	// The join storm: every unit joins at once, 64 joins in flight.
	res := &MembersResult{Units: cfg.Units, Clusters: cfg.Clusters}
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	var joinErr atomic.Pointer[error]
	for i := range members {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			m := &members[i]
			c := i % cfg.Clusters
			req, err := unit.JoinRequest(pairs[c], m.cluster, m.id, measurements[c], fmt.Sprintf("10.0.%d.%d:8443", i/250, i%250), time.Now(), nil)
			if err == nil {
				var r *messages.JoinReply
				if r, err = unit.Join(ctx, m.conn, m.cluster, m.id, req, 30*time.Second); err == nil {
					m.token = r.Token
					return
				}
			}
			joinErr.CompareAndSwap(nil, &err)
		})
	}
	wg.Wait()
	res.JoinStormS = time.Since(start).Seconds()
	if e := joinErr.Load(); e != nil {
		return nil, fmt.Errorf("bench: join: %w", *e)
	}
	if err := waitStatus(ctx, nc, func(s *manager.Status) bool { return s.Counts.Active == cfg.Units }); err != nil {
		return nil, fmt.Errorf("bench: the view did not complete: %w", err)
	}
	res.ViewCompleteS = time.Since(start).Seconds()

	// Steady state: every unit heartbeats once per interval, spread evenly.
	hbCtx, stopBeats := context.WithCancel(ctx)
	var beats, beatErrs atomic.Int64
	var beaters sync.WaitGroup
	for i := range members {
		m := &members[i]
		offset := time.Duration(int64(cfg.Heartbeat) * int64(i) / int64(cfg.Units))
		beaters.Go(func() {
			if !backoff.Wait(hbCtx, offset) {
				return
			}
			t := time.NewTicker(cfg.Heartbeat)
			defer t.Stop()
			for {
				known, err := unit.Heartbeat(hbCtx, m.conn, m.cluster, m.id, m.token, cfg.Heartbeat)
				switch {
				case hbCtx.Err() != nil:
					return
				case err != nil || !known:
					beatErrs.Add(1)
				default:
					beats.Add(1)
				}
				select {
				case <-hbCtx.Done():
					return
				case <-t.C:
				}
			}
		})
	}
	defer func() { stopBeats(); beaters.Wait() }()
	if !backoff.Wait(ctx, 2*cfg.Heartbeat) { // settle
		return nil, ctx.Err()
	}
	cpu0, err := processCPU(mgr.Process.Pid)
	if err != nil {
		return nil, err
	}
	beats0, t0 := beats.Load(), time.Now()
	if !backoff.Wait(ctx, cfg.Steady) {
		return nil, ctx.Err()
	}
	cpu1, err := processCPU(mgr.Process.Pid)
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(t0)
	res.SteadyS = elapsed.Seconds()
	res.ManagerCPUPercent = 100 * (cpu1 - cpu0).Seconds() / elapsed.Seconds()
	res.HeartbeatsPerS = float64(beats.Load()-beats0) / elapsed.Seconds()
	res.HeartbeatErrors = beatErrs.Load()
	if res.ManagerRSSMB, err = processRSSMB(mgr.Process.Pid); err != nil {
		return nil, err
	}
	var final *manager.Status
	if err := waitStatus(ctx, nc, func(s *manager.Status) bool { final = s; return true }); err != nil {
		return nil, err
	}
	res.ActiveAtEnd = final.Counts.Active
	res.Evicted = cfg.Units - final.Counts.Units
	return res, res.print(cfg.Out, cfg.JSON)
}

func (r *MembersResult) print(w io.Writer, asJSON bool) error {
	if asJSON {
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(r)
	}
	_, err := fmt.Fprintf(w, `cohort bench members: %d units in %d clusters, one manager process
  join storm        %.2f s   (all %d joins answered, 64 in flight)
  view complete     %.2f s   (manager status counts every unit active)
  steady state      %.1f s   %.0f heartbeats/s, %d heartbeat errors, %d active at the end, %d evicted
  manager           %.1f%% of one core, %.1f MB resident
`, r.Units, r.Clusters, r.JoinStormS, r.Units, r.ViewCompleteS, r.SteadyS, r.HeartbeatsPerS, r.HeartbeatErrors,
		r.ActiveAtEnd, r.Evicted, r.ManagerCPUPercent, r.ManagerRSSMB)
	return err
}

// startMembersIssuer runs an issuer whose policy has n tasks b0…b(n-1), each
// with its own simulated measurement and one cluster c0…c(n-1).
func startMembersIssuer(ctx context.Context, srv *embednats.Server, n int) (*issuer.Issuer, func(), error) {
	var b strings.Builder
	b.WriteString("version: 1\naccept_simulated: true\ntasks:\n")
	for i := range n {
		m, err := sim.MeasurementHex(sim.UnitIdentity(fmt.Sprintf("b%d", i)))
		if err != nil {
			return nil, nil, err
		}
		fmt.Fprintf(&b, "  - name: b%d\n    measurements: [%s]\n", i, m)
	}
	b.WriteString("clusters:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - id: c%d\n    task: b%d\n", i, i)
	}
	return startIssuerWith(ctx, srv, []byte(b.String()))
}

// certifyTasks obtains the pair of each task b0…b(n-1) as its units would.
func certifyTasks(ctx context.Context, srv *embednats.Server, n int) ([]*issuerclient.Pair, [][]byte, error) {
	nc, err := srv.Connect()
	if err != nil {
		return nil, nil, err
	}
	defer nc.Close()
	pin, err := sim.Measure(sim.IssuerIdentity)
	if err != nil {
		return nil, nil, err
	}
	pairs := make([]*issuerclient.Pair, n)
	ms := make([][]byte, n)
	for i := range n {
		p, err := sim.New(sim.Config{Identity: sim.UnitIdentity(fmt.Sprintf("b%d", i))})
		if err != nil {
			return nil, nil, err
		}
		client := issuerclient.Config{Conn: nc, Verifier: p, IssuerMeasurement: pin, AllowSimulated: true}
		trust, err := issuerclient.VerifyIssuer(ctx, client)
		if err != nil {
			return nil, nil, err
		}
		c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, Attester: p})
		if err != nil {
			return nil, nil, err
		}
		if pairs[i], err = c.Certify(ctx, fmt.Sprintf("b%d", i)); err != nil {
			return nil, nil, err
		}
		ms[i] = p.Measurement()
	}
	return pairs, ms, nil
}

// waitStatus polls the manager's status until ok accepts it.
func waitStatus(ctx context.Context, nc *nats.Conn, ok func(*manager.Status) bool) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		msg, err := nc.Request(messages.SubjectStatus, nil, 5*time.Second)
		if err == nil && msg.Header.Get("Nats-Service-Error-Code") == "" {
			if s, err := manager.DecodeStatus(msg.Data); err == nil && ok(s) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		if !backoff.Wait(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// clockTicks is Linux's USER_HZ, the unit of /proc/<pid>/stat's CPU times.
const clockTicks = 100

// processCPU is a process's user plus system CPU time, from /proc.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: read CPU time: %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, errors.New("bench: /proc stat too short")
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bench: /proc stat does not parse")
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// processRSSMB is a process's resident memory in MB, from /proc.
func processRSSMB(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: read memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, errors.New("bench: no VmRSS in /proc status")
}
