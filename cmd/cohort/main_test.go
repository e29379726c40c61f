package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/dev"
)

// TestMain lets the test binary stand in for cohort in child processes
// (the membership benchmark runs the manager as one).
func TestMain(m *testing.M) {
	if os.Getenv("COHORT_TEST_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsageErrorsExitTwo(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"nosuch"},
		{"trust"},
		{"trust", "--nats", "nats://127.0.0.1:1", "--issuer-measurement", "zz", "--out", "x"},
		{"measure"},
		{"measure", "unit", "--task", "Not_A_Task"},
		{"dev", "stray"},
		{"bench"},
		{"bench", "certify", "--kem", "rsa"},
		{"issuer", "--nats", "nats://x"},
		{"call", "--nats", "nats://x", "--cluster", "dev"},
		{"call", "--nats", "nats://x", "--cluster", "dev", "--trust", "root.pem"},
	} {
		if code, _, stderr := runCmd(t, args...); code != 2 || stderr == "" {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a message", args, code, stderr)
		}
	}
	if code, out, _ := runCmd(t, "help"); code != 0 || !strings.Contains(out, "cohort dev") {
		t.Errorf("help: exit %d, %q", code, out)
	}
}

// The errors a newcomer meets say what to do.
func TestNewcomerErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"help", "status"}, 0, "-creds"},
		{[]string{"help", "policy", "sign"}, 0, "-key"},
		{[]string{"call", "--cluster", "dev", "hello", "--trust", "root.pem"}, 2, `flag --trust comes after the argument "hello"`},
		{[]string{"status", "extra", "--json"}, 2, "flag --json comes after the argument"},
		{[]string{"dev", "--task", "demo=/bin/true"}, 2, "dev's own"},
		{[]string{"dev", "--task", "mine=/nonexistent/mine"}, 2, "build it first"},
	} {
		code, out, stderr := runCmd(t, c.args...)
		if code != c.code || !strings.Contains(out+stderr, c.want) {
			t.Errorf("%q: exit %d, %s%s; want exit %d saying %q", c.args, code, out, stderr, c.code, c.want)
		}
	}
}

func TestMeasurePrintsHex(t *testing.T) {
	hex64 := regexp.MustCompile(`^[0-9a-f]{64}\n$`)
	code, issuer, _ := runCmd(t, "measure", "issuer")
	if code != 0 || !hex64.MatchString(issuer) {
		t.Fatalf("measure issuer: %d %q", code, issuer)
	}
	_, demo, _ := runCmd(t, "measure", "unit", "--task", "demo")
	_, other, _ := runCmd(t, "measure", "unit", "--task", "other")
	if !hex64.MatchString(demo) || demo == other || demo == issuer {
		t.Fatalf("unit measurements: demo %q other %q", demo, other)
	}
	// Any executable, as the README shows: the measurement dev accepts for it.
	exe := filepath.Join(t.TempDir(), "mytask")
	if err := os.WriteFile(exe, []byte("a build"), 0o700); err != nil {
		t.Fatal(err)
	}
	code, mine, _ := runCmd(t, "measure", "unit", "--task", "mytask", "--exe", exe)
	task, err := dev.MeasureTask("mytask", exe)
	if code != 0 || err != nil || mine != task.Measurement+"\n" {
		t.Fatalf("measure unit --exe: %d %q, dev measures %q (%v)", code, mine, task.Measurement, err)
	}
}

