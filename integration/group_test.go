package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/examples/mpc"
	"github.com/cohort-dev/cohort/group"
	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/unit"
)

var trioTasks = []string{"alpha", "beta", "gamma"}

// groupPolicyYAML accepts tasks alpha, beta, gamma and outsider, each for
// this test binary's simulated measurement, and declares group trio of the
// first three and group duo of alpha and beta.
func groupPolicyYAML(t *testing.T) []byte {
	t.Helper()
	var b strings.Builder
	b.WriteString("version: 1\naccept_simulated: true\nvalidity:\n  task: 1h\ntasks:\n")
	for _, task := range append(slices.Clone(trioTasks), "outsider") {
		fmt.Fprintf(&b, "  - name: %s\n    measurements: [%s]\n", task, hex.EncodeToString(measure(t, sim.UnitIdentity(task))))
	}
	b.WriteString("groups:\n  - id: trio\n    tasks: [alpha, beta, gamma]\n  - id: duo\n    tasks: [alpha, beta]\n")
	return []byte(b.String())
}

// groupStack is NATS, the issuer of groupPolicyYAML, and one unit per task
// of trio; alpha also holds duo.
type groupStack struct {
	dir    string
	secret *machine
	nc     *nats.Conn
	iss    *runningIssuer
	units  map[string]*unit.Unit
}

func startGroupStack(t *testing.T) *groupStack {
	t.Helper()
	s := &groupStack{dir: t.TempDir(), secret: newMachine(t), units: map[string]*unit.Unit{}}
	srv := startNATS(t, s.dir)
	s.nc = connect(t, srv)
	s.iss = startIssuer(t, s.nc, parsePolicy(t, groupPolicyYAML(t)), s.secret)
	for _, task := range trioTasks {
		cfg := unitConfig(t, connect(t, srv), task, sim.UnitIdentity(task))
		cfg.Groups = []string{"trio"}
		if task == "alpha" {
			cfg.Groups = []string{"trio", "duo"}
		}
		s.units[task] = startUnit(t, cfg)
	}
	return s
}

func groupTLS(t *testing.T, u *unit.Unit, id string) *group.TLS {
	t.Helper()
	g, err := u.Group(id)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestGroupMembersShareOneCertificate(t *testing.T) {
	s := startGroupStack(t)
	want, ok := s.iss.GroupCertificate("trio")
	if !ok {
		t.Fatal("the issuer holds no certificate of group trio")
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.iss.Root())
	for task, u := range s.units {
		gp := u.Pair().Groups["trio"]
		if gp == nil || !bytes.Equal(gp.Leaf.Raw, want.Raw) {
			t.Fatalf("unit of %s does not hold the issuer's trio certificate", task)
		}
		if !gp.Key.PublicKey.Equal(want.PublicKey) {
			t.Fatalf("unit of %s holds another key", task)
		}
	}
	id, err := identity.FromCertificate(want)
	if err != nil {
		t.Fatal(err)
	}
	if id.Kind != identity.KindGroup || id.Name != "trio" || !slices.Equal(id.Tasks, trioTasks) || !id.Simulated {
		t.Fatalf("identity %+v", id)
	}
	if len(want.URIs) != 1 || want.URIs[0].String() != "urn:cohort:group:trio" {
		t.Fatalf("URI SANs %v", want.URIs)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := want.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("usage %v: %v", usage, err)
		}
	}
	if duo := s.units["alpha"].Pair().Groups["duo"]; duo == nil || bytes.Equal(duo.Leaf.Raw, want.Raw) {
		t.Error("alpha does not hold a certificate of its own for group duo")
	}
	if s.units["beta"].Pair().Groups["duo"] != nil {
		t.Error("beta holds duo, which it did not ask for")
	}
	opensslVerify(t, s.iss.Root(), want)
}

// opensslVerify checks a group certificate with OpenSSL for both TLS
// purposes. CI installs openssl (and fails here without it); elsewhere the
// check is skipped without it.
func opensslVerify(t *testing.T, root, leaf *x509.Certificate) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl is not installed, and CI must run openssl verify")
		}
		t.Log("openssl not installed: skipping openssl verify")
		return
	}
	dir := t.TempDir()
	write := func(name string, c *x509.Certificate) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rootPEM, leafPEM := write("root.pem", root), write("group.pem", leaf)
	for _, purpose := range []string{"sslserver", "sslclient"} {
		out, err := exec.Command(bin, "verify", "-x509_strict", "-purpose", purpose, "-CAfile", rootPEM, leafPEM).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("openssl verify -purpose %s: %v\n%s", purpose, err, out)
		}
	}
}

