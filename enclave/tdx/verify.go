package tdx

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-tdx-guest/abi"
	gpcs "github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/validate"
	"github.com/google/go-tdx-guest/verify"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
)

// TCBNotEvaluated is Claims.TCBStatus of a quote verified without
// collateral: its signature and PCK chain verify, but nothing says how
// current the platform is. A policy that accepts only enclave.TCBUpToDate
// refuses it.
const TCBNotEvaluated = "NotEvaluated"

// intelQEVendorID is QE_VENDOR_ID of Intel's quoting enclave, the only one
// whose quotes the PCK chain vouches for.
var intelQEVendorID = []byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// rootCommonName is the subject common name go-tdx-guest requires of the
// root of every chain it checks.
const rootCommonName = "Intel SGX Root CA"

// Config configures a Verifier. The zero value verifies quotes to the Intel
// SGX Root CA at the current time, without collateral.
type Config struct {
	// Collateral returns the PCS collateral (TCB info, QE identity, PCK
	// CRL and root CA CRL) for a platform's FMSPC (6 bytes), typically
	// from the issuer's cache (collateral.Dir.TDX). Nil: quotes are
	// verified without collateral, their TCB is not evaluated and
	// Claims.TCBStatus is TCBNotEvaluated. When set, a quote whose
	// collateral is missing, malformed, expired or not yet valid is
	// refused with an error wrapping enclave.ErrCollateral.
	Collateral func(fmspc []byte) (*pcs.Collateral, error)
	// Now is the time of verification; nil: time.Now.
	Now func() time.Time
	// Root is the root CA every chain must end in; nil: pcs.IntelRoot(),
	// Intel's. Only tests pass another (tdxtest's).
	Root *x509.Certificate
}

// Verifier verifies TDX quotes (version 4 and 5) with go-tdx-guest,
// offline. It is safe for concurrent use.
type Verifier struct {
	collateral func(fmspc []byte) (*pcs.Collateral, error)
	lookups    *enclave.Gate // calls of collateral
	now        func() time.Time
	root       *x509.Certificate
	roots      *x509.CertPool
	cache      *collateralCache
}

var _ enclave.Verifier = (*Verifier)(nil)

// maxLookups bounds the calls of Config.Collateral a Verifier leaves running
// when the verifications that made them were given up on.
const maxLookups = 4

// New returns a Verifier configured by cfg.
func New(cfg Config) (*Verifier, error) {
	v := &Verifier{collateral: cfg.Collateral, lookups: enclave.NewGate(maxLookups), now: cfg.Now, root: cfg.Root, cache: newCollateralCache()}
	if v.now == nil {
		v.now = time.Now
	}
	if v.root == nil {
		v.root = pcs.IntelRoot()
	}
	switch {
	case !v.root.IsCA || !v.root.BasicConstraintsValid:
		return nil, fmt.Errorf("tdx: the root %q is not a CA certificate", v.root.Subject)
	case v.root.CheckSignatureFrom(v.root) != nil:
		return nil, fmt.Errorf("tdx: the root %q is not self-signed", v.root.Subject)
	case v.root.Subject.CommonName != rootCommonName:
		// go-tdx-guest checks every chain's root by this name.
		return nil, fmt.Errorf("tdx: the root's common name is %q, want %q", v.root.Subject.CommonName, rootCommonName)
	}
	v.roots = x509.NewCertPool()
	v.roots.AddCert(v.root)
	return v, nil
}

// errParserPanic marks a panic of go-tdx-guest caught by Verify: the
// evidence is refused, and the fuzz test fails, since decodeQuote should
// have kept the parser from it.
var errParserPanic = errors.New("tdx: go-tdx-guest panicked")

// refuse returns a refusal of evidence: an error wrapping
// enclave.ErrInvalidEvidence.
func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: tdx: %s", enclave.ErrInvalidEvidence, fmt.Sprintf(format, args...))
}

