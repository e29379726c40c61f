package integration

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/embednats"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
)

// natsProcessEnv names the configuration of a NATS server that this test
// binary, run again, is to be (TestMain): a process of its own, which a
// test can kill with SIGKILL as a machine's crash would.
const natsProcessEnv = "COHORT_TEST_NATS_PROCESS"

// processConfig is what a NATS server process is started with.
type processConfig struct {
	Name        string   `json:"name"`
	Port        int      `json:"port"`
	Dir         string   `json:"dir"`
	SyncAlways  bool     `json:"sync_always"`
	ClusterPort int      `json:"cluster_port,omitempty"`
	Routes      []string `json:"routes,omitempty"`
}

func TestMain(m *testing.M) {
	if cfg := os.Getenv(natsProcessEnv); cfg != "" {
		os.Exit(runNATSProcess(cfg))
	}
	os.Exit(m.Run())
}

// runNATSProcess is the NATS server process: it says "ready" once the
// server accepts connections, and runs until it is killed.
func runNATSProcess(config string) int {
	var pc processConfig
	if err := json.Unmarshal([]byte(config), &pc); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg := embednats.Config{Name: pc.Name, Port: pc.Port, StoreDir: pc.Dir, SyncAlways: pc.SyncAlways}
	if pc.ClusterPort != 0 {
		cfg.Cluster = &embednats.Route{Name: "crash", Port: pc.ClusterPort, Routes: pc.Routes}
	}
	srv, err := embednats.Start(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	fmt.Println("ready")
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	return 0
}

// natsProcess is a NATS server running as a process of its own.
type natsProcess struct {
	t   *testing.T
	cfg processConfig
	cmd *exec.Cmd
}

// start starts the process and waits until its server is ready.
func (p *natsProcess) start() {
	t := p.t
	t.Helper()
	b, err := json.Marshal(p.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), natsProcessEnv+"="+string(b))
	var logs strings.Builder // what the server says, shown if the test fails
	var logsMu sync.Mutex
	cmd.Stderr = writerFunc(func(b []byte) (int, error) {
		logsMu.Lock()
		defer logsMu.Unlock()
		return logs.Write(b)
	})
	t.Cleanup(func() {
		logsMu.Lock()
		defer logsMu.Unlock()
		if t.Failed() && logs.Len() > 0 {
			t.Logf("NATS process %s said:\n%s", p.cfg.Name, logs.String())
		}
	})
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- true
				break
			}
		}
		close(ready)
		_, _ = io.Copy(io.Discard, out) // keep the pipe drained
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("NATS process %s did not start", p.cfg.Name)
		}
	case <-time.After(deadline):
		t.Fatalf("NATS process %s not ready in time", p.cfg.Name)
	}
	p.cmd = cmd
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// kill sends SIGKILL and waits for the process to die: what the server had
// not written to the kernel is lost, as in a crash.
func (p *natsProcess) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
	p.cmd = nil
}

// startProcesses starts n NATS server processes, joined by routes when n
// is more than one, and returns them with the client URL of all.
func startProcesses(t *testing.T, n int, syncAlways bool) ([]*natsProcess, string) {
	t.Helper()
	ports := make([]int, 2*n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	var urls, routes []string
	for i := range n {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+i]))
	}
	dir := t.TempDir()
	procs := make([]*natsProcess, n)
	for i := range n {
		cfg := processConfig{Name: fmt.Sprintf("crash-%d", i+1), Port: ports[i], Dir: filepath.Join(dir, fmt.Sprint(i)), SyncAlways: syncAlways}
		if n > 1 {
			cfg.ClusterPort = ports[n+i]
			for j, r := range routes {
				if j != i {
					cfg.Routes = append(cfg.Routes, r)
				}
			}
		}
		procs[i] = &natsProcess{t: t, cfg: cfg}
	}
	// A cluster's servers wait for each other: start them together.
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(p.start)
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
	})
	url := strings.Join(urls, ",")
	waitJetStream(t, url)
	return procs, url
}

// waitJetStream waits until JetStream answers at url: a cluster's has
// elected its meta leader.
func waitJetStream(t *testing.T, url string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "JetStream answers", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	})
}

// freePort is a loopback port nobody listens on, as the kernel gives one.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// crashLoad is a load of handshakes and calls, each worker a session and a
// few calls on it at a time, which records what was acknowledged: the
// sessions a handshake returned, and the answers a unit was told JetStream
// stored.
type crashLoad struct {
	mu       sync.Mutex
	sessions map[string]bool
	answers  map[string]uint64 // "session/seq"
	failures int
}

func (l *crashLoad) answered(session []byte, seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answers[fmt.Sprintf("%x/%d", session, seq)] = seq
}

func (l *crashLoad) counts() (sessions, answers int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sessions), len(l.answers)
}

// run runs the load until ctx is done.
func (l *crashLoad) run(ctx context.Context, workers int, cfg func() client.Config) {
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				s, err := client.Dial(ctx, cfg())
				if err != nil {
					l.mu.Lock()
					l.failures++
					l.mu.Unlock()
					continue
				}
				l.mu.Lock()
				l.sessions[hex.EncodeToString(s.ID)] = true
				l.mu.Unlock()
				for i := range 3 {
					if _, err := s.Call(ctx, fmt.Appendf(nil, "call %d", i)); err != nil {
						break
					}
				}
			}
		})
	}
	wg.Wait()
}

// until waits until the load has acknowledged more sessions and answers than
// it had, by at least n of each.
func (l *crashLoad) until(t *testing.T, n int, what string) {
	t.Helper()
	s0, a0 := l.counts()
	eventually(t, what, func() bool {
		s, a := l.counts()
		return s >= s0+n && a >= a0+n
	})
}

