package issuerclient

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

// CertifierConfig configures a Certifier.
type CertifierConfig struct {
	Client   Config           // how to reach the issuer (Verifier and the pin are not used by Certify)
	Trust    *Trust           // required: the verified issuer
	Attester enclave.Attester // required: this enclave's attester
	// KEM is the HPKE KEM the secrets are sealed with; default
	// messages.KEMMLKEM768X25519 (post-quantum hybrid).
	KEM uint16
	// Cluster, if set, asks for that cluster's key with the pair.
	Cluster string
	// Groups asks for the pair of each of these groups of the task: at most
	// messages.MaxGroups, each once.
	Groups []string
	Now    func() time.Time // default time.Now
}

// Certifier obtains task certificate pairs from the issuer. It is safe for
// concurrent use.
type Certifier struct {
	cfg CertifierConfig
	kem hpke.KEM
	// verified caches the last chain that verified, so that the replicas'
	// shared certificate is verified once, not on every request. Reusing it is
	// safe: the same bytes against the same root verify the same way, and the
	// validity window is checked on every use.
	verified atomic.Pointer[verifiedLeaf]
	// groupVerified does the same for each group's certificate.
	groupVerified map[string]*atomic.Pointer[verifiedLeaf]
}

type verifiedLeaf struct {
	der  []byte
	leaf *x509.Certificate
	id   identity.Identity
}

// Pair is a task's certificate pair as the issuer handed it out, with its
// cluster's key when one was asked for.
type Pair struct {
	Task       string
	Chain      [][]byte // DER, leaf first, root last
	Leaf       *x509.Certificate
	Key        *ecdsa.PrivateKey
	Identity   identity.Identity
	ClusterKey *ClusterKey // nil unless the request named a cluster
	// Groups holds the pair of each group the request named, by id.
	Groups map[string]*GroupPair
}

// GroupPair is a group's certificate pair: the same for the units of every
// task of the group.
type GroupPair struct {
	Group    string
	Chain    [][]byte // DER: the group certificate, then the root
	Leaf     *x509.Certificate
	Key      *ecdsa.PrivateKey
	Identity identity.Identity // kind group, naming the member tasks
}

// TLSCertificate returns the group pair for a tls.Config, without the root.
func (g *GroupPair) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: g.Chain[:len(g.Chain)-1], PrivateKey: g.Key, Leaf: g.Leaf}
}

// ClusterKey is the key every unit of a cluster shares. It never leaves the
// enclave in the clear.
type ClusterKey struct {
	Cluster string
	Epoch   uint32
	Key     []byte
}

// Root returns the root certificate the pair's chain ends in.
func (p *Pair) Root() *x509.Certificate {
	root, err := x509.ParseCertificate(p.Chain[len(p.Chain)-1])
	if err != nil {
		return nil
	}
	return root
}

// TLSCertificate returns the pair for a tls.Config. The chain it presents
// stops short of the root, which the peer already holds.
func (p *Pair) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: p.Chain[:len(p.Chain)-1], PrivateKey: p.Key, Leaf: p.Leaf}
}

// NewCertifier checks cfg and returns a Certifier.
func NewCertifier(cfg CertifierConfig) (*Certifier, error) {
	if cfg.Client.Conn == nil {
		return nil, errors.New("issuerclient: CertifierConfig.Client.Conn is required")
	}
	if cfg.Trust == nil || cfg.Attester == nil {
		return nil, errors.New("issuerclient: CertifierConfig.Trust and Attester are required")
	}
	if cfg.KEM == 0 {
		cfg.KEM = messages.KEMMLKEM768X25519
	}
	if cfg.Client.Timeout <= 0 {
		cfg.Client.Timeout = defaultTimeout
	}
	if cfg.Client.Rand == nil {
		cfg.Client.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	kem, err := hpke.NewKEM(cfg.KEM)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: %w", err)
	}
	cfg.Groups = slices.Clone(cfg.Groups)
	if len(cfg.Groups) > messages.MaxGroups {
		return nil, fmt.Errorf("issuerclient: %d groups, at most %d per request", len(cfg.Groups), messages.MaxGroups)
	}
	c := &Certifier{cfg: cfg, kem: kem, groupVerified: map[string]*atomic.Pointer[verifiedLeaf]{}}
	for _, g := range cfg.Groups {
		if !messages.ValidTaskName(g) {
			return nil, fmt.Errorf("issuerclient: group id %q is not valid", g)
		}
		if c.groupVerified[g] != nil {
			return nil, fmt.Errorf("issuerclient: group %q named twice", g)
		}
		c.groupVerified[g] = new(atomic.Pointer[verifiedLeaf])
	}
	return c, nil
}

// Certify asks the issuer for the task's certificate pair.
func (c *Certifier) Certify(ctx context.Context, task string) (*Pair, error) {
	p, req, err := c.Prepare(ctx, task)
	if err != nil {
		return nil, err
	}
	reply, err := service.Request(ctx, c.cfg.Client.Conn, messages.SubjectCertify, req, c.cfg.Client.Timeout)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: certify %q: %w", task, p.Refusal(err))
	}
	return p.Open(reply)
}

