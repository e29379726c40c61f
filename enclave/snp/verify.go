package snp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cohort-dev/cohort/enclave"
)

// Signer names: the key that signed a report, as SNPClaims.Signer and
// CollateralUse.Kind give it.
const (
	SignerVCEK = "VCEK" // the chip's own key, certified by AMD for one TCB
	SignerVLEK = "VLEK" // a cloud provider's key, certified by AMD for one TCB
)

// Config configures a Verifier. The zero Config verifies against AMD's real
// roots, with no endorsement cache, at the wall clock's time.
type Config struct {
	// Roots are the ARK, ASK and ASVK certificates to trust, by product
	// line (Milan, Genoa, Turin). nil: DefaultRoots(), AMD's real ones.
	// Only the roots given are trusted: go-sev-guest's embedded defaults
	// and globals are never consulted.
	Roots map[string][]*trust.AMDRootCerts
	// Endorsements returns the DER of the VCEK or VLEK certificate for a
	// report whose evidence carries none: from a cache the operator fills
	// (from AMD's KDS or the cloud provider) ahead of time. productLine is
	// "" for a version 2 report, which does not say; signer is SignerVCEK
	// or SignerVLEK. nil: evidence without its certificate is refused.
	Endorsements func(productLine string, signer string, chipID []byte, reportedTCB uint64) ([]byte, error)
	// Now is the time certificates must be valid at; nil: time.Now.
	Now func() time.Time
}

// Verifier verifies SEV-SNP evidence. It is safe for concurrent use.
type Verifier struct {
	roots        map[string][]*trust.AMDRootCerts // never changed after New
	endorsements func(productLine, signer string, chipID []byte, reportedTCB uint64) ([]byte, error)
	now          func() time.Time
	lookups      *enclave.Gate // calls of endorsements

	mu    sync.Mutex
	cache map[cacheKey]*endorsement
}

var _ enclave.Verifier = (*Verifier)(nil)

// maxLookups bounds the calls of Config.Endorsements a Verifier leaves
// running when the verifications that made them were given up on.
const maxLookups = 4

// maxCached bounds the endorsement certificates a Verifier keeps verified.
const maxCached = 256

// cacheKey names a verified endorsement: its DER, the key kind it was
// verified as, and the product line the report named ("" for version 2
// reports, whose product line comes from the certificate).
type cacheKey struct {
	sum     [sha256.Size]byte
	signer  abi.ReportSigner
	product string
}

// endorsement is a VCEK or VLEK certificate that go-sev-guest verified
// against the Verifier's roots. The verification stands from notBefore to
// notAfter: the certificate's validity, within that of every root and
// intermediate of its product line.
type endorsement struct {
	cert                *x509.Certificate
	exts                *kds.Extensions
	product             string
	notBefore, notAfter time.Time
}

// New returns a Verifier for cfg.
func New(cfg Config) (*Verifier, error) {
	v := &Verifier{
		endorsements: cfg.Endorsements,
		now:          cfg.Now,
		lookups:      enclave.NewGate(maxLookups),
		cache:        make(map[cacheKey]*endorsement),
	}
	if v.now == nil {
		v.now = time.Now
	}
	if cfg.Roots == nil {
		v.roots = DefaultRoots()
	} else {
		roots, err := copyRoots(cfg.Roots)
		if err != nil {
			return nil, err
		}
		v.roots = roots
	}
	return v, nil
}

// refuseGetter is the certificate getter go-sev-guest is given: it refuses
// everything, so that nothing on the verification path reaches a network.
type refuseGetter struct{}

func (refuseGetter) Get(url string) ([]byte, error) {
	return nil, fmt.Errorf("snp: fetching %s refused: the verifier works offline", url)
}

func (refuseGetter) GetContext(_ context.Context, url string) ([]byte, error) {
	return refuseGetter{}.Get(url)
}

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: snp: %s", enclave.ErrInvalidEvidence, fmt.Sprintf(format, args...))
}

func refuseCollateral(format string, args ...any) error {
	return fmt.Errorf("%w: %w: snp: %s", enclave.ErrInvalidEvidence, enclave.ErrCollateral, fmt.Sprintf(format, args...))
}

