//go:build enclave || ego

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestMeasuredBuildHasNoTools: the measured binary names each tool as not
// in it, with how to get it, and its usage lists none.
func TestMeasuredBuildHasNoTools(t *testing.T) {
	for _, name := range toolNames {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{name, "--help"}, &out, &errOut); code != 2 {
			t.Errorf("cohort %s: exit %d, want 2 (usage)", name, code)
		}
		if !strings.Contains(errOut.String(), "not in the measured binary") {
			t.Errorf("cohort %s: %q does not say it is not in the measured binary", name, errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("cohort --help: exit %d", code)
	}
	for _, name := range toolNames {
		if strings.Contains(out.String(), "cohort "+name+" ") {
			t.Errorf("the measured binary's usage lists the tool %q:\n%s", name, out.String())
		}
	}
	if !strings.Contains(out.String(), "cohort issuer") || !strings.Contains(out.String(), "measured binary") {
		t.Errorf("the measured binary's usage lacks its roles or what it is:\n%s", out.String())
	}
}
