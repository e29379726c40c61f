package tdx

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
)

func tdxClaims() enclave.Claims {
	m := bytes.Repeat([]byte{0xab}, 48)
	return enclave.Claims{
		Backend:   enclave.PlatformTDX,
		UniqueID:  m,
		TCBStatus: enclave.TCBUpToDate,
		TDX: &enclave.TDXClaims{
			QuoteVersion:  4,
			TEETCBSVN:     []byte{5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			TDAttributes:  []byte{0, 0, 0, 0x10, 0, 0, 0, 0},
			MRConfigID:    make([]byte, 48),
			MROwner:       bytes.Repeat([]byte{1}, 48),
			MROwnerConfig: make([]byte, 48),
		},
	}
}

// TestRequirements: Check accepts claims that meet every requirement and
// names each one they fail.
func TestRequirements(t *testing.T) {
	base := tdxClaims()
	ok := Requirements{Measurements: [][]byte{make([]byte, 48), base.UniqueID}}
	if err := ok.Check(base); err != nil {
		t.Fatalf("good claims refused: %v", err)
	}
	debug := tdxClaims()
	debug.Debug = true
	debug.TDX.TDAttributes[0] = 1
	stale := tdxClaims()
	stale.TCBStatus = "OutOfDate"
	unevaluated := tdxClaims()
	unevaluated.TCBStatus = TCBNotEvaluated
	snp := tdxClaims()
	snp.Backend, snp.TDX = enclave.PlatformSNP, nil
	sim := tdxClaims()
	sim.Simulated = true
	for _, c := range []struct {
		name   string
		r      Requirements
		claims enclave.Claims
		want   []error
		words  []string
	}{
		{"no measurement", Requirements{}, base, []error{ErrMeasurement}, []string{"accept none"}},
		{"other measurement", Requirements{Measurements: [][]byte{make([]byte, 48)}}, base, []error{ErrMeasurement}, []string{"is not one of the 1 accepted"}},
		{"debug", ok, debug, []error{ErrDebug}, []string{"DEBUG"}},
		{"OutOfDate", ok, stale, []error{ErrTCBStatus}, []string{`"OutOfDate"`}},
		{"NotEvaluated", ok, unevaluated, []error{ErrTCBStatus}, []string{`"NotEvaluated"`}},
		{"TEE_TCB_SVN", Requirements{Measurements: ok.Measurements, MinTEETCBSVN: []byte{5, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}}, base, []error{ErrTEETCBSVN}, []string{"component 2 is 2, below 3", "component 15 is 0, below 1"}},
		{"MROWNER", Requirements{Measurements: ok.Measurements, MROwner: make([]byte, 48)}, base, []error{ErrTDField}, []string{"MROWNER 0101"}},
		{"SEV-SNP claims", ok, snp, []error{ErrNotTDX}, []string{`"snp"`}},
		{"simulated", ok, sim, []error{ErrNotTDX}, nil},
		{"malformed", Requirements{Measurements: [][]byte{{1}}, MinTEETCBSVN: []byte{1}, MRConfigID: []byte{1}}, base,
			[]error{ErrBadRequirements, ErrMeasurement}, []string{"measurement 0 is 1 bytes", "MinTEETCBSVN is 1 bytes", "MRConfigID is 1 bytes"}},
		{"everything", Requirements{Measurements: [][]byte{make([]byte, 48)}, MinTEETCBSVN: bytes.Repeat([]byte{9}, 16)}, func() enclave.Claims { c := debug; c.TCBStatus = "OutOfDate"; return c }(),
			[]error{ErrMeasurement, ErrDebug, ErrTCBStatus, ErrTEETCBSVN}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.r.Check(c.claims)
			var re *RequirementsError
			if !errors.As(err, &re) {
				t.Fatalf("Check = %v, want a *RequirementsError", err)
			}
			for _, w := range c.want {
				if !errors.Is(err, w) {
					t.Errorf("%v: does not wrap %v", err, w)
				}
			}
			for _, w := range c.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v: does not say %q", err, w)
				}
			}
			if errors.Is(err, enclave.ErrInvalidEvidence) {
				t.Errorf("%v: a policy refusal is not invalid evidence", err)
			}
		})
	}
	// Accepting statuses and debug; Check changes nothing it is given.
	r := Requirements{Measurements: ok.Measurements, AllowDebug: true, TCBStatuses: []string{"OutOfDate", TCBNotEvaluated},
		MinTEETCBSVN: []byte{5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, MROwner: bytes.Repeat([]byte{1}, 48), MRConfigID: make([]byte, 48)}
	for _, c := range []enclave.Claims{debug, stale, unevaluated} {
		before := tdxClaims()
		before.Debug, before.TCBStatus, before.TDX.TDAttributes = c.Debug, c.TCBStatus, bytes.Clone(c.TDX.TDAttributes)
		if err := r.Check(c); err != nil {
			t.Errorf("%q, debug %v: %v", c.TCBStatus, c.Debug, err)
		}
		if !reflect.DeepEqual(before, c) {
			t.Error("Check changed the claims")
		}
	}
}
