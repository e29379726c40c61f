package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cohort-dev/cohort/dev"
)

// The administrators' commands, as the README shows them, against a running
// dev: keygen, show, sign, apply; an update that hands the policy to two new
// administrators with a threshold of two; refusals of a stranger's and of
// too few signatures, each with its reason.
func TestPolicyCommandsAgainstDevStack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	data := t.TempDir()
	done := make(chan error, 1)
	go func() {
		done <- dev.Run(ctx, dev.Config{DataDir: data, Units: 1, NATSPort: -1, HTTPSBase: -1, Out: &out})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dev: %v", err)
		}
	})
	url := waitFor(t, &out, regexp.MustCompile(`NATS\s+(nats://\S+)`))
	creds := waitFor(t, &out, regexp.MustCompile(`NATS credentials in (\S+):`))
	t.Setenv("COHORT_NATS", url)
	t.Setenv("COHORT_CREDS", filepath.Join(creds, "operator.creds"))
	dir := t.TempDir()
	t.Chdir(dir)
	_, pin, _ := runCmd(t, "measure", "issuer")
	pin = strings.TrimSpace(pin)

	must := func(want string, args ...string) string {
		t.Helper()
		code, stdout, stderr := runCmd(t, args...)
		if code != 0 || !strings.Contains(stdout, want) {
			t.Fatalf("%q: exit %d, %q / %q; want %q", args, code, stdout, stderr, want)
		}
		return stdout
	}
	refused := func(want string, args ...string) {
		t.Helper()
		code, stdout, stderr := runCmd(t, args...)
		if code != 1 || !strings.Contains(stderr, want) {
			t.Fatalf("%q: exit %d, %q / %q; want a refusal saying %q", args, code, stdout, stderr, want)
		}
	}
	adaOut := must("administrators:", "policy", "keygen", "--out", "ada.key", "--name", "ada")
	boOut := must("administrators:", "policy", "keygen", "--out", "bo.key", "--name", "bo")
	refused("file exists", "policy", "keygen", "--out", "ada.key")
	must("policy version 1", "policy", "show", "--issuer-measurement", pin)

	adminLine := regexp.MustCompile(`    - \{name: \w+, key: [0-9a-f]{64}\}`)
	ada, bo := adminLine.FindString(adaOut), adminLine.FindString(boOut)
	inForce, err := os.ReadFile(filepath.Join(data, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// Version 2 hands the policy to ada and bo, both needed.
	v2 := regexp.MustCompile(`(?m)^version: 1$`).ReplaceAllString(string(inForce), "version: 2")
	v2 = regexp.MustCompile(`(?s)administrators:\n  threshold: 1\n  keys:\n    - \{name: dev, key: [0-9a-f]{64}\}`).
		ReplaceAllString(v2, "administrators:\n  threshold: 2\n  keys:\n"+ada+"\n"+bo)
	if !strings.Contains(v2, "version: 2") || !strings.Contains(v2, "name: ada") {
		t.Fatalf("could not write version 2 from %s", inForce)
	}
	if err := os.WriteFile("v2.yaml", []byte(v2), 0o600); err != nil {
		t.Fatal(err)
	}
	must("signature written to ada.sig", "policy", "sign", "--key", "ada.key", "--policy", "v2.yaml", "--out", "ada.sig")
	refused("not an administrator", "policy", "apply", "--policy", "v2.yaml", "ada.sig")
	must("signature written to dev.sig", "policy", "sign", "--key", filepath.Join(data, dev.AdminKeyFile), "--policy", "v2.yaml", "--out", "dev.sig")
	must("policy version 2", "policy", "apply", "--policy", "v2.yaml", "dev.sig")

	v3 := strings.Replace(v2, "version: 2", "version: 3", 1) + "# version 3\n"
	if err := os.WriteFile("v3.yaml", []byte(v3), 0o600); err != nil {
		t.Fatal(err)
	}
	must("signature written to v3.ada.sig", "policy", "sign", "--key", "ada.key", "--policy", "v3.yaml", "--out", "v3.ada.sig")
	refused("1 administrators signed; the policy in force (version 2) needs 2", "policy", "apply", "--policy", "v3.yaml", "v3.ada.sig")
	refused("is a signature over policy sha256", "policy", "apply", "--policy", "v3.yaml", "ada.sig")
	must("signature written to v3.bo.sig", "policy", "sign", "--key", "bo.key", "--policy", "v3.yaml", "--out", "v3.bo.sig")
	must("signed by ada, bo", "policy", "apply", "--policy", "v3.yaml", "v3.ada.sig", "v3.bo.sig")
	refused("policy_version_not_higher", "policy", "apply", "--policy", "v2.yaml", "dev.sig")
	show := must("policy version 3", "policy", "show", "--issuer-measurement", pin)
	for _, want := range []string{"administrators: 2 of 2 (ada, bo)", "version 1 ", "version 2 ", "signed by dev", "signed by ada, bo", "root generation 1"} {
		if !strings.Contains(show, want) {
			t.Errorf("policy show lacks %q:\n%s", want, show)
		}
	}

	// The rotation, as the README writes it: the document in force from
	// policy show --document, a higher version and root_generation, two
	// signatures; then a user holding the old root.pem moves with one
	// command, and the history keeps every version.
	must("root CA", "trust", "--issuer-measurement", pin, "--out", "root.pem")
	before, _ := os.ReadFile("root.pem")
	inForce3 := must("version: 3", "policy", "show", "--document")
	if inForce3 != v3 {
		t.Fatalf("policy show --document printed %q, not the document in force %q", inForce3, v3)
	}
	v4 := strings.Replace(inForce3, "version: 3", "version: 4\nroot_generation: 2", 1)
	if err := os.WriteFile("v4.yaml", []byte(v4), 0o600); err != nil {
		t.Fatal(err)
	}
	must("signature written", "policy", "sign", "--key", "ada.key", "--policy", "v4.yaml", "--out", "v4.ada.sig")
	must("signature written", "policy", "sign", "--key", "bo.key", "--policy", "v4.yaml", "--out", "v4.bo.sig")
	must("policy version 4", "policy", "apply", "--policy", "v4.yaml", "v4.ada.sig", "v4.bo.sig")
	must("the root was rotated", "trust", "--update", "--out", "root.pem")
	after, _ := os.ReadFile("root.pem")
	if string(after) == string(before) {
		t.Fatal("trust --update kept the old root")
	}
	must("nothing to update", "trust", "--update", "--out", "root.pem")
	must("root generation 2", "policy", "show", "--issuer-measurement", pin)
}
