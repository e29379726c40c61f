package group

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
)

// ca is a test root that makes task and group pairs as the issuer does.
type ca struct {
	t    testing.TB
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

var t0 = time.Now()

func newCA(t testing.TB) *ca {
	t.Helper()
	key := mustKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &ca{t: t, key: key, cert: cert}
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// leaf makes a certificate for id with the given usages.
func (c *ca) leaf(id identity.Identity, usages ...x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
	c.t.Helper()
	if usages == nil {
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	ext, err := id.Extension()
	if err != nil {
		c.t.Fatal(err)
	}
	key := mustKey(c.t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: id.Name},
		NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(30 * time.Minute),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usages,
		URIs: []*url.URL{id.URI()}, ExtraExtensions: []pkix.Extension{ext},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		c.t.Fatal(err)
	}
	return der, key
}

// pair makes a unit's pair of task holding groups' pairs.
func (c *ca) pair(task string, groups map[string][]string) *issuerclient.Pair {
	c.t.Helper()
	der, key := c.leaf(identity.Identity{Kind: identity.KindTask, Name: task})
	p := &issuerclient.Pair{Task: task, Chain: [][]byte{der, c.cert.Raw}, Key: key, Leaf: parse(c.t, der), Groups: map[string]*issuerclient.GroupPair{}}
	for g, tasks := range groups {
		id := identity.Identity{Kind: identity.KindGroup, Name: g, Tasks: tasks}
		gder, gkey := c.leaf(id)
		p.Groups[g] = &issuerclient.GroupPair{Group: g, Chain: [][]byte{gder, c.cert.Raw}, Key: gkey, Leaf: parse(c.t, gder), Identity: id}
	}
	return p
}

func parse(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newTLS(t testing.TB, group string, p *issuerclient.Pair) *TLS {
	t.Helper()
	g, err := New(Config{Group: group, Pair: func() *issuerclient.Pair { return p }, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// connect runs the server side with srv and the client side with cli over a
// loopback TCP connection and returns both ends' results.
func connect(t *testing.T, srv, cli func(context.Context, net.Conn) (*Conn, error)) (sc, cc *Conn, serr, cerr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			serr = err
			return
		}
		sc, serr = srv(ctx, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc, cerr = cli(ctx, c)
	if cerr != nil {
		c.Close() // so that a server waiting for the client's proof returns
	}
	<-done
	for _, conn := range []*Conn{sc, cc} {
		if conn != nil {
			t.Cleanup(func() { conn.Close() })
		}
	}
	return sc, cc, serr, cerr
}

var trio = map[string][]string{"trio": {"alpha", "beta", "gamma"}}

func TestMembersProveTheirTasks(t *testing.T) {
	c := newCA(t)
	a, b := c.pair("alpha", trio), c.pair("beta", trio)
	// Both hold the one group pair, as units of the issuer do.
	b.Groups["trio"] = a.Groups["trio"]
	ga, gb := newTLS(t, "trio", a), newTLS(t, "trio", b)
	sc, cc, serr, cerr := connect(t, ga.Server, gb.Client)
	if serr != nil || cerr != nil {
		t.Fatalf("server: %v; client: %v", serr, cerr)
	}
	if sc.Peer.Task != "beta" || cc.Peer.Task != "alpha" || sc.Peer.Group != "trio" {
		t.Fatalf("server sees %+v, client sees %+v", sc.Peer, cc.Peer)
	}
	if sc.ConnectionState().NegotiatedProtocol != ALPN || sc.ConnectionState().Version != tls.VersionTLS13 {
		t.Errorf("protocol %q, version %x", sc.ConnectionState().NegotiatedProtocol, sc.ConnectionState().Version)
	}
	// The connection carries data after the proofs.
	go func() { _, _ = cc.Write([]byte("ping")) }()
	buf := make([]byte, 4)
	if _, err := sc.Read(buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

func TestTLSConfigRefusesOtherCertificates(t *testing.T) {
	c := newCA(t)
	member := c.pair("alpha", trio)
	g := newTLS(t, "trio", member)
	other := newCA(t).pair("beta", trio) // the right group, another root
	duo := c.pair("beta", map[string][]string{"duo": {"alpha", "beta"}})
	taskCert := member.TLSCertificate()
	cases := map[string]struct {
		cert tls.Certificate
		want string
	}{
		"a task certificate":          {taskCert, `task "alpha", not group "trio"`},
		"another group's":             {duo.Groups["duo"].TLSCertificate(), `group "duo", not group "trio"`},
		"the group's of another root": {other.Groups["trio"].TLSCertificate(), "does not verify"},
	}
	for name, tc := range cases {
		t.Run(name+" as client", func(t *testing.T) {
			conf := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{ALPN}, Certificates: []tls.Certificate{tc.cert}}
			_, _, serr, _ := connect(t, g.Server, func(ctx context.Context, conn net.Conn) (*Conn, error) {
				tc := tls.Client(conn, conf)
				return nil, tc.HandshakeContext(ctx)
			})
			if !errors.Is(serr, ErrPeer) || !strings.Contains(serr.Error(), tc.want) {
				t.Fatalf("server: %v; want ErrPeer naming %q", serr, tc.want)
			}
		})
		t.Run(name+" as server", func(t *testing.T) {
			conf := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{ALPN}, Certificates: []tls.Certificate{tc.cert}, ClientAuth: tls.RequireAnyClientCert}
			_, _, _, cerr := connect(t, func(ctx context.Context, conn net.Conn) (*Conn, error) {
				return nil, tls.Server(conn, conf).HandshakeContext(ctx)
			}, g.Client)
			if !errors.Is(cerr, ErrPeer) || !strings.Contains(cerr.Error(), tc.want) {
				t.Fatalf("client: %v; want ErrPeer naming %q", cerr, tc.want)
			}
		})
	}
	t.Run("no ALPN", func(t *testing.T) {
		conf := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{member.Groups["trio"].TLSCertificate()}}
		_, _, serr, _ := connect(t, g.Server, func(ctx context.Context, conn net.Conn) (*Conn, error) {
			return nil, tls.Client(conn, conf).HandshakeContext(ctx)
		})
		if !errors.Is(serr, ErrPeer) || !strings.Contains(serr.Error(), "ALPN") {
			t.Fatalf("server: %v; want ErrPeer about ALPN", serr)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		_, _, serr, _ := connect(t, g.Server, func(ctx context.Context, conn net.Conn) (*Conn, error) {
			return nil, tls.Client(conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}).HandshakeContext(ctx)
		})
		if serr == nil {
			t.Fatal("a client without a certificate was accepted")
		}
	})
}

func TestRefusesGroupUsageMissing(t *testing.T) {
	c := newCA(t)
	member := c.pair("alpha", trio)
	id := identity.Identity{Kind: identity.KindGroup, Name: "trio", Tasks: trio["trio"]}
	der, key := c.leaf(id, x509.ExtKeyUsageServerAuth) // no client authentication
	serverOnly := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	conf := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{ALPN}, Certificates: []tls.Certificate{serverOnly}}
	_, _, serr, _ := connect(t, newTLS(t, "trio", member).Server, func(ctx context.Context, conn net.Conn) (*Conn, error) {
		return nil, tls.Client(conn, conf).HandshakeContext(ctx)
	})
	if !errors.Is(serr, ErrPeer) || !strings.Contains(serr.Error(), "usage") {
		t.Fatalf("server: %v; want a refusal of the key usage", serr)
	}
}

// impostor holds the group pair but proves with the pair of a task outside
// the group, or with a proof it did not make for this connection.
func TestRefusesBadProofs(t *testing.T) {
	c := newCA(t)
	member := c.pair("alpha", trio)
	g := newTLS(t, "trio", member)

	t.Run("task outside the group", func(t *testing.T) {
		outsider := c.pair("delta", nil)
		outsider.Groups = member.Groups // somehow holds the group pair
		_, _, serr, _ := connect(t, g.Server, newTLS(t, "trio", outsider).Client)
		if !errors.Is(serr, ErrPeer) || !strings.Contains(serr.Error(), `task "delta", which group "trio" does not count`) {
			t.Fatalf("server: %v", serr)
		}
	})
	t.Run("proof replayed from another connection", func(t *testing.T) {
		beta := c.pair("beta", nil)
		beta.Groups = member.Groups
		// A proof made over another connection's keying material.
		d := messages.GroupProofDigest(messages.GroupRoleClient, "trio", bytes.Repeat([]byte{7}, messages.GroupExporterSize))
		sig, err := ecdsa.SignASN1(rand.Reader, beta.Key, d[:])
		if err != nil {
			t.Fatal(err)
		}
		replayed, err := messages.Marshal(&messages.GroupProof{V: messages.Version, Chain: beta.Chain[:1], Signature: sig})
		if err != nil {
			t.Fatal(err)
		}
		_, _, serr, _ := connect(t, g.Server, rawClient(t, member, replayed))
		if !errors.Is(serr, ErrPeer) || !strings.Contains(serr.Error(), "not signed for this connection") {
			t.Fatalf("server: %v", serr)
		}
	})
	t.Run("proof reflected", func(t *testing.T) {
		// The client sends a proof signed for the server's role.
		_, _, serr, _ := connect(t, g.Server, func(ctx context.Context, conn net.Conn) (*Conn, error) {
			tc := tls.Client(conn, newTLS(t, "trio", member).ClientConfig())
			if err := tc.HandshakeContext(ctx); err != nil {
				return nil, err
			}
			cs := tc.ConnectionState()
			ex, _ := cs.ExportKeyingMaterial(messages.GroupExporterLabel, nil, messages.GroupExporterSize)
			d := messages.GroupProofDigest(messages.GroupRoleServer, "trio", ex)
			sig, _ := ecdsa.SignASN1(rand.Reader, member.Key, d[:])
			b, _ := messages.Marshal(&messages.GroupProof{V: messages.Version, Chain: member.Chain[:1], Signature: sig})
			return nil, writeFrame(tc, b)
		})
		if !errors.Is(serr, ErrPeer) || !strings.Contains(serr.Error(), "not signed for this connection") {
			t.Fatalf("server: %v", serr)
		}
	})
	for name, frame := range map[string][]byte{
		"oversize frame": {0xff, 0xff, 0xff, 0xff},
		"garbage proof":  append([]byte{0, 0, 0, 3}, 1, 2, 3),
	} {
		t.Run(name, func(t *testing.T) {
			_, _, serr, _ := connect(t, g.Server, rawFrames(t, member, frame))
			if !errors.Is(serr, ErrPeer) {
				t.Fatalf("server: %v; want ErrPeer", serr)
			}
		})
	}
}

// rawClient completes the TLS handshake as a member and sends proof as is.
func rawClient(t *testing.T, p *issuerclient.Pair, proof []byte) func(context.Context, net.Conn) (*Conn, error) {
	return func(ctx context.Context, conn net.Conn) (*Conn, error) {
		tc := tls.Client(conn, newTLS(t, "trio", p).ClientConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, err
		}
		return nil, writeFrame(tc, proof)
	}
}

// rawFrames completes the TLS handshake as a member and writes b unframed.
func rawFrames(t *testing.T, p *issuerclient.Pair, b []byte) func(context.Context, net.Conn) (*Conn, error) {
	return func(ctx context.Context, conn net.Conn) (*Conn, error) {
		tc := tls.Client(conn, newTLS(t, "trio", p).ClientConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, err
		}
		_, err := tc.Write(b)
		return nil, err
	}
}

// A peer that completes the handshake and then stays silent holds the other
// side only until its context ends.
func TestSilentPeerReleasedByContext(t *testing.T) {
	c := newCA(t)
	member := c.pair("alpha", trio)
	g := newTLS(t, "trio", member)
	g.cfg.Timeout = time.Hour
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	result := make(chan error, 1)
	handshook := make(chan struct{})
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			result <- err
			return
		}
		_, err = g.Server(ctx, conn)
		result <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := tls.Client(conn, newTLS(t, "trio", member).ClientConfig())
	go func() {
		if tc.Handshake() == nil {
			close(handshook)
		}
	}()
	select {
	case <-handshook:
	case err := <-result:
		t.Fatalf("server returned before the silence: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no handshake")
	}
	cancel() // the client never sends its proof
	select {
	case err := <-result:
		if !errors.Is(err, context.Canceled) && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("server: %v; want it ended by the context", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the server still waits for the silent peer")
	}
}

func TestNewRefuses(t *testing.T) {
	p := newCA(t).pair("alpha", nil)
	for name, cfg := range map[string]Config{
		"bad id":         {Group: "Trio", Pair: func() *issuerclient.Pair { return p }},
		"no pair func":   {Group: "trio"},
		"no pair yet":    {Group: "trio", Pair: func() *issuerclient.Pair { return nil }},
		"group not held": {Group: "trio", Pair: func() *issuerclient.Pair { return p }},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzReadFrame: no frame makes readFrame panic or accept more than the cap.
func FuzzReadFrame(f *testing.F) {
	good, err := messages.Marshal(&messages.GroupProof{V: messages.Version, Chain: [][]byte{{1, 2}}, Signature: bytes.Repeat([]byte{3}, 70)})
	if err != nil {
		f.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writeFrame(&buf, good); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 1, 0xc1})
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m messages.GroupProof
		if err := readFrame(bytes.NewReader(data), &m); err != nil {
			return
		}
		if len(data) < 4 || len(data)-4 > messages.MaxGroupProof || m.Validate() != nil {
			t.Fatalf("accepted %d bytes: %+v", len(data), m)
		}
	})
}

// BenchmarkConnection: one group connection over TCP loopback, both sides in
// this process: the TLS 1.3 handshake with the group certificates and the
// exchange of task proofs.
func BenchmarkConnection(b *testing.B) {
	c := newCA(b)
	a, p := c.pair("alpha", trio), c.pair("beta", nil)
	p.Groups = a.Groups
	ga, gb := newTLS(b, "trio", a), newTLS(b, "trio", p)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx := context.Background()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				if gc, err := ga.Server(ctx, conn); err == nil {
					gc.Close()
				}
			}()
		}
	}()
	for b.Loop() {
		gc, err := gb.Dial(ctx, ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		gc.Close()
	}
}
