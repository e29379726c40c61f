package snp

import (
	"fmt"
	"strings"

	"github.com/cohort-dev/cohort/enclave"
)

// TCB statuses of SEV-SNP claims, besides enclave.TCBUpToDate (the reported,
// current and committed TCBs are one, and the committed firmware build and
// API version are the running ones).
const (
	// TCBProvisional: the running firmware is newer than the committed
	// one (COMMITTED_TCB, build or API version below CURRENT): the host can
	// roll back to the committed firmware, so what is running is not yet
	// guaranteed.
	TCBProvisional = "Provisional"
	// TCBReportedBelowCurrent: the host reports (and its VCEK certifies) a
	// lower TCB than the one running, as hosts do to keep a fleet on one
	// TCB; the evidence proves only the reported TCB.
	TCBReportedBelowCurrent = "ReportedBelowCurrent"
)

// DecodeTCB splits a TCB_VERSION into its components by the layout of the
// product line. Milan and Genoa (family 19h): boot loader in bits 7:0, TEE
// 15:8, SNP 55:48, microcode 63:56. Turin (family 1Ah): FMC in bits 7:0, boot
// loader 15:8, TEE 23:16, SNP 31:24, microcode 63:56. go-sev-guest v0.15.0's
// kds package knows only the first layout (kds.DecomposeTCBVersion), so the
// Turin one is decoded here, after AMD's SEV-SNP ABI specification.
func DecodeTCB(productLine string, raw uint64) enclave.SNPTCB {
	b := func(i uint) uint8 { return uint8(raw >> (8 * i)) }
	if productLine == ProductTurin {
		return enclave.SNPTCB{FMC: b(0), BootLoader: b(1), TEE: b(2), SNP: b(3), Microcode: b(7), Raw: raw}
	}
	return enclave.SNPTCB{BootLoader: b(0), TEE: b(1), SNP: b(6), Microcode: b(7), Raw: raw}
}

// tcbBelow names each component of got below min, comparing FMC only on
// Turin, the one product line that has it.
func tcbBelow(productLine string, got, min enclave.SNPTCB) []string {
	var low []string
	cmp := func(name string, g, m uint8) {
		if g < m {
			low = append(low, fmt.Sprintf("%s %d < %d", name, g, m))
		}
	}
	if productLine == ProductTurin {
		cmp("FMC", got.FMC, min.FMC)
	}
	cmp("boot loader", got.BootLoader, min.BootLoader)
	cmp("TEE", got.TEE, min.TEE)
	cmp("SNP", got.SNP, min.SNP)
	cmp("microcode", got.Microcode, min.Microcode)
	return low
}

func formatTCB(t enclave.SNPTCB) string {
	var s strings.Builder
	fmt.Fprintf(&s, "0x%016x (", t.Raw)
	if t.FMC != 0 {
		fmt.Fprintf(&s, "FMC %d, ", t.FMC)
	}
	fmt.Fprintf(&s, "boot loader %d, TEE %d, SNP %d, microcode %d)", t.BootLoader, t.TEE, t.SNP, t.Microcode)
	return s.String()
}