// refuseCollateral returns a refusal for want of collateral: an error
// wrapping enclave.ErrInvalidEvidence and enclave.ErrCollateral, and err
// when it is not nil.
func refuseCollateral(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if err != nil {
		return fmt.Errorf("%w: %w: tdx: %s: %w", enclave.ErrInvalidEvidence, enclave.ErrCollateral, msg, err)
	}
	return fmt.Errorf("%w: %w: tdx: %s", enclave.ErrInvalidEvidence, enclave.ErrCollateral, msg)
}

// safely runs f, turning a panic into an error wrapping errParserPanic.
func safely(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errParserPanic, r)
		}
	}()
	return f()
}

// tcbResult is how collateral judged a quote's platform.
type tcbResult struct {
	platform, module, qe gpcs.TcbLevel
	moduleIdentity       bool // the TEE_TCB_SVN names a TDX module version (TDX 1.5 and later)
}

// Verify implements enclave.Verifier. It checks, in order: the quote's
// layout (version 4 or 5, ECDSA P-256, TDX); that its PCK chain ends in
// the root; with go-tdx-guest, the chain (at the time of verification),
// the QE report's signature by the PCK key, that the QE report binds the
// attestation key, and the quote's signature by that key; with collateral,
// the TCB info, QE identity and CRLs (signed under the root, current,
// neither PCK certificate revoked) and the TCB levels of the platform, the
// TDX module and the QE; finally, with go-tdx-guest's validate, what every
// TDX quote must hold (Intel's QE vendor ID, the fixed bits of XFAM and
// TD_ATTRIBUTES). The task's own requirements are Requirements.Check's.
// Once ctx is done it returns an error wrapping ctx.Err(), also while
// Config.Collateral has not returned (that call runs on, see enclave.Gate;
// at most maxLookups are left so).
func (v *Verifier) Verify(ctx context.Context, evidence []byte) (enclave.Claims, error) {
	c, _, err := v.verify(ctx, evidence)
	return c, err
}

