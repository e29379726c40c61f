package issuer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/messages"
)

var (
	m1     = bytes.Repeat([]byte{0x11}, 32)
	m2     = bytes.Repeat([]byte{0x22}, 32)
	signer = bytes.Repeat([]byte{0x33}, 32)
)

// policyYAML is a valid policy: a task accepted by measurement, one by
// signer, and one that allows debug enclaves.
func policyYAML(acceptSimulated bool) []byte {
	return fmt.Appendf(nil, `version: 1
accept_simulated: %t
validity:
  task: 1h
tasks:
  - name: demo
    measurements: [%x]
    dns_names: [localhost, demo.example]
    ip_addresses: [127.0.0.1, "::1"]
  - name: signed
    signer: %x
    product_id: 3
    min_security_version: 2
  - name: dbg
    measurements: [%x, %x]
    allow_debug: true
`, acceptSimulated, m1, signer, m1, m2)
}

func mustParsePolicy(t testing.TB, y []byte) *Policy {
	t.Helper()
	p, err := ParsePolicy(y)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParsePolicyValid(t *testing.T) {
	y := policyYAML(true)
	p := mustParsePolicy(t, y)
	if p.Version != 1 || !p.AcceptSimulated || len(p.Tasks) != 3 {
		t.Fatalf("policy %+v", p)
	}
	if p.Validity.Root != defaultRootValidity || p.Validity.Task != time.Hour {
		t.Fatalf("validity %+v: want the default root and a 1h task", p.Validity)
	}
	if p.Hash() != sha256.Sum256(y) {
		t.Fatal("Hash is not the SHA-256 of the file")
	}
	demo, ok := p.Task("demo")
	if !ok || demo != &p.Tasks[0] {
		t.Fatal("Task(demo) does not return the policy's task")
	}
	if len(demo.measurements) != 1 || !bytes.Equal(demo.measurements[0], m1) {
		t.Fatalf("demo measurements %x", demo.measurements)
	}
	if len(demo.ips) != 2 || !demo.ips[0].Equal(net.IPv4(127, 0, 0, 1)) || !demo.ips[1].Equal(net.IPv6loopback) {
		t.Fatalf("demo addresses %v", demo.ips)
	}
	if s, _ := p.Task("signed"); !bytes.Equal(s.signer, signer) || s.ProductID != 3 || s.MinSecurityVersion != 2 || s.measurements != nil {
		t.Fatalf("signed task %+v", s)
	}
	if _, ok := p.Task("nope"); ok {
		t.Fatal("Task found a task the policy does not name")
	}

	// Without a validity section both lifetimes take their defaults.
	p = mustParsePolicy(t, fmt.Appendf(nil, "version: 1\ntasks:\n  - name: a\n    measurements: [%x]\n", m1))
	if p.Validity.Root != defaultRootValidity || p.Validity.Task != defaultTaskValidity || p.AcceptSimulated {
		t.Fatalf("defaults: %+v, accept simulated %t", p.Validity, p.AcceptSimulated)
	}
}

func TestParsePolicyRefuses(t *testing.T) {
	task := fmt.Sprintf("tasks:\n  - name: demo\n    measurements: [%x]\n", m1)
	two := task + fmt.Sprintf("  - name: other\n    measurements: [%x]\n", m2)
	names := func(n int) string {
		s := make([]string, n)
		for i := range s {
			s[i] = fmt.Sprintf("n%d.example", i)
		}
		return strings.Join(s, ", ")
	}
	hexes := func(n int) string {
		s := make([]string, n)
		for i := range s {
			s[i] = fmt.Sprintf("%064x", i)
		}
		return strings.Join(s, ", ")
	}
	for name, y := range map[string]string{
		"empty":                     "",
		"not a mapping":             "- 1\n- 2\n",
		"unknown field":             "version: 1\naccept_simulation: true\n" + task,
		"unknown task field":        "version: 1\n" + task + "    measurement: [00]\n",
		"unknown validity field":    "version: 1\nvalidity:\n  leaf: 1h\n" + task,
		"no version":                task,
		"version 0":                 "version: 0\n" + task,
		"no tasks":                  "version: 1\n",
		"empty task list":           "version: 1\ntasks: []\n",
		"upper-case task name":      fmt.Sprintf("version: 1\ntasks:\n  - name: Demo\n    measurements: [%x]\n", m1),
		"task name with underscore": fmt.Sprintf("version: 1\ntasks:\n  - name: de_mo\n    measurements: [%x]\n", m1),
		"empty task name":           fmt.Sprintf("version: 1\ntasks:\n  - measurements: [%x]\n", m1),
		"task name too long":        fmt.Sprintf("version: 1\ntasks:\n  - name: %s\n    measurements: [%x]\n", strings.Repeat("a", 64), m1),
		"duplicate task":            "version: 1\n" + task + fmt.Sprintf("  - name: demo\n    measurements: [%x]\n", m2),
		"cluster of unknown task":   "version: 1\n" + task + "clusters:\n  - id: c1\n    task: nosuch\n",
		"duplicate cluster":         "version: 1\n" + task + "clusters:\n  - id: c1\n    task: demo\n  - id: c1\n    task: demo\n",
		"bad cluster id":            "version: 1\n" + task + "clusters:\n  - id: C_1\n    task: demo\n",
		"unknown cluster field":     "version: 1\n" + task + "clusters:\n  - id: c1\n    task: demo\n    size: 3\n",
		"measurement not hex":       "version: 1\ntasks:\n  - name: demo\n    measurements: [zz]\n",
		"measurement 31 bytes":      fmt.Sprintf("version: 1\ntasks:\n  - name: demo\n    measurements: [%x]\n", m1[:31]),
		"measurement 33 bytes":      fmt.Sprintf("version: 1\ntasks:\n  - name: demo\n    measurements: [%x00]\n", m1),
		"too many measurements":     fmt.Sprintf("version: 1\ntasks:\n  - name: demo\n    measurements: [%s]\n", hexes(maxTaskMeasurements+1)),
		"no measurement, no signer": "version: 1\ntasks:\n  - name: demo\n    dns_names: [localhost]\n",
		"signer not hex":            "version: 1\ntasks:\n  - name: demo\n    signer: xyz\n",
		"signer short":              fmt.Sprintf("version: 1\ntasks:\n  - name: demo\n    signer: %x\n", signer[:16]),
		"bad IP":                    "version: 1\n" + task + "    ip_addresses: [300.1.1.1]\n",
		"host name as IP":           "version: 1\n" + task + "    ip_addresses: [localhost]\n",
		"empty DNS name":            "version: 1\n" + task + "    dns_names: [\"\"]\n",
		"DNS name too long":         "version: 1\n" + task + "    dns_names: [" + strings.Repeat("a", maxNameLen+1) + "]\n",
		"too many names":            "version: 1\n" + task + "    dns_names: [" + names(maxNames+1) + "]\n",
		"task validity too short":   "version: 1\nvalidity:\n  task: 1s\n" + task,
		"negative task validity":    "version: 1\nvalidity:\n  task: -1h\n" + task,
		"root validity too short":   "version: 1\nvalidity:\n  root: 30m\n  task: 10s\n" + task,
		"root validity too long":    "version: 1\nvalidity:\n  root: 175400h\n" + task,
		"task longer than root":     "version: 1\nvalidity:\n  root: 2h\n  task: 3h\n" + task,
		"task longer than default":  "version: 1\nvalidity:\n  task: 87700h\n" + task,
		"validity as a bare number": "version: 1\nvalidity:\n  task: 3600\n" + task,
		"product id out of range":   fmt.Sprintf("version: 1\ntasks:\n  - name: demo\n    signer: %x\n    product_id: 65536\n", signer),
		"tab indentation":           "version: 1\ntasks:\n\t- name: demo\n",
		"group of unknown task":     "version: 1\n" + task + "groups:\n  - id: g\n    tasks: [demo, nosuch]\n",
		"group of one task":         "version: 1\n" + task + "groups:\n  - id: g\n    tasks: [demo]\n",
		"group naming a task twice": "version: 1\n" + task + "groups:\n  - id: g\n    tasks: [demo, demo]\n",
		"duplicate group":           "version: 1\n" + two + "groups:\n  - id: g\n    tasks: [demo, other]\n  - id: g\n    tasks: [other, demo]\n",
		"bad group id":              "version: 1\n" + two + "groups:\n  - id: G!\n    tasks: [demo, other]\n",
		"unknown group field":       "version: 1\n" + two + "groups:\n  - id: g\n    tasks: [demo, other]\n    size: 2\n",
		"group longer than root":    "version: 1\nvalidity:\n  root: 2h\n  group: 3h\n  task: 1h\n" + two,
		"group validity too short":  "version: 1\nvalidity:\n  group: 1s\n" + two,
	} {
		t.Run(name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(y))
			if !errors.Is(err, ErrPolicy) {
				t.Fatalf("got %+v, %v; want ErrPolicy", p, err)
			}
			if p != nil {
				t.Fatal("a refused policy came back non-nil")
			}
		})
	}
}

