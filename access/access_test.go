package access

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/cohort-dev/cohort/messages"
)

var (
	gIssuer = Grant{Role: Issuer}
	gUnit   = Grant{Role: Unit, Cluster: "dev", Name: "dev-1"}
	gAlice  = Grant{Role: User, Name: "alice"}
)

func TestGrantValidate(t *testing.T) {
	for _, g := range []Grant{gIssuer, gUnit, gAlice, {Role: Operator}, {Role: Manager}} {
		if err := g.Validate(); err != nil {
			t.Errorf("%v: %v", g, err)
		}
		back, err := ParseGrant(g.String())
		if err != nil || back != g {
			t.Errorf("ParseGrant(%q) = %+v, %v", g, back, err)
		}
	}
	for _, g := range []Grant{
		{Role: "root"}, {Role: Unit}, {Role: Unit, Cluster: "dev"}, {Role: Unit, Cluster: "a.b", Name: "u"},
		{Role: Unit, Cluster: ">", Name: "u"}, {Role: Unit, Cluster: "dev", Name: "a.b"}, {Role: Unit, Cluster: "dev", Name: "*"},
		{Role: User}, {Role: User, Name: "Alice"}, {Role: User, Name: "a>"}, {Role: User, Name: "a", Cluster: "dev"},
		{Role: Issuer, Name: "x"}, {Role: Operator, Cluster: "dev"},
	} {
		if err := g.Validate(); err == nil {
			t.Errorf("%+v accepted", g)
		}
		if _, _, err := g.Subjects(State); err == nil {
			t.Errorf("%+v has subjects", g)
		}
	}
	for _, s := range []string{"", "unit", "unit/dev", "unit/dev/u/x", "user", "user/a/b", "issuer/x", "root"} {
		if _, err := ParseGrant(s); err == nil {
			t.Errorf("ParseGrant(%q) accepted", s)
		}
	}
}

func TestCredentialRoundTrip(t *testing.T) {
	for _, g := range []Grant{gUnit, gAlice, gIssuer} {
		c, err := NewCredential(g, nil)
		if err != nil {
			t.Fatal(err)
		}
		file := c.Marshal()
		back, err := ParseCredential(file)
		if err != nil {
			t.Fatalf("%s: %v", g, err)
		}
		if back.Grant != g || len(back.keys) != len(g.Keys()) {
			t.Fatalf("round trip: %+v, want %+v", back, c)
		}
		for _, k := range g.Keys() {
			if back.Public(k) != c.Public(k) || !bytes.Equal(back.keys[k].seed, c.keys[k].seed) || !strings.HasPrefix(c.Public(k), "U") {
				t.Errorf("%s key %s: %q, want %q", g, k, back.Public(k), c.Public(k))
			}
			if !bytes.Contains(file, []byte(c.Public(k))) {
				t.Errorf("%s: public key %s not named in the file", g, k)
			}
		}
		if len(g.Keys()) == 2 && c.Public(State) == c.Public(Serve) {
			t.Errorf("%s: one key for both connections", g)
		}
	}
}

func TestLoadOrCreateKeepsAndChecks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "u.creds")
	a, err := LoadOrCreate(path, gAlice)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode: %v %v", fi.Mode(), err)
	}
	b, err := LoadOrCreate(path, gAlice)
	if err != nil || b.Public(State) != a.Public(State) {
		t.Fatalf("second load: %v, key %s then %s", err, a.Public(State), b.Public(State))
	}
	if _, err := LoadOrCreate(path, Grant{Role: User, Name: "bob"}); err == nil {
		t.Fatal("alice's credential was taken for bob's")
	}
}

