package integration

import (
	"context"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/client"
)

// A user's program, as the README shows it: the root from root.pem, a
// connection from the credentials file, a session and a call, with the
// real server and cohort's permissions. A connection without the inbox
// prefix the credential needs fails with the reason, not a bare deadline;
// a credential of another role is refused at once.
func TestUserClientFromFiles(t *testing.T) {
	s := startSecureStack(t, nil)
	dir := t.TempDir()
	rootFile := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.iss.Root().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	credsFile := func(g access.Grant) string {
		p := filepath.Join(dir, g.FileName())
		if err := s.creds[g].WriteFile(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	alice := access.Grant{Role: access.User, Name: "alice"}
	roots, err := client.LoadRoots(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := client.Connect(s.srv.ClientURL(), credsFile(alice))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx := context.Background()
	sess, err := client.Dial(ctx, client.Config{Conn: nc, Cluster: "c1", Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	a, err := sess.Call(ctx, []byte("hello"))
	if err != nil || !strings.Contains(string(a.Data), "heard: hello") {
		t.Fatalf("call: %v, %v", a, err)
	}

	// The same credential on a plain connection: its replies would come
	// under _INBOX., which the server does not let alice subscribe to.
	plain := s.dial(append(s.creds[alice].Options(access.State), nats.CustomInboxPrefix("_INBOX"))...)
	_, err = client.Dial(ctx, client.Config{Conn: plain, User: "alice", Cluster: "c1", Roots: roots, Timeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "may not subscribe") || !strings.Contains(err.Error(), "client.Connect") || !strings.Contains(err.Error(), "_INBOX.user.alice") {
		t.Fatalf("Dial on a connection without the user's inbox prefix: %v", err)
	}

	// A unit's credential is no user's: refused before connecting.
	if _, err := client.Connect(s.srv.ClientURL(), credsFile(access.Grant{Role: access.Unit, Cluster: "c1", Name: "u1"})); !errors.Is(err, client.ErrNotUser) {
		t.Fatalf("Connect with a unit's credential: %v", err)
	}
	// A file that is no root.
	if _, err := client.LoadRoots(credsFile(alice)); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("LoadRoots of a credentials file: %v", err)
	}
}
