package snp

import (
	"fmt"

	"github.com/google/go-sev-guest/abi"

	"github.com/cohort-dev/cohort/codec"
	"github.com/cohort-dev/cohort/enclave"
)

// EvidenceVersion numbers the layout of Evidence on the wire.
const EvidenceVersion = 1

// Sizes of evidence. ReportSize is fixed by AMD's ABI; a VCEK or VLEK
// certificate is about 1.4 KiB.
const (
	ReportSize         = abi.ReportSize // 1184 bytes
	MaxEndorsementSize = 4 << 10
	MaxEvidenceSize    = ReportSize + MaxEndorsementSize + 64
)

// Evidence is what an SEV-SNP guest hands a verifier: its attestation report
// and, when the host's certificate table held one, the certificate of the key
// that signed it.
type Evidence struct {
	// Report is the attestation report, ReportSize bytes as the AMD secure
	// processor signed it.
	Report []byte
	// Endorsement is the DER of the VCEK or VLEK certificate named by the
	// report's SIGNING_KEY, from the host's certificate table; empty when
	// the host gave none (a verifier then looks in Config.Endorsements).
	Endorsement []byte
}

// wireEvidence is Evidence on the wire.
type wireEvidence struct {
	V           uint16 `msgpack:"v"`
	Report      []byte `msgpack:"report"`
	Endorsement []byte `msgpack:"endorsement"`
}

// Marshal encodes e, after checking its sizes.
func (e Evidence) Marshal() ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	w := wireEvidence{V: EvidenceVersion, Report: e.Report}
	if len(e.Endorsement) > 0 {
		w.Endorsement = e.Endorsement
	}
	return codec.Marshal(&w)
}

func (e Evidence) check() error {
	if len(e.Report) != ReportSize {
		return fmt.Errorf("snp: report is %d bytes, want %d", len(e.Report), ReportSize)
	}
	if len(e.Endorsement) > MaxEndorsementSize {
		return fmt.Errorf("snp: endorsement is %d bytes, at most %d", len(e.Endorsement), MaxEndorsementSize)
	}
	return nil
}

// ParseEvidence decodes evidence that Marshal made. It checks the layout and
// sizes only; Verifier.Verify checks what the evidence says. Errors wrap
// enclave.ErrInvalidEvidence.
func ParseEvidence(b []byte) (Evidence, error) {
	var w wireEvidence
	if err := codec.Unmarshal(b, MaxEvidenceSize, &w); err != nil {
		return Evidence{}, fmt.Errorf("%w: snp: evidence does not decode: %w", enclave.ErrInvalidEvidence, err)
	}
	if w.V != EvidenceVersion {
		return Evidence{}, fmt.Errorf("%w: snp: evidence version %d, want %d", enclave.ErrInvalidEvidence, w.V, EvidenceVersion)
	}
	// One encoding per evidence: no endorsement travels as nil, never as
	// an empty byte string.
	if w.Endorsement != nil && len(w.Endorsement) == 0 {
		return Evidence{}, fmt.Errorf("%w: snp: evidence carries an empty endorsement (absent is nil)", enclave.ErrInvalidEvidence)
	}
	e := Evidence{Report: w.Report, Endorsement: w.Endorsement}
	if err := e.check(); err != nil {
		return Evidence{}, fmt.Errorf("%w: %w", enclave.ErrInvalidEvidence, err)
	}
	return e, nil
}
