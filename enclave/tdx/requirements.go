package tdx

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cohort-dev/cohort/enclave"
)

// Reasons Requirements.Check gives, for errors.Is. Each refusal wraps one.
var (
	ErrNotTDX          = errors.New("tdx: the claims are not of TDX evidence")
	ErrMeasurement     = errors.New("tdx: measurement (MRTD) not accepted")
	ErrDebug           = errors.New("tdx: debug TD not accepted")
	ErrTCBStatus       = errors.New("tdx: TCB status not accepted")
	ErrTEETCBSVN       = errors.New("tdx: TEE_TCB_SVN below the minimum")
	ErrTDField         = errors.New("tdx: TD configuration not accepted")
	ErrBadRequirements = errors.New("tdx: requirements are malformed")
)

// Requirements are what a task asks of TDX claims beyond what Verify checks
// of every quote. The zero value accepts nothing: it names no measurement.
type Requirements struct {
	// Measurements are the MRTDs (48 bytes) accepted; the claims' must be
	// one of them.
	Measurements [][]byte
	// AllowDebug accepts a TD with TD_ATTRIBUTES.DEBUG set, whose memory
	// and state the host can read and write.
	AllowDebug bool
	// MinTEETCBSVN is the least TEE_TCB_SVN (16 bytes) accepted, byte by
	// byte (each byte is a component's security version); nil: any.
	MinTEETCBSVN []byte
	// TCBStatuses are the TCB statuses accepted besides
	// enclave.TCBUpToDate (Intel's words: SWHardeningNeeded, OutOfDate,
	// ...; TCBNotEvaluated for quotes verified without collateral).
	TCBStatuses []string
	// MRConfigID, MROwner and MROwnerConfig, when not nil, are the values
	// (48 bytes each) the TD must have been given at launch.
	MRConfigID, MROwner, MROwnerConfig []byte
}

// RequirementsError is the refusal of Requirements.Check: every reason the
// claims fail, each wrapping one of ErrNotTDX, ErrMeasurement, ErrDebug,
// ErrTCBStatus, ErrTEETCBSVN, ErrTDField, ErrBadRequirements.
type RequirementsError struct {
	Reasons []error
}

func (e *RequirementsError) Error() string {
	s := make([]string, len(e.Reasons))
	for i, r := range e.Reasons {
		s[i] = r.Error()
	}
	return "tdx: the claims do not meet the requirements: " + strings.Join(s, "; ")
}

// Unwrap lets errors.Is find each reason.
func (e *RequirementsError) Unwrap() []error { return e.Reasons }

// Check reports whether c, claims of a verified TDX quote, meet r. It
// returns nil or a *RequirementsError naming every reason they do not. It
// is a pure function of r and c.
func (r Requirements) Check(c enclave.Claims) error {
	var reasons []error
	fail := func(kind error, format string, args ...any) {
		reasons = append(reasons, fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...)))
	}
	for i, m := range r.Measurements {
		if len(m) != mr {
			fail(ErrBadRequirements, "measurement %d is %d bytes, want %d", i, len(m), mr)
		}
	}
	if r.MinTEETCBSVN != nil && len(r.MinTEETCBSVN) != 16 {
		fail(ErrBadRequirements, "MinTEETCBSVN is %d bytes, want 16", len(r.MinTEETCBSVN))
	}
	for _, f := range []struct {
		name string
		want []byte
	}{{"MRConfigID", r.MRConfigID}, {"MROwner", r.MROwner}, {"MROwnerConfig", r.MROwnerConfig}} {
		if f.want != nil && len(f.want) != mr {
			fail(ErrBadRequirements, "%s is %d bytes, want %d", f.name, len(f.want), mr)
		}
	}
	if c.Backend != enclave.PlatformTDX || c.TDX == nil || c.Simulated {
		fail(ErrNotTDX, "the claims are of platform %q", c.Backend)
		return &RequirementsError{Reasons: reasons}
	}
	t := c.TDX
	switch {
	case len(r.Measurements) == 0:
		fail(ErrMeasurement, "MRTD %x: the requirements accept none", c.UniqueID)
	case !slices.ContainsFunc(r.Measurements, func(m []byte) bool { return bytes.Equal(m, c.UniqueID) }):
		fail(ErrMeasurement, "MRTD %x is not one of the %d accepted", c.UniqueID, len(r.Measurements))
	}
	if c.Debug && !r.AllowDebug {
		fail(ErrDebug, "TD_ATTRIBUTES %x has DEBUG set: the host can read and change the TD", t.TDAttributes)
	}
	if c.TCBStatus != enclave.TCBUpToDate && !slices.Contains(r.TCBStatuses, c.TCBStatus) {
		fail(ErrTCBStatus, "TCB status %q is not UpToDate and not one of %q", c.TCBStatus, r.TCBStatuses)
	}
	if len(r.MinTEETCBSVN) == 16 {
		if len(t.TEETCBSVN) != 16 {
			fail(ErrTEETCBSVN, "TEE_TCB_SVN %x is not 16 bytes", t.TEETCBSVN)
		} else {
			var low []string
			for i, want := range r.MinTEETCBSVN {
				if t.TEETCBSVN[i] < want {
					low = append(low, fmt.Sprintf("component %d is %d, below %d", i, t.TEETCBSVN[i], want))
				}
			}
			if len(low) > 0 {
				fail(ErrTEETCBSVN, "TEE_TCB_SVN %x is below the minimum %x: %s", t.TEETCBSVN, r.MinTEETCBSVN, strings.Join(low, ", "))
			}
		}
	}
	for _, f := range []struct {
		name       string
		want, have []byte
	}{{"MRCONFIGID", r.MRConfigID, t.MRConfigID}, {"MROWNER", r.MROwner, t.MROwner}, {"MROWNERCONFIG", r.MROwnerConfig, t.MROwnerConfig}} {
		if f.want != nil && !bytes.Equal(f.want, f.have) {
			fail(ErrTDField, "%s %x, want %x", f.name, f.have, f.want)
		}
	}
	if len(reasons) == 0 {
		return nil
	}
	return &RequirementsError{Reasons: reasons}
}