// ErrAuthenticRefusal marks a refusal that the trusted root signed for this
// very request: the issuer, not a forger, refused it.
var ErrAuthenticRefusal = errors.New("signed by the issuer's root")

// Refusal returns err, wrapped with ErrAuthenticRefusal when it is the
// issuer's refusal of this request signed by the trusted root.
func (p *Pending) Refusal(err error) error {
	var e *messages.Error
	if !errors.As(err, &e) || len(e.Proof) == 0 {
		return err
	}
	pub, ok := p.c.cfg.Trust.Root.PublicKey.(*ecdsa.PublicKey)
	d := messages.RefusalDigest(p.sentHash[:], e.Code, e.Reason)
	if !ok || !ecdsa.VerifyASN1(pub, d[:], e.Proof) {
		return err
	}
	return fmt.Errorf("%w (%w)", err, ErrAuthenticRefusal)
}

// Pending is a certify request on its way: it holds the ephemeral key that
// alone can open the answer.
type Pending struct {
	c           *Certifier
	task        string
	cluster     string
	key         hpke.PrivateKey
	requestHash [messages.HashSize]byte // of the body
	sentHash    [messages.HashSize]byte // of the whole request, which a signed refusal names
}

// Prepare builds a certify request: a fresh ephemeral key pair and nonce, and
// evidence that binds the whole request. It returns the encoded request.
func (c *Certifier) Prepare(ctx context.Context, task string) (*Pending, []byte, error) {
	key, err := c.kem.GenerateKey()
	if err != nil {
		return nil, nil, fmt.Errorf("issuerclient: ephemeral key: %w", err)
	}
	nonce := make([]byte, messages.NonceSize)
	if _, err := io.ReadFull(c.cfg.Client.Rand, nonce); err != nil {
		return nil, nil, fmt.Errorf("issuerclient: draw nonce: %w", err)
	}
	body, err := messages.Marshal(&messages.CertifyBody{
		V: messages.Version, Task: task, Cluster: c.cfg.Cluster, Groups: c.cfg.Groups, KEM: c.cfg.KEM, PublicKey: key.PublicKey().Bytes(),
		Nonce: nonce, Time: c.cfg.Now().UnixNano(),
	})
	if err != nil {
		return nil, nil, err
	}
	ev, err := c.cfg.Attester.Attest(ctx, messages.CertifyBinding(body))
	if err != nil {
		return nil, nil, fmt.Errorf("issuerclient: attest: %w", err)
	}
	req, err := messages.Marshal(&messages.CertifyRequest{V: messages.Version, Body: body, Evidence: ev})
	if err != nil {
		return nil, nil, err
	}
	return &Pending{c: c, task: task, cluster: c.cfg.Cluster, key: key, requestHash: messages.RequestHash(body), sentHash: sha256.Sum256(req)}, req, nil
}

// Open checks the issuer's reply to this request and returns the pair.
func (p *Pending) Open(reply []byte) (*Pair, error) {
	pair, err := p.open(reply)
	if err != nil {
		return nil, fmt.Errorf("issuerclient: certify %q: %w", p.task, err)
	}
	return pair, nil
}

func (p *Pending) open(reply []byte) (*Pair, error) {
	var m messages.CertifyReply
	if err := messages.Decode(reply, messages.MaxCertifyReply, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthentic, err)
	}
	trust := p.c.cfg.Trust
	if !trust.verifyReportSignature(m.Body, m.Signature) {
		return nil, fmt.Errorf("%w: the report is not signed by the issuer's root", ErrUnauthentic)
	}
	var body messages.ReportBody
	if err := messages.Decode(m.Body, messages.MaxReportBody, &body); err != nil {
		return nil, fmt.Errorf("%w: report: %w", ErrUnauthentic, err)
	}
	if !bytes.Equal(body.RequestHash, p.requestHash[:]) || body.Task != p.task {
		return nil, fmt.Errorf("%w: the report answers another request", ErrUnauthentic)
	}
	if !bytes.Equal(body.Chain[len(body.Chain)-1], trust.Root.Raw) {
		return nil, fmt.Errorf("%w: the chain does not end at the verified root", ErrUnauthentic)
	}
	plain, err := hpke.Open(p.key, hpke.HKDFSHA256(), hpke.AES256GCM(), messages.SecretsInfo(p.requestHash[:]), body.Sealed)
	if err != nil {
		return nil, fmt.Errorf("%w: the sealed secrets do not open with this request's key", ErrUnauthentic)
	}
	var secrets messages.Secrets
	err = messages.Decode(plain, messages.MaxSecrets, &secrets)
	clear(plain)
	if err != nil {
		return nil, fmt.Errorf("%w: sealed secrets do not decode", ErrUnauthentic)
	}
	defer func() {
		for _, g := range secrets.Groups {
			clear(g.Key)
		}
	}()
	if secrets.Cluster != p.cluster {
		return nil, fmt.Errorf("%w: the secrets are for cluster %q, asked for %q", ErrUnauthentic, secrets.Cluster, p.cluster)
	}
	var ck *ClusterKey
	if p.cluster != "" {
		ck = &ClusterKey{Cluster: secrets.Cluster, Epoch: secrets.ClusterEpoch, Key: secrets.ClusterKey}
	}
	k, err := x509.ParsePKCS8PrivateKey(secrets.TaskKey)
	clear(secrets.TaskKey)
	if err != nil {
		return nil, fmt.Errorf("%w: the sealed task key does not parse", ErrUnauthentic)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: the task key is not ECDSA", ErrUnauthentic)
	}
	v, err := p.c.verifyChain(body.Chain, &p.c.verified)
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(v.leaf.PublicKey) {
		return nil, fmt.Errorf("%w: the task key does not match the certificate", ErrUnauthentic)
	}
	if v.id.Kind != identity.KindTask || v.id.Name != p.task {
		return nil, fmt.Errorf("%w: the certificate names %s %q, asked for task %q", ErrUnauthentic, v.id.Kind, v.id.Name, p.task)
	}
	groups, err := p.openGroups(body.Groups, secrets.Groups, body.Chain[len(body.Chain)-1])
	if err != nil {
		return nil, err
	}
	return &Pair{Task: p.task, Chain: body.Chain, Leaf: v.leaf, Key: key, Identity: v.id, ClusterKey: ck, Groups: groups}, nil
}

