//go:build !ego

package main

import (
	"errors"

	"github.com/cohort-dev/cohort/enclave"
)

// sgxPlatform reports that this build has no SGX backend.
func sgxPlatform() (enclave.Platform, error) {
	return nil, errors.New("this build has no SGX backend: build with cgo and -tags ego, and run it under `ego run`")
}