func (v *Verifier) verify(ctx context.Context, evidence []byte) (enclave.Claims, *tcbResult, error) {
	if err := ctx.Err(); err != nil {
		return enclave.Claims{}, nil, fmt.Errorf("tdx: verify: %w", err)
	}
	now := v.now()
	raw, err := decodeQuote(evidence)
	if err != nil {
		return enclave.Claims{}, nil, refuse("not a TDX quote: %v", err)
	}
	var quote any
	if err := safely(func() (err error) { quote, err = abi.QuoteToProto(evidence); return err }); err != nil {
		return enclave.Claims{}, nil, wrapParse(err)
	}
	// The quote go-tdx-guest checks must be the bytes given, which the
	// claims are read from.
	var again []byte
	if err := safely(func() (err error) { again, err = abi.QuoteToAbiBytes(quote); return err }); err != nil || !bytes.Equal(again, evidence) {
		return enclave.Claims{}, nil, refuse("the parsed quote does not encode back to the evidence (%v)", err)
	}
	var chain *verify.PCKCertificateChain
	if err := safely(func() (err error) { chain, err = verify.ExtractChainFromQuote(quote); return err }); err != nil {
		return enclave.Claims{}, nil, wrapParse(fmt.Errorf("PCK chain: %w", err))
	}
	if !chain.RootCertificate.Equal(v.root) {
		sum := sha256.Sum256(chain.RootCertificate.Raw)
		return enclave.Claims{}, nil, refuse("PCK chain: its root CA %q (SHA-256 %x) is not the trusted root %q", chain.RootCertificate.Subject, sum[:8], v.root.Subject)
	}
	var ext *gpcs.PckExtensions
	if err := safely(func() (err error) { ext, err = gpcs.PckCertificateExtensions(chain.PCKCertificate); return err }); err != nil {
		return enclave.Claims{}, nil, wrapParse(fmt.Errorf("PCK certificate's SGX extensions: %w", err))
	}
	fmspc, err := hex.DecodeString(ext.FMSPC)
	if err != nil || len(fmspc) != 6 {
		return enclave.Claims{}, nil, refuse("PCK certificate's FMSPC %q is not 6 bytes", ext.FMSPC)
	}

	var prep *prepared
	if v.collateral != nil {
		col, err := enclave.Call(ctx, v.lookups, "tdx: collateral", func() (*pcs.Collateral, error) { return v.collateral(bytes.Clone(fmspc)) })
		switch {
		case ctx.Err() != nil && errors.Is(err, ctx.Err()):
			return enclave.Claims{}, nil, err // given up on: nothing is known of the evidence
		case err != nil:
			return enclave.Claims{}, nil, refuseCollateral(err, "collateral for FMSPC %x", fmspc)
		case col == nil:
			return enclave.Claims{}, nil, refuseCollateral(nil, "no collateral for FMSPC %x", fmspc)
		}
		if prep, err = v.cache.get(col, v.root, now); err != nil {
			return enclave.Claims{}, nil, refuseCollateral(err, "collateral for FMSPC %x is malformed", fmspc)
		}
		if err := prep.check(now, ext.FMSPC, chain.PCKCertificate.Issuer.CommonName); err != nil {
			return enclave.Claims{}, nil, refuseCollateral(nil, "collateral for FMSPC %x: %v", fmspc, err)
		}
	}

	opts := &verify.Options{
		GetCollateral:    prep != nil,
		CheckRevocations: prep != nil,
		Getter:           offlineGetter(nil),
		Now:              &verify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now},
		TrustedRoots:     v.roots,
	}
	if prep != nil {
		opts.Getter = prep.getter
	}
	if err := safely(func() error { return verify.TdxQuote(quote, opts) }); err != nil {
		if errors.Is(err, errParserPanic) {
			return enclave.Claims{}, nil, wrapParse(err)
		}
		return enclave.Claims{}, nil, refuse("the quote does not verify: %v%s", err, levelsFound(quote, opts))
	}

	if err := safely(func() error { return validateQuote(quote) }); err != nil {
		if errors.Is(err, errParserPanic) {
			return enclave.Claims{}, nil, wrapParse(err)
		}
		return enclave.Claims{}, nil, refuse("the quote fails validation: %v", err)
	}

	c := claimsOf(raw, chain, ext, fmspc)
	var res *tcbResult
	if prep == nil {
		c.TCBStatus = TCBNotEvaluated
	} else {
		if res, err = evaluateTCB(quote, opts, prep, raw, ext); err != nil {
			return enclave.Claims{}, nil, err
		}
		c.TCBStatus = string(res.platform.TcbStatus)
		if res.moduleIdentity {
			c.TDX.TDXModuleTCB = string(res.module.TcbStatus)
		}
		c.Advisories = advisories(res)
		c.Collateral = append(c.Collateral, prep.uses...)
	}
	return c, res, nil
}

// wrapParse refuses evidence that go-tdx-guest cannot read, keeping
// errParserPanic for the fuzz test to find.
func wrapParse(err error) error {
	if errors.Is(err, errParserPanic) {
		return fmt.Errorf("%w: tdx: not a TDX quote: %w", enclave.ErrInvalidEvidence, err)
	}
	return refuse("not a TDX quote: %v", err)
}

// levelsFound names, for a refusal, the TCB levels the collateral gives the
// quote when one is not UpToDate (go-tdx-guest refuses those), where
// go-tdx-guest got as far as reading them.
func levelsFound(quote any, opts *verify.Options) string {
	if !opts.GetCollateral {
		return ""
	}
	var tdx, qe gpcs.TcbLevel
	if safely(func() (err error) { tdx, qe, err = verify.SupportedTcbLevelsFromCollateral(quote, opts); return err }) != nil {
		return ""
	}
	if tdx.TcbStatus == gpcs.TcbComponentStatusUpToDate && qe.TcbStatus == gpcs.TcbComponentStatusUpToDate {
		return ""
	}
	return fmt.Sprintf(" (TCB levels found: TDX %s, QE %s)", tdx.TcbStatus, qe.TcbStatus)
}

