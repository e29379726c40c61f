//go:build !linux

package snp

import (
	"fmt"

	"github.com/cohort-dev/cohort/enclave"
)

// detectSource: SEV-SNP guests are Linux guests here.
func detectSource() (ReportSource, error) {
	return nil, fmt.Errorf("%w: snp: SEV-SNP attestation needs a Linux guest (configfs-tsm or /dev/sev-guest)", enclave.ErrUnsupported)
}
