package issuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/cohort-dev/cohort/identity"
)

const (
	organization     = "cohort"
	simulatedUnit    = "SIMULATED attestation - not for production"
	maxBackdate      = 5 * time.Minute
	issuerRenewShare = 0.6 // the issuer reissues a task certificate past this share of its life
)

// credential is a key and the certificate for it.
type credential struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newKey() (*ecdsa.PrivateKey, error) {
	// Go ignores the reader for key generation and uses its own CSPRNG.
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// serialNumber draws a positive 128-bit serial from r.
func serialNumber(r io.Reader) (*big.Int, error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return nil, fmt.Errorf("draw serial number: %w", err)
	}
	b[0] &= 0x7f
	b[0] |= 0x40 // never zero, always 16 bytes
	return new(big.Int).SetBytes(b[:]), nil
}

func keyID(k *ecdsa.PublicKey) []byte {
	raw, _ := k.Bytes()
	s := sha256.Sum256(raw)
	return s[:20]
}

// window returns the validity of a certificate made at now: backdated a little
// for clock skew, at most 5 minutes and at most a tenth of the lifetime.
func window(now time.Time, lifetime time.Duration) (time.Time, time.Time) {
	back := min(maxBackdate, lifetime/10)
	nb := now.Add(-back).UTC().Truncate(time.Second)
	return nb, nb.Add(lifetime)
}

// newRoot makes the self-signed root CA.
func newRoot(r io.Reader, now time.Time, lifetime time.Duration, simulated bool, generation uint32) (*credential, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber(r)
	if err != nil {
		return nil, err
	}
	nb, na := window(now, lifetime)
	subject := rootSubject(simulated, generation)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(r, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse root certificate: %w", err)
	}
	return &credential{key: key, cert: cert}, nil
}

// issueTask makes the task certificate for key, signed by the root. Every
// replica of the task receives this certificate and key.
func issueTask(r io.Reader, now time.Time, root *credential, t *TaskPolicy, key *ecdsa.PrivateKey, lifetime time.Duration, simulated bool) (*x509.Certificate, error) {
	id := identity.Identity{Kind: identity.KindTask, Name: t.Name, Measurements: t.measurements, Simulated: simulated, Clusters: t.clusters}
	return issueLeaf(r, now, root, id, t.Name, key, lifetime, t.DNSNames, t.ips)
}

// issueGroup makes the group certificate for key, signed by the root. The
// units of every task of the group receive this certificate and key.
func issueGroup(r io.Reader, now time.Time, root *credential, g *Group, key *ecdsa.PrivateKey, lifetime time.Duration, simulated bool) (*x509.Certificate, error) {
	id := identity.Identity{Kind: identity.KindGroup, Name: g.ID, Tasks: g.Tasks, Simulated: simulated}
	return issueLeaf(r, now, root, id, "group "+g.ID, key, lifetime, nil, nil)
}

// issueLeaf makes a certificate for key carrying id, signed by the root, for
// TLS client and server authentication.
func issueLeaf(r io.Reader, now time.Time, root *credential, id identity.Identity, cn string, key *ecdsa.PrivateKey, lifetime time.Duration, dns []string, ips []net.IP) (*x509.Certificate, error) {
	serial, err := serialNumber(r)
	if err != nil {
		return nil, err
	}
	ext, err := id.Extension()
	if err != nil {
		return nil, err
	}
	nb, na := window(now, lifetime)
	if na.After(root.cert.NotAfter) {
		na = root.cert.NotAfter
	}
	subject := pkix.Name{CommonName: cn, Organization: []string{organization}}
	if id.Simulated {
		subject.OrganizationalUnit = []string{simulatedUnit}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
		URIs:                  []*url.URL{id.URI()},
		SubjectKeyId:          keyID(&key.PublicKey),
		ExtraExtensions:       []pkix.Extension{ext},
	}
	der, err := x509.CreateCertificate(r, tmpl, root.cert, &key.PublicKey, root.key)
	if err != nil {
		return nil, fmt.Errorf("create certificate for %s %q: %w", id.Kind, id.Name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate for %s %q: %w", id.Kind, id.Name, err)
	}
	return cert, nil
}

// specHash digests what a certificate is made from, field by field, each
// length-prefixed; a nil field ends a list.
type specHash struct{ h hash.Hash }

func newSpec(label string) specHash {
	s := specHash{sha256.New()}
	s.field([]byte(label))
	return s
}

func (s specHash) field(b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	s.h.Write(n[:])
	s.h.Write(b)
}

func (s specHash) strings(list []string) {
	for _, v := range list {
		s.field([]byte(v))
	}
	s.field(nil)
}

func (s specHash) end(lifetime time.Duration, simulated bool) []byte {
	s.field(binary.BigEndian.AppendUint64(nil, uint64(lifetime)))
	if simulated {
		s.field([]byte{1})
	} else {
		s.field([]byte{0})
	}
	return s.h.Sum(nil)
}

// taskSpec digests everything a task certificate is made from, so that a
// restarted issuer can tell whether the stored certificate still matches the
// policy and the root.
func taskSpec(root *x509.Certificate, t *TaskPolicy, lifetime time.Duration, simulated bool) []byte {
	// v3: identity extension version 2; a stored certificate of an older
	// spec is reissued, with the same key, when the issuer loads it.
	s := newSpec("cohort task spec v3")
	s.field(root.Raw)
	s.field([]byte(t.Name))
	for _, m := range t.measurements {
		s.field(m)
	}
	s.field(nil)
	s.strings(t.DNSNames)
	for _, ip := range t.ips {
		s.field(ip.To16())
	}
	s.field(nil)
	s.strings(t.clusters)
	return s.end(lifetime, simulated)
}

// groupSpec is taskSpec for a group certificate.
func groupSpec(root *x509.Certificate, g *Group, lifetime time.Duration, simulated bool) []byte {
	s := newSpec("cohort group spec v1")
	s.field(root.Raw)
	s.field([]byte(g.ID))
	s.strings(g.Tasks)
	return s.end(lifetime, simulated)
}

// reissueAt is when the issuer makes a new certificate for a task: before
// units renew (at two thirds of the lifetime), so that they receive a fresh one.
func reissueAt(c *x509.Certificate) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(time.Duration(float64(life) * issuerRenewShare))
}

// rootSubject is the subject of a root of generation g: roots after the
// first name their generation, so that no two roots of a state share a
// subject.
func rootSubject(simulated bool, g uint32) pkix.Name {
	cn := "cohort root CA"
	if g > 1 {
		cn = fmt.Sprintf("cohort root CA %d", g)
	}
	subject := pkix.Name{CommonName: cn, Organization: []string{organization}}
	if simulated {
		subject.CommonName += " (SIMULATED)"
		subject.OrganizationalUnit = []string{simulatedUnit}
	}
	return subject
}

// vouch makes the voucher of next by prev: a CA certificate of next's
// subject and key, issued by prev's, valid as long as next. Whoever holds
// prev's certificate (a user's root.pem) checks with it that next's key was
// made by an issuer that held prev's key.
func vouch(r io.Reader, prev, next *credential) ([]byte, error) {
	serial, err := serialNumber(r)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               next.cert.Subject,
		NotBefore:             next.cert.NotBefore,
		NotAfter:              next.cert.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          next.cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(r, tmpl, prev.cert, next.cert.PublicKey, prev.key)
	if err != nil {
		return nil, fmt.Errorf("create voucher: %w", err)
	}
	return der, nil
}