// validateQuote checks with go-tdx-guest's validate what every TDX quote
// must hold whatever the task: QE_VENDOR_ID is Intel's, and XFAM and
// TD_ATTRIBUTES have their fixed bits (DEBUG is allowed here and is
// Requirements'). validate reads version 4 quotes only; a version 5 quote's
// body holds the same fields (and TDX 1.5's two more), so it is checked as
// the version 4 quote with that body.
func validateQuote(quote any) error {
	v4, ok := quote.(*pb.QuoteV4)
	if q5, is5 := quote.(*pb.QuoteV5); is5 {
		h, b := q5.GetHeader(), q5.GetTdQuoteBodyDescriptor().GetTdQuoteBodyV5()
		v4 = &pb.QuoteV4{
			Header: &pb.Header{Version: 4, AttestationKeyType: h.GetAttestationKeyType(), TeeType: h.GetTeeType(),
				PceSvn: h.GetPceSvn(), QeSvn: h.GetQeSvn(), QeVendorId: h.GetQeVendorId(), UserData: h.GetUserData()},
			TdQuoteBody: &pb.TDQuoteBody{TeeTcbSvn: b.GetTeeTcbSvn(), MrSeam: b.GetMrSeam(), MrSignerSeam: b.GetMrSignerSeam(),
				SeamAttributes: b.GetSeamAttributes(), TdAttributes: b.GetTdAttributes(), Xfam: b.GetXfam(), MrTd: b.GetMrTd(),
				MrConfigId: b.GetMrConfigId(), MrOwner: b.GetMrOwner(), MrOwnerConfig: b.GetMrOwnerConfig(), Rtmrs: b.GetRtmrs(),
				ReportData: b.GetReportData()},
			SignedDataSize: uint32(q5.GetSignedDataSize()),
			SignedData:     q5.GetSignedData(),
		}
		ok = true
	}
	if !ok {
		return fmt.Errorf("unsupported quote type %T", quote)
	}
	return validate.TdxQuote(v4, &validate.Options{
		HeaderOptions: validate.HeaderOptions{QeVendorID: intelQEVendorID},
	})
}

// evaluateTCB reads the TCB levels the collateral gives the quote, which
// go-tdx-guest has verified: it requires the TDX module's level (the
// platform's, for a TDX 1.0 module) and the QE's to be UpToDate. The
// platform's own level, which go-tdx-guest does not judge when the quote
// names a TDX module version, is matched here; it is the TCB status the
// claims carry.
func evaluateTCB(quote any, opts *verify.Options, prep *prepared, raw *rawQuote, ext *gpcs.PckExtensions) (*tcbResult, error) {
	res := &tcbResult{}
	if err := safely(func() (err error) {
		res.module, res.qe, err = verify.SupportedTcbLevelsFromCollateral(quote, opts)
		return err
	}); err != nil {
		return nil, refuse("the TCB levels of the verified quote: %v", err)
	}
	teeTCBSVN := raw.field(offTEETCBSVN, 16)
	level, ok := platformLevel(prep.tcbInfo.TcbLevels, teeTCBSVN, ext)
	if !ok {
		return nil, refuse("no TCB level of the TCB info for FMSPC %s matches the platform (CPUSVN %x, PCESVN %d, TEE_TCB_SVN %x)", ext.FMSPC, ext.TCB.CPUSvnComponents, ext.TCB.PCESvn, teeTCBSVN)
	}
	res.platform = level
	res.moduleIdentity = teeTCBSVN[1] > 0
	for name, l := range map[string]gpcs.TcbLevel{"platform": res.platform, "TDX module": res.module, "QE": res.qe} {
		if l.TcbStatus == gpcs.TcbComponentStatusRevoked {
			return nil, refuse("the %s's TCB level is Revoked", name)
		}
	}
	return res, nil
}

