package pcs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/cohort-dev/cohort/enclave"
)

// The common names of Intel's certificates, which verification checks so
// that each key signs only what its role allows: a PCK key (which a
// compromised platform may leak) must never pass for the TCB signing key.
const (
	CNTCBSigning     = "Intel SGX TCB Signing"
	CNPCKCertificate = "Intel SGX PCK Certificate"
	CNPCKProcessorCA = "Intel SGX PCK Processor CA"
	CNPCKPlatformCA  = "Intel SGX PCK Platform CA"
)

// PCK CA kinds, as PCS's "ca" parameter names them.
const (
	CAProcessor = "processor"
	CAPlatform  = "platform"
)

// maxChain bounds the certificates of a PEM chain; Intel's have 2 or 3.
const maxChain = 8

// Window is the span of time [From, Until) in which a verification holds:
// every certificate, body and list it checked is valid in all of it, so
// the same verification at any time inside it succeeds too.
type Window struct {
	From, Until time.Time
}

// Contains reports whether t is inside w.
func (w Window) Contains(t time.Time) bool {
	return !t.Before(w.From) && t.Before(w.Until)
}

// Intersect narrows w to what it shares with o.
func (w Window) Intersect(o Window) Window {
	if o.From.After(w.From) {
		w.From = o.From
	}
	if o.Until.Before(w.Until) {
		w.Until = o.Until
	}
	return w
}

// certWindow is a certificate's validity: x509 holds it valid through
// NotAfter, so the window ends just after.
func certWindow(c *x509.Certificate) Window {
	return Window{c.NotBefore, c.NotAfter.Add(time.Nanosecond)}
}

// timeError is a verification refused for the time alone: collateral
// expired or not yet valid. The exported functions return it wrapped
// with enclave.ErrCollateral.
type timeError struct{ msg string }

func (e *timeError) Error() string { return e.msg }

// checkTime refuses now outside w, naming what and the date it passed.
func checkTime(what string, w Window, now time.Time) error {
	switch {
	case now.Before(w.From):
		return &timeError{fmt.Sprintf("%s is not valid before %s (now %s)", what, stamp(w.From), stamp(now))}
	case !now.Before(w.Until):
		return &timeError{fmt.Sprintf("%s expired %s (now %s)", what, stamp(w.Until), stamp(now))}
	}
	return nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// fail prefixes err with what failed; a time error also wraps
// enclave.ErrCollateral, first, so that its text leads.
func fail(what string, err error) error {
	var te *timeError
	if errors.As(err, &te) {
		return fmt.Errorf("%w: pcs: %s: %w", enclave.ErrCollateral, what, err)
	}
	return fmt.Errorf("pcs: %s: %w", what, err)
}

// certName names a certificate in errors.
func certName(c *x509.Certificate) string {
	return fmt.Sprintf("certificate %q (serial %X)", c.Subject.CommonName, c.SerialNumber)
}

// parseChain reads a PEM chain, leaf first: 1 to maxChain CERTIFICATE
// blocks, then nothing but white space and NULs (the quote's chain ends in
// one).
func parseChain(pemChain []byte) ([]*x509.Certificate, error) {
	if len(pemChain) > MaxCollateral {
		return nil, fmt.Errorf("chain of %d bytes, at most %d", len(pemChain), MaxCollateral)
	}
	var certs []*x509.Certificate
	rest := pemChain
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q in the chain", b.Type)
		}
		if len(certs) == maxChain {
			return nil, fmt.Errorf("more than %d certificates in the chain", maxChain)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d of the chain: %w", len(certs), err)
		}
		certs = append(certs, c)
	}
	if len(bytes.Trim(rest, " \t\r\n\x00")) != 0 {
		return nil, errors.New("data after the chain's certificates")
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate in the chain")
	}
	return certs, nil
}

// verifyChain checks a chain of n certificates, leaf first, that ends in
// root: each valid at now (the first one out named), and the leaf's path
// valid with root as the only trust anchor. It returns the window in which
// all are valid.
func verifyChain(pemChain []byte, n int, root *x509.Certificate, now time.Time) ([]*x509.Certificate, Window, error) {
	certs, err := parseChain(pemChain)
	if err != nil {
		return nil, Window{}, err
	}
	if len(certs) != n {
		return nil, Window{}, fmt.Errorf("%d certificates in the chain, want %d", len(certs), n)
	}
	if last := certs[n-1]; !last.Equal(root) {
		return nil, Window{}, fmt.Errorf("chain ends in %s, not the root %q", certName(last), root.Subject.CommonName)
	}
	w := certWindow(root)
	for _, c := range certs {
		cw := certWindow(c)
		if err := checkTime(certName(c), cw, now); err != nil {
			return nil, Window{}, err
		}
		w = w.Intersect(cw)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range certs[1 : n-1] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, Window{}, fmt.Errorf("%s does not chain to the root: %w", certName(certs[0]), err)
	}
	return certs, w, nil
}

