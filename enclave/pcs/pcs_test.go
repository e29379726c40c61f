package pcs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestIntelRootIsTheRealOne(t *testing.T) {
	root := IntelRoot()
	if root.Subject.CommonName != "Intel SGX Root CA" || !root.IsCA {
		t.Fatalf("root %q, CA %v", root.Subject.CommonName, root.IsCA)
	}
	theirs, err := os.ReadFile(modFile(t, "github.com/google/go-tdx-guest", "verify/trusted_root.pem"))
	if err != nil {
		prerequisite(t, "go-tdx-guest's source not in the module cache: %v", err)
	}
	if !bytes.Equal(bytes.TrimSpace(theirs), bytes.TrimSpace(intelRootPEM)) {
		t.Fatal("the embedded root differs from go-tdx-guest's")
	}
}

func TestParseQVL(t *testing.T) {
	for _, f := range []string{"sgx_quote_collateral.json", "tdx_quote_collateral.json"} {
		b, err := os.ReadFile("../testdata/tee-samples/dcap-qvl/" + f)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseQVL(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(c.TCBInfoSignature) != 64 || len(c.QEIdentitySignature) != 64 || len(c.PCKCRL) == 0 || len(c.RootCACRL) == 0 {
			t.Fatalf("%s: fields missing", f)
		}
		again, err := c.MarshalQVL()
		if err != nil {
			t.Fatal(err)
		}
		if c2, err := ParseQVL(again); err != nil || !bytes.Equal(c2.TCBInfo, c.TCBInfo) || !bytes.Equal(c2.PCKCRL, c.PCKCRL) {
			t.Fatalf("%s: does not survive a round trip: %v", f, err)
		}
	}
	for _, bad := range []string{"", "{", `{"pck_crl":"zz"}`, `[]`} {
		if _, err := ParseQVL([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseQVL(f *testing.F) {
	if b, err := os.ReadFile("../testdata/tee-samples/dcap-qvl/sgx_quote_collateral.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"tcb_info":"{}"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseQVL(b)
		if err != nil {
			return
		}
		if _, err := c.MarshalQVL(); err != nil {
			t.Fatal(err)
		}
	})
}

// modFile is the path of a file in a module's source, as go.mod pins it.
func modFile(t *testing.T, module, file string) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module).Output()
	if err != nil {
		prerequisite(t, "go list -m %s: %v", module, err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), file)
}

// prerequisite stops a test whose prerequisite is missing: skipped on a
// developer's machine, failed under CI, where every prerequisite is
// installed and a test that skips would pass unseen.
func prerequisite(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("under CI, a prerequisite is missing: "+format, args...)
	}
	t.Skipf(format, args...)
}
