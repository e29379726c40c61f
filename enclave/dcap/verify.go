package dcap

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
)

// Config configures a Verifier.
type Config struct {
	// Collateral returns the PCS collateral for a platform, by its FMSPC
	// (6 bytes) and the kind of CA that issued its PCK certificate
	// (pcs.CAProcessor or pcs.CAPlatform): typically from a cache the
	// caller fills. Nil: Verify has none, and refuses every quote with
	// enclave.ErrCollateral (VerifyWith still works). It is called only
	// for quotes whose signatures and PCK chain verified, possibly from
	// several goroutines at once; what it returns must not change after.
	Collateral func(fmspc []byte, ca string) (*pcs.Collateral, error)
	// Now is the time of verification; nil: time.Now.
	Now func() time.Time
	// Root is the only trust anchor; nil: pcs.IntelRoot(). Tests pass a
	// test root; production code never sets it.
	Root *x509.Certificate
}

// Cache bounds: chains are per platform, collateral per FMSPC and CA.
const (
	maxCachedChains     = 1024
	maxCachedQEReports  = 1024
	maxCachedCollateral = 64
)

// maxLookups bounds the calls of Config.Collateral a Verifier leaves running
// when the verifications that made them were given up on.
const maxLookups = 4

// Verifier verifies SGX ECDSA quotes. It is safe for concurrent use.
type Verifier struct {
	collateral func([]byte, string) (*pcs.Collateral, error)
	lookups    *enclave.Gate // calls of collateral
	now        func() time.Time
	root       *x509.Certificate

	// crlsOptional lets collateral come without its CRLs (those present
	// are still checked). Only this package's tests set it, for the
	// oasis-core sample, which has none. It is unexported on purpose:
	// an exported option would be one configuration mistake away from
	// accepting revoked platforms in production, where CRLs are required.
	crlsOptional bool

	// Caches of verified PCK chains (keyed by the SHA-256 of the quote's
	// certification data) and verified collateral (keyed by the SHA-256 of
	// all its fields). Each entry holds the window in which its
	// verification holds, and is used only at times inside it: outside,
	// the full verification runs again and names what expired. QE reports
	// whose signature verified (keyed by the SHA-256 of the chain's key,
	// the QE report and its signature) depend on no time: a platform's QE
	// report is the same in all its quotes until its QE restarts.
	mu        sync.Mutex
	chains    map[[32]byte]*pcs.PCKChain
	qeReports map[[32]byte]bool
	colls     map[[32]byte]*collateral
}

var _ enclave.Verifier = (*Verifier)(nil)

// collateral is verified collateral, independent of any one quote.
type collateral struct {
	tcb             *pcs.TCBInfo
	qe              *pcs.QEIdentity
	rootCRL, pckCRL *pcs.CRL // nil only when crlsOptional and absent
	valid           pcs.Window
}

