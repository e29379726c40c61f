package issuer

import (
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/dcap"
	"github.com/cohort-dev/cohort/enclave/pcs"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/messages"
)

const samples = "../enclave/testdata/tee-samples/"

func readSample(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(samples + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The real samples' claims under a policy: the SGX quote of dcap-qvl, whose
// TCB status is ConfigurationAndSWHardeningNeeded, is refused until the task
// names that status; the trustee SEV-SNP report (provisional firmware, SMT
// on) is refused until the task allows both.
func TestRealEvidenceUnderPolicy(t *testing.T) {
	coll, err := pcs.ParseQVL(readSample(t, "dcap-qvl/sgx_quote_collateral.json"))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 6, 20, 0, 0, 0, 0, time.UTC)
	sgxV, err := dcap.New(dcap.Config{Now: func() time.Time { return at }, Collateral: func([]byte, string) (*pcs.Collateral, error) { return coll, nil }})
	if err != nil {
		t.Fatal(err)
	}
	sgx, err := sgxV.Verify(t.Context(), readSample(t, "dcap-qvl/sgx_quote"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := snp.Evidence{Report: readSample(t, "trustee/snp_test-report.bin"), Endorsement: readSample(t, "trustee/snp_test-vcek.der")}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	snpV, err := snp.New(snp.Config{Now: func() time.Time { return time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC) }})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := snpV.Verify(t.Context(), ev)
	if err != nil {
		t.Fatal(err)
	}
	policy := func(sgxExtra, snpExtra string) *Policy {
		return mustParsePolicy(t, []byte("version: 1\ntasks:\n  - name: enclave\n    platform: sgx\n    measurements: ["+hex.EncodeToString(sgx.UniqueID)+"]\n"+sgxExtra+
			"  - name: vm\n    platform: snp\n    measurements: ["+hex.EncodeToString(vm.UniqueID)+"]\n"+snpExtra))
	}
	for _, tc := range []struct {
		name, sgxExtra, snpExtra string
		task                     string
		claims                   enclave.Claims
		want                     messages.Code
	}{
		{"sgx, status not named", "", "", "enclave", sgx, messages.CodeTCBStatus},
		{"sgx, another status named", "    tcb_statuses: [SWHardeningNeeded]\n", "", "enclave", sgx, messages.CodeTCBStatus},
		{"sgx, its status named", "    tcb_statuses: [ConfigurationAndSWHardeningNeeded]\n", "", "enclave", sgx, ""},
		{"sgx evidence for the snp task", "", "", "vm", sgx, messages.CodePlatform},
		{"snp, provisional not named", "", "    snp: {allow_smt: true}\n", "vm", vm, messages.CodeTCBStatus},
		{"snp, SMT not allowed", "", "    tcb_statuses: [Provisional]\n", "vm", vm, messages.CodeTCB},
		{"snp, microcode below the minimum", "", "    tcb_statuses: [Provisional]\n    snp: {allow_smt: true, min_tcb: {microcode: 209}}\n", "vm", vm, messages.CodeTCB},
		{"snp, all allowed", "", "    tcb_statuses: [Provisional]\n    snp: {allow_smt: true, min_tcb: {boot_loader: 3, snp: 8, microcode: 115}}\n", "vm", vm, ""},
	} {
		got := policy(tc.sgxExtra, tc.snpExtra).accept(tc.task, tc.claims)
		if (tc.want == "" && got != nil) || (tc.want != "" && (got == nil || got.Code != tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, got, tc.want)
		}
	}
}