func TestParsePolicyRefusesOversizeFile(t *testing.T) {
	y := policyYAML(false)
	// Valid YAML padded with a comment: only the size check can refuse it.
	y = append(y, '#')
	y = append(y, bytes.Repeat([]byte{'x'}, MaxPolicySize-len(y))...)
	if _, err := ParsePolicy(y); err != nil {
		t.Fatalf("policy of exactly MaxPolicySize refused: %v", err)
	}
	_, err := ParsePolicy(append(y, 'x'))
	if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("got %v, want ErrPolicy about the size", err)
	}
}

// TestParsePolicyRefusesSecondDocument: the hash binds the whole file, so
// the whole file must be the policy; a second YAML document would be hashed
// but never read.
func TestParsePolicyRefusesSecondDocument(t *testing.T) {
	y := append(policyYAML(false), "---\nversion: 1\naccept_simulated: true\n"...)
	if p, err := ParsePolicy(y); !errors.Is(err, ErrPolicy) {
		t.Fatalf("policy with a second document: got accept_simulated=%t, %v; want ErrPolicy", p != nil && p.AcceptSimulated, err)
	}
}

func claims(mutate func(*enclave.Claims)) enclave.Claims {
	c := enclave.Claims{Backend: "sgx", UniqueID: m1, SignerID: bytes.Repeat([]byte{0x44}, 32), ProductID: 1, SecurityVersion: 1, TCBStatus: "UpToDate"}
	if mutate != nil {
		mutate(&c)
	}
	return c
}

