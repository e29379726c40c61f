//go:build !enclave && !ego

package main

// The tools' child processes (the membership benchmark's manager) are this
// test binary, which TestMain turns into cohort.
func init() { childEnv = []string{"COHORT_TEST_MAIN=1"} }
