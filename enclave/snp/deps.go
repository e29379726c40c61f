package snp

// The modules this backend builds on, pinned by go.mod: go-sev-guest v0.15.0
// or later (v0.14.x trusts a forged chain when no roots are given), and
// go-configfs-tsm for evidence.
import (
	_ "github.com/google/go-configfs-tsm/report"
	_ "github.com/google/go-sev-guest/abi"
	_ "github.com/google/go-sev-guest/client"
	_ "github.com/google/go-sev-guest/testing"
	_ "github.com/google/go-sev-guest/validate"
	_ "github.com/google/go-sev-guest/verify"
	_ "github.com/google/go-sev-guest/verify/testdata"
)
