//go:build ego

package main

import (
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/ego"
)

// sgxPlatform is the SGX backend; this build has it.
func sgxPlatform() (enclave.Platform, error) { return ego.New() }