// Verify implements enclave.Verifier for Evidence bytes. It returns claims
// only when the report's signature verifies with a VCEK or VLEK certificate
// that chains to the Verifier's roots at Now, and the report passes the
// checks every report must (see baseOptions). The per-task choices (debug,
// SMT, provisional firmware, minimum TCB, measurement, VMPL, HOST_DATA) are
// left to Requirements.Check. Once ctx is done it returns an error wrapping
// ctx.Err(), also while Config.Endorsements has not returned (that call runs
// on, see enclave.Gate; at most maxLookups are left so).
func (v *Verifier) Verify(ctx context.Context, evidence []byte) (enclave.Claims, error) {
	if err := ctx.Err(); err != nil {
		return enclave.Claims{}, fmt.Errorf("snp: verify: %w", err)
	}
	e, err := ParseEvidence(evidence)
	if err != nil {
		return enclave.Claims{}, err
	}
	return v.verify(ctx, e.Report, e.Endorsement)
}

// reportedProductLine is the product line a version 3 or later report
// names by its CPUID family, model and stepping; "" where the report does
// not say (version 2).
func reportedProductLine(r *spb.Report) string {
	if fms := r.GetCpuid1EaxFms(); fms != 0 {
		return kds.ProductLineFromFms(fms)
	}
	return ""
}

func (v *Verifier) verify(ctx context.Context, raw, der []byte) (enclave.Claims, error) {
	if err := abi.ValidateReportFormat(raw); err != nil {
		return enclave.Claims{}, refuse("attestation report format: %v", err)
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return enclave.Claims{}, refuse("attestation report does not parse: %v", err)
	}
	// The signature is checked over the report as go-sev-guest re-encodes
	// it; insist that this is the report as it came.
	if again, err := abi.ReportToAbiBytes(report); err != nil || !bytes.Equal(again, raw) {
		return enclave.Claims{}, refuse("attestation report has bytes outside the fields it defines")
	}
	if report.GetSignatureAlgo() != abi.SignEcdsaP384Sha384 {
		return enclave.Claims{}, refuse("attestation report signature algorithm %d, want ECDSA P-384 with SHA-384", report.GetSignatureAlgo())
	}
	info, err := abi.ParseSignerInfo(report.GetSignerInfo())
	if err != nil {
		return enclave.Claims{}, refuse("attestation report signer info: %v", err)
	}
	signer := info.SigningKey
	if signer != abi.VcekReportSigner && signer != abi.VlekReportSigner {
		return enclave.Claims{}, refuse("attestation report is signed by %v, want a VCEK or VLEK", signer)
	}
	product := reportedProductLine(report)
	if product == "Unknown" {
		return enclave.Claims{}, refuse("attestation report's CPUID (0x%08x) is of no SEV-SNP product line go-sev-guest knows", report.GetCpuid1EaxFms())
	}

	if len(der) == 0 {
		if der, err = v.lookupEndorsement(ctx, product, signer, report); err != nil {
			return enclave.Claims{}, err
		}
	}
	now := v.now()
	end, err := v.endorsement(ctx, der, signer, product, report, raw, now)
	if err != nil {
		return enclave.Claims{}, err
	}
	product = end.product

	// The endorsement is for one TCB: a report of another needs another
	// certificate (the host's table or the cache is stale).
	if uint64(end.exts.TCBVersion) != report.GetReportedTcb() {
		return enclave.Claims{}, refuseCollateral("the %v certificate is for TCB 0x%016x, the report's REPORTED_TCB is 0x%016x: the %v for that TCB is needed",
			signer, uint64(end.exts.TCBVersion), report.GetReportedTcb(), signer)
	}
	attestation := &spb.Attestation{Report: report, CertificateChain: chainOf(signer, der)}
	if err := validate.SnpAttestation(attestation, baseOptions()); err != nil {
		return enclave.Claims{}, refuse("attestation report fails the checks every report must pass: %v", err)
	}
	return claims(report, product, signer, end), nil
}

// lookupEndorsement asks Config.Endorsements for the certificate the
// evidence did not carry.
func (v *Verifier) lookupEndorsement(ctx context.Context, product string, signer abi.ReportSigner, report *spb.Report) ([]byte, error) {
	if v.endorsements == nil {
		return nil, refuseCollateral("the evidence carries no %v certificate and the verifier has no endorsement cache (fetching certificates from AMD's KDS is off)", signer)
	}
	chip, tcb := bytes.Clone(report.GetChipId()), report.GetReportedTcb()
	der, err := enclave.Call(ctx, v.lookups, "snp: the endorsement cache", func() ([]byte, error) {
		return v.endorsements(product, signer.String(), chip, tcb)
	})
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
		return nil, err // given up on: nothing is known of the evidence
	}
	if err != nil {
		return nil, refuseCollateral("the evidence carries no %v certificate and the endorsement cache has none for chip %x at TCB 0x%016x: %v",
			signer, report.GetChipId(), report.GetReportedTcb(), err)
	}
	if len(der) == 0 {
		return nil, refuseCollateral("the evidence carries no %v certificate and the endorsement cache has none for chip %x at TCB 0x%016x",
			signer, report.GetChipId(), report.GetReportedTcb())
	}
	if len(der) > MaxEndorsementSize {
		return nil, refuse("the endorsement cache's %v certificate is %d bytes, at most %d", signer, len(der), MaxEndorsementSize)
	}
	return der, nil
}

