// Package pcs holds what Intel's Provisioning Certification Service gives a
// verifier of SGX and TDX quotes: the Intel SGX Root CA that every chain
// must end in, and the collateral (TCB info, QE identity, revocation lists,
// each with its signing chain) that says how current a platform is.
//
// Guarantees: the root is Intel's real one, embedded and pinned by its
// SHA-256 (a test checks it against go-tdx-guest's copy); nothing in this
// package reaches the network. Collateral arrives from a cache the caller
// fills; this package only carries and checks it.
package pcs

import (
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
)

// IntelRootSHA256 is the SHA-256 of the Intel SGX Root CA certificate (DER),
// the root of every PCK, TCB signing and QE identity chain.
const IntelRootSHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

var intelRoot = sync.OnceValues(func() (*x509.Certificate, error) {
	b, _ := pem.Decode(intelRootPEM)
	if b == nil {
		return nil, errors.New("pcs: the embedded Intel SGX Root CA is not PEM")
	}
	if sum := sha256.Sum256(b.Bytes); hex.EncodeToString(sum[:]) != IntelRootSHA256 {
		return nil, errors.New("pcs: the embedded Intel SGX Root CA does not match its pinned SHA-256")
	}
	return x509.ParseCertificate(b.Bytes)
})

// IntelRoot returns the Intel SGX Root CA. Each call returns the same
// certificate; callers must not change it.
func IntelRoot() *x509.Certificate {
	c, err := intelRoot()
	if err != nil {
		panic(err) // the embedded file is part of the build: a test checks it
	}
	return c
}

// MaxCollateral bounds each piece of collateral a cache may hand over.
const MaxCollateral = 1 << 20

// Collateral is the PCS collateral for one quote: what the Quote
// Verification Library calls its collateral. The signed bodies are kept
// byte for byte as Intel signed them.
type Collateral struct {
	TCBInfo               []byte // the JSON text of "tcbInfo", as signed
	TCBInfoSignature      []byte // ECDSA P-256, r || s, 64 bytes
	TCBInfoIssuerChain    []byte // PEM: the TCB signing certificate, then the root
	QEIdentity            []byte // the JSON text of "enclaveIdentity", as signed
	QEIdentitySignature   []byte // r || s
	QEIdentityIssuerChain []byte // PEM
	PCKCRL                []byte // DER: the PCK (processor or platform) CA's CRL
	PCKCRLIssuerChain     []byte // PEM
	RootCACRL             []byte // DER: the root CA's CRL
}

// qvlCollateral is the JSON layout of dcap-qvl's collateral files (and of
// `cohort collateral` bundles for Intel): hex for binary, PEM for chains,
// the signed JSON bodies as strings.
type qvlCollateral struct {
	PCKCRLIssuerChain     string `json:"pck_crl_issuer_chain"`
	RootCACRL             string `json:"root_ca_crl"`
	PCKCRL                string `json:"pck_crl"`
	TCBInfoIssuerChain    string `json:"tcb_info_issuer_chain"`
	TCBInfo               string `json:"tcb_info"`
	TCBInfoSignature      string `json:"tcb_info_signature"`
	QEIdentityIssuerChain string `json:"qe_identity_issuer_chain"`
	QEIdentity            string `json:"qe_identity"`
	QEIdentitySignature   string `json:"qe_identity_signature"`
}

// ParseQVL reads collateral in dcap-qvl's JSON layout.
func ParseQVL(b []byte) (*Collateral, error) {
	if len(b) > 8*MaxCollateral {
		return nil, fmt.Errorf("pcs: collateral of %d bytes, at most %d", len(b), 8*MaxCollateral)
	}
	var q qvlCollateral
	if err := json.Unmarshal(b, &q); err != nil {
		return nil, fmt.Errorf("pcs: collateral: %w", err)
	}
	c := &Collateral{
		TCBInfo: []byte(q.TCBInfo), TCBInfoIssuerChain: []byte(q.TCBInfoIssuerChain),
		QEIdentity: []byte(q.QEIdentity), QEIdentityIssuerChain: []byte(q.QEIdentityIssuerChain),
		PCKCRLIssuerChain: []byte(q.PCKCRLIssuerChain),
	}
	for _, f := range []struct {
		name string
		hex  string
		to   *[]byte
	}{
		{"root_ca_crl", q.RootCACRL, &c.RootCACRL},
		{"pck_crl", q.PCKCRL, &c.PCKCRL},
		{"tcb_info_signature", q.TCBInfoSignature, &c.TCBInfoSignature},
		{"qe_identity_signature", q.QEIdentitySignature, &c.QEIdentitySignature},
	} {
		raw, err := hex.DecodeString(f.hex)
		if err != nil {
			return nil, fmt.Errorf("pcs: collateral: %s is not hex: %w", f.name, err)
		}
		*f.to = raw
	}
	return c, c.check()
}

// MarshalQVL writes c in dcap-qvl's JSON layout.
func (c *Collateral) MarshalQVL() ([]byte, error) {
	return json.Marshal(qvlCollateral{
		PCKCRLIssuerChain: string(c.PCKCRLIssuerChain), RootCACRL: hex.EncodeToString(c.RootCACRL), PCKCRL: hex.EncodeToString(c.PCKCRL),
		TCBInfoIssuerChain: string(c.TCBInfoIssuerChain), TCBInfo: string(c.TCBInfo), TCBInfoSignature: hex.EncodeToString(c.TCBInfoSignature),
		QEIdentityIssuerChain: string(c.QEIdentityIssuerChain), QEIdentity: string(c.QEIdentity), QEIdentitySignature: hex.EncodeToString(c.QEIdentitySignature),
	})
}

// check bounds every field; it proves nothing about their contents.
func (c *Collateral) check() error {
	for name, f := range map[string][]byte{
		"tcb_info": c.TCBInfo, "tcb_info_signature": c.TCBInfoSignature, "tcb_info_issuer_chain": c.TCBInfoIssuerChain,
		"qe_identity": c.QEIdentity, "qe_identity_signature": c.QEIdentitySignature, "qe_identity_issuer_chain": c.QEIdentityIssuerChain,
		"pck_crl": c.PCKCRL, "pck_crl_issuer_chain": c.PCKCRLIssuerChain, "root_ca_crl": c.RootCACRL,
	} {
		if len(f) > MaxCollateral {
			return fmt.Errorf("pcs: collateral: %s is %d bytes, at most %d", name, len(f), MaxCollateral)
		}
	}
	return nil
}
