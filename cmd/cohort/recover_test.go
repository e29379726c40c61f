package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/embednats"
)

// runBackground runs a cohort command in the background, and returns its
// standard error and a function that stops it (as Ctrl-C does) and returns
// its exit code.
func runBackground(t *testing.T, args ...string) (*syncBuffer, func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	code := make(chan int, 1)
	go func() { code <- run(ctx, args, &out, &errOut) }()
	var exit *int
	stop := func() int {
		if exit == nil {
			cancel()
			c := <-code
			exit = &c
		}
		return *exit
	}
	t.Cleanup(func() { stop() })
	return &errOut, stop
}

// The README's recovery, with the commands as written: an issuer whose
// policy names two of three recovery keys; every issuer's data lost; a
// fresh issuer with --recover; `cohort recover` with one key (not enough),
// then a second: the same root. --init over the state is refused.
func TestRecoverCommand(t *testing.T) {
	plainNATS(t)
	keys := regexp.MustCompile(`(?s)recovery:.*?key: ([0-9a-f]{64})`)
	var holders []string
	for _, n := range []string{"r1", "r2", "r3"} {
		code, out, stderr := runCmd(t, "policy", "keygen", "--out", n+".key", "--name", n)
		if code != 0 {
			t.Fatalf("keygen: %s", stderr)
		}
		holders = append(holders, fmt.Sprintf("    - {name: %s, key: %s}\n", n, keys.FindStringSubmatch(out)[1]))
	}
	_, unit, _ := runCmd(t, "measure", "unit", "--task", "demo")
	_, pin, _ := runCmd(t, "measure", "issuer")
	pin = strings.TrimSpace(pin)
	policy := "version: 1\naccept_simulated: true\nrecovery:\n  threshold: 2\n  keys:\n" + strings.Join(holders, "") +
		"tasks:\n  - name: demo\n    measurements: [" + strings.TrimSpace(unit) + "]\n"
	if err := os.WriteFile("policy.yaml", []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	trust := func(out string) string {
		t.Helper()
		end := time.Now().Add(30 * time.Second)
		for {
			code, _, stderr := runCmd(t, "trust", "--issuer-measurement", pin, "--out", out, "--timeout", "500ms")
			if code == 0 {
				b, _ := os.ReadFile(out)
				return string(b)
			}
			if time.Now().After(end) {
				t.Fatalf("trust: %s", stderr)
			}
			<-tick.C
		}
	}
	logs, stop := runBackground(t, "issuer", "--policy", "policy.yaml", "--data", "issuer-data", "--ungoverned")
	root := trust("root.pem")
	// Stopped, and its machine and data are gone.
	if code := stop(); code != 0 {
		t.Fatalf("issuer: exit %d: %s", code, logs.String())
	}
	if err := os.RemoveAll("issuer-data"); err != nil {
		t.Fatal(err)
	}

	code, _, stderr := runCmd(t, "issuer", "--data", "fresh-data")
	if code != 1 || !strings.Contains(stderr, "cohort recover") || !strings.Contains(stderr, "Nothing was written") {
		t.Fatalf("an issuer with no way to the key: exit %d: %s", code, stderr)
	}
	logs, stop = runBackground(t, "issuer", "--data", "fresh-data", "--recover")
	// The line logged once its recovery endpoints are subscribed (an
	// earlier one says it will wait, before they are).
	for end := time.Now().Add(30 * time.Second); !strings.Contains(logs.String(), "waiting for recovery: each holder runs"); <-tick.C {
		if time.Now().After(end) {
			t.Fatalf("the issuer does not wait for recovery: %s", logs.String())
		}
	}
	code, out, stderr := runCmd(t, "recover", "--key", "r1.key", "--root", "root.pem", "--issuer-measurement", pin)
	if code != 0 || !strings.Contains(out, "share accepted: 1 of the 2 needed") {
		t.Fatalf("recover with one key: exit %d: %s%s", code, out, stderr)
	}
	code, out, stderr = runCmd(t, "recover", "--key", "r3.key", "--root", "root.pem", "--issuer-measurement", pin)
	if code != 0 || !strings.Contains(out, "the state key is restored") {
		t.Fatalf("recover with a second key: exit %d: %s%s", code, out, stderr)
	}
	if again := trust("again.pem"); again != root {
		t.Fatal("recovery gave another root")
	}
	if code := stop(); code != 0 {
		t.Fatalf("issuer: exit %d: %s", code, logs.String())
	}

	// --init over a working state is refused, naming the signed rotation,
	// and changes nothing.
	code, _, stderr = runCmd(t, "issuer", "--data", "fresh-data", "--policy", "policy.yaml", "--init", "--ungoverned")
	if code == 0 || !strings.Contains(stderr, "--init refused") || !strings.Contains(stderr, "root_generation") {
		t.Fatalf("issuer --init over a working state: exit %d: %s", code, stderr)
	}
	logs, stop = runBackground(t, "issuer", "--data", "fresh-data")
	if again := trust("still.pem"); again != root {
		t.Fatal("the refused --init changed the root")
	}
	if code := stop(); code != 0 {
		t.Fatalf("issuer: exit %d: %s", code, logs.String())
	}
}

// cohort status exits non-zero, saying so, when the manager does not answer
// while the issuer does.
func TestStatusWithoutManagerFails(t *testing.T) {
	plainNATS(t)
	_, unit, _ := runCmd(t, "measure", "unit", "--task", "demo")
	if err := os.WriteFile("policy.yaml", []byte("version: 1\naccept_simulated: true\ntasks:\n  - name: demo\n    measurements: ["+strings.TrimSpace(unit)+"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs, _ := runBackground(t, "issuer", "--policy", "policy.yaml", "--data", "issuer-data", "--ungoverned")
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	end := time.Now().Add(30 * time.Second)
	for {
		code, out, stderr := runCmd(t, "status", "--timeout", "500ms")
		if strings.Contains(out, "backend sim") { // the issuer answered
			if code != 1 || !strings.Contains(stderr, "the manager did not answer within 500ms: is one running on") {
				t.Fatalf("status without a manager: exit %d: %s%s", code, out, stderr)
			}
			return
		}
		if time.Now().After(end) {
			t.Fatalf("the issuer never answered status: %s %s", stderr, logs.String())
		}
		<-tick.C
	}
}

// plainNATS starts a NATS server without authorization for the test, names
// it in COHORT_NATS, and moves into a folder of the test's own.
func plainNATS(t *testing.T) {
	t.Helper()
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	t.Setenv("COHORT_NATS", srv.ClientURL())
	t.Chdir(t.TempDir())
}

// The README's separate-process genesis, its policy written as the README
// writes it (keygen, then pubkey --as into flow-style lines): the issuer
// starts on it; the same policy without administrators and recovery is
// refused at once, naming --ungoverned, and one that lists another issuer
// build is refused naming this one; neither writes anything.
func TestGenesisAtTheCommand(t *testing.T) {
	plainNATS(t)
	if code, _, stderr := runCmd(t, "policy", "keygen", "--out", "ada.key", "--name", "ada"); code != 0 {
		t.Fatalf("keygen: %s", stderr)
	}
	out := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := runCmd(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		return strings.TrimSpace(stdout)
	}
	issuerM, unitM := out("measure", "issuer"), out("measure", "unit", "--task", "demo")
	admin := out("policy", "pubkey", "--key", "ada.key", "--name", "ada", "--as", "administrator")
	recovery := out("policy", "pubkey", "--key", "ada.key", "--name", "ada", "--as", "recovery")
	if !strings.HasPrefix(admin, "{name: ada, key: ") || admin == recovery {
		t.Fatalf("pubkey --as: %q and %q", admin, recovery)
	}
	if lines := out("policy", "pubkey", "--key", "ada.key", "--name", "ada"); !strings.Contains(lines, "administrators:") || !strings.Contains(lines, strings.TrimSuffix(strings.TrimPrefix(recovery, "{"), "}")) {
		t.Errorf("pubkey: %q", lines)
	}
	tasks := "tasks:\n  - name: demo\n    measurements: [" + unitM + "]\nclusters:\n  - {id: demo, task: demo}\n"
	write := func(name, doc string) {
		if err := os.WriteFile(name, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ungoverned.yaml", "version: 1\naccept_simulated: true\nissuers: ["+issuerM+"]\n"+tasks)
	write("other.yaml", "version: 1\naccept_simulated: true\nissuers: ["+strings.Repeat("ab", 32)+"]\n"+
		"administrators: {threshold: 1, keys: ["+admin+"]}\nrecovery: {threshold: 1, keys: ["+recovery+"]}\n"+tasks)
	write("policy.yaml", "version: 1\naccept_simulated: true\nvalidity: {task: 720h}\nissuers: ["+issuerM+"]\n"+
		"administrators: {threshold: 1, keys: ["+admin+"]}\nrecovery: {threshold: 1, keys: ["+recovery+"]}\n"+tasks)
	for file, want := range map[string]string{"ungoverned.yaml": "--ungoverned", "other.yaml": "not this one (measurement " + issuerM} {
		code, _, stderr := runCmd(t, "issuer", "--policy", file, "--data", "issuer-data")
		if code == 0 || !strings.Contains(stderr, want) || !strings.Contains(stderr, "Nothing was written") {
			t.Errorf("issuer --policy %s: exit %d: %s, want a refusal naming %q", file, code, stderr, want)
		}
	}
	logs, stop := runBackground(t, "issuer", "--policy", "policy.yaml", "--data", "issuer-data")
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(30 * time.Second); !strings.Contains(logs.String(), "issuer serving"); <-tick.C {
		if time.Now().After(end) {
			t.Fatalf("the issuer on the README's genesis does not serve: %s", logs.String())
		}
	}
	if code := stop(); code != 0 {
		t.Fatalf("issuer: exit %d: %s", code, logs.String())
	}
}
