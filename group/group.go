// Package group gives the units of a group mutual TLS with one another.
//
// A group joins different tasks, one per party of a multi-party computation
// say. The issuer gives the units of every member task one group certificate
// and key, so a TLS handshake with that pair tells each side that the other
// runs code of one of the group's tasks. It does not tell which: every member
// holds the same key. So right after the handshake each side sends a
// messages.GroupProof: its task chain and its task key's signature over the
// connection's exported keying material (RFC 8446, section 7.5) and its role.
// A proof is bound to one connection and one direction; it names the peer's
// task, which only enclaves of that task can sign for.
//
// Guarantees:
//   - ServerConfig and ClientConfig accept a peer only if it presents a
//     certificate of this group that verifies to the issuer's root, for the
//     role it plays, now, and negotiates ALPN; a task certificate, another
//     group's certificate or a certificate of another root fails the
//     handshake with the reason. They speak TLS 1.3 only.
//   - Server and Client (and Dial) return a Conn only once the peer has also
//     proved its task: a task certificate from the same root, of a task the
//     group counts, whose key signed this connection's proof. Peer names it.
//   - The pairs are read at every handshake, so a renewed pair is used from
//     the next connection on; nothing is cached that outlives its validity.
package group

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
)

// ALPN is the application protocol a group connection negotiates.
const ALPN = "cohort-group/1"

// ErrPeer: the peer is not a member of the group, or did not prove its task.
var ErrPeer = errors.New("group: peer refused")

// Config configures a TLS.
type Config struct {
	Group string // required: the group's id
	// Pair returns the unit's current certificate pair, which must hold the
	// group's pair (issuerclient.CertifierConfig.Groups named it). Required.
	Pair func() *issuerclient.Pair
	// Timeout bounds a connection's dial, handshake and proofs: the sooner of
	// it and ctx's deadline applies. Default 10s.
	Timeout time.Duration
	Now     func() time.Time // default time.Now
}

// TLS makes the mutual-TLS configurations and connections of one group.
// It is safe for concurrent use.
type TLS struct {
	cfg   Config
	mu    sync.Mutex
	state *state // derived from the last pair seen; guarded by mu
}

// state is what a pair yields: the root to verify against, the group's TLS
// certificate and identity, the task chain to prove with.
type state struct {
	pair      *issuerclient.Pair
	roots     *x509.CertPool
	root      *x509.Certificate
	groupCert tls.Certificate
	groupID   identity.Identity
}

// Peer is the other end of a group connection, as it proved itself.
type Peer struct {
	Group     string
	Task      string            // the task whose key signed the peer's proof
	Cert      *x509.Certificate // the peer's task certificate
	Simulated bool              // its certificates were issued under a policy accepting simulated attestation
}

// Conn is a group connection whose peer has proved its task.
type Conn struct {
	*tls.Conn
	Peer Peer
}

// New checks cfg and returns the group's TLS.
func New(cfg Config) (*TLS, error) {
	if !messages.ValidTaskName(cfg.Group) {
		return nil, fmt.Errorf("group: id %q is not valid", cfg.Group)
	}
	if cfg.Pair == nil {
		return nil, errors.New("group: Config.Pair is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &TLS{cfg: cfg}
	if _, err := t.current(); err != nil {
		return nil, err
	}
	return t, nil
}

// current returns the state of the current pair, deriving it when the pair
// changed.
func (t *TLS) current() (*state, error) {
	p := t.cfg.Pair()
	if p == nil {
		return nil, errors.New("group: the unit holds no certificate pair yet")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != nil && t.state.pair == p {
		return t.state, nil
	}
	gp := p.Groups[t.cfg.Group]
	if gp == nil {
		return nil, fmt.Errorf("group: the unit's pair holds no certificate of group %q (ask for it in the unit's Groups)", t.cfg.Group)
	}
	root, err := x509.ParseCertificate(p.Chain[len(p.Chain)-1])
	if err != nil {
		return nil, fmt.Errorf("group: root certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	t.state = &state{pair: p, roots: roots, root: root, groupCert: gp.TLSCertificate(), groupID: gp.Identity}
	return t.state, nil
}

// certificate is the group's pair as the current pair holds it.
func (t *TLS) certificate() (*tls.Certificate, error) {
	s, err := t.current()
	if err != nil {
		return nil, err
	}
	return &s.groupCert, nil
}

// ServerConfig is the TLS configuration of the accepting side: it presents
// the group certificate and requires the client to present one too.
func (t *TLS) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		ClientAuth:             tls.RequireAnyClientCert, // verified by VerifyConnection, against the group
		SessionTicketsDisabled: true,                     // every connection shows the current certificates
		GetCertificate:         func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return t.certificate() },
		VerifyConnection:       func(cs tls.ConnectionState) error { return t.verifyGroup(cs, x509.ExtKeyUsageClientAuth) },
	}
}

// ClientConfig is the TLS configuration of the dialling side: it presents the
// group certificate and requires the server to present one too.
func (t *TLS) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		// A group certificate names no host: the usual host-name check is
		// replaced by VerifyConnection, which verifies the chain to the
		// issuer's root and that it is this group's certificate.
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return t.certificate() },
		VerifyConnection:     func(cs tls.ConnectionState) error { return t.verifyGroup(cs, x509.ExtKeyUsageServerAuth) },
	}
}