func TestAccept(t *testing.T) {
	strict := mustParsePolicy(t, policyYAML(false))
	lax := mustParsePolicy(t, policyYAML(true))
	simulated := func(c *enclave.Claims) { c.Simulated = true; c.Backend = "sim" }
	debug := func(c *enclave.Claims) { c.Debug = true }
	bySigner := func(product, sv uint16) func(*enclave.Claims) {
		return func(c *enclave.Claims) {
			c.UniqueID = bytes.Repeat([]byte{0x99}, 32)
			c.SignerID = signer
			c.ProductID = product
			c.SecurityVersion = sv
		}
	}
	for _, tc := range []struct {
		name   string
		policy *Policy
		task   string
		claims enclave.Claims
		want   messages.Code // "" for accepted
	}{
		{"unknown task", strict, "nope", claims(nil), messages.CodeUnknownTask},
		{"task name case matters", strict, "Demo", claims(nil), messages.CodeUnknownTask},
		{"measurement accepted", strict, "demo", claims(nil), ""},
		{"second measurement accepted", strict, "dbg", claims(func(c *enclave.Claims) { c.UniqueID = m2 }), ""},
		{"other measurement", strict, "demo", claims(func(c *enclave.Claims) { c.UniqueID = m2 }), messages.CodeMeasurement},
		{"no measurement", strict, "demo", claims(func(c *enclave.Claims) { c.UniqueID = nil }), messages.CodeMeasurement},
		{"measurement prefix", strict, "demo", claims(func(c *enclave.Claims) { c.UniqueID = m1[:16] }), messages.CodeMeasurement},
		{"simulated refused", strict, "demo", claims(simulated), messages.CodeSimulated},
		{"simulated refused before debug", strict, "demo", claims(func(c *enclave.Claims) { simulated(c); debug(c) }), messages.CodeSimulated},
		{"simulated accepted", lax, "demo", claims(simulated), ""},
		{"simulated still needs the measurement", lax, "demo", claims(func(c *enclave.Claims) { simulated(c); c.UniqueID = m2 }), messages.CodeMeasurement},
		{"simulated refused for an unknown task", lax, "nope", claims(simulated), messages.CodeUnknownTask},
		{"debug refused", strict, "demo", claims(debug), messages.CodeDebug},
		{"debug refused even when simulated is accepted", lax, "demo", claims(func(c *enclave.Claims) { simulated(c); debug(c) }), messages.CodeDebug},
		{"debug allowed", strict, "dbg", claims(debug), ""},
		{"debug allowed needs the measurement", strict, "dbg", claims(func(c *enclave.Claims) { debug(c); c.UniqueID = bytes.Repeat([]byte{0x99}, 32) }), messages.CodeMeasurement},
		{"signer at minimum version", strict, "signed", claims(bySigner(3, 2)), ""},
		{"signer above minimum version", strict, "signed", claims(bySigner(3, 0xffff)), ""},
		{"signer below minimum version", strict, "signed", claims(bySigner(3, 1)), messages.CodeSecurityVersion},
		{"signer, other product", strict, "signed", claims(bySigner(4, 2)), messages.CodeMeasurement},
		{"other signer", strict, "signed", claims(func(c *enclave.Claims) { bySigner(3, 2)(c); c.SignerID = m2 }), messages.CodeMeasurement},
		{"no signer", strict, "signed", claims(func(c *enclave.Claims) { bySigner(3, 2)(c); c.SignerID = nil }), messages.CodeMeasurement},
		{"signer on a measurement-only task", strict, "demo", claims(bySigner(3, 2)), messages.CodeMeasurement},
		{"debug on the signer task", strict, "signed", claims(func(c *enclave.Claims) { bySigner(3, 2)(c); debug(c) }), messages.CodeDebug},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.policy.accept(tc.task, tc.claims)
			if tc.want == "" {
				if got != nil {
					t.Fatalf("refused: %v", got)
				}
				return
			}
			if got == nil || got.Code != tc.want {
				t.Fatalf("got %v, want %s", got, tc.want)
			}
			if err := got.Validate(); err != nil || got.Reason == "" {
				t.Fatalf("refusal %q does not give a valid reason: %v", got.Reason, err)
			}
			if tc.want != messages.CodeSimulated && !strings.Contains(got.Reason, tc.task) {
				t.Fatalf("reason %q does not name the task %q", got.Reason, tc.task)
			}
		})
	}
}