// platformLevel is the first (best) TCB level that the platform's TCB
// reaches: its CPUSVN components and PCESVN, from the PCK certificate, and
// its TEE_TCB_SVN, from the quote, whose first two bytes (the TDX module's
// SVN and version) count only when the version is 0 (TDX 1.0). This is
// Intel's matching, as go-tdx-guest does it.
func platformLevel(levels []gpcs.TcbLevel, teeTCBSVN []byte, ext *gpcs.PckExtensions) (gpcs.TcbLevel, bool) {
	atLeast := func(have []byte, want []gpcs.TcbComponent, from int) bool {
		if len(have) != 16 || len(want) != 16 {
			return false
		}
		for i := from; i < 16; i++ {
			if have[i] < want[i].Svn {
				return false
			}
		}
		return true
	}
	from := 0
	if teeTCBSVN[1] > 0 {
		from = 2
	}
	for _, l := range levels {
		if atLeast(ext.TCB.CPUSvnComponents, l.Tcb.SgxTcbcomponents, 0) && ext.TCB.PCESvn >= l.Tcb.Pcesvn && atLeast(teeTCBSVN, l.Tcb.TdxTcbcomponents, from) {
			return l, true
		}
	}
	return gpcs.TcbLevel{}, false
}

// advisories are the advisory IDs of the levels matched, each once, sorted.
func advisories(res *tcbResult) []string {
	var out []string
	for _, l := range []gpcs.TcbLevel{res.platform, res.module, res.qe} {
		out = append(out, l.AdvisoryIDs...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// claimsOf reads the claims of a verified quote.
func claimsOf(raw *rawQuote, chain *verify.PCKCertificateChain, ext *gpcs.PckExtensions, fmspc []byte) enclave.Claims {
	f := func(off, n int) []byte { return bytes.Clone(raw.field(off, n)) }
	t := &enclave.TDXClaims{
		QuoteVersion:   raw.version,
		TEETCBSVN:      f(offTEETCBSVN, 16),
		MRSEAM:         f(offMRSEAM, mr),
		MRSignerSEAM:   f(offMRSignerSEAM, mr),
		SEAMAttributes: f(offSEAMAttributes, 8),
		TDAttributes:   f(offTDAttributes, 8),
		XFAM:           f(offXFAM, 8),
		MRConfigID:     f(offMRConfigID, mr),
		MROwner:        f(offMROwner, mr),
		MROwnerConfig:  f(offMROwnerConfig, mr),
		FMSPC:          bytes.Clone(fmspc),
		PCESVN:         ext.TCB.PCESvn,
		QESVN:          raw.qeSVN(),
	}
	for i := range t.RTMRs {
		t.RTMRs[i] = f(offRTMR0+i*mr, mr)
	}
	c := enclave.Claims{
		Backend:  enclave.PlatformTDX,
		UniqueID: bytes.Clone(raw.mrtd()),
		Debug:    raw.debug(),
		TDX:      t,
		Collateral: []enclave.CollateralUse{{
			Kind:       "PCK chain",
			ID:         fmt.Sprintf("%s, serial %x", chain.PCKCertificate.Subject.CommonName, chain.PCKCertificate.SerialNumber),
			Issued:     chain.PCKCertificate.NotBefore,
			NextUpdate: earliest(chain.PCKCertificate.NotAfter, chain.IntermediateCertificate.NotAfter, chain.RootCertificate.NotAfter),
		}},
	}
	copy(c.ReportData[:], raw.field(offReportData, enclave.ReportDataSize))
	return c
}

func earliest(ts ...time.Time) time.Time {
	e := ts[0]
	for _, t := range ts[1:] {
		if t.Before(e) {
			e = t
		}
	}
	return e
}