// verifyGroup accepts the peer's certificate if it is this group's, verified
// to the root for usage.
func (t *TLS) verifyGroup(cs tls.ConnectionState, usage x509.ExtKeyUsage) error {
	s, err := t.current()
	if err != nil {
		return err
	}
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: the peer presented no certificate", ErrPeer)
	}
	if cs.NegotiatedProtocol != ALPN {
		return fmt.Errorf("%w: the peer does not speak %s (ALPN %q)", ErrPeer, ALPN, cs.NegotiatedProtocol)
	}
	leaf := cs.PeerCertificates[0]
	if err := t.verify(s, leaf, cs.PeerCertificates[1:], usage); err != nil {
		return err
	}
	id, err := identity.FromCertificate(leaf)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPeer, err)
	}
	if id.Kind != identity.KindGroup || id.Name != t.cfg.Group {
		return fmt.Errorf("%w: the peer's certificate is for %s %q, not group %q", ErrPeer, id.Kind, id.Name, t.cfg.Group)
	}
	return nil
}

func (t *TLS) verify(s *state, leaf *x509.Certificate, rest []*x509.Certificate, usage x509.ExtKeyUsage) error {
	inter := x509.NewCertPool()
	for _, c := range rest {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, CurrentTime: t.cfg.Now(), KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return fmt.Errorf("%w: the peer's certificate does not verify to the issuer's root: %w", ErrPeer, err)
	}
	return nil
}

// Server runs the server side of a group connection over conn: the TLS
// handshake, then the exchange of proofs. On error it closes conn.
func (t *TLS) Server(ctx context.Context, conn net.Conn) (*Conn, error) {
	return t.handshake(ctx, tls.Server(conn, t.ServerConfig()), messages.GroupRoleServer, messages.GroupRoleClient)
}

// Client runs the client side of a group connection over conn. On error it
// closes conn.
func (t *TLS) Client(ctx context.Context, conn net.Conn) (*Conn, error) {
	return t.handshake(ctx, tls.Client(conn, t.ClientConfig()), messages.GroupRoleClient, messages.GroupRoleServer)
}

// Dial connects to a member of the group at addr (TCP) and runs Client.
func (t *TLS) Dial(ctx context.Context, addr string) (*Conn, error) {
	d := net.Dialer{Deadline: t.deadline(ctx)}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("group %q: dial %s: %w", t.cfg.Group, addr, err)
	}
	return t.Client(ctx, conn)
}