// New returns a Verifier.
func New(cfg Config) (*Verifier, error) {
	v := &Verifier{
		collateral: cfg.Collateral, lookups: enclave.NewGate(maxLookups), now: cfg.Now, root: cfg.Root,
		chains: map[[32]byte]*pcs.PCKChain{}, qeReports: map[[32]byte]bool{}, colls: map[[32]byte]*collateral{},
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.root == nil {
		v.root = pcs.IntelRoot()
	}
	if !v.root.BasicConstraintsValid || !v.root.IsCA || v.root.CheckSignatureFrom(v.root) != nil {
		return nil, errors.New("dcap: the root is not a self-signed CA certificate")
	}
	return v, nil
}

// Verify implements enclave.Verifier: it verifies an SGX ECDSA quote v3,
// raw or in an Open Enclave remote report (what EGo's GetRemoteReport
// returns), with the collateral Config.Collateral gives for its platform.
// Once ctx is done it returns an error wrapping ctx.Err(), also while
// Config.Collateral has not returned (that call runs on, see enclave.Gate;
// at most maxLookups are left so).
func (v *Verifier) Verify(ctx context.Context, evidence []byte) (enclave.Claims, error) {
	return v.verify(ctx, evidence, nil)
}

// VerifyWith verifies evidence as Verify does, with the collateral given
// (which must not change during the call).
func (v *Verifier) VerifyWith(ctx context.Context, evidence []byte, c *pcs.Collateral) (enclave.Claims, error) {
	if c == nil {
		return enclave.Claims{}, fmt.Errorf("%w: %w: dcap: no collateral given", enclave.ErrInvalidEvidence, enclave.ErrCollateral)
	}
	return v.verify(ctx, evidence, c)
}

// verify checks, in the order of the chain of trust: the quote's form, the
// PCK chain to the root, the QE report's signature by the PCK key, the QE
// report data's binding of the attestation key, the ISV enclave report's
// signature by that key; then the collateral, revocation, and the TCB and
// QE levels.
func (v *Verifier) verify(ctx context.Context, evidence []byte, c *pcs.Collateral) (enclave.Claims, error) {
	if err := ctx.Err(); err != nil {
		return enclave.Claims{}, fmt.Errorf("dcap: verify: %w", err)
	}
	now := v.now()
	raw, err := unwrap(evidence)
	if err != nil {
		return enclave.Claims{}, err
	}
	q, err := parseQuote(raw)
	if err != nil {
		return enclave.Claims{}, err
	}
	chainKey := sha256.Sum256(q.CertData)
	chain, err := v.pckChain(chainKey, q.CertData, now)
	if err != nil {
		return enclave.Claims{}, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, err)
	}
	if !v.qeReportSigned(chainKey, chain, q) {
		return enclave.Claims{}, refuse("QE report signature does not verify with the key of the PCK certificate (serial %X)", chain.Leaf.SerialNumber)
	}
	binding := sha256.Sum256(append(bytes.Clone(q.AttestationKey), q.QEAuthData...))
	if rd := q.QEReport.ReportData; !bytes.Equal(rd[:32], binding[:]) || [32]byte(rd[32:]) != [32]byte{} {
		return enclave.Claims{}, refuse("QE report data is not SHA-256(attestation key || QE auth data) || 32 zero bytes: the attestation key is not the QE's")
	}
	key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append([]byte{4}, q.AttestationKey...))
	if err != nil {
		return enclave.Claims{}, refuse("attestation key is not a P-256 point: %w", err)
	}
	if !pcs.VerifyP256(key, q.Signed, q.Signature) {
		return enclave.Claims{}, refuse("ISV enclave report signature does not verify with the attestation key")
	}

	if c == nil {
		if v.collateral == nil {
			return enclave.Claims{}, fmt.Errorf("%w: %w: dcap: no collateral source configured", enclave.ErrInvalidEvidence, enclave.ErrCollateral)
		}
		fmspc, ca := bytes.Clone(chain.Ext.FMSPC), chain.CAKind
		c, err = enclave.Call(ctx, v.lookups, "dcap: collateral", func() (*pcs.Collateral, error) { return v.collateral(fmspc, ca) })
		if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
			return enclave.Claims{}, err // given up on: nothing is known of the evidence
		}
		if err != nil {
			return enclave.Claims{}, fmt.Errorf("%w: %w: dcap: collateral of FMSPC %X (%s CA): %w", enclave.ErrInvalidEvidence, enclave.ErrCollateral, chain.Ext.FMSPC, chain.CAKind, err)
		}
		if c == nil {
			return enclave.Claims{}, fmt.Errorf("%w: %w: dcap: no collateral for FMSPC %X (%s CA)", enclave.ErrInvalidEvidence, enclave.ErrCollateral, chain.Ext.FMSPC, chain.CAKind)
		}
	}
	coll, err := v.verifiedCollateral(c, now)
	if err != nil {
		return enclave.Claims{}, err
	}
	return coll.claims(q, chain)
}