// A NATS server killed with SIGKILL under a load of handshakes and calls,
// and started again, has kept every session whose handshake was answered
// and every answer a unit was told was stored: on one server that fsyncs
// every write, as cohort dev runs; and on a cluster of three with three
// replicas, each server killed in turn while the other two serve.
func TestCrashLosesNoAcknowledgedWrite(t *testing.T) {
	for _, c := range []struct {
		name     string
		servers  int
		sync     bool
		replicas int
	}{
		{"one server, fsync always", 1, true, 1},
		{"three servers, three replicas", 3, false, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			procs, url := startProcesses(t, c.servers, c.sync)
			dial := func() *nats.Conn {
				nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
					nats.ReconnectJitter(10*time.Millisecond, 10*time.Millisecond), nats.Timeout(2*time.Second))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(nc.Close)
				return nc
			}
			m := newMachine(t)
			// A cluster that formed a moment ago may take longer than the
			// JetStream API's timeout to make the first replicated stream:
			// the issuer then stops, and is started again, as a supervisor
			// would.
			var iss *issuer.Issuer
			for attempt := 1; iss == nil; attempt++ {
				i, err := issuer.New(issuer.Config{Ungoverned: true, Conn: dial(), Platform: m.platform(t), Policy: parsePolicy(t, policyYAML(t, true, time.Hour)),
					KeyCache: m.keyCache(), Replicas: c.replicas, Logger: logger(t)})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- i.Run(ctx) }()
				select {
				case <-i.Ready():
					iss = i
					t.Cleanup(func() { cancel(); <-done })
				case err := <-done:
					cancel()
					if attempt == 3 || !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("the issuer stopped before it was ready (attempt %d): %v", attempt, err)
					}
					t.Logf("the issuer stopped before it was ready (attempt %d), started again: %v", attempt, err)
				case <-time.After(deadline):
					cancel()
					t.Fatal("the issuer is not ready in time")
				}
			}
			mgr, err := manager.New(manager.Config{Conn: dial(), Root: iss.Root(), Interval: heartbeat, Replicas: c.replicas, Logger: logger(t)})
			if err != nil {
				t.Fatal(err)
			}
			runUntilReady(t, mgr.Run, mgr.Ready())
			load := &crashLoad{sessions: map[string]bool{}, answers: map[string]uint64{}}
			for i := range 3 {
				cfg := unitConfig(t, dial(), "demo", sim.UnitIdentity("demo"))
				cfg.Name, cfg.Cluster, cfg.Replicas, cfg.OnAnswer = fmt.Sprint("k", i), "c1", c.replicas, load.answered
				startUnit(t, cfg)
			}
			eventually(t, "three members active", func() bool { return mgr.Table().Counts(time.Now())[manager.Active] == 3 })

			roots := x509.NewCertPool()
			roots.AddCert(iss.Root())
			userConn := dial()
			ctx, stop := context.WithCancel(context.Background())
			loaded := make(chan struct{})
			go func() {
				defer close(loaded)
				load.run(ctx, 8, func() client.Config {
					return client.Config{Conn: userConn, User: "alice", Cluster: "c1", Roots: roots, CallTimeout: 500 * time.Millisecond, Retries: 40}
				})
			}()
			t.Cleanup(func() { stop(); <-loaded })
			load.until(t, 50, "the load under way")
			for _, p := range procs {
				p.kill()
				if c.servers > 1 {
					load.until(t, 20, "the load served by the other servers while "+p.cfg.Name+" is down")
				}
				p.start()
				load.until(t, 20, "the load served again after "+p.cfg.Name+" restarted")
			}
			stop()
			<-loaded
			sessions, answers := load.counts()

			// Everything acknowledged is there.
			js, err := jetstream.New(dial())
			if err != nil {
				t.Fatal(err)
			}
			// A stream whose server restarted a moment ago answers direct
			// gets only once its replicas have caught up: until then a get
			// has no responders, which is no loss; anything else is.
			get := func(stream, subject string) *jetstream.RawStreamMsg {
				t.Helper()
				var msg *jetstream.RawStreamMsg
				var err error
				end := time.Now().Add(deadline)
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				for {
					var st jetstream.Stream
					if st, err = js.Stream(context.Background(), stream); err == nil {
						msg, err = st.GetLastMsgForSubject(context.Background(), subject)
					}
					if err == nil || !(errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) || time.Now().After(end) {
						break
					}
					<-tick.C
				}
				if err != nil {
					t.Fatalf("%s: %v", subject, err)
				}
				return msg
			}
			load.mu.Lock()
			defer load.mu.Unlock()
			for id := range load.sessions {
				sid, _ := hex.DecodeString(id)
				get(messages.SessionsStream("c1"), messages.SessionSubject("c1", sid))
			}
			for key, seq := range load.answers {
				sid, _ := hex.DecodeString(strings.Split(key, "/")[0])
				msg := get(messages.CallsStreamOf("c1", sid), messages.ClaimSubject("c1", sid, seq))
				var claim messages.CallClaim
				if err := messages.Decode(msg.Data, messages.MaxCallClaim, &claim); err != nil || claim.State != messages.ClaimAnswered {
					t.Fatalf("the stored answer of call %s: state %d, %v", key, claim.State, err)
				}
			}
			t.Logf("%d sessions and %d answers acknowledged, all kept through %d SIGKILLs (%d handshakes failed meanwhile)", sessions, answers, len(procs), load.failures)
		})
	}
}
