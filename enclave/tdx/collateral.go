package tdx

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	gpcs "github.com/google/go-tdx-guest/pcs"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
)

// go-tdx-guest asks its Getter for collateral by the URLs of Intel's PCS
// (API version 4). A prepared collateral answers those URLs, and only
// those, from the bytes the cache gave; nothing reaches the network.

// response is what the offline getter answers for one URL.
type response struct {
	header map[string][]string
	body   []byte
}

// offlineGetter answers go-tdx-guest's requests from prepared collateral
// and fails every other; the nil map fails all. It is never changed once
// made, so it is safe for concurrent use.
type offlineGetter map[string]response

// Get implements go-tdx-guest's trust.HTTPSGetter.
func (g offlineGetter) Get(u string) (map[string][]string, []byte, error) {
	r, ok := g[u]
	if !ok {
		return nil, nil, fmt.Errorf("tdx: verification is offline and has no collateral for %s", u)
	}
	h := make(map[string][]string, len(r.header))
	for k, v := range r.header {
		h[k] = slices.Clone(v)
	}
	return h, bytes.Clone(r.body), nil
}

// piece is one part of the collateral with the time it is valid in.
type piece struct {
	name        string
	from, until time.Time
}

// prepared is collateral checked for form (not for signatures, which
// go-tdx-guest verifies at each use) and ready to serve: it depends only on
// the collateral's bytes and the root, so it is cached by them until it
// expires.
type prepared struct {
	tcbInfo    gpcs.TcbInfo
	qeIdentity gpcs.EnclaveIdentity
	fmspc      string // the TCB info's, lower-case hex
	ca         string // the PCK CA whose CRL it holds: "platform" or "processor"
	pieces     []piece
	until      time.Time // the earliest end of a piece
	uses       []enclave.CollateralUse
	getter     offlineGetter
}

// pckCA names a PCK CA as PCS's URLs do, by its common name; "" for any
// other.
func pckCA(commonName string) string {
	switch commonName {
	case "Intel SGX PCK Platform CA":
		return "platform"
	case "Intel SGX PCK Processor CA":
		return "processor"
	}
	return ""
}

