// Package snptest is a test fake of an AMD SEV-SNP guest, for tests of code
// that attests or verifies SEV-SNP evidence without the hardware.
//
// A Fake signs attestation reports with a certificate chain that
// go-sev-guest's testing package makes (ARK, ASK, ASVK, VCEK and VLEK with
// AMD's names, from keys go-sev-guest publishes in its source). Its reports
// verify only with a verifier given the fake's own roots (Fake.Roots, or
// Fake.Config); a production verifier, with AMD's real roots, never trusts
// them: anyone holds the fake's keys.
package snptest

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
)

// DefaultMeasurement is the MEASUREMENT of a fake's reports unless
// Options.Measurement says otherwise: SHA-384 of "cohort snptest measurement".
var DefaultMeasurement = func() []byte {
	s := sha512.Sum384([]byte("cohort snptest measurement"))
	return s[:]
}()

// DefaultTCB is the TCB of a fake's reports and endorsement unless
// Options.TCB says otherwise: boot loader 4, TEE 1, SNP 22, microcode 213,
// and on Turin FMC 1, each in its product line's layout.
func DefaultTCB(productLine string) uint64 {
	if productLine == snp.ProductTurin {
		return 0xd5<<56 | 22<<24 | 1<<16 | 4<<8 | 1
	}
	return 0xd5<<56 | 22<<48 | 1<<8 | 4
}

// Options shape a Fake's reports. The zero value is a Milan guest, not
// debug, at VMPL 0, without SMT, signed by its VCEK, with firmware up to date.
type Options struct {
	// ProductLine is snp.ProductMilan (default), snp.ProductGenoa or
	// snp.ProductTurin; reports are version 3, naming it by CPUID.
	ProductLine string
	// Signer is snp.SignerVCEK (default) or snp.SignerVLEK.
	Signer string
	// Measurement is the MEASUREMENT, 48 bytes; nil: DefaultMeasurement.
	Measurement []byte
	// HostData is the HOST_DATA, 32 bytes; nil: zeros.
	HostData []byte
	// Debug sets the guest policy's DEBUG bit.
	Debug bool
	// SMT sets PLATFORM_INFO's SMT-enabled bit.
	SMT bool
	// VMPL is the report's VMPL where the attester asks for none.
	VMPL uint32
	// TCB is the current, reported, committed and launch TCB, and the
	// endorsement's; 0: DefaultTCB. Components other than microcode must be
	// at most 127.
	TCB uint64
	// CommittedTCB, when not 0, is the committed (and launch) TCB instead:
	// lower than TCB for provisional firmware.
	CommittedTCB uint64
	// ReportedTCB, when not 0, is the reported TCB (and the endorsement's)
	// instead: lower than TCB as hosts report for a fleet.
	ReportedTCB uint64
	// OmitEndorsement leaves the host's certificate table empty, so that
	// the evidence carries no VCEK or VLEK.
	OmitEndorsement bool
	// Created is when the fake's ARK, ASK and ASVK begin to be valid (for
	// 25 years); the VCEK and VLEK end 7 years after it (go-sev-guest's
	// begin at year 1). Zero: a day before New.
	Created time.Time
}

// Fake is a fake SEV-SNP guest. It is safe for concurrent use.
type Fake struct {
	opts        Options
	signer      abi.ReportSigner
	family      [3]byte // family, model, stepping
	chipID      [abi.ChipIDSize]byte
	reportID    [abi.ReportIDSize]byte
	measurement []byte
	hostData    []byte
	chain       *sevtest.AmdSigner
}

// chainMu serializes the building of certificate chains: go-sev-guest's
// testing package draws their randomness from one unsynchronised source.
var chainMu sync.Mutex

var products = map[string]struct {
	name string  // the VCEK's productName
	fms  [3]byte // CPUID family, model, stepping
}{
	snp.ProductMilan: {"Milan-B1", [3]byte{0x19, 0x01, 1}},
	snp.ProductGenoa: {"Genoa-B1", [3]byte{0x19, 0x11, 1}},
	snp.ProductTurin: {"Turin-B0", [3]byte{0x1a, 0x02, 0}},
}