func TestParseCredentialRefuses(t *testing.T) {
	c, err := NewCredential(gUnit, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCredential(gUnit, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := string(c.Marshal())
	serveAt := strings.Index(good, keyLine+"serve")
	for name, in := range map[string]string{
		"empty":         "",
		"no grant":      strings.Replace(good, grantLine, "# ", 1),
		"two grants":    good + grantLine + "issuer\n",
		"bad role":      strings.Replace(good, grantLine+"unit", grantLine+"root", 1),
		"no seed":       good[:strings.Index(good, seedBegin)],
		"one key short": good[:serveAt],
		"public only":   strings.Replace(good, string(c.keys[State].seed), c.Public(State), 1),
		"another seed":  strings.Replace(good, string(c.keys[State].seed), string(other.keys[State].seed), 1),
		"unknown key":   strings.Replace(good, keyLine+"serve", keyLine+"admin", 1),
		"key twice":     strings.Replace(good, keyLine+"serve "+c.Public(Serve), keyLine+"state "+c.Public(Serve), 1),
		"too long":      good + strings.Repeat("#", MaxCredentials),
	} {
		if _, err := ParseCredential([]byte(in)); !errors.Is(err, ErrCredentials) {
			t.Errorf("%s: %v, want ErrCredentials", name, err)
		}
	}
}

func FuzzParseCredential(f *testing.F) {
	for _, g := range []Grant{gUnit, gAlice} {
		c, err := NewCredential(g, nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(c.Marshal())
	}
	f.Add([]byte(grantLine + "unit/dev/u\n" + keyLine + "state UAAA\nSUAAAA\n"))
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
	c, err := NewCredential(gUnit, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(f, c)
		for _, k := range gUnit.Keys() {
			if strings.Contains(out, string(c.keys[k].seed)) {
				t.Errorf("%s prints the %s seed: %s", f, k, out)
			}
		}
	}
}

var testDeployment = Deployment{
	Clusters: []Cluster{{ID: "dev", Units: []string{"dev-1", "dev-2"}}, {ID: "prod", Units: []string{"p1"}}},
	Users:    []string{"alice", "bob"},
}

func TestGrantsAndFileNames(t *testing.T) {
	var names []string
	for _, g := range testDeployment.Grants() {
		if err := g.Validate(); err != nil {
			t.Fatal(err)
		}
		names = append(names, g.FileName())
	}
	want := "issuer.creds manager.creds operator.creds unit-dev-dev-1.creds unit-dev-dev-2.creds unit-prod-p1.creds user-alice.creds user-bob.creds"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("files %q, want %q", got, want)
	}
	for _, bad := range []Deployment{
		{Clusters: []Cluster{{ID: "dev"}, {ID: "dev"}}},
		{Clusters: []Cluster{{ID: "dev", Units: []string{"u", "u"}}}},
		{Users: []string{"a", "a"}},
		{Users: []string{"A"}},
		{Clusters: []Cluster{{ID: "a.b"}}},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// The accounts block parses as nats-server parses configuration: one
// account for each domain of state, each credential's keys in its own, and
// every serving key may publish nothing but mapped replies.
func TestAccountsParse(t *testing.T) {
	creds, err := LoadOrCreateAll(t.TempDir(), testDeployment)
	if err != nil {
		t.Fatal(err)
	}
	accounts, err := Accounts(testDeployment, creds)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]any{"accounts": accounts})
	if err != nil {
		t.Fatal(err)
	}
	o := &server.Options{}
	if err := o.ProcessConfigString(strings.ReplaceAll(string(b), `\u003e`, ">")); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range o.Accounts {
		names = append(names, a.Name)
	}
	slices.Sort(names)
	if want := "cluster-dev cluster-prod issuer manager operator user-alice user-bob"; strings.Join(names, " ") != want {
		t.Errorf("accounts %v, want %s", names, want)
	}
	byKey := map[string]*server.NkeyUser{}
	for _, u := range o.Nkeys {
		byKey[u.Nkey] = u
	}
	for g, c := range creds {
		for _, k := range g.Keys() {
			u, ok := byKey[c.Public(k)]
			if !ok {
				t.Fatalf("%s %s: no user", g, k)
			}
			if u.Account.Name != g.Account() {
				t.Errorf("%s %s in account %s, want %s", g, k, u.Account.Name, g.Account())
			}
			if u.Permissions == nil || u.Permissions.Response != nil {
				t.Errorf("%s %s: permissions %+v (allow_responses must be off)", g, k, u.Permissions)
			}
			wantServe := []string{"_R_.>"}
			if g.Role == Issuer {
				// Issuers ask one another for the state key within their account.
				wantServe = append(wantServe, "_INBOX.issuer.>")
			}
			if k == Serve && !slices.Equal(u.Permissions.Publish.Allow, wantServe) {
				t.Errorf("%s serve key may publish to %v", g, u.Permissions.Publish.Allow)
			}
			for _, s := range u.Permissions.Publish.Allow {
				if strings.Contains(s, "UPDATE") || strings.Contains(s, "PURGE") || strings.Contains(s, "STREAM.DELETE") || strings.Contains(s, "MSG.DELETE") || s == ">" {
					t.Errorf("%s %s may publish to %s", g, k, s)
				}
			}
		}
	}
	delete(creds, gAlice)
	if _, err := Accounts(testDeployment, creds); err == nil {
		t.Error("an accounts block without alice's credential")
	}
}

func TestMatches(t *testing.T) {
	for _, c := range []struct {
		pattern, subject string
		want             bool
	}{
		{"a.b", "a.b", true}, {"a.b", "a.c", false}, {"a.*", "a.b", true}, {"a.*", "a.b.c", false},
		{"a.>", "a.b.c", true}, {"a.>", "a", false}, {"*.b.>", "x.b.y", true}, {"a.b.c", "a.b", false},
	} {
		if got := Matches(c.pattern, c.subject); got != c.want {
			t.Errorf("Matches(%q, %q) = %v, want %v", c.pattern, c.subject, got, c.want)
		}
	}
	op := Grant{Role: Operator}
	if !op.MayPublish(State, messages.SubjectStatus) || (Grant{Role: User, Name: "alice"}).MayPublish(State, messages.SubjectStatus) {
		t.Error("only the operator may ask for the status")
	}
}