// checkRole checks a certificate's name and whether it is a CA.
func checkRole(c *x509.Certificate, ca bool, names ...string) error {
	for _, n := range names {
		if c.Subject.CommonName == n {
			if !c.BasicConstraintsValid || c.IsCA != ca {
				return fmt.Errorf("%s: CA %v, want %v", certName(c), c.IsCA, ca)
			}
			return nil
		}
	}
	return fmt.Errorf("%s where %q was expected", certName(c), names)
}

// p256Key returns the certificate's key when it is ECDSA on P-256.
func p256Key(c *x509.Certificate) (*ecdsa.PublicKey, error) {
	k, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%s: key is not ECDSA P-256", certName(c))
	}
	return k, nil
}

// VerifyP256 reports whether sig, 64 bytes r || s, is key's ECDSA
// signature of SHA-256(msg): the signatures of quotes and collateral.
func VerifyP256(key *ecdsa.PublicKey, msg, sig []byte) bool {
	if key == nil || len(sig) != 64 {
		return false
	}
	h := sha256.Sum256(msg)
	return ecdsa.Verify(key, h[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
}

// PCKChain is a verified PCK certificate chain: PCK certificate, PCK CA
// (processor or platform), root.
type PCKChain struct {
	Leaf, CA *x509.Certificate
	CAKind   string           // CAProcessor or CAPlatform
	Key      *ecdsa.PublicKey // the PCK's, P-256
	Ext      *PCKExtensions
	Valid    Window
}

// VerifyPCKChain checks a PEM PCK chain (PCK certificate, PCK CA, root) at
// now, with root the only trust anchor, and reads the PCK certificate's SGX
// extension. It does not check revocation (see CRL.Revokes).
func VerifyPCKChain(pemChain []byte, root *x509.Certificate, now time.Time) (*PCKChain, error) {
	certs, w, err := verifyChain(pemChain, 3, root, now)
	if err != nil {
		return nil, fail("PCK chain", err)
	}
	p := &PCKChain{Leaf: certs[0], CA: certs[1], Valid: w}
	if err := checkRole(p.Leaf, false, CNPCKCertificate); err != nil {
		return nil, fail("PCK chain", err)
	}
	if err := checkRole(p.CA, true, CNPCKProcessorCA, CNPCKPlatformCA); err != nil {
		return nil, fail("PCK chain", err)
	}
	p.CAKind = CAProcessor
	if p.CA.Subject.CommonName == CNPCKPlatformCA {
		p.CAKind = CAPlatform
	}
	if p.Key, err = p256Key(p.Leaf); err != nil {
		return nil, fail("PCK chain", err)
	}
	if p.Ext, err = ParsePCKExtensions(p.Leaf); err != nil {
		return nil, fail("PCK chain", err)
	}
	return p, nil
}

// Signed is how signed collateral verified: the certificate that signed it
// and the window in which the verification holds (chain and body).
type Signed struct {
	Signer *x509.Certificate
	Valid  Window
}

// verifySigned checks a body signed by the TCB signing key: its chain
// (signing certificate, root) at now, then the signature.
func verifySigned(body, sig, pemChain []byte, root *x509.Certificate, now time.Time) (Signed, error) {
	if len(body) > MaxCollateral {
		return Signed{}, fmt.Errorf("body of %d bytes, at most %d", len(body), MaxCollateral)
	}
	certs, w, err := verifyChain(pemChain, 2, root, now)
	if err != nil {
		return Signed{}, fmt.Errorf("signing chain: %w", err)
	}
	if err := checkRole(certs[0], false, CNTCBSigning); err != nil {
		return Signed{}, fmt.Errorf("signing chain: %w", err)
	}
	key, err := p256Key(certs[0])
	if err != nil {
		return Signed{}, err
	}
	if !VerifyP256(key, body, sig) {
		return Signed{}, fmt.Errorf("signature (%d bytes) does not verify with the %s", len(sig), certName(certs[0]))
	}
	return Signed{Signer: certs[0], Valid: w}, nil
}

// VerifyTCBInfo checks a TCB info at now: its chain to root (TCB signing
// certificate, root; each valid at now), its signature over body as given,
// its form, and issueDate <= now < nextUpdate. Refusals for the time alone
// wrap enclave.ErrCollateral and name what expired and when.
func VerifyTCBInfo(body, sig, pemChain []byte, root *x509.Certificate, now time.Time) (*TCBInfo, Signed, error) {
	s, err := verifySigned(body, sig, pemChain, root, now)
	if err != nil {
		return nil, Signed{}, fail("TCB info", err)
	}
	t, err := ParseTCBInfo(body)
	if err != nil {
		return nil, Signed{}, err
	}
	bw := Window{t.IssueDate, t.NextUpdate}
	if err := checkTime(fmt.Sprintf("%s TCB info of FMSPC %X", t.ID, t.FMSPC), bw, now); err != nil {
		return nil, Signed{}, fail("TCB info", err)
	}
	s.Valid = s.Valid.Intersect(bw)
	return t, s, nil
}

// VerifyQEIdentity checks a QE identity at now as VerifyTCBInfo checks a
// TCB info (Intel signs both with the TCB signing key).
func VerifyQEIdentity(body, sig, pemChain []byte, root *x509.Certificate, now time.Time) (*QEIdentity, Signed, error) {
	s, err := verifySigned(body, sig, pemChain, root, now)
	if err != nil {
		return nil, Signed{}, fail("QE identity", err)
	}
	q, err := ParseQEIdentity(body)
	if err != nil {
		return nil, Signed{}, err
	}
	bw := Window{q.IssueDate, q.NextUpdate}
	if err := checkTime(q.ID+" identity", bw, now); err != nil {
		return nil, Signed{}, fail("QE identity", err)
	}
	s.Valid = s.Valid.Intersect(bw)
	return q, s, nil
}

// CRL is a verified certificate revocation list.
type CRL struct {
	List   *x509.RevocationList
	Issuer *x509.Certificate // the root, or the PCK CA
	Kind   string            // "root", CAProcessor or CAPlatform
	Valid  Window            // the list's and its issuer chain's
	serial map[string]bool
}

// Revokes reports whether the list revokes cert: cert was issued by the
// list's issuer and its serial is listed.
func (c *CRL) Revokes(cert *x509.Certificate) bool {
	return bytes.Equal(cert.RawIssuer, c.List.RawIssuer) && c.serial[cert.SerialNumber.String()]
}

// VerifyRootCRL checks the root CA's CRL (DER) at now: signed by root,
// thisUpdate <= now < nextUpdate.
func VerifyRootCRL(der []byte, root *x509.Certificate, now time.Time) (*CRL, error) {
	c, err := verifyCRL(der, root, now)
	if err != nil {
		return nil, fail("root CA CRL", err)
	}
	c.Kind = "root"
	c.Valid = c.Valid.Intersect(certWindow(root))
	return c, nil
}

// VerifyPCKCRL checks a PCK CA's CRL (DER) at now: its issuer chain (PCK
// CA, root) to root, each valid at now, the list signed by that CA,
// thisUpdate <= now < nextUpdate.
func VerifyPCKCRL(der, pemChain []byte, root *x509.Certificate, now time.Time) (*CRL, error) {
	certs, w, err := verifyChain(pemChain, 2, root, now)
	if err != nil {
		return nil, fail("PCK CRL", fmt.Errorf("issuer chain: %w", err))
	}
	if err := checkRole(certs[0], true, CNPCKProcessorCA, CNPCKPlatformCA); err != nil {
		return nil, fail("PCK CRL", fmt.Errorf("issuer chain: %w", err))
	}
	c, err := verifyCRL(der, certs[0], now)
	if err != nil {
		return nil, fail("PCK CRL", err)
	}
	c.Kind = CAProcessor
	if certs[0].Subject.CommonName == CNPCKPlatformCA {
		c.Kind = CAPlatform
	}
	c.Valid = c.Valid.Intersect(w)
	return c, nil
}

func verifyCRL(der []byte, issuer *x509.Certificate, now time.Time) (*CRL, error) {
	if len(der) == 0 {
		return nil, errors.New("empty")
	}
	if len(der) > MaxCollateral {
		return nil, fmt.Errorf("%d bytes, at most %d", len(der), MaxCollateral)
	}
	l, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(l.RawIssuer, issuer.RawSubject) {
		return nil, fmt.Errorf("issued by %q, not by the %s", l.Issuer.CommonName, certName(issuer))
	}
	if err := l.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("signature does not verify with the %s: %w", certName(issuer), err)
	}
	if l.NextUpdate.IsZero() {
		return nil, errors.New("no nextUpdate")
	}
	w := Window{l.ThisUpdate, l.NextUpdate}
	if err := checkTime(fmt.Sprintf("CRL of %q (number %v)", l.Issuer.CommonName, l.Number), w, now); err != nil {
		return nil, err
	}
	c := &CRL{List: l, Issuer: issuer, Valid: w, serial: make(map[string]bool, len(l.RevokedCertificateEntries))}
	for _, e := range l.RevokedCertificateEntries {
		c.serial[e.SerialNumber.String()] = true
	}
	return c, nil
}
