package snp

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-sev-guest/verify/trust"
)

// The product lines whose roots are embedded, as go-sev-guest's kds package
// names them.
const (
	ProductMilan = "Milan"
	ProductGenoa = "Genoa"
	ProductTurin = "Turin"
)

// The embedded bundles, copied unchanged from go-sev-guest v0.15.0's
// verify/trust (see amd/README.md): each is the ASK (or ASVK) and then the
// ARK, as AMD's KDS serves them at …/{vcek,vlek}/v1/<product>/cert_chain.
var (
	//go:embed amd/ask_ark_milan.pem
	milanVCEKPEM []byte
	//go:embed amd/ask_ark_milan_vlek.pem
	milanVLEKPEM []byte
	//go:embed amd/ask_ark_genoa.pem
	genoaVCEKPEM []byte
	//go:embed amd/ask_ark_genoa_vlek.pem
	genoaVLEKPEM []byte
	//go:embed amd/ask_ark_turin_vcek.pem
	turinVCEKPEM []byte
	//go:embed amd/ask_ark_turin_vlek.pem
	turinVLEKPEM []byte
)

// arkSHA256 pins each product line's ARK: the SHA-256 of its DER.
var arkSHA256 = map[string]string{
	ProductMilan: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
	ProductGenoa: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
	ProductTurin: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

// amdChain is one product line's embedded certificates.
type amdChain struct {
	ark, ask, asvk *x509.Certificate
}

// amdChains parses the embedded bundles once; the certificates are never
// changed after.
var amdChains = sync.OnceValues(func() (map[string]amdChain, error) {
	bundles := []struct {
		product    string
		vcek, vlek []byte
	}{
		{ProductMilan, milanVCEKPEM, milanVLEKPEM},
		{ProductGenoa, genoaVCEKPEM, genoaVLEKPEM},
		{ProductTurin, turinVCEKPEM, turinVLEKPEM},
	}
	out := make(map[string]amdChain, len(bundles))
	for _, b := range bundles {
		ask, ark, err := parseBundle(b.vcek)
		if err != nil {
			return nil, fmt.Errorf("snp: embedded %s VCEK bundle: %w", b.product, err)
		}
		asvk, ark2, err := parseBundle(b.vlek)
		if err != nil {
			return nil, fmt.Errorf("snp: embedded %s VLEK bundle: %w", b.product, err)
		}
		if !bytes.Equal(ark.Raw, ark2.Raw) {
			return nil, fmt.Errorf("snp: embedded %s bundles name two different ARKs", b.product)
		}
		if sum := sha256.Sum256(ark.Raw); hex.EncodeToString(sum[:]) != arkSHA256[b.product] {
			return nil, fmt.Errorf("snp: embedded %s ARK does not match its pinned SHA-256", b.product)
		}
		if want := "ARK-" + b.product; ark.Subject.CommonName != want {
			return nil, fmt.Errorf("snp: embedded %s ARK is %q, want %q", b.product, ark.Subject.CommonName, want)
		}
		if want := "SEV-" + b.product; ask.Subject.CommonName != want {
			return nil, fmt.Errorf("snp: embedded %s ASK is %q, want %q", b.product, ask.Subject.CommonName, want)
		}
		if want := "SEV-VLEK-" + b.product; asvk.Subject.CommonName != want {
			return nil, fmt.Errorf("snp: embedded %s ASVK is %q, want %q", b.product, asvk.Subject.CommonName, want)
		}
		for _, c := range []*x509.Certificate{ask, asvk} {
			if err := c.CheckSignatureFrom(ark); err != nil {
				return nil, fmt.Errorf("snp: embedded %s %s is not signed by its ARK: %w", b.product, c.Subject.CommonName, err)
			}
		}
		out[b.product] = amdChain{ark: ark, ask: ask, asvk: asvk}
	}
	return out, nil
})

// parseBundle reads a KDS cert_chain: the intermediate, then the root, and
// nothing else.
func parseBundle(b []byte) (intermediate, root *x509.Certificate, err error) {
	var certs []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, nil, fmt.Errorf("PEM block %q, want CERTIFICATE", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) != 2 || len(strings.TrimSpace(string(rest))) != 0 {
		return nil, nil, fmt.Errorf("%d certificates and %d trailing bytes, want the intermediate and the root", len(certs), len(rest))
	}
	return certs[0], certs[1], nil
}

// DefaultRoots returns AMD's real roots for Milan, Genoa and Turin: for each
// product line one trust.AMDRootCerts holding its ARK, its ASK (the issuer
// of VCEKs) and its ASVK (the issuer of VLEKs), parsed from the PEM this
// package embeds. Each call returns new values the caller may keep or change;
// the certificates in them are shared and must not be changed.
func DefaultRoots() map[string][]*trust.AMDRootCerts {
	chains, err := amdChains()
	if err != nil {
		panic(err) // the embedded files are part of the build: TestDefaultRoots checks them
	}
	out := make(map[string][]*trust.AMDRootCerts, len(chains))
	for product, c := range chains {
		out[product] = []*trust.AMDRootCerts{{
			ProductLine:  product,
			ProductCerts: &trust.ProductCerts{Ark: c.ark, Ask: c.ask, Asvk: c.asvk},
		}}
	}
	return out
}

// copyRoots copies the caller's roots into values only the verifier holds,
// checking that each names an ARK and at least one intermediate under the
// product line it is filed under.
func copyRoots(in map[string][]*trust.AMDRootCerts) (map[string][]*trust.AMDRootCerts, error) {
	if len(in) == 0 {
		return nil, fmt.Errorf("snp: no trusted roots")
	}
	out := make(map[string][]*trust.AMDRootCerts, len(in))
	for product, roots := range in {
		if product == "" {
			return nil, fmt.Errorf("snp: trusted roots filed under an empty product line")
		}
		for i, r := range roots {
			if r == nil || r.ProductCerts == nil || r.ProductCerts.Ark == nil {
				return nil, fmt.Errorf("snp: trusted root %d of %s has no ARK", i, product)
			}
			if r.ProductCerts.Ask == nil && r.ProductCerts.Asvk == nil {
				return nil, fmt.Errorf("snp: trusted root %d of %s has neither an ASK nor an ASVK", i, product)
			}
			if pl := r.GetProductLine(); pl != "" && pl != product {
				return nil, fmt.Errorf("snp: trusted root %d filed under %s is for %s", i, product, pl)
			}
			pc := *r.ProductCerts
			out[product] = append(out[product], &trust.AMDRootCerts{
				ProductLine:  product,
				ProductCerts: &pc,
			})
		}
		if len(out[product]) == 0 {
			return nil, fmt.Errorf("snp: no trusted roots for %s", product)
		}
	}
	return out, nil
}