// openGroups checks the group certificates and keys of a report against the
// groups asked for: the same ids in the same order, each certificate a group
// certificate signed by the root that names this task and allows client and
// server authentication, each key the certificate's.
func (p *Pending) openGroups(certs []messages.GroupCert, keys []messages.GroupKey, root []byte) (map[string]*GroupPair, error) {
	asked := p.c.cfg.Groups
	if len(certs) != len(asked) || len(keys) != len(asked) {
		return nil, fmt.Errorf("%w: the report holds %d group certificates and %d keys, asked for %d groups", ErrUnauthentic, len(certs), len(keys), len(asked))
	}
	if len(asked) == 0 {
		return nil, nil
	}
	out := make(map[string]*GroupPair, len(asked))
	for k, id := range asked {
		if certs[k].ID != id || keys[k].ID != id {
			return nil, fmt.Errorf("%w: the report's group %d is %q/%q, asked for %q", ErrUnauthentic, k, certs[k].ID, keys[k].ID, id)
		}
		chain := [][]byte{certs[k].Cert, root}
		v, err := p.c.verifyChain(chain, p.c.groupVerified[id])
		if err != nil {
			return nil, fmt.Errorf("group %q: %w", id, err)
		}
		if v.id.Kind != identity.KindGroup || v.id.Name != id || !v.id.HasTask(p.task) {
			return nil, fmt.Errorf("%w: the certificate for group %q is for %s %q with tasks %v", ErrUnauthentic, id, v.id.Kind, v.id.Name, v.id.Tasks)
		}
		if !slices.Contains(v.leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
			return nil, fmt.Errorf("%w: the certificate for group %q does not allow client authentication", ErrUnauthentic, id)
		}
		priv, err := x509.ParsePKCS8PrivateKey(keys[k].Key)
		if err != nil {
			return nil, fmt.Errorf("%w: the sealed key of group %q does not parse", ErrUnauthentic, id)
		}
		key, ok := priv.(*ecdsa.PrivateKey)
		if !ok || !key.PublicKey.Equal(v.leaf.PublicKey) {
			return nil, fmt.Errorf("%w: the key of group %q does not match its certificate", ErrUnauthentic, id)
		}
		out[id] = &GroupPair{Group: id, Chain: chain, Leaf: v.leaf, Key: key, Identity: v.id}
	}
	return out, nil
}

// verifyChain verifies a chain to the trusted root, or reuses the last
// verification of the same leaf, which cache holds.
func (c *Certifier) verifyChain(chain [][]byte, cache *atomic.Pointer[verifiedLeaf]) (*verifiedLeaf, error) {
	now := c.cfg.Now()
	if v := cache.Load(); v != nil && bytes.Equal(v.der, chain[0]) {
		if now.Before(v.leaf.NotBefore) || now.After(v.leaf.NotAfter) {
			return nil, fmt.Errorf("%w: the certificate is outside its validity", ErrUnauthentic)
		}
		return v, nil
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("%w: leaf certificate: %w", ErrUnauthentic, err)
	}
	inter := x509.NewCertPool()
	for _, der := range chain[1 : len(chain)-1] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: intermediate certificate: %w", ErrUnauthentic, err)
		}
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: c.cfg.Trust.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, fmt.Errorf("%w: the chain does not verify to the root: %w", ErrUnauthentic, err)
	}
	id, err := identity.FromCertificate(leaf)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthentic, err)
	}
	v := &verifiedLeaf{der: bytes.Clone(chain[0]), leaf: leaf, id: id}
	cache.Store(v)
	return v, nil
}
