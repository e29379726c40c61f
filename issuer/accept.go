package issuer

// The acceptance decision: whether evidence's claims may hold a task's
// certificate under a policy, and whether a build of the issuer may hold the
// state key. Pure functions of the policy and the claims; policy.go holds the
// schema and its validation.

import (
	"bytes"
	"cmp"
	"slices"
	"strings"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/enclave/tdx"
	"github.com/cohort-dev/cohort/messages"
)

// AcceptsIssuer reports whether the policy lets an issuer of measurement m
// hold the state key; self is the measurement of the issuer asking, which an
// empty list accepts alone.
func (p *Policy) AcceptsIssuer(m, self []byte) bool {
	if len(p.issuers) == 0 {
		return bytes.Equal(m, self)
	}
	return slices.ContainsFunc(p.issuers, func(x []byte) bool { return bytes.Equal(x, m) })
}

// acceptPlatform refuses evidence of a platform the task does not run on.
func (t *TaskPolicy) acceptPlatform(c enclave.Claims) *messages.Error {
	want := []string{t.Platform}
	if t.Platform == "" {
		want = []string{enclave.PlatformSGX, enclave.PlatformSim}
	}
	if !slices.Contains(want, c.Backend) {
		return messages.Refusal(messages.CodePlatform, "the evidence is of platform %s and task %q runs on %s", c.Backend, t.Name, strings.Join(want, " or "))
	}
	return nil
}

// acceptSettings checks a platform's settings: SEV-SNP's TCB, SMT, VMPL and
// host data, TDX's TEE TCB.
func (t *TaskPolicy) acceptSettings(c enclave.Claims) *messages.Error {
	switch {
	case c.Backend == enclave.PlatformSNP && c.SNP != nil:
		// The measurement and debug were judged already; the guest's
		// settings are judged as package snp defines them.
		s := t.SNP
		req := snp.Requirements{
			Measurements: [][]byte{c.UniqueID}, AllowDebug: true, AllowSMT: s.AllowSMT, MaxVMPL: s.MaxVMPL, HostData: t.hostData,
			AllowProvisional: slices.Contains(t.TCBStatuses, snp.TCBProvisional),
			MinTCB:           enclave.SNPTCB{BootLoader: s.MinTCB.BootLoader, TEE: s.MinTCB.TEE, SNP: s.MinTCB.SNP, Microcode: s.MinTCB.Microcode, FMC: s.MinTCB.FMC},
		}
		if err := req.Check(c); err != nil {
			return messages.Refusal(messages.CodeTCB, "task %q: %v (policy keys snp.min_tcb, allow_smt, max_vmpl, host_data; tcb_statuses: [Provisional])", t.Name, err)
		}
	case c.Backend == enclave.PlatformTDX && c.TDX != nil:
		// The measurement, debug and TCB status were judged already.
		req := tdx.Requirements{Measurements: [][]byte{c.UniqueID}, AllowDebug: true, TCBStatuses: []string{c.TCBStatus}, MinTEETCBSVN: t.minTEETCBSVN}
		if err := req.Check(c); err != nil {
			return messages.Refusal(messages.CodeTCB, "task %q: %v (policy key tdx.min_tee_tcb_svn)", t.Name, err)
		}
	case (c.Backend == enclave.PlatformSNP && c.SNP == nil) || (c.Backend == enclave.PlatformTDX && c.TDX == nil):
		return messages.Refusal(messages.CodeEvidence, "evidence of %s without its platform's claims", c.Backend)
	}
	return nil
}

func orList(extra []string) string {
	if len(extra) == 0 {
		return ""
	}
	return " or " + strings.Join(extra, ", ")
}

// accept decides whether evidence claims may hold the task's certificate. It
// returns a refusal naming the reason, or nil.
func (p *Policy) accept(task string, c enclave.Claims) *messages.Error {
	t, ok := p.byName[task]
	if !ok {
		return messages.Refusal(messages.CodeUnknownTask, "the policy names no task %q", task)
	}
	if c.Simulated && !p.AcceptSimulated {
		return messages.Refusal(messages.CodeSimulated, "evidence is simulated and the policy does not accept simulated attestation")
	}
	if refusal := t.acceptPlatform(c); refusal != nil {
		return refusal
	}
	if c.Debug && !t.AllowDebug {
		return messages.Refusal(messages.CodeDebug, "the enclave runs in debug mode and task %q does not allow it", task)
	}
	if !c.Simulated && c.TCBStatus != enclave.TCBUpToDate && !slices.Contains(t.TCBStatuses, c.TCBStatus) {
		return messages.Refusal(messages.CodeTCBStatus, "TCB status %s (advisories %s) and task %q accepts only UpToDate%s",
			cmp.Or(c.TCBStatus, "unknown"), cmp.Or(strings.Join(c.Advisories, ","), "none"), task, orList(t.TCBStatuses))
	}
	if refusal := t.acceptSettings(c); refusal != nil {
		return refusal
	}
	if slices.ContainsFunc(t.measurements, func(m []byte) bool { return bytes.Equal(m, c.UniqueID) }) {
		return nil
	}
	if t.signer != nil && bytes.Equal(t.signer, c.SignerID) && t.ProductID == c.ProductID {
		if c.SecurityVersion < t.MinSecurityVersion {
			return messages.Refusal(messages.CodeSecurityVersion, "security version %d is below task %q's minimum %d",
				c.SecurityVersion, task, t.MinSecurityVersion)
		}
		return nil
	}
	return messages.Refusal(messages.CodeMeasurement, "measurement %x is not accepted for task %q", c.UniqueID, task)
}