// claims checks the quote's platform against verified collateral and
// gives the claims.
func (coll *collateral) claims(q *quote, chain *pcs.PCKChain) (enclave.Claims, error) {
	ext, tcb := chain.Ext, coll.tcb
	if !bytes.Equal(tcb.FMSPC, ext.FMSPC) {
		return enclave.Claims{}, refuse("TCB info is for FMSPC %X, the PCK certificate's is %X", tcb.FMSPC, ext.FMSPC)
	}
	if !bytes.Equal(tcb.PCEID, ext.PCEID) {
		return enclave.Claims{}, refuse("TCB info is for PCE-ID %X, the PCK certificate's is %X", tcb.PCEID, ext.PCEID)
	}
	if l := coll.rootCRL; l != nil && l.Revokes(chain.CA) {
		return enclave.Claims{}, refuse("the PCK CA %s certificate (serial %X) is revoked by the root CA CRL", chain.CAKind, chain.CA.SerialNumber)
	}
	if l := coll.pckCRL; l != nil {
		// The list must be the one of the CA that issued this PCK
		// certificate, or its silence would mean nothing.
		k, _ := l.Issuer.PublicKey.(*ecdsa.PublicKey)
		if l.Kind != chain.CAKind || !bytes.Equal(l.Issuer.RawSubject, chain.CA.RawSubject) || k == nil || !k.Equal(chain.CA.PublicKey) {
			return enclave.Claims{}, refuse("the PCK CRL is the %s CA's, the PCK certificate was issued by the %s CA", l.Kind, chain.CAKind)
		}
		if l.Revokes(chain.Leaf) {
			return enclave.Claims{}, refuse("the PCK certificate (serial %X) is revoked by the PCK CRL", chain.Leaf.SerialNumber)
		}
	}
	level, err := tcb.MatchSGX(ext.Components, ext.PCESVN)
	if err != nil {
		return enclave.Claims{}, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, err)
	}
	qr := q.QEReport
	qeLevel, err := coll.qe.Match(pcs.QEReport{MiscSelect: qr.MiscSelect, Attributes: qr.Attributes, MRSigner: qr.MRSigner, ISVProdID: qr.ISVProdID, ISVSVN: qr.ISVSVN})
	if err != nil {
		return enclave.Claims{}, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, err)
	}
	status, err := pcs.CombineStatus(level.Status, qeLevel.Status)
	if err != nil {
		return enclave.Claims{}, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, err)
	}
	// A revoked TCB proves nothing: refused here rather than left to
	// each caller's policy (Intel's QVL likewise ends in failure).
	if status == pcs.StatusRevoked {
		return enclave.Claims{}, refuse("TCB status Revoked (platform level %s, QE level %s)", level.Status, qeLevel.Status)
	}

	r := q.Report
	cl := enclave.Claims{
		Backend:         enclave.PlatformSGX,
		UniqueID:        r.MREnclave[:],
		SignerID:        r.MRSigner[:],
		ProductID:       r.ISVProdID,
		SecurityVersion: r.ISVSVN,
		Debug:           r.debug(),
		TCBStatus:       status,
		Advisories:      pcs.CombineAdvisories(level.AdvisoryIDs, qeLevel.AdvisoryIDs),
		SGX: &enclave.SGXClaims{
			QuoteVersion: q.Version,
			CPUSVN:       r.CPUSVN[:],
			PCESVN:       q.PCESVN,
			QESVN:        qr.ISVSVN,
			FMSPC:        bytes.Clone(ext.FMSPC),
			Attributes:   r.Attributes[:],
			MiscSelect:   binary.LittleEndian.Uint32(r.MiscSelect[:]),
			ConfigSVN:    r.ConfigSVN,
			ISVFamilyID:  r.ISVFamilyID[:],
			ISVExtProdID: r.ISVExtProdID[:],
			ConfigID:     r.ConfigID[:],
		},
		Collateral: []enclave.CollateralUse{
			{Kind: "PCK chain", ID: fmt.Sprintf("%X", chain.Leaf.SerialNumber), Issued: chain.Leaf.NotBefore, NextUpdate: chain.Leaf.NotAfter},
			{Kind: "TCB info", ID: fmt.Sprintf("%X", tcb.FMSPC), Issued: tcb.IssueDate, NextUpdate: tcb.NextUpdate},
			{Kind: "QE identity", ID: coll.qe.ID, Issued: coll.qe.IssueDate, NextUpdate: coll.qe.NextUpdate},
		},
		ReportData: r.ReportData,
	}
	if l := coll.pckCRL; l != nil {
		cl.Collateral = append(cl.Collateral, enclave.CollateralUse{Kind: "PCK CRL", ID: l.Kind, Issued: l.List.ThisUpdate, NextUpdate: l.List.NextUpdate})
	}
	if l := coll.rootCRL; l != nil {
		cl.Collateral = append(cl.Collateral, enclave.CollateralUse{Kind: "root CA CRL", ID: l.Issuer.Subject.CommonName, Issued: l.List.ThisUpdate, NextUpdate: l.List.NextUpdate})
	}
	return cl, nil
}

// pckChain verifies the quote's PCK chain at now, or takes it from the
// cache when it verified before and now is inside its window. key is the
// SHA-256 of certData.
func (v *Verifier) pckChain(key [32]byte, certData []byte, now time.Time) (*pcs.PCKChain, error) {
	v.mu.Lock()
	c := v.chains[key]
	v.mu.Unlock()
	if c != nil && c.Valid.Contains(now) {
		return c, nil
	}
	c, err := pcs.VerifyPCKChain(certData, v.root, now)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	put(v.chains, key, c, maxCachedChains)
	v.mu.Unlock()
	return c, nil
}

// qeReportSigned reports whether the QE report's signature verifies with
// the PCK key, remembering those that did.
func (v *Verifier) qeReportSigned(chainKey [32]byte, chain *pcs.PCKChain, q *quote) bool {
	h := sha256.New()
	h.Write(chainKey[:])
	h.Write(q.QEReportRaw)
	h.Write(q.QESignature)
	var key [32]byte
	h.Sum(key[:0])
	v.mu.Lock()
	ok := v.qeReports[key]
	v.mu.Unlock()
	if ok {
		return true
	}
	if !pcs.VerifyP256(chain.Key, q.QEReportRaw, q.QESignature) {
		return false
	}
	v.mu.Lock()
	put(v.qeReports, key, true, maxCachedQEReports)
	v.mu.Unlock()
	return true
}

