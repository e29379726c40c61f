package tdx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"

	"github.com/cohort-dev/cohort/enclave"
)

// ReportPath is where the kernel's configfs-tsm report interface lives.
const ReportPath = "/sys/kernel/config/tsm/report"

// provider is the configfs-tsm provider of the kernel's TDX guest driver.
const provider = "tdx_guest"

// AttesterConfig configures an Attester. The zero value asks the running
// TD's kernel.
type AttesterConfig struct {
	// Client is the configfs-tsm to ask for quotes; nil: the kernel's, at
	// ReportPath. Tests pass tdxtest's fake.
	Client configfsi.Client
}

// Attester produces TDX quotes of the running TD through the kernel's
// configfs-tsm interface (Linux 6.7 and later, with the tdx_guest driver
// and a quote generation service on the host). It is safe for concurrent
// use. Each quote has its own configfs entry, but it asks for one at a time
// (the kernel makes one at a time anyway), and a quote that a caller gave up
// on holds that one slot until configfs-tsm returns: see enclave.Gate.
type Attester struct {
	client configfsi.Client
	gate   *enclave.Gate
}

var _ enclave.Attester = (*Attester)(nil)

// NewAttester returns an Attester for cfg. Where there is no configfs-tsm
// report interface (any machine that is not a confidential guest), or its
// provider is not TDX's, it returns an error wrapping enclave.ErrUnsupported.
func NewAttester(cfg AttesterConfig) (*Attester, error) {
	client := cfg.Client
	if client == nil {
		c, err := linuxtsm.MakeClient()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%w: tdx: no configfs-tsm report interface at %s (not a TDX guest, or configfs not mounted)", enclave.ErrUnsupported, ReportPath)
			}
			return nil, fmt.Errorf("%w: tdx: configfs-tsm at %s: %v", enclave.ErrUnsupported, ReportPath, err)
		}
		client = c
	}
	// The kernel's fresh entry names its provider before any report is
	// asked for; where it cannot be read yet (tdxtest's fake), each quote's
	// provider is checked all the same.
	r, err := report.CreateOpenReport(client)
	if err != nil {
		return nil, fmt.Errorf("%w: tdx: configfs-tsm: %v", enclave.ErrUnsupported, err)
	}
	p, err := r.ReadOption("provider")
	if derr := r.Destroy(); derr != nil {
		return nil, fmt.Errorf("tdx: configfs-tsm: %w", derr)
	}
	if got := strings.TrimSpace(string(p)); err == nil && got != provider {
		return nil, fmt.Errorf("%w: tdx: the configfs-tsm provider is %q, not %q", enclave.ErrUnsupported, got, provider)
	}
	return &Attester{client: client, gate: enclave.NewGate(1)}, nil
}

// Attest implements enclave.Attester: a TDX quote (version 4 or 5, as the
// host's quoting enclave makes it) binding reportData, with the PCK chain.
// Once ctx is done it returns an error wrapping ctx.Err(), while the quote
// asked for runs on until configfs-tsm (whose write and read cannot be
// interrupted) returns.
func (a *Attester) Attest(ctx context.Context, reportData [enclave.ReportDataSize]byte) ([]byte, error) {
	q, _, err := a.quote(ctx, reportData)
	return q, err
}

// quote asks configfs-tsm for a quote and checks that it is one, of this
// TD, binding reportData.
func (a *Attester) quote(ctx context.Context, reportData [enclave.ReportDataSize]byte) ([]byte, *rawQuote, error) {
	resp, err := enclave.Call(ctx, a.gate, "tdx: get a quote from configfs-tsm", func() (*report.Response, error) {
		return report.Get(a.client, &report.Request{InBlob: bytes.Clone(reportData[:])})
	})
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
		return nil, nil, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("tdx: get a quote from configfs-tsm: %w", err)
	}
	if got := strings.TrimSpace(resp.Provider); got != provider {
		return nil, nil, fmt.Errorf("%w: tdx: the configfs-tsm provider is %q, not %q", enclave.ErrUnsupported, got, provider)
	}
	raw, err := decodeQuote(resp.OutBlob)
	if err != nil {
		return nil, nil, fmt.Errorf("tdx: configfs-tsm returned no TDX quote: %w", err)
	}
	if !bytes.Equal(raw.field(offReportData, enclave.ReportDataSize), reportData[:]) {
		return nil, nil, errors.New("tdx: the quote does not bind the report data asked for")
	}
	// Drop any zero padding: the evidence is the quote.
	q := bytes.Clone(resp.OutBlob[:raw.length])
	raw, err = decodeQuote(q)
	if err != nil {
		return nil, nil, fmt.Errorf("tdx: configfs-tsm returned no TDX quote: %w", err)
	}
	return q, raw, nil
}

// Measurement returns the running TD's MRTD (48 bytes), read from a quote
// it asks for: configfs-tsm gives quotes, not TDREPORTs.
func (a *Attester) Measurement(ctx context.Context) ([]byte, error) {
	_, raw, err := a.quote(ctx, [enclave.ReportDataSize]byte{})
	if err != nil {
		return nil, err
	}
	return bytes.Clone(raw.mrtd()), nil
}

// BackendName is the name of this backend in logs and replies.
const BackendName = enclave.PlatformTDX

// Platform is the TDX platform of the running TD: its Attester and a
// Verifier. It does not seal: a TD has no seal key here (TDX derives no
// keys bound to the TD's measurement for the guest), so Seal and Unseal
// return errors wrapping enclave.ErrNoSealKey, and an issuer on TDX obtains
// its state key from a peer or by recovery at each start.
type Platform struct {
	attester    *Attester
	verifier    *Verifier
	measurement []byte
}

var _ enclave.Platform = (*Platform)(nil)

// NewPlatform returns the platform of the running TD, attesting as ac says
// and verifying others as vc does. It asks for one quote to learn its own
// MRTD, and gives up on it once ctx is done.
func NewPlatform(ctx context.Context, ac AttesterConfig, vc Config) (*Platform, error) {
	a, err := NewAttester(ac)
	if err != nil {
		return nil, err
	}
	v, err := New(vc)
	if err != nil {
		return nil, err
	}
	m, err := a.Measurement(ctx)
	if err != nil {
		return nil, err
	}
	return &Platform{attester: a, verifier: v, measurement: m}, nil
}

// Name implements enclave.Platform.
func (p *Platform) Name() string { return BackendName }

// Simulated implements enclave.Platform: TDX evidence is never simulated.
func (p *Platform) Simulated() bool { return false }

// Measurement returns the TD's MRTD (48 bytes), from its first quote.
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
	return nil, fmt.Errorf("%w: a TD has no seal key in the TDX backend", enclave.ErrNoSealKey)
}

// Unseal implements enclave.Sealer: it always fails (see Platform).
func (p *Platform) Unseal(_, _ []byte) ([]byte, error) {
	return nil, fmt.Errorf("%w: a TD has no seal key in the TDX backend", enclave.ErrNoSealKey)
}
