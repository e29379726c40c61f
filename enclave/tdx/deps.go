package tdx

// The modules this backend builds on, pinned by go.mod: go-tdx-guest at a
// main-branch pseudo-version that parses version 5 quotes and checks the
// debug attribute, and go-configfs-tsm for evidence.
import (
	_ "github.com/google/go-configfs-tsm/report"
	_ "github.com/google/go-tdx-guest/abi"
	_ "github.com/google/go-tdx-guest/pcs"
	_ "github.com/google/go-tdx-guest/testing"
	_ "github.com/google/go-tdx-guest/testing/testdata"
	_ "github.com/google/go-tdx-guest/validate"
	_ "github.com/google/go-tdx-guest/verify"
)
