package access

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGrantValidate(t *testing.T) {
	for _, g := range []Grant{{Role: Issuer}, {Role: Unit, Cluster: "dev"}, {Role: User}, {Role: Operator}, {Role: Manager}} {
		if err := g.Validate(); err != nil {
			t.Errorf("%v: %v", g, err)
		}
	}
	for _, g := range []Grant{{Role: "root"}, {Role: Unit}, {Role: Unit, Cluster: "a.b"}, {Role: Unit, Cluster: ">"}, {Role: User, Cluster: "dev"}} {
		if err := g.Validate(); err == nil {
			t.Errorf("%+v accepted", g)
		}
		if _, err := g.Permissions(); err == nil {
			t.Errorf("%+v has permissions", g)
		}
	}
}

func TestCredentialRoundTrip(t *testing.T) {
	g := Grant{Role: Unit, Cluster: "dev"}
	c, err := NewCredential(g, nil)
	if err != nil {
		t.Fatal(err)
	}
	file := c.Marshal()
	back, err := ParseCredential(file)
	if err != nil {
		t.Fatal(err)
	}
	if back.Grant != g || back.Public != c.Public || !bytes.Equal(back.seed, c.seed) {
		t.Fatalf("round trip: %+v, want %+v", back, c)
	}
	if !strings.HasPrefix(c.Public, "U") || !bytes.Contains(file, []byte(c.Public)) {
		t.Errorf("public key %q not named in the file", c.Public)
	}
}

func TestLoadOrCreateKeepsAndChecks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "u.creds")
	a, err := LoadOrCreate(path, Grant{Role: User})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode: %v %v", fi.Mode(), err)
	}
	b, err := LoadOrCreate(path, Grant{Role: User})
	if err != nil || b.Public != a.Public {
		t.Fatalf("second load: %v, key %s then %s", err, a.Public, b.Public)
	}
	if _, err := LoadOrCreate(path, Grant{Role: Operator}); err == nil {
		t.Fatal("a user credential was taken for an operator")
	}
}

func TestParseCredentialRefuses(t *testing.T) {
	c, err := NewCredential(Grant{Role: User}, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := string(c.Marshal())
	for name, in := range map[string]string{
		"empty":       "",
		"no grant":    strings.Replace(good, grantLine, "# ", 1),
		"two grants":  good + grantLine + "user\n",
		"bad role":    strings.Replace(good, grantLine+"user", grantLine+"root", 1),
		"no seed":     good[:strings.Index(good, "-----BEGIN")],
		"public only": strings.Replace(good, string(c.seed), c.Public, 1),
		"too long":    good + strings.Repeat("#", MaxCredentials),
	} {
		if _, err := ParseCredential([]byte(in)); !errors.Is(err, ErrCredentials) {
			t.Errorf("%s: %v, want ErrCredentials", name, err)
		}
	}
}

func FuzzParseCredential(f *testing.F) {
	c, err := NewCredential(Grant{Role: Unit, Cluster: "dev"}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(c.Marshal())
	f.Add([]byte(grantLine + "unit/dev\nSUAAAA\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCredential(data)
		if err != nil {
			if !errors.Is(err, ErrCredentials) {
				t.Fatalf("error %v does not wrap ErrCredentials", err)
			}
			return
		}
		if err := c.Grant.Validate(); err != nil {
			t.Fatalf("parsed an invalid grant: %v", err)
		}
		if _, err := ParseCredential(c.Marshal()); err != nil {
			t.Fatalf("a parsed credential does not parse again: %v", err)
		}
	})
}

func TestCredentialPrintsNoSeed(t *testing.T) {
	c, err := NewCredential(Grant{Role: User}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(f, c); strings.Contains(out, string(c.seed)) {
			t.Errorf("%s prints the seed: %s", f, out)
		}
	}
}

func TestGrantsAndFileNames(t *testing.T) {
	var names []string
	for _, g := range Grants("dev", "prod") {
		if err := g.Validate(); err != nil {
			t.Fatal(err)
		}
		names = append(names, g.FileName())
	}
	want := "issuer.creds manager.creds user.creds operator.creds unit-dev.creds unit-prod.creds"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("files %q, want %q", got, want)
	}
}