func TestPolicyClustersNameTheirTask(t *testing.T) {
	y := append(policyYAML(true), "clusters:\n  - id: east\n    task: demo\n  - id: west\n    task: demo\n  - id: s1\n    task: signed\n"...)
	p := mustParsePolicy(t, y)
	demo, _ := p.Task("demo")
	signed, _ := p.Task("signed")
	dbg, _ := p.Task("dbg")
	if got := demo.ClusterIDs(); len(got) != 2 || got[0] != "east" || got[1] != "west" {
		t.Errorf("demo clusters %v, want [east west]", got)
	}
	if got := signed.ClusterIDs(); len(got) != 1 || got[0] != "s1" {
		t.Errorf("signed clusters %v, want [s1]", got)
	}
	if got := dbg.ClusterIDs(); len(got) != 0 {
		t.Errorf("dbg clusters %v, want none", got)
	}
}

func TestPolicyGroups(t *testing.T) {
	y := append(policyYAML(true), "groups:\n  - id: mpc\n    tasks: [demo, signed, dbg]\n  - id: pair\n    tasks: [dbg, demo]\n"...)
	p := mustParsePolicy(t, y)
	g, ok := p.Group("mpc")
	if !ok || g.ID != "mpc" || !g.Has("signed") || g.Has("nope") {
		t.Fatalf("group mpc: %+v, %t", g, ok)
	}
	if _, ok := p.Group("nope"); ok {
		t.Error("found a group the policy does not declare")
	}
	demo, _ := p.Task("demo")
	signed, _ := p.Task("signed")
	if got := demo.GroupIDs(); len(got) != 2 || got[0] != "mpc" || got[1] != "pair" {
		t.Errorf("demo groups %v, want [mpc pair]", got)
	}
	if got := signed.GroupIDs(); len(got) != 1 || got[0] != "mpc" {
		t.Errorf("signed groups %v, want [mpc]", got)
	}
	if p.Validity.Group != p.Validity.Task {
		t.Errorf("group validity %v, want the task's %v by default", p.Validity.Group, p.Validity.Task)
	}
}