func TestGroupComputation(t *testing.T) {
	s := startGroupStack(t)
	figures := map[string]int64{"alpha": 7, "beta": 30, "gamma": 12}
	parties := map[string]*mpc.Party{}
	addrs := map[string]string{}
	for _, task := range trioTasks {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		parties[task] = &mpc.Party{Task: task, Figure: figures[task], TLS: groupTLS(t, s.units[task], "trio"), Listener: ln}
		addrs[task] = ln.Addr().String()
	}
	// Strangers reach gamma's listener first (gamma accepts alpha and beta):
	// one sends garbage, one stays silent, one presents a task certificate.
	// None aborts the computation.
	for _, stranger := range []func(net.Conn){
		func(c net.Conn) { _, _ = c.Write([]byte("GET / HTTP/1.0\r\n\r\n")) },
		func(net.Conn) {},
		func(c net.Conn) {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{group.ALPN}, Certificates: []tls.Certificate{s.units["beta"].Pair().TLSCertificate()}})
			_ = tc.Handshake()
		},
	} {
		c, err := net.Dial("tcp", addrs["gamma"])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go stranger(c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	var mu sync.Mutex
	results := map[string]mpc.Result{}
	var wg sync.WaitGroup
	for _, task := range trioTasks {
		peers := maps.Clone(addrs)
		delete(peers, task)
		wg.Go(func() {
			r, err := parties[task].Compute(ctx, peers)
			if err != nil {
				t.Errorf("%s: %v", task, err)
			}
			mu.Lock()
			results[task] = r
			mu.Unlock()
		})
	}
	wg.Wait()
	want := mpc.Result{Parties: trioTasks, Sum: 49, Mean: 49.0 / 3, Max: 30}
	for _, task := range trioTasks {
		if !results[task].Equal(want) {
			t.Errorf("%s learned %+v, want %+v", task, results[task], want)
		}
	}
}

func TestGroupPeersProveTheirTasks(t *testing.T) {
	s := startGroupStack(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	server := groupTLS(t, s.units["gamma"], "trio")
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	accepted := make(chan *group.Conn, 1)
	go func() {
		defer close(accepted)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		gc, err := server.Server(ctx, c)
		if err != nil {
			t.Errorf("server: %v", err)
			return
		}
		accepted <- gc
	}()
	gc, err := groupTLS(t, s.units["beta"], "trio").Dial(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	sc := <-accepted
	if sc == nil {
		t.FailNow()
	}
	defer sc.Close()
	if gc.Peer.Task != "gamma" || sc.Peer.Task != "beta" || !gc.Peer.Simulated {
		t.Fatalf("client sees %+v, server sees %+v", gc.Peer, sc.Peer)
	}
	if !bytes.Equal(gc.ConnectionState().PeerCertificates[0].Raw, s.units["beta"].Pair().Groups["trio"].Leaf.Raw) {
		t.Error("the server did not present the group certificate")
	}
}

func TestGroupRefusesOutsiders(t *testing.T) {
	s := startGroupStack(t)
	// A unit of a task outside the group: refused, whole, with the group named.
	cfg := unitConfig(t, s.nc, "outsider", sim.UnitIdentity("outsider"))
	cfg.Groups = []string{"trio"}
	u, err := unit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	err = u.Run(ctx)
	if !errors.Is(err, messages.ErrNotInGroup) || !strings.Contains(err.Error(), `group "trio"`) || u.Pair() != nil {
		t.Fatalf("outsider: got %v, pair %v; want not_in_group naming trio and no pair", err, u.Pair())
	}

	ask := func(task string, groups ...string) (*issuerclient.Pair, error) {
		p := unitPlatform(t, sim.UnitIdentity(task))
		client := issuerclient.Config{Conn: s.nc, Verifier: p, IssuerMeasurement: measure(t, sim.IssuerIdentity), AllowSimulated: true}
		trust, err := issuerclient.VerifyIssuer(ctx, client)
		if err != nil {
			t.Fatal(err)
		}
		c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{Client: client, Trust: trust, Attester: p, Groups: groups})
		if err != nil {
			t.Fatal(err)
		}
		return c.Certify(ctx, task)
	}
	for name, tc := range map[string]struct {
		task   string
		groups []string
		want   error
		names  string
	}{
		"a member of one group asking for two": {"gamma", []string{"trio", "duo"}, messages.ErrNotInGroup, `group "duo"`},
		"a group the policy does not declare":  {"alpha", []string{"nosuch"}, messages.ErrUnknownGroup, `group "nosuch"`},
	} {
		t.Run(name, func(t *testing.T) {
			pair, err := ask(tc.task, tc.groups...)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.names) || pair != nil {
				t.Fatalf("got %v, %v; want %v naming %s", pair, err, tc.want, tc.names)
			}
		})
	}
	// A member asking for its groups gets them, in its order.
	pair, err := ask("alpha", "duo", "trio")
	if err != nil || len(pair.Groups) != 2 || pair.Groups["duo"] == nil || pair.Groups["trio"] == nil {
		t.Fatalf("alpha asking for duo and trio: %v, %v", pair, err)
	}
}

// TestGroupTLSRefusesOtherCertificates: the group's TLS configurations, with
// the pairs the issuer handed out, refuse a task certificate and another
// group's certificate, as client and as server.
func TestGroupTLSRefusesOtherCertificates(t *testing.T) {
	s := startGroupStack(t)
	trio := groupTLS(t, s.units["gamma"], "trio")
	alpha := s.units["alpha"].Pair()
	for name, tc := range map[string]struct {
		cert tls.Certificate
		want string
	}{
		"a task certificate":    {alpha.TLSCertificate(), `task "alpha", not group "trio"`},
		"another group's":       {alpha.Groups["duo"].TLSCertificate(), `group "duo", not group "trio"`},
		"the group's, as check": {alpha.Groups["trio"].TLSCertificate(), ""},
	} {
		t.Run(name, func(t *testing.T) {
			serr, cerr := handshake(t, trio.ServerConfig(), &tls.Config{
				InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{group.ALPN}, Certificates: []tls.Certificate{tc.cert},
			})
			if tc.want == "" {
				if serr != nil || cerr != nil {
					t.Fatalf("the group's own certificate: server %v, client %v", serr, cerr)
				}
				return
			}
			if !errors.Is(serr, group.ErrPeer) || !strings.Contains(serr.Error(), tc.want) {
				t.Fatalf("as client: server says %v; want ErrPeer naming %s", serr, tc.want)
			}
			_, cerr = handshake(t, &tls.Config{
				MinVersion: tls.VersionTLS13, NextProtos: []string{group.ALPN}, Certificates: []tls.Certificate{tc.cert}, ClientAuth: tls.RequireAnyClientCert,
			}, trio.ClientConfig())
			if !errors.Is(cerr, group.ErrPeer) || !strings.Contains(cerr.Error(), tc.want) {
				t.Fatalf("as server: client says %v; want ErrPeer naming %s", cerr, tc.want)
			}
		})
	}
}

// handshake runs one TLS handshake over loopback and returns each side's
// error.
func handshake(t *testing.T, server, client *tls.Config) (serr, cerr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- tls.Server(c, server).HandshakeContext(ctx)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, client)
	cerr = tc.HandshakeContext(ctx)
	if cerr == nil {
		// In TLS 1.3 the client finishes first; a read learns the server's verdict.
		_ = tc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, _ = tc.Read(make([]byte, 1))
	}
	c.Close()
	return <-done, cerr
}

func TestIssuerRestartKeepsGroupCertificate(t *testing.T) {
	dir, secret := t.TempDir(), newMachine(t)
	srv := startNATS(t, dir)
	nc := connect(t, srv)
	policy := parsePolicy(t, groupPolicyYAML(t))
	first := startIssuer(t, nc, policy, secret)
	before, _ := first.GroupCertificate("trio")
	first.stop()
	again := startIssuer(t, connect(t, srv), parsePolicy(t, groupPolicyYAML(t)), secret)
	after, ok := again.GroupCertificate("trio")
	if !ok || !bytes.Equal(before.Raw, after.Raw) {
		t.Fatal("a restarted issuer gives another trio certificate")
	}
	cfg := unitConfig(t, connect(t, srv), "beta", sim.UnitIdentity("beta"))
	cfg.Groups = []string{"trio"}
	if got := startUnit(t, cfg).Pair().Groups["trio"]; !bytes.Equal(got.Leaf.Raw, before.Raw) {
		t.Fatal("a unit certified by the restarted issuer holds another trio certificate")
	}
}
