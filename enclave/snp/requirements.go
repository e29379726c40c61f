package snp

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/cohort-dev/cohort/enclave"
)

// Reasons Requirements.Check gives, for errors.Is. Each refusal wraps one.
var (
	ErrNotSNP          = errors.New("snp: the claims are not of SEV-SNP evidence")
	ErrMeasurement     = errors.New("snp: measurement not accepted")
	ErrDebug           = errors.New("snp: debug guest not accepted")
	ErrSMT             = errors.New("snp: SMT not accepted")
	ErrProvisional     = errors.New("snp: provisional firmware not accepted")
	ErrTCB             = errors.New("snp: TCB below the minimum")
	ErrVMPL            = errors.New("snp: VMPL not accepted")
	ErrHostData        = errors.New("snp: HOST_DATA not accepted")
	ErrBadRequirements = errors.New("snp: requirements are malformed")
)

// Requirements are what a task asks of SEV-SNP claims beyond what Verify
// checks of every report. The zero value accepts nothing: it names no
// measurement.
type Requirements struct {
	// Measurements are the MEASUREMENTs (48 bytes) accepted; the claims'
	// must be one of them.
	Measurements [][]byte
	// AllowDebug accepts a guest whose policy lets the host debug it (read
	// and write its memory).
	AllowDebug bool
	// AllowSMT accepts a host with simultaneous multithreading enabled
	// (PLATFORM_INFO bit 0), whose sibling threads share core resources.
	AllowSMT bool
	// AllowProvisional accepts firmware newer than the committed one (see
	// TCBProvisional).
	AllowProvisional bool
	// MinTCB is the least REPORTED_TCB accepted, component by component
	// (Raw is ignored). FMC is compared only on Turin, the product line
	// that has it. Zero: any.
	MinTCB enclave.SNPTCB
	// MaxVMPL is the highest VMPL accepted for the report; the zero value
	// accepts VMPL 0 only.
	MaxVMPL uint32
	// HostData, when not nil, is the HOST_DATA (32 bytes) required.
	HostData []byte
}

// RequirementsError is the refusal of Requirements.Check: every reason the
// claims fail, each wrapping one of ErrNotSNP, ErrMeasurement, ErrDebug,
// ErrSMT, ErrProvisional, ErrTCB, ErrVMPL, ErrHostData, ErrBadRequirements.
type RequirementsError struct {
	Reasons []error
}

func (e *RequirementsError) Error() string {
	s := make([]string, len(e.Reasons))
	for i, r := range e.Reasons {
		s[i] = r.Error()
	}
	return "snp: the claims do not meet the requirements: " + strings.Join(s, "; ")
}

// Unwrap lets errors.Is find each reason.
func (e *RequirementsError) Unwrap() []error { return e.Reasons }

// Check reports whether c, claims of verified SEV-SNP evidence, meet r. It
// returns nil or a *RequirementsError naming every reason they do not. It
// is a pure function of r and c.
func (r Requirements) Check(c enclave.Claims) error {
	var reasons []error
	fail := func(kind error, format string, args ...any) {
		reasons = append(reasons, fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...)))
	}
	if r.HostData != nil && len(r.HostData) != 32 {
		fail(ErrBadRequirements, "HostData is %d bytes, want 32", len(r.HostData))
	}
	if c.Backend != enclave.PlatformSNP || c.SNP == nil || c.Simulated {
		fail(ErrNotSNP, "the claims are of platform %q", c.Backend)
		return &RequirementsError{Reasons: reasons}
	}
	s := c.SNP
	if len(r.Measurements) == 0 {
		fail(ErrMeasurement, "measurement %x: the requirements accept none", c.UniqueID)
	} else if !containsBytes(r.Measurements, c.UniqueID) {
		fail(ErrMeasurement, "measurement %x is not one of the %d accepted", c.UniqueID, len(r.Measurements))
	}
	if c.Debug && !r.AllowDebug {
		fail(ErrDebug, "the guest policy (0x%x) lets the host debug the guest", s.GuestPolicy)
	}
	if s.SMT && !r.AllowSMT {
		fail(ErrSMT, "the host runs with SMT enabled (PLATFORM_INFO 0x%x)", s.PlatformInfo)
	}
	if s.Provisional && !r.AllowProvisional {
		fail(ErrProvisional, "the firmware is provisional: CURRENT_TCB %s, COMMITTED_TCB %s",
			formatTCB(s.CurrentTCB), formatTCB(s.CommittedTCB))
	}
	if low := tcbBelow(s.ProductLine, s.ReportedTCB, r.MinTCB); len(low) > 0 {
		fail(ErrTCB, "REPORTED_TCB %s is below the minimum: %s", formatTCB(s.ReportedTCB), strings.Join(low, ", "))
	}
	if s.VMPL > r.MaxVMPL {
		fail(ErrVMPL, "the report is for VMPL %d, at most %d accepted", s.VMPL, r.MaxVMPL)
	}
	if r.HostData != nil && !bytes.Equal(s.HostData, r.HostData) {
		fail(ErrHostData, "HOST_DATA %x, want %x", s.HostData, r.HostData)
	}
	if len(reasons) == 0 {
		return nil
	}
	return &RequirementsError{Reasons: reasons}
}

func containsBytes(list [][]byte, b []byte) bool {
	for _, x := range list {
		if bytes.Equal(x, b) {
			return true
		}
	}
	return false
}
