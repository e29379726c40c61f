package tdx

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/tdx/tdxtest"
)

// fakeTSM is a configfs-tsm of provider whose outblob is outblob(inblob).
func fakeTSM(provider string, outblob func(in []byte) ([]byte, error)) configfsi.Client {
	sub := &faketsm.ReportSubsystem{
		MakeEntry: func() *faketsm.ReportEntry {
			return &faketsm.ReportEntry{
				InAttrs: map[string]*faketsm.ReportAttributeState{"inblob": {}},
				ROAttrs: map[string][]byte{"provider": []byte(provider + "\n")}, // readable before any write, as the kernel's
			}
		},
		CheckInAttr: func(*faketsm.ReportEntry, string, []byte) error { return nil },
		ReadAttr: func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
			switch attr {
			case "provider":
				return []byte(provider + "\n"), nil
			case "outblob":
				return outblob(e.InAttrs["inblob"].Value)
			}
			return nil, os.ErrNotExist
		},
		Random: rand.Reader,
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}
}

// TestNewAttesterUnsupported: outside a TDX guest (here, no configfs-tsm)
// NewAttester says the platform is unsupported.
func TestNewAttesterUnsupported(t *testing.T) {
	if _, err := os.Stat(ReportPath); err == nil {
		t.Skipf("%s exists: this machine may be a confidential guest", ReportPath)
	}
	_, err := NewAttester(AttesterConfig{})
	if !errors.Is(err, enclave.ErrUnsupported) || !strings.Contains(err.Error(), ReportPath) {
		t.Fatalf("NewAttester = %v, want ErrUnsupported naming %s", err, ReportPath)
	}
	if _, err := NewPlatform(t.Context(), AttesterConfig{}, Config{}); !errors.Is(err, enclave.ErrUnsupported) {
		t.Fatalf("NewPlatform = %v", err)
	}
	// An SEV-SNP guest's configfs-tsm is not TDX's.
	_, err = NewAttester(AttesterConfig{Client: fakeTSM("sev_guest", nil)})
	if !errors.Is(err, enclave.ErrUnsupported) || !strings.Contains(err.Error(), `"sev_guest"`) {
		t.Fatalf("NewAttester(sev_guest) = %v", err)
	}
	_, err = NewPlatform(t.Context(), AttesterConfig{Client: fakeTSM("sev_guest", func([]byte) ([]byte, error) { return []byte("report"), nil })}, Config{})
	if !errors.Is(err, enclave.ErrUnsupported) || !strings.Contains(err.Error(), `"sev_guest"`) {
		t.Fatalf("NewPlatform(sev_guest) = %v", err)
	}
}

// TestAttesterEndToEnd: the attester asks configfs-tsm (tdxtest's fake) for
// a quote binding the report data, and the verifier with the fake's root
// accepts it; the platform's measurement is the TD's MRTD, and it has no
// seal key.
func TestAttesterEndToEnd(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	td := tdxtest.DefaultTD()
	td.Version, td.TDX15 = 5, true
	vc := Config{Root: s.Root(), Collateral: fixed(fakeCollateral(t, s, tdxtest.CollateralConfig{}))}
	p, err := NewPlatform(t.Context(), AttesterConfig{Client: s.ConfigFS(td)}, vc)
	if err != nil {
		t.Fatal(err)
	}
	rd := enclave.Bind("join", []byte("unit-1"))
	ev, err := p.Attest(t.Context(), rd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Verify(t.Context(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if c.ReportData != rd || !bytes.Equal(c.UniqueID, tdxtest.DefaultMRTD[:]) || c.TDX.QuoteVersion != 5 || c.TCBStatus != enclave.TCBUpToDate {
		t.Errorf("claims %+v", c)
	}
	if !bytes.Equal(p.Measurement(), tdxtest.DefaultMRTD[:]) || p.Name() != "tdx" || p.Simulated() {
		t.Errorf("platform %s: measurement %x", p.Name(), p.Measurement())
	}
	if _, err := p.Seal([]byte("x"), nil); !errors.Is(err, enclave.ErrNoSealKey) {
		t.Errorf("Seal = %v", err)
	}
	if _, err := p.Unseal([]byte("x"), nil); !errors.Is(err, enclave.ErrNoSealKey) {
		t.Errorf("Unseal = %v", err)
	}
}

// TestAttesterChecksTheQuote: the attester returns the quote without its
// zero padding, and refuses what is not a quote binding its report data.
func TestAttesterChecksTheQuote(t *testing.T) {
	s := newSigner(t, tdxtest.Config{})
	quoteOf := func(in []byte) []byte {
		var rd [64]byte
		copy(rd[:], in)
		return fakeQuote(t, s, tdxtest.DefaultTD(), rd)
	}
	padded, err := NewAttester(AttesterConfig{Client: fakeTSM("tdx_guest", func(in []byte) ([]byte, error) {
		return append(quoteOf(in), make([]byte, 512)...), nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	q, err := padded.Attest(t.Context(), [64]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	if want := quoteOf([]byte{1}); len(q) != len(want) {
		t.Errorf("quote of %d bytes, want %d without padding", len(q), len(want))
	}
	for name, out := range map[string]func([]byte) ([]byte, error){
		"other report data": func([]byte) ([]byte, error) { return quoteOf([]byte{9}), nil },
		"not a quote":       func([]byte) ([]byte, error) { return []byte("privlevel: 0\ninblob: 00"), nil },
		"kernel error":      func([]byte) ([]byte, error) { return nil, errors.New("EIO") },
	} {
		a, err := NewAttester(AttesterConfig{Client: fakeTSM("tdx_guest", out)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Attest(t.Context(), [64]byte{1}); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := a.Measurement(t.Context()); err == nil {
			t.Errorf("%s: a measurement", name)
		}
	}
}