// New returns a fake guest shaped by o.
func New(o Options) (*Fake, error) {
	if o.ProductLine == "" {
		o.ProductLine = snp.ProductMilan
	}
	p, ok := products[o.ProductLine]
	if !ok {
		return nil, fmt.Errorf("snptest: product line %q, want Milan, Genoa or Turin", o.ProductLine)
	}
	f := &Fake{opts: o, family: p.fms, measurement: o.Measurement, hostData: o.HostData}
	switch o.Signer {
	case "", snp.SignerVCEK:
		f.signer = abi.VcekReportSigner
	case snp.SignerVLEK:
		f.signer = abi.VlekReportSigner
	default:
		return nil, fmt.Errorf("snptest: signer %q, want VCEK or VLEK", o.Signer)
	}
	if f.measurement == nil {
		f.measurement = DefaultMeasurement
	}
	if len(f.measurement) != abi.MeasurementSize {
		return nil, fmt.Errorf("snptest: measurement is %d bytes, want %d", len(f.measurement), abi.MeasurementSize)
	}
	if f.hostData == nil {
		f.hostData = make([]byte, abi.HostDataSize)
	}
	if len(f.hostData) != abi.HostDataSize {
		return nil, fmt.Errorf("snptest: host data is %d bytes, want %d", len(f.hostData), abi.HostDataSize)
	}
	if f.opts.TCB == 0 {
		f.opts.TCB = DefaultTCB(o.ProductLine)
	}
	if f.opts.CommittedTCB == 0 {
		f.opts.CommittedTCB = f.opts.TCB
	}
	if f.opts.ReportedTCB == 0 {
		f.opts.ReportedTCB = f.opts.TCB
	}
	if f.opts.Created.IsZero() {
		f.opts.Created = time.Now().Add(-24 * time.Hour)
	}
	if _, err := rand.Read(f.chipID[:]); err != nil {
		return nil, err
	}
	if _, err := rand.Read(f.reportID[:]); err != nil {
		return nil, err
	}

	parts := kds.DecomposeTCBVersion(kds.TCBVersion(f.opts.ReportedTCB))
	if _, err := kds.ComposeTCBParts(parts); err != nil {
		return nil, fmt.Errorf("snptest: reported TCB: %w", err)
	}
	b := &sevtest.AmdSignerBuilder{
		Keys:             sevtest.DefaultAmdKeys(),
		ProductName:      p.name,
		CSPID:            "cohort-snptest",
		ArkCreationTime:  f.opts.Created,
		AskCreationTime:  f.opts.Created,
		AsvkCreationTime: f.opts.Created,
		VcekCreationTime: f.opts.Created,
		VlekCreationTime: f.opts.Created,
		VcekCustom:       sevtest.CertOverride{Extensions: sevtest.CustomExtensions(parts, f.chipID[:], "", p.name)},
		VlekCustom:       sevtest.CertOverride{Extensions: sevtest.CustomExtensions(parts, nil, "cohort-snptest", p.name)},
	}
	chainMu.Lock()
	chain, err := b.TestOnlyCertChain()
	chainMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("snptest: certificate chain: %w", err)
	}
	f.chain = chain
	return f, nil
}

// Roots returns the fake's roots, for snp.Config.Roots: its ARK, ASK and
// ASVK under its product line. Each call returns new values.
func (f *Fake) Roots() map[string][]*trust.AMDRootCerts {
	return map[string][]*trust.AMDRootCerts{f.opts.ProductLine: {{
		ProductLine:  f.opts.ProductLine,
		ProductCerts: &trust.ProductCerts{Ark: f.chain.Ark, Ask: f.chain.Ask, Asvk: f.chain.Asvk},
	}}}
}

// Config returns a verifier configuration that trusts the fake's roots.
func (f *Fake) Config() snp.Config { return snp.Config{Roots: f.Roots()} }

// Endorsement returns the DER of the fake's VCEK or VLEK certificate, as
// Options.Signer chose, for tests of snp.Config.Endorsements.
func (f *Fake) Endorsement() []byte { return f.endorsementCert().Raw }

func (f *Fake) endorsementCert() *x509.Certificate {
	if f.signer == abi.VlekReportSigner {
		return f.chain.Vlek
	}
	return f.chain.Vcek
}

// Certificates are a fake's certificates.
type Certificates struct {
	ARK, ASK, ASVK, VCEK, VLEK *x509.Certificate
}

// Certificates returns the fake's certificates (for tests that present
// them where they do not belong, as a forged chain).
func (f *Fake) Certificates() Certificates {
	return Certificates{ARK: f.chain.Ark, ASK: f.chain.Ask, ASVK: f.chain.Asvk, VCEK: f.chain.Vcek, VLEK: f.chain.Vlek}
}

// ChipID returns the CHIP_ID of the fake's reports, which its VCEK
// certifies.
func (f *Fake) ChipID() []byte { return append([]byte(nil), f.chipID[:]...) }