// trust against a running dev stack writes the root; a wrong pin is refused
// and writes nothing.
func TestTrustAgainstDevStack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- dev.Run(ctx, dev.Config{DataDir: t.TempDir(), Units: 1, NATSPort: -1, HTTPSBase: -1, Out: &out})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dev: %v", err)
		}
	})
	url := waitFor(t, &out, regexp.MustCompile(`NATS\s+(nats://\S+)`))
	creds := waitFor(t, &out, regexp.MustCompile(`NATS credentials in (\S+):`))
	user := filepath.Join(creds, "user-alice.creds")
	dir := t.TempDir()
	_, pin, _ := runCmd(t, "measure", "issuer")
	pin = strings.TrimSpace(pin)

	root := filepath.Join(dir, "root.pem")
	code, _, stderr := runCmd(t, "trust", "--nats", url, "--issuer-measurement", pin, "--out", root)
	if code != 1 || !strings.Contains(stderr, "Authorization Violation") {
		t.Fatalf("trust without credentials: exit %d: %s", code, stderr)
	}
	t.Setenv("COHORT_CREDS", user) // the environment variable stands for --creds
	code, stdout, stderr := runCmd(t, "trust", "--nats", url, "--issuer-measurement", pin, "--out", root)
	if code != 0 {
		t.Fatalf("trust: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "SIMULATED") || !strings.Contains(stdout, "written to") {
		t.Errorf("trust output: %q / %q", stdout, stderr)
	}
	b, _ := os.ReadFile(root)
	if blk, _ := pem.Decode(b); blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("root.pem is not a PEM certificate: %q", b)
	}

	_, wrong, _ := runCmd(t, "measure", "unit", "--task", "demo")
	bad := filepath.Join(dir, "bad.pem")
	code, _, stderr = runCmd(t, "trust", "--nats", url, "--issuer-measurement", strings.TrimSpace(wrong), "--out", bad)
	if code != 1 || !strings.Contains(stderr, "does not match the pinned measurement") {
		t.Fatalf("wrong pin: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Fatal("a refused trust wrote a file")
	}
	code, _, stderr = runCmd(t, "trust", "--nats", url, "--issuer-measurement", pin, "--out", bad, "--allow-simulated=false")
	if code != 1 || !strings.Contains(stderr, "simulated") {
		t.Fatalf("simulated not allowed: exit %d: %s", code, stderr)
	}

	// A user may not ask for what only the operator may, and hears why at
	// once, with the permission it lacks; an operator may.
	for _, c := range []struct {
		args    []string
		subject string
	}{
		{[]string{"status"}, "cohort.v1.manager.status"},
		{[]string{"events"}, "$JS.manager.API.DIRECT.GET.cohort_events"},
		{[]string{"policy", "show"}, "cohort.v1.issuer.policy.show"},
		{[]string{"recover", "--key", "k", "--issuer-measurement", pin, "--root", root}, "cohort.v1.issuer.recover.hello"},
	} {
		code, _, stderr = runCmd(t, append(c.args, "--nats", url)...)
		if code != 2 || !strings.Contains(stderr, "asks "+c.subject+", which --creds "+user+" (user/alice's) may not publish") {
			t.Fatalf("%s as a user: exit %d: %s", c.args[0], code, stderr)
		}
	}
	for _, cmd := range []string{"status", "events"} {
		if _, _, stderr = runCmd(t, cmd, "--nats", url); !strings.Contains(stderr, "it is the operator's (cohort dev writes DATA/creds/operator.creds)") {
			t.Fatalf("%s as a user names not the operator's credential: %s", cmd, stderr)
		}
	}
	code, _, stderr = runCmd(t, "trust", "--nats", url, "--creds", filepath.Join(creds, "issuer.creds"), "--issuer-measurement", pin, "--out", bad)
	if code != 2 || !strings.Contains(stderr, "trust asks cohort.v1.issuer.evidence") {
		t.Fatalf("trust as the issuer: exit %d: %s", code, stderr)
	}
	code, stdout, stderr = runCmd(t, "status", "--nats", url, "--creds", filepath.Join(creds, "operator.creds"))
	if code != 0 || !strings.Contains(stdout, "dev") {
		t.Fatalf("status as an operator: exit %d: %s%s", code, stdout, stderr)
	}
}

