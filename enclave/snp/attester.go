package snp

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-sev-guest/abi"

	"github.com/cohort-dev/cohort/enclave"
)

// ReportSource is where an Attester gets attestation reports: the guest's
// configfs-tsm or /dev/sev-guest, or a fake in tests (snptest).
type ReportSource interface {
	// GetReport returns an attestation report binding reportData, asked
	// for at vmpl (nil: the interface's default), and the certificate
	// table the host attached (GUID table of AMD's GHCB specification;
	// empty when there is none).
	GetReport(reportData [enclave.ReportDataSize]byte, vmpl *uint) (report, certTable []byte, err error)
}

// AttesterConfig configures an Attester. The zero value asks the running
// guest's kernel, at its default VMPL.
type AttesterConfig struct {
	// VMPL asks for reports at this VMPL; nil: configfs-tsm's default (the
	// kernel's privlevel_floor), or VMPL 0 through /dev/sev-guest.
	VMPL *uint
	// Source overrides the interface: nil finds configfs-tsm
	// (/sys/kernel/config/tsm/report with provider sev_guest), and failing
	// that /dev/sev-guest.
	Source ReportSource
}

// Attester produces Evidence in an SEV-SNP guest. It is safe for concurrent
// use; it asks for one report at a time (the secure processor answers one
// guest request at a time anyway), and a report that a caller gave up on
// holds that one slot until the interface returns: see enclave.Gate.
type Attester struct {
	src  ReportSource
	vmpl *uint
	gate *enclave.Gate
}

var _ enclave.Attester = (*Attester)(nil)

// NewAttester returns an Attester for cfg. Where the guest has neither
// configfs-tsm with the sev_guest provider nor /dev/sev-guest (any machine
// that is not an SEV-SNP guest), it returns an error wrapping
// enclave.ErrUnsupported.
func NewAttester(cfg AttesterConfig) (*Attester, error) {
	src := cfg.Source
	if src == nil {
		s, err := detectSource()
		if err != nil {
			return nil, err
		}
		src = s
	}
	a := &Attester{src: src, gate: enclave.NewGate(1)}
	if cfg.VMPL != nil {
		if *cfg.VMPL > 3 {
			return nil, fmt.Errorf("snp: VMPL %d, want 0 to 3", *cfg.VMPL)
		}
		vmpl := *cfg.VMPL
		a.vmpl = &vmpl
	}
	return a, nil
}

// Attest implements enclave.Attester: Evidence (marshalled) holding a fresh
// report that binds reportData and, when the host attached it, the VCEK or
// VLEK certificate that signed it. Once ctx is done it returns an error
// wrapping ctx.Err(), while a report asked for runs on until the interface
// (configfs-tsm or the ioctl, neither of which can be interrupted) returns.
func (a *Attester) Attest(ctx context.Context, reportData [enclave.ReportDataSize]byte) ([]byte, error) {
	report, table, err := a.report(ctx, reportData)
	if err != nil {
		return nil, err
	}
	info, err := abi.ParseSignerInfo(binary.LittleEndian.Uint32(report[0x48:0x4c]))
	if err != nil {
		return nil, fmt.Errorf("snp: the report's signer info: %w", err)
	}
	end, err := endorsementFrom(table, info.SigningKey)
	if err != nil {
		return nil, err
	}
	return Evidence{Report: report, Endorsement: end}.Marshal()
}

// report asks the source for a report and checks that it is one, binding
// reportData.
func (a *Attester) report(ctx context.Context, reportData [enclave.ReportDataSize]byte) (report, table []byte, err error) {
	type got struct{ report, table []byte }
	g, err := enclave.Call(ctx, a.gate, "snp: get an attestation report", func() (got, error) {
		r, t, err := a.src.GetReport(reportData, a.vmpl)
		return got{r, t}, err
	})
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
		return nil, nil, err
	}
	report, table = g.report, g.table
	if err != nil {
		return nil, nil, fmt.Errorf("snp: get an attestation report: %w", err)
	}
	// The firmware's report is ReportSize bytes; an interface may hand it
	// in a larger, zero-padded buffer.
	if len(report) < ReportSize || !allZero(report[ReportSize:]) {
		return nil, nil, fmt.Errorf("snp: the attestation report is %d bytes, want %d", len(report), ReportSize)
	}
	report = bytes.Clone(report[:ReportSize])
	if !bytes.Equal(report[0x50:0x90], reportData[:]) {
		return nil, nil, fmt.Errorf("snp: the attestation report does not bind the report data asked for")
	}
	return report, table, nil
}