func chainOf(signer abi.ReportSigner, der []byte) *spb.CertificateChain {
	if signer == abi.VlekReportSigner {
		return &spb.CertificateChain{VlekCert: der}
	}
	return &spb.CertificateChain{VcekCert: der}
}

// endorsement returns the verified endorsement certificate der for the
// report, and checks the report's signature with it: from the cache when
// the verification of der stands at now, else through go-sev-guest's
// verify.SnpAttestationContext (chain to the roots, then signature), whose
// success is cached.
func (v *Verifier) endorsement(ctx context.Context, der []byte, signer abi.ReportSigner, product string, report *spb.Report, raw []byte, now time.Time) (*endorsement, error) {
	key := cacheKey{sum: sha256.Sum256(der), signer: signer, product: product}
	if end := v.cached(key, now); end != nil {
		if err := verify.SnpReportSignature(raw, end.cert); err != nil {
			return nil, refuse("the report signature does not verify with its %v (serial %x): %v", signer, end.cert.SerialNumber, err)
		}
		return end, nil
	}

	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, refuse("the %v certificate does not parse: %v", signer, err)
	}
	exts, err := kds.CertificateExtensions(cert, signer)
	if err != nil {
		return nil, refuse("the %v certificate's AMD extensions: %v", signer, err)
	}
	if product == "" { // a version 2 report: the certificate names the product
		p, err := kds.ParseProductName(exts.ProductName, signer)
		if err != nil {
			return nil, refuse("the %v certificate's product name: %v", signer, err)
		}
		product = kds.ProductLine(p)
	}
	roots := v.roots[product]
	if len(roots) == 0 {
		return nil, refuse("the report is from an AMD %s, and the verifier trusts no roots for it", product)
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, refuseCollateral("the %v certificate (%s, serial %x) is valid from %s to %s, not at %s",
			signer, product, cert.SerialNumber, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	attestation := &spb.Attestation{Report: report, CertificateChain: chainOf(signer, der)}
	if err := verify.SnpAttestationContext(ctx, attestation, v.verifyOptions(now)); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("snp: verify the %v certificate: %w", signer, cerr)
		}
		if sigErr := verify.SnpReportSignature(raw, cert); sigErr != nil {
			return nil, refuse("the report signature does not verify with its %v (serial %x): %v", signer, cert.SerialNumber, sigErr)
		}
		return nil, refuse("the %v certificate (serial %x) does not chain to the trusted AMD %s roots: %v", signer, cert.SerialNumber, product, err)
	}
	end := &endorsement{cert: cert, exts: exts, product: product, notBefore: cert.NotBefore, notAfter: cert.NotAfter}
	for _, r := range roots {
		ica := r.ProductCerts.Ask
		if signer == abi.VlekReportSigner {
			ica = r.ProductCerts.Asvk
		}
		for _, c := range []*x509.Certificate{r.ProductCerts.Ark, ica} {
			if c == nil {
				continue
			}
			if c.NotBefore.After(end.notBefore) {
				end.notBefore = c.NotBefore
			}
			if c.NotAfter.Before(end.notAfter) {
				end.notAfter = c.NotAfter
			}
		}
	}
	v.store(key, end, now)
	return end, nil
}

// verifyOptions are the options go-sev-guest's verify package is given:
// only this Verifier's roots, no fetching (a getter that refuses all), no
// revocation lists (they would be fetched), and the injected time.
func (v *Verifier) verifyOptions(now time.Time) *verify.Options {
	return &verify.Options{
		DisableCertFetching: true,
		Getter:              refuseGetter{},
		Now:                 now,
		TrustedRoots:        v.roots,
	}
}

func (v *Verifier) cached(key cacheKey, now time.Time) *endorsement {
	v.mu.Lock()
	defer v.mu.Unlock()
	end := v.cache[key]
	if end == nil || now.Before(end.notBefore) || now.After(end.notAfter) {
		return nil
	}
	return end
}