// A task names its platform: evidence of another is refused, the TCB
// statuses it accepts besides UpToDate are each named, and SEV-SNP's and
// TDX's settings are checked on their claims.
func TestAcceptPlatforms(t *testing.T) {
	m48 := strings.Repeat("ab", 48)
	p := mustParsePolicy(t, []byte(`version: 1
tasks:
  - name: vm
    platform: snp
    measurements: [`+m48+`]
    tcb_statuses: [Provisional]
    snp:
      min_tcb: {boot_loader: 3, tee: 0, snp: 8, microcode: 115}
      max_vmpl: 1
      host_data: "`+strings.Repeat("11", 32)+`"
  - name: td
    platform: tdx
    measurements: [`+m48+`]
    tdx:
      min_tee_tcb_svn: "`+"0301"+strings.Repeat("00", 14)+`"
  - name: enclave
    measurements: [`+strings.Repeat("cd", 32)+`]
    tcb_statuses: [SWHardeningNeeded]
`))
	meas := bytes.Repeat([]byte{0xab}, 48)
	snp := func(f func(*enclave.SNPClaims)) enclave.Claims {
		c := enclave.Claims{Backend: enclave.PlatformSNP, UniqueID: meas, TCBStatus: enclave.TCBUpToDate, SNP: &enclave.SNPClaims{
			ReportedTCB: enclave.SNPTCB{BootLoader: 3, SNP: 8, Microcode: 115}, VMPL: 1, HostData: bytes.Repeat([]byte{0x11}, 32)}}
		if f != nil {
			f(c.SNP)
		}
		return c
	}
	tdx := func(svn []byte) enclave.Claims {
		return enclave.Claims{Backend: enclave.PlatformTDX, UniqueID: meas, TCBStatus: enclave.TCBUpToDate, TDX: &enclave.TDXClaims{TEETCBSVN: svn}}
	}
	sgx := func(status string) enclave.Claims {
		return enclave.Claims{Backend: enclave.PlatformSGX, UniqueID: bytes.Repeat([]byte{0xcd}, 32), TCBStatus: status}
	}
	svn := func(b ...byte) []byte { return append(b, make([]byte, 16-len(b))...) }
	for _, tc := range []struct {
		name   string
		task   string
		claims enclave.Claims
		want   messages.Code
	}{
		{"snp accepted", "vm", snp(nil), ""},
		{"snp provisional, named", "vm", func() enclave.Claims { c := snp(nil); c.TCBStatus = "Provisional"; return c }(), ""},
		{"snp of another measurement", "vm", func() enclave.Claims { c := snp(nil); c.UniqueID = bytes.Repeat([]byte{1}, 48); return c }(), messages.CodeMeasurement},
		{"snp microcode below the minimum", "vm", snp(func(s *enclave.SNPClaims) { s.ReportedTCB.Microcode = 114 }), messages.CodeTCB},
		{"snp boot loader below the minimum", "vm", snp(func(s *enclave.SNPClaims) { s.ReportedTCB.BootLoader = 2 }), messages.CodeTCB},
		{"snp with SMT", "vm", snp(func(s *enclave.SNPClaims) { s.SMT = true }), messages.CodeTCB},
		{"snp from VMPL 2", "vm", snp(func(s *enclave.SNPClaims) { s.VMPL = 2 }), messages.CodeTCB},
		{"snp of other host data", "vm", snp(func(s *enclave.SNPClaims) { s.HostData = make([]byte, 32) }), messages.CodeTCB},
		{"snp debug", "vm", func() enclave.Claims { c := snp(nil); c.Debug = true; return c }(), messages.CodeDebug},
		{"snp without its claims", "vm", func() enclave.Claims { c := snp(nil); c.SNP = nil; return c }(), messages.CodeEvidence},
		{"tdx evidence for an snp task", "vm", tdx(svn(3, 1)), messages.CodePlatform},
		{"tdx accepted", "td", tdx(svn(3, 1)), ""},
		{"tdx one component above, one below", "td", tdx(svn(4, 0, 9)), messages.CodeTCB}, // each component is compared
		{"tdx below the minimum", "td", tdx(svn(3, 0)), messages.CodeTCB},
		{"tdx not evaluated", "td", func() enclave.Claims { c := tdx(svn(3, 1)); c.TCBStatus = ""; return c }(), messages.CodeTCBStatus},
		{"tdx out of date", "td", func() enclave.Claims { c := tdx(svn(3, 1)); c.TCBStatus = "OutOfDate"; return c }(), messages.CodeTCBStatus},
		{"snp evidence for an sgx task", "enclave", snp(nil), messages.CodePlatform},
		{"sgx up to date", "enclave", sgx(enclave.TCBUpToDate), ""},
		{"sgx SWHardeningNeeded, named", "enclave", sgx("SWHardeningNeeded"), ""},
		{"sgx ConfigurationAndSWHardeningNeeded, not named", "enclave", sgx("ConfigurationAndSWHardeningNeeded"), messages.CodeTCBStatus},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := p.accept(tc.task, tc.claims)
			if tc.want == "" {
				if got != nil {
					t.Fatalf("refused: %v", got)
				}
				return
			}
			if got == nil || got.Code != tc.want || got.Validate() != nil {
				t.Fatalf("got %v, want %s", got, tc.want)
			}
		})
	}
	for _, bad := range []string{
		"platform: sev\n    measurements: [" + m48 + "]",
		"platform: snp\n    measurements: [" + strings.Repeat("ab", 32) + "]",
		"measurements: [" + m48 + "]",
		"platform: tdx\n    measurements: [" + m48 + "]\n    signer: " + strings.Repeat("ab", 32),
		"measurements: [" + strings.Repeat("ab", 32) + "]\n    tcb_statuses: [Fine]",
		"measurements: [" + strings.Repeat("ab", 32) + "]\n    tcb_statuses: [OutOfDate, OutOfDate]",
		"measurements: [" + strings.Repeat("ab", 32) + "]\n    snp: {allow_smt: true}",
		"platform: snp\n    measurements: [" + m48 + "]\n    tdx: {min_tee_tcb_svn: \"00\"}",
		"platform: snp\n    measurements: [" + m48 + "]\n    snp: {max_vmpl: 4}",
		"platform: snp\n    measurements: [" + m48 + "]\n    snp: {host_data: \"11\"}",
		"platform: tdx\n    measurements: [" + m48 + "]\n    tdx: {min_tee_tcb_svn: \"0011\"}",
	} {
		if _, err := ParsePolicy([]byte("version: 1\ntasks:\n  - name: x\n    " + bad + "\n")); !errors.Is(err, ErrPolicy) {
			t.Errorf("%q: %v, want ErrPolicy", bad, err)
		}
	}
}