// endorsementFrom picks the certificate of signer out of the host's
// certificate table: nil when the table is empty or holds none.
func endorsementFrom(table []byte, signer abi.ReportSigner) ([]byte, error) {
	if len(table) == 0 || allZero(table) {
		return nil, nil
	}
	var t abi.CertTable
	if err := t.Unmarshal(table); err != nil {
		return nil, fmt.Errorf("snp: the host's certificate table: %w", err)
	}
	guid := abi.VcekGUID
	if signer == abi.VlekReportSigner {
		guid = abi.VlekGUID
	}
	blob, err := t.GetByGUIDString(guid)
	if err != nil || len(blob) == 0 {
		return nil, nil // the host gave none: the verifier's cache must have it
	}
	// Entries may be padded; the certificate is the DER SEQUENCE at the
	// start.
	var seq asn1.RawValue
	rest, err := asn1.Unmarshal(blob, &seq)
	if err != nil || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !allZero(rest) {
		return nil, fmt.Errorf("snp: the host's %v entry is not one DER certificate", signer)
	}
	der := seq.FullBytes
	if len(der) > MaxEndorsementSize {
		return nil, fmt.Errorf("snp: the host's %v certificate is %d bytes, at most %d", signer, len(der), MaxEndorsementSize)
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("snp: the host's %v certificate: %w", signer, err)
	}
	return bytes.Clone(der), nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// BackendName is the name of this backend in logs and replies.
const BackendName = enclave.PlatformSNP

// Platform is the SEV-SNP platform of the running guest: its Attester and a
// Verifier. It does not seal: SEV-SNP's derived keys (MSG_KEY_REQ) are not
// used yet, and Seal and Unseal return errors wrapping enclave.ErrNoSealKey,
// so an issuer cannot yet keep its key cache on SEV-SNP.
type Platform struct {
	attester    *Attester
	verifier    *Verifier
	measurement []byte
}

var _ enclave.Platform = (*Platform)(nil)

// NewPlatform returns the platform of the running guest, attesting as ac
// says and verifying others as vc does. It takes one report to learn its
// own MEASUREMENT, and gives up on it once ctx is done.
func NewPlatform(ctx context.Context, ac AttesterConfig, vc Config) (*Platform, error) {
	a, err := NewAttester(ac)
	if err != nil {
		return nil, err
	}
	v, err := New(vc)
	if err != nil {
		return nil, err
	}
	report, _, err := a.report(ctx, [enclave.ReportDataSize]byte{})
	if err != nil {
		return nil, err
	}
	return &Platform{attester: a, verifier: v, measurement: bytes.Clone(report[0x90:0xC0])}, nil
}

// Name implements enclave.Platform.
func (p *Platform) Name() string { return BackendName }

// Simulated implements enclave.Platform: SEV-SNP evidence is never simulated.
func (p *Platform) Simulated() bool { return false }

// Measurement returns the guest's MEASUREMENT (48 bytes), from its own
// report.
func (p *Platform) Measurement() []byte { return bytes.Clone(p.measurement) }

// Attest implements enclave.Attester.
func (p *Platform) Attest(ctx context.Context, reportData [enclave.ReportDataSize]byte) ([]byte, error) {
	return p.attester.Attest(ctx, reportData)
}

// Verify implements enclave.Verifier.
func (p *Platform) Verify(ctx context.Context, evidence []byte) (enclave.Claims, error) {
	return p.verifier.Verify(ctx, evidence)
}

// Seal implements enclave.Sealer: it always fails (see Platform).
func (p *Platform) Seal(_, _ []byte) ([]byte, error) {
	return nil, fmt.Errorf("%w: the SEV-SNP backend does not seal", enclave.ErrNoSealKey)
}

// Unseal implements enclave.Sealer: it always fails (see Platform).
func (p *Platform) Unseal(_, _ []byte) ([]byte, error) {
	return nil, fmt.Errorf("%w: the SEV-SNP backend does not seal", enclave.ErrNoSealKey)
}