// check reports whether every piece of p is valid at now and p is for the
// platform of fmspc (hex) whose PCK certificate the CA of common name
// issuer issued, naming each piece that is not.
func (p *prepared) check(now time.Time, fmspc, issuer string) error {
	if !strings.EqualFold(p.fmspc, fmspc) {
		return fmt.Errorf("its TCB info is for FMSPC %s, and the quote's PCK certificate is of %s", p.fmspc, fmspc)
	}
	if p.ca != pckCA(issuer) {
		return fmt.Errorf("its PCK CRL is the %s CA's, and the quote's PCK certificate is issued by %q", p.ca, issuer)
	}
	var bad []string
	for _, x := range p.pieces {
		switch {
		case now.After(x.until):
			bad = append(bad, fmt.Sprintf("%s expired at %s", x.name, x.until.UTC().Format(time.RFC3339)))
		case now.Before(x.from):
			bad = append(bad, fmt.Sprintf("%s is not valid before %s", x.name, x.from.UTC().Format(time.RFC3339)))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("at %s: %s", now.UTC().Format(time.RFC3339), strings.Join(bad, "; "))
	}
	return nil
}

// prepare checks the form of c and makes the responses go-tdx-guest asks
// for. Every chain must end in root.
func prepare(c *pcs.Collateral, root *x509.Certificate) (*prepared, error) {
	for name, f := range map[string][]byte{
		"TCB info": c.TCBInfo, "TCB info signature": c.TCBInfoSignature, "TCB info issuer chain": c.TCBInfoIssuerChain,
		"QE identity": c.QEIdentity, "QE identity signature": c.QEIdentitySignature, "QE identity issuer chain": c.QEIdentityIssuerChain,
		"PCK CRL": c.PCKCRL, "PCK CRL issuer chain": c.PCKCRLIssuerChain, "root CA CRL": c.RootCACRL,
	} {
		if len(f) == 0 || len(f) > pcs.MaxCollateral {
			return nil, fmt.Errorf("%s is %d bytes, want 1 to %d", name, len(f), pcs.MaxCollateral)
		}
	}
	if len(c.TCBInfoSignature) != 64 || len(c.QEIdentitySignature) != 64 {
		return nil, fmt.Errorf("signatures of %d and %d bytes, want 64 (r || s)", len(c.TCBInfoSignature), len(c.QEIdentitySignature))
	}
	if len(root.CRLDistributionPoints) == 0 {
		return nil, fmt.Errorf("the root %q names no CRL distribution point, where go-tdx-guest looks for its CRL", root.Subject)
	}
	p := &prepared{getter: offlineGetter{}}

	// The signed bodies: each one JSON object, byte for byte as signed.
	if err := signedObject("TCB info", c.TCBInfo, &p.tcbInfo); err != nil {
		return nil, err
	}
	if p.tcbInfo.ID != "TDX" || p.tcbInfo.Version != 3 {
		return nil, fmt.Errorf("TCB info of %q version %d, want TDX version 3", p.tcbInfo.ID, p.tcbInfo.Version)
	}
	fmspc, err := hex.DecodeString(p.tcbInfo.Fmspc)
	if err != nil || len(fmspc) != 6 {
		return nil, fmt.Errorf("TCB info's FMSPC %q is not 6 bytes of hex", p.tcbInfo.Fmspc)
	}
	p.fmspc = hex.EncodeToString(fmspc)
	if err := signedObject("QE identity", c.QEIdentity, &p.qeIdentity); err != nil {
		return nil, err
	}
	if p.qeIdentity.ID != "TD_QE" || p.qeIdentity.Version != 2 {
		return nil, fmt.Errorf("QE identity of %q version %d, want TD_QE version 2", p.qeIdentity.ID, p.qeIdentity.Version)
	}

	tcbChain, err := issuerChain("TCB info issuer chain", c.TCBInfoIssuerChain, root)
	if err != nil {
		return nil, err
	}
	qeChain, err := issuerChain("QE identity issuer chain", c.QEIdentityIssuerChain, root)
	if err != nil {
		return nil, err
	}
	crlChain, err := issuerChain("PCK CRL issuer chain", c.PCKCRLIssuerChain, root)
	if err != nil {
		return nil, err
	}
	pckCRL, err := parseCRL("PCK CRL", c.PCKCRL)
	if err != nil {
		return nil, err
	}
	rootCRL, err := parseCRL("root CA CRL", c.RootCACRL)
	if err != nil {
		return nil, err
	}
	ca := pckCA(pckCRL.Issuer.CommonName)
	if ca == "" {
		return nil, fmt.Errorf("PCK CRL issued by %q, not a PCK CA", pckCRL.Issuer)
	}
	p.ca = ca

	p.pieces = []piece{
		{"TCB info for FMSPC " + p.fmspc, p.tcbInfo.IssueDate, p.tcbInfo.NextUpdate},
		{"QE identity", p.qeIdentity.IssueDate, p.qeIdentity.NextUpdate},
		{"PCK CRL", pckCRL.ThisUpdate, pckCRL.NextUpdate},
		{"root CA CRL", rootCRL.ThisUpdate, rootCRL.NextUpdate},
		{"TCB info signing certificate", tcbChain[0].NotBefore, tcbChain[0].NotAfter},
		{"QE identity signing certificate", qeChain[0].NotBefore, qeChain[0].NotAfter},
		{"PCK CRL signing certificate", crlChain[0].NotBefore, crlChain[0].NotAfter},
		{"root CA certificate", root.NotBefore, root.NotAfter},
	}
	p.until = p.pieces[0].until
	for _, x := range p.pieces {
		if x.until.IsZero() || x.until.Before(x.from) {
			return nil, fmt.Errorf("%s is valid from %s until %s", x.name, x.from, x.until)
		}
		p.until = earliest(p.until, x.until)
	}
	p.uses = []enclave.CollateralUse{
		{Kind: "TCB info", ID: p.fmspc, Issued: p.tcbInfo.IssueDate, NextUpdate: p.tcbInfo.NextUpdate},
		{Kind: "QE identity", ID: p.qeIdentity.ID, Issued: p.qeIdentity.IssueDate, NextUpdate: p.qeIdentity.NextUpdate},
		{Kind: "PCK CRL", ID: ca, Issued: pckCRL.ThisUpdate, NextUpdate: pckCRL.NextUpdate},
		{Kind: "root CA CRL", ID: root.Subject.CommonName, Issued: rootCRL.ThisUpdate, NextUpdate: rootCRL.NextUpdate},
	}

	// What go-tdx-guest asks for: PCS's bodies ({"tcbInfo": ..., "signature":
	// hex}) and, URL-escaped in a header, each issuer chain.
	header := func(phrase string, chain [2]*x509.Certificate) map[string][]string {
		var b []byte
		for _, c := range chain {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return map[string][]string{phrase: {url.QueryEscape(string(b))}}
	}
	body := func(field string, raw, sig []byte) []byte {
		return []byte(`{"` + field + `":` + string(raw) + `,"signature":"` + hex.EncodeToString(sig) + `"}`)
	}
	p.getter[gpcs.TcbInfoURL(p.fmspc)] = response{header(gpcs.TcbInfoIssuerChainPhrase, tcbChain), body("tcbInfo", c.TCBInfo, c.TCBInfoSignature)}
	p.getter[gpcs.QeIdentityURL()] = response{header(gpcs.SgxQeIdentityIssuerChainPhrase, qeChain), body("enclaveIdentity", c.QEIdentity, c.QEIdentitySignature)}
	p.getter[gpcs.PckCrlURL(ca)] = response{header(gpcs.SgxPckCrlIssuerChainPhrase, crlChain), bytes.Clone(pckCRL.Raw)}
	for _, u := range root.CRLDistributionPoints {
		p.getter[u] = response{body: bytes.Clone(rootCRL.Raw)}
	}
	return p, nil
}

// signedObject reads a signed JSON body into v. It must be one JSON object
// with nothing around it, so that the bytes go-tdx-guest checks the
// signature over are the bytes given.
func signedObject(name string, b []byte, v any) error {
	if !json.Valid(b) || b[0] != '{' || b[len(b)-1] != '}' {
		return fmt.Errorf("%s is not one JSON object", name)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// issuerChain reads a PEM issuer chain: the signing certificate, then the
// root, which must be root. Trailing white space and NUL bytes are allowed.
func issuerChain(name string, b []byte, root *x509.Certificate) ([2]*x509.Certificate, error) {
	var out [2]*x509.Certificate
	rest := b
	for i := range out {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil || blk.Type != "CERTIFICATE" {
			return out, fmt.Errorf("%s: certificate %d is not a PEM certificate", name, i+1)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return out, fmt.Errorf("%s: certificate %d: %w", name, i+1, err)
		}
		out[i] = c
	}
	if len(bytes.Trim(rest, " \t\r\n\x00")) != 0 {
		return out, fmt.Errorf("%s: more than two certificates", name)
	}
	if !out[1].Equal(root) {
		return out, fmt.Errorf("%s ends in %q, not the trusted root %q", name, out[1].Subject, root.Subject)
	}
	return out, nil
}

// parseCRL reads a CRL, DER or PEM.
func parseCRL(name string, b []byte) (*x509.RevocationList, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return crl, nil
}

// collateralCache keeps prepared collateral by the SHA-256 of its bytes,
// each until it expires, at most maxCachedCollateral of them.
type collateralCache struct {
	mu       sync.Mutex
	m        map[[32]byte]*prepared
	prepares int // how many times prepare ran: for tests
}

const maxCachedCollateral = 64

func newCollateralCache() *collateralCache {
	return &collateralCache{m: map[[32]byte]*prepared{}}
}

// get returns c prepared, from the cache when it holds it unexpired.
func (cc *collateralCache) get(c *pcs.Collateral, root *x509.Certificate, now time.Time) (*prepared, error) {
	key := collateralKey(c)
	cc.mu.Lock()
	p := cc.m[key]
	if p != nil && now.After(p.until) {
		delete(cc.m, key)
		p = nil
	}
	cc.mu.Unlock()
	if p != nil {
		return p, nil
	}
	p, err := prepare(c, root)
	if err != nil {
		return nil, err
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.prepares++
	if now.After(p.until) {
		return p, nil // expired: check will say so; not worth keeping
	}
	if len(cc.m) >= maxCachedCollateral {
		var soonest [32]byte
		first := true
		for k, q := range cc.m {
			if now.After(q.until) {
				delete(cc.m, k)
				continue
			}
			if first || q.until.Before(cc.m[soonest].until) {
				soonest, first = k, false
			}
		}
		if len(cc.m) >= maxCachedCollateral {
			delete(cc.m, soonest)
		}
	}
	cc.m[key] = p
	return p, nil
}

// collateralKey is the SHA-256 of c's fields, each prefixed by its length.
func collateralKey(c *pcs.Collateral) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, f := range [][]byte{c.TCBInfo, c.TCBInfoSignature, c.TCBInfoIssuerChain, c.QEIdentity, c.QEIdentitySignature,
		c.QEIdentityIssuerChain, c.PCKCRL, c.PCKCRLIssuerChain, c.RootCACRL} {
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write(f)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}