// verifiedCollateral verifies c at now, or takes it from the cache when
// the same bytes verified before and now is inside their window.
func (v *Verifier) verifiedCollateral(c *pcs.Collateral, now time.Time) (*collateral, error) {
	fields := [][]byte{
		c.TCBInfo, c.TCBInfoSignature, c.TCBInfoIssuerChain,
		c.QEIdentity, c.QEIdentitySignature, c.QEIdentityIssuerChain,
		c.PCKCRL, c.PCKCRLIssuerChain, c.RootCACRL,
	}
	h := sha256.New()
	for i, f := range fields {
		if len(f) > pcs.MaxCollateral {
			return nil, refuse("collateral field %d of %d bytes, at most %d", i, len(f), pcs.MaxCollateral)
		}
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(f))))
		h.Write(f)
	}
	var key [32]byte
	h.Sum(key[:0])
	v.mu.Lock()
	e := v.colls[key]
	v.mu.Unlock()
	if e != nil && e.valid.Contains(now) {
		return e, nil
	}
	e, err := v.checkCollateral(c, now)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	put(v.colls, key, e, maxCachedCollateral)
	v.mu.Unlock()
	return e, nil
}

// checkCollateral verifies collateral at now: TCB info (SGX) and QE
// identity (QE) signed by the TCB signing key under the root, the root
// CA's CRL and the PCK CA's, all current, and none of their signers
// revoked. CRLs are required unless v.crlsOptional.
func (v *Verifier) checkCollateral(c *pcs.Collateral, now time.Time) (*collateral, error) {
	tcb, ts, err := pcs.VerifyTCBInfo(c.TCBInfo, c.TCBInfoSignature, c.TCBInfoIssuerChain, v.root, now)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, err)
	}
	if tcb.ID != pcs.TCBInfoSGX {
		return nil, refuse("TCB info is for %s, not SGX", tcb.ID)
	}
	qe, qs, err := pcs.VerifyQEIdentity(c.QEIdentity, c.QEIdentitySignature, c.QEIdentityIssuerChain, v.root, now)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, err)
	}
	if qe.ID != pcs.QEIdentityQE {
		return nil, refuse("QE identity is of %s, not QE", qe.ID)
	}
	e := &collateral{tcb: tcb, qe: qe, valid: ts.Valid.Intersect(qs.Valid)}
	if len(c.RootCACRL) > 0 || !v.crlsOptional {
		if len(c.RootCACRL) == 0 {
			return nil, fmt.Errorf("%w: %w: dcap: the collateral has no root CA CRL", enclave.ErrInvalidEvidence, enclave.ErrCollateral)
		}
		if e.rootCRL, err = pcs.VerifyRootCRL(c.RootCACRL, v.root, now); err != nil {
			return nil, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, err)
		}
		e.valid = e.valid.Intersect(e.rootCRL.Valid)
		for _, s := range []struct {
			what string
			cert *x509.Certificate
		}{{"TCB info", ts.Signer}, {"QE identity", qs.Signer}} {
			if e.rootCRL.Revokes(s.cert) {
				return nil, refuse("the %s signing certificate (serial %X) is revoked by the root CA CRL", s.what, s.cert.SerialNumber)
			}
		}
	}
	if len(c.PCKCRL) > 0 || !v.crlsOptional {
		if len(c.PCKCRL) == 0 {
			return nil, fmt.Errorf("%w: %w: dcap: the collateral has no PCK CRL", enclave.ErrInvalidEvidence, enclave.ErrCollateral)
		}
		if e.pckCRL, err = pcs.VerifyPCKCRL(c.PCKCRL, c.PCKCRLIssuerChain, v.root, now); err != nil {
			return nil, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, err)
		}
		e.valid = e.valid.Intersect(e.pckCRL.Valid)
		if e.rootCRL != nil && e.rootCRL.Revokes(e.pckCRL.Issuer) {
			return nil, refuse("the PCK CRL's issuer (serial %X) is revoked by the root CA CRL", e.pckCRL.Issuer.SerialNumber)
		}
	}
	return e, nil
}

// put adds an entry to a bounded cache, first dropping one at random when
// it is full (each entry is as cheap to verify again as any other).
func put[V any](m map[[32]byte]V, k [32]byte, val V, limit int) {
	if _, ok := m[k]; !ok && len(m) >= limit {
		for old := range m {
			delete(m, old)
			break
		}
	}
	m[k] = val
}