// deadline is the sooner of ctx's deadline and Timeout from now.
func (t *TLS) deadline(ctx context.Context) time.Time {
	d := time.Now().Add(t.cfg.Timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

func (t *TLS) handshake(ctx context.Context, tc *tls.Conn, mine, theirs string) (*Conn, error) {
	if err := tc.SetDeadline(t.deadline(ctx)); err != nil {
		tc.Close()
		return nil, err
	}
	// ctx ending cuts the exchange short: reads and writes fail at once.
	stop := context.AfterFunc(ctx, func() { _ = tc.SetDeadline(time.Unix(1, 0)) })
	peer, err := t.exchange(ctx, tc, mine, theirs)
	if !stop() && err == nil {
		err = context.Cause(ctx)
	}
	if err == nil {
		err = tc.SetDeadline(time.Time{})
	}
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("group %q: %w", t.cfg.Group, err)
	}
	return &Conn{Conn: tc, Peer: peer}, nil
}

// exchange completes the TLS handshake, sends this side's proof and checks
// the peer's.
func (t *TLS) exchange(ctx context.Context, tc *tls.Conn, mine, theirs string) (Peer, error) {
	if err := tc.HandshakeContext(ctx); err != nil {
		return Peer{}, fmt.Errorf("TLS handshake: %w", err)
	}
	s, err := t.current()
	if err != nil {
		return Peer{}, err
	}
	cs := tc.ConnectionState()
	exporter, err := cs.ExportKeyingMaterial(messages.GroupExporterLabel, nil, messages.GroupExporterSize)
	if err != nil {
		return Peer{}, fmt.Errorf("export keying material: %w", err)
	}
	proof, err := t.prove(s, mine, exporter)
	if err != nil {
		return Peer{}, err
	}
	// Both sides write, then read: the write runs beside the read so that
	// neither waits on the other's buffer.
	wrote := make(chan error, 1)
	go func() { wrote <- writeFrame(tc, proof) }()
	var theirProof messages.GroupProof
	rerr := readFrame(tc, &theirProof)
	if werr := <-wrote; werr != nil {
		return Peer{}, fmt.Errorf("send proof: %w", werr)
	}
	if rerr != nil {
		return Peer{}, fmt.Errorf("%w: receive the peer's proof: %w", ErrPeer, rerr)
	}
	return t.check(s, &theirProof, theirs, exporter)
}

// prove makes this side's proof for a connection.
func (t *TLS) prove(s *state, role string, exporter []byte) ([]byte, error) {
	key := s.pair.Key
	d := messages.GroupProofDigest(role, t.cfg.Group, exporter)
	sig, err := ecdsa.SignASN1(rand.Reader, key, d[:])
	if err != nil {
		return nil, fmt.Errorf("sign proof: %w", err)
	}
	return messages.Marshal(&messages.GroupProof{V: messages.Version, Chain: s.pair.Chain[:len(s.pair.Chain)-1], Signature: sig})
}

// check verifies the peer's proof: a task certificate of the same root, of a
// member task, whose key signed this connection's digest for the peer's role.
func (t *TLS) check(s *state, p *messages.GroupProof, role string, exporter []byte) (Peer, error) {
	certs := make([]*x509.Certificate, len(p.Chain))
	for i, der := range p.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return Peer{}, fmt.Errorf("%w: the peer's task certificate does not parse: %w", ErrPeer, err)
		}
		certs[i] = c
	}
	usage := x509.ExtKeyUsageServerAuth
	if role == messages.GroupRoleClient {
		usage = x509.ExtKeyUsageClientAuth
	}
	if err := t.verify(s, certs[0], certs[1:], usage); err != nil {
		return Peer{}, err
	}
	id, err := identity.FromCertificate(certs[0])
	if err != nil {
		return Peer{}, fmt.Errorf("%w: %w", ErrPeer, err)
	}
	if id.Kind != identity.KindTask || !s.groupID.HasTask(id.Name) {
		return Peer{}, fmt.Errorf("%w: the peer proves %s %q, which group %q does not count (its tasks are %v)", ErrPeer, id.Kind, id.Name, t.cfg.Group, s.groupID.Tasks)
	}
	pub, ok := certs[0].PublicKey.(*ecdsa.PublicKey)
	d := messages.GroupProofDigest(role, t.cfg.Group, exporter)
	if !ok || !ecdsa.VerifyASN1(pub, d[:], p.Signature) {
		return Peer{}, fmt.Errorf("%w: the proof of task %q is not signed for this connection by that task's key", ErrPeer, id.Name)
	}
	return Peer{Group: t.cfg.Group, Task: id.Name, Cert: certs[0], Simulated: id.Simulated}, nil
}

// writeFrame writes b with a 4-byte big-endian length before it.
func writeFrame(w io.Writer, b []byte) error {
	buf := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err := w.Write(append(buf, b...))
	return err
}

// readFrame reads one frame of at most messages.MaxGroupProof bytes and
// decodes it strictly.
func readFrame(r io.Reader, m *messages.GroupProof) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > messages.MaxGroupProof {
		return fmt.Errorf("%w: a %d-byte proof, at most %d", messages.ErrTooLarge, size, messages.MaxGroupProof)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return messages.Decode(b, messages.MaxGroupProof, m)
}