func (v *Verifier) store(key cacheKey, end *endorsement, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.cache) >= maxCached {
		for k, e := range v.cache {
			if now.Before(e.notBefore) || now.After(e.notAfter) {
				delete(v.cache, k)
			}
		}
	}
	if len(v.cache) >= maxCached {
		for k := range v.cache { // full of valid ones: drop any
			delete(v.cache, k)
			break
		}
	}
	v.cache[key] = end
}

// baseOptions are the checks of go-sev-guest's validate package that every
// report must pass, whatever the task:
//   - the guest policy's reserved bits are as the ABI says, and it does not
//     allow a migration agent (which could export the guest's memory);
//   - the committed TCB, build and API version are not above the current
//     ones, the VCEK's or VLEK's TCB is the REPORTED_TCB and not above the
//     current TCB;
//   - CHIP_ID, unless masked, is the VCEK's hardware ID.
//
// Debug, SMT, provisional firmware, a minimum TCB, measurements, VMPL and
// HOST_DATA are permitted here and decided by Requirements.
func baseOptions() *validate.Options {
	return &validate.Options{
		GuestPolicy: abi.SnpPolicy{
			SMT:        true,
			Debug:      true,
			CXLAllowed: true,
		},
		PermitProvisionalFirmware: true,
	}
}

// claims returns what a verified report says. SignerID, ProductID and
// SecurityVersion stay zero: SEV-SNP has no MRSIGNER, and its signer digests
// and GUEST_SVN are in SNPClaims (IDKeyDigest, AuthorKey, GuestSVN).
func claims(r *spb.Report, product string, signer abi.ReportSigner, end *endorsement) enclave.Claims {
	cert := end.cert
	current := DecodeTCB(product, r.GetCurrentTcb())
	reported := DecodeTCB(product, r.GetReportedTcb())
	committed := DecodeTCB(product, r.GetCommittedTcb())
	provisional := r.GetCommittedTcb() != r.GetCurrentTcb() ||
		r.GetCommittedBuild() != r.GetCurrentBuild() ||
		r.GetCommittedMajor() != r.GetCurrentMajor() ||
		r.GetCommittedMinor() != r.GetCurrentMinor()
	status := enclave.TCBUpToDate
	switch {
	case provisional:
		status = TCBProvisional
	case r.GetReportedTcb() != r.GetCurrentTcb():
		status = TCBReportedBelowCurrent
	}
	c := enclave.Claims{
		Backend:   enclave.PlatformSNP,
		UniqueID:  bytes.Clone(r.GetMeasurement()),
		Debug:     r.GetPolicy()&(1<<policyDebugBit) != 0,
		TCBStatus: status,
		SNP: &enclave.SNPClaims{
			ReportVersion: r.GetVersion(),
			GuestPolicy:   r.GetPolicy(),
			VMPL:          r.GetVmpl(),
			Signer:        signer.String(),
			ProductLine:   product,
			HostData:      bytes.Clone(r.GetHostData()),
			IDKeyDigest:   bytes.Clone(r.GetIdKeyDigest()),
			AuthorKey:     bytes.Clone(r.GetAuthorKeyDigest()),
			ReportID:      bytes.Clone(r.GetReportId()),
			ChipID:        bytes.Clone(r.GetChipId()),
			CurrentTCB:    current,
			ReportedTCB:   reported,
			CommittedTCB:  committed,
			LaunchTCB:     DecodeTCB(product, r.GetLaunchTcb()),
			Provisional:   provisional,
			SMT:           r.GetPlatformInfo()&1 != 0,
			PlatformInfo:  r.GetPlatformInfo(),
			GuestSVN:      r.GetGuestSvn(),
			FamilyID:      bytes.Clone(r.GetFamilyId()),
			ImageID:       bytes.Clone(r.GetImageId()),
		},
		Collateral: []enclave.CollateralUse{{
			Kind:       signer.String(),
			ID:         fmt.Sprintf("%s serial %x TCB 0x%016x", product, cert.SerialNumber, uint64(end.exts.TCBVersion)),
			Issued:     cert.NotBefore,
			NextUpdate: cert.NotAfter,
		}},
	}
	copy(c.ReportData[:], r.GetReportData())
	return c
}

// policyDebugBit is the guest policy's DEBUG bit (SEV-SNP ABI, GUEST_POLICY).
const policyDebugBit = 19