// The benchmark's JSON carries the fields the issue names. Its figures are
// not asserted: speed lives in the benchmark, not in tests.
func TestBenchCertifyJSONShape(t *testing.T) {
	code, out, stderr := runCmd(t, "bench", "certify", "--duration", "300ms", "--concurrency", "2", "--json")
	if code != 0 {
		t.Fatalf("bench: exit %d: %s", code, stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("not JSON: %v: %q", err, out)
	}
	for _, k := range []string{"rate_per_s", "p50_ms", "p99_ms", "crypto_ceiling_per_s"} {
		if _, ok := m[k].(float64); !ok {
			t.Errorf("field %s missing or not a number: %v", k, m[k])
		}
	}
}

// The membership benchmark runs end to end with a manager process; its
// figures are not asserted here.
func TestBenchMembersJSONShape(t *testing.T) {
	code, out, stderr := runCmd(t, "bench", "members", "--units", "20", "--clusters", "4", "--heartbeat", "200ms", "--steady", "500ms", "--json")
	if code != 0 {
		t.Fatalf("bench members: exit %d: %s", code, stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("not JSON: %v: %q", err, out)
	}
	for _, k := range []string{"join_storm_s", "view_complete_s", "manager_cpu_percent_of_one_core", "manager_rss_mb"} {
		if _, ok := m[k].(float64); !ok {
			t.Errorf("field %s missing or not a number: %v", k, m[k])
		}
	}
	if m["active_at_end"] != float64(20) {
		t.Errorf("active at the end: %v, want 20", m["active_at_end"])
	}
}

func TestDemoExitsZero(t *testing.T) {
	code, out, stderr := runCmd(t, "demo")
	if code != 0 || !strings.Contains(out, "cohort demo: done.") || !strings.Contains(out, "cohort demo mpc: done.") {
		t.Fatalf("demo: exit %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{"learned sum 116, mean 38.67, max 58 over 3 clinics", `not_in_group: task "auditor" is not a member of group "clinics"`} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if code, _, _ := runCmd(t, "demo", "nosuch"); code != 2 {
		t.Errorf("demo nosuch: exit %d, want 2", code)
	}
}

// waitFor polls a buffer until re matches, and returns its first group.
func waitFor(t *testing.T, b *syncBuffer, re *regexp.Regexp) string {
	t.Helper()
	end := time.Now().Add(60 * time.Second)
	for time.Now().Before(end) {
		if m := re.FindStringSubmatch(b.String()); m != nil {
			return m[1]
		}
		select {
		case <-b.changed():
		case <-time.After(time.Second):
		}
	}
	t.Fatalf("no %v in output: %q", re, b.String())
	return ""
}

// cohort collateral imports the samples' collateral into a cache, lists it
// with its expiry, and refuses what is not collateral.
func TestCollateralCommands(t *testing.T) {
	dir := t.TempDir()
	s := "../../enclave/testdata/tee-samples/"
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"collateral", "import", "--dir", dir, s + "dcap-qvl/sgx_quote_collateral.json", s + "trustee/snp_test-vcek.der"}, &out, &errOut); code != 0 {
		t.Fatalf("import: exit %d: %s", code, errOut.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"collateral", "list", "--dir", dir, "--at", "2025-06-20T00:00:00Z"}, &out, &errOut); code != 0 {
		t.Fatalf("list: exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"intel  sgx", "FMSPC 00a067110000", "until 2025-07-19", "vcek   snp", "Milan chip"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("list does not say %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	run(context.Background(), []string{"collateral", "list", "--dir", dir}, &out, &errOut)
	if !strings.Contains(out.String(), "EXPIRED 2025-07-19") {
		t.Errorf("list now does not say the PCS collateral expired:\n%s", out.String())
	}
	if code := run(context.Background(), []string{"collateral", "import", "--dir", dir, "main.go"}, &out, &errOut); code != 1 {
		t.Errorf("importing main.go: exit %d", code)
	}
	if code := run(context.Background(), []string{"collateral", "import", "--dir", dir}, &out, &errOut); code != 2 {
		t.Errorf("importing nothing: exit %d", code)
	}
}

// cohort evidence inspect verifies real evidence offline and prints its
// claims and the policy lines that accept it; evidence that does not verify
// (collateral expired, a changed byte) fails with the reason.
func TestEvidenceInspect(t *testing.T) {
	s := "../../enclave/testdata/tee-samples/"
	dir := t.TempDir()
	inspect := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := run(context.Background(), append([]string{"evidence", "inspect"}, args...), &out, &errOut)
		return code, out.String() + errOut.String()
	}
	at := "2026-12-01T00:00:00Z" // the samples' certificates expire from 2029
	if code, out := inspect("--at", at, "--endorsement", s+"trustee/snp_test-vcek.der", s+"trustee/snp_test-report.bin"); code != 0 ||
		!strings.Contains(out, "platform: snp") || !strings.Contains(out, "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c") ||
		!strings.Contains(out, "tcb_statuses: [Provisional]") {
		t.Fatalf("snp: exit %d:\n%s", code, out)
	}
	if code, out := inspect("--at", at, s+"trustee/snp_test-report.bin"); code != 1 || !strings.Contains(out, "VCEK") {
		t.Fatalf("snp without its VCEK: exit %d:\n%s", code, out)
	}
	if code, out := inspect("--at", at, s+"trustee/tdx_quote_4.dat"); code != 0 || !strings.Contains(out, "platform: tdx") || !strings.Contains(out, "NotEvaluated") {
		t.Fatalf("tdx v4: exit %d:\n%s", code, out)
	}
	if code, out := inspect("--at", at, "--json", s+"trustee/tdx_quote_5.dat"); code != 0 || !strings.Contains(out, `"QuoteVersion": 5`) {
		t.Fatalf("tdx v5 as JSON: exit %d:\n%s", code, out)
	}
	if code, out := run2(t, "collateral", "import", "--dir", dir, s+"dcap-qvl/sgx_quote_collateral.json"); code != 0 {
		t.Fatal(out)
	}
	if code, out := inspect("--collateral", dir, "--at", "2025-06-20T00:00:00Z", s+"dcap-qvl/sgx_quote"); code != 0 || !strings.Contains(out, "ConfigurationAndSWHardeningNeeded") || !strings.Contains(out, "platform: sgx") {
		t.Fatalf("sgx at 2025-06-20: exit %d:\n%s", code, out)
	}
	if code, out := inspect("--collateral", dir, s+"dcap-qvl/sgx_quote"); code != 1 || !strings.Contains(out, "expired") {
		t.Fatalf("sgx now: exit %d:\n%s", code, out)
	}
	bad := filepath.Join(t.TempDir(), "changed.dat")
	q, _ := os.ReadFile(s + "trustee/tdx_quote_4.dat")
	q[600] ^= 1
	os.WriteFile(bad, q, 0o644)
	if code, out := inspect("--at", at, bad); code != 1 || !strings.Contains(out, "does not verify") {
		t.Fatalf("a changed byte: exit %d:\n%s", code, out)
	}
	if code, _ := inspect(); code != 2 {
		t.Fatalf("no file: exit %d", code)
	}
}

func run2(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	code := run(context.Background(), args, &out, &out)
	return code, out.String()
}

// The README's inspection command, as written, from the repository's root.
func TestReadmeEvidenceInspect(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for l := range strings.Lines(string(readme)) {
		if strings.HasPrefix(l, "cohort evidence inspect ") {
			line = strings.TrimSpace(l)
		}
	}
	if line == "" {
		t.Fatal("the README shows no cohort evidence inspect command")
	}
	t.Chdir("../..")
	code, out := run2(t, strings.Fields(line)[1:]...)
	if code != 0 || !strings.Contains(out, "platform: snp") {
		t.Fatalf("%s: exit %d:\n%s", line, code, out)
	}
}

// cohort deploy with a policy that declares no clusters says so in the
// policy's words, with a line to add.
func TestDeployNeedsAClusterInThePolicy(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("p.yaml", []byte("version: 1\naccept_simulated: true\ntasks:\n  - name: demo\n    measurements: ["+strings.Repeat("ab", 32)+"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCmd(t, "deploy", "--out", "out", "--policy", "p.yaml")
	if code != 2 || !strings.Contains(stderr, "declares no clusters") || !strings.Contains(stderr, "{id: demo, task: demo}") || strings.Contains(stderr, "Config.") {
		t.Errorf("exit %d: %s", code, stderr)
	}
}
