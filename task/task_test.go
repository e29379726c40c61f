package task

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cohort-dev/cohort/access"
)

func echo(_ context.Context, c Call) ([]byte, error) { return c.Data, nil }

func TestRunRefusesABadCommandLine(t *testing.T) {
	dir := t.TempDir()
	user := filepath.Join(dir, "user-alice.creds")
	c, err := access.NewCredential(access.Grant{Role: access.User, Name: "alice"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFile(user); err != nil {
		t.Fatal(err)
	}
	m := strings.Repeat("ab", 32)
	cfg := Config{Name: "mytask", Handle: echo}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "--issuer-measurement is required"},
		{[]string{"--issuer-measurement", "xyz"}, "32 or 48 bytes of hex"},
		{[]string{"--issuer-measurement", m, "extra"}, "unexpected arguments"},
		{[]string{"--issuer-measurement", m, "--nope"}, "flag provided but not defined"},
		{[]string{"--issuer-measurement", m, "--creds", user}, "not of a unit"},
		{[]string{"--issuer-measurement", m}, "no cluster to join"},
	} {
		var stderr bytes.Buffer
		err := Run(context.Background(), cfg, c.args, &stderr)
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Run(%q) = %v, want a usage error saying %q", c.args, err, c.want)
		}
	}
	var stderr bytes.Buffer
	if err := Run(context.Background(), cfg, []string{"-h"}, &stderr); !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr.String(), "--creds FILE --issuer-measurement HEX") {
		t.Errorf("-h: %v\n%s", err, stderr.String())
	}
	for _, bad := range []Config{{Name: "Bad Name", Handle: echo}, {Name: "mytask"}} {
		if err := Run(context.Background(), bad, nil, &stderr); err == nil || errors.Is(err, ErrUsage) {
			t.Errorf("Run with %+v: %v, want a configuration error", bad, err)
		}
	}
}