// Attester returns an snp.Attester whose reports come from the fake.
func (f *Fake) Attester() *snp.Attester {
	a, err := snp.NewAttester(snp.AttesterConfig{Source: f})
	if err != nil {
		panic(err) // NewAttester fails only on detecting hardware, which a Source skips
	}
	return a
}

// Platform returns an snp.Platform attesting with the fake and verifying as
// vc says (f.Config() to trust the fake).
func (f *Fake) Platform(ctx context.Context, vc snp.Config) (*snp.Platform, error) {
	return snp.NewPlatform(ctx, snp.AttesterConfig{Source: f}, vc)
}

// Report returns a signed report binding reportData at vmpl (nil: Options.VMPL).
func (f *Fake) Report(reportData [enclave.ReportDataSize]byte, vmpl *uint) ([]byte, error) {
	r := make([]byte, abi.ReportSize)
	le := binary.LittleEndian
	le.PutUint32(r[0x00:], 3) // version
	le.PutUint64(r[0x08:], abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true, Debug: f.opts.Debug}))
	v := f.opts.VMPL
	if vmpl != nil {
		if *vmpl > 3 {
			return nil, fmt.Errorf("snptest: VMPL %d, want 0 to 3", *vmpl)
		}
		v = uint32(*vmpl)
	}
	le.PutUint32(r[0x30:], v)
	le.PutUint32(r[0x34:], abi.SignEcdsaP384Sha384)
	le.PutUint64(r[0x38:], f.opts.TCB) // CURRENT_TCB
	if f.opts.SMT {
		le.PutUint64(r[0x40:], 1)
	}
	le.PutUint32(r[0x48:], abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: f.signer}))
	copy(r[0x50:0x90], reportData[:])
	copy(r[0x90:0xC0], f.measurement)
	copy(r[0xC0:0xE0], f.hostData)
	copy(r[0x140:0x160], f.reportID[:])
	le.PutUint64(r[0x180:], f.opts.ReportedTCB)
	copy(r[0x188:0x18B], f.family[:])
	copy(r[0x1A0:0x1E0], f.chipID[:])
	le.PutUint64(r[0x1E0:], f.opts.CommittedTCB)
	r[0x1E8], r[0x1E9], r[0x1EA] = 21, 55, 1     // current build, minor, major
	r[0x1EC], r[0x1ED], r[0x1EE] = 21, 55, 1     // committed
	le.PutUint64(r[0x1F0:], f.opts.CommittedTCB) // LAUNCH_TCB
	if err := f.Sign(r); err != nil {
		return nil, err
	}
	return r, nil
}

// Sign (re)signs a report in place with the fake's VCEK or VLEK, as its
// SIGNING_KEY says: for tests that change a field and need the report to
// verify all the same.
func (f *Fake) Sign(report []byte) error {
	if len(report) != abi.ReportSize {
		return fmt.Errorf("snptest: report is %d bytes, want %d", len(report), abi.ReportSize)
	}
	info, err := abi.ParseSignerInfo(binary.LittleEndian.Uint32(report[0x48:0x4C]))
	if err != nil {
		return err
	}
	var key *ecdsa.PrivateKey
	switch info.SigningKey {
	case abi.VcekReportSigner:
		key = f.chain.Keys.Vcek
	case abi.VlekReportSigner:
		key = f.chain.Keys.Vlek
	default:
		return errors.New("snptest: the report names no VCEK or VLEK")
	}
	digest := sha512.Sum384(abi.SignedComponent(report))
	rr, ss, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return err
	}
	return abi.SetSignature(rr, ss, report)
}

// GetReport implements snp.ReportSource: a signed report and, unless
// Options.OmitEndorsement, a certificate table holding the ARK, the ASK (or
// ASVK) and the VCEK (or VLEK), as a host's would.
func (f *Fake) GetReport(reportData [enclave.ReportDataSize]byte, vmpl *uint) ([]byte, []byte, error) {
	r, err := f.Report(reportData, vmpl)
	if err != nil {
		return nil, nil, err
	}
	if f.opts.OmitEndorsement {
		return r, nil, nil
	}
	chain := &spb.CertificateChain{ArkCert: f.chain.Ark.Raw, AskCert: f.chain.Ask.Raw, VcekCert: f.chain.Vcek.Raw}
	if f.signer == abi.VlekReportSigner {
		chain = &spb.CertificateChain{ArkCert: f.chain.Ark.Raw, AskCert: f.chain.Asvk.Raw, VlekCert: f.chain.Vlek.Raw}
	}
	return r, abi.CertsFromProto(chain).Marshal(), nil
}

var _ snp.ReportSource = (*Fake)(nil)
