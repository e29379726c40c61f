package deploy

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
)

// The three servers' configurations parse as nats-server parses them, with
// routes to the two others over verified TLS, and every role's user.
func TestServerConfigsParse(t *testing.T) {
	dir := t.TempDir()
	if err := Generate(Config{Dir: dir, Root: dir, Clusters: []string{"dev", "prod"}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nats-1", "nats-2", "nats-3"} {
		o, err := server.ProcessConfigFile(filepath.Join(dir, ServerConfigFile(name)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if o.ServerName != name || !o.JetStream || o.TLSConfig == nil || o.Cluster.TLSConfig == nil || len(o.Routes) != 2 {
			t.Errorf("%s: name %q, jetstream %v, tls %v, route tls %v, routes %v", name, o.ServerName, o.JetStream, o.TLSConfig != nil, o.Cluster.TLSConfig != nil, o.Routes)
		}
		if len(o.Nkeys) != 6 { // issuer, manager, user, operator, unit/dev, unit/prod
			t.Errorf("%s: %d users, want 6", name, len(o.Nkeys))
		}
		for _, u := range o.Nkeys {
			if u.Permissions == nil || u.Permissions.Response != nil || len(u.Permissions.Publish.Allow) == 0 {
				t.Errorf("%s: user %s without permissions", name, u.Nkey)
			}
		}
	}
}

// A server started from a generated configuration speaks TLS that verifies
// against the deployment's CA, admits the generated credentials and holds
// them to their roles.
func TestServerFromGeneratedConfig(t *testing.T) {
	dir := t.TempDir()
	if err := Generate(Config{Dir: dir, Root: dir, Servers: []string{"nats-1"}, Clusters: []string{"dev"}, Sync: "always"}); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(filepath.Join(dir, ServerConfigFile("nats-1")))
	if err != nil {
		t.Fatal(err)
	}
	if !o.SyncAlways {
		t.Error("sync always not set")
	}
	o.Host, o.Port, o.HTTPPort, o.StoreDir, o.NoSigs = "127.0.0.1", server.RANDOM_PORT, 0, t.TempDir(), true
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	url := strings.Replace(ns.ClientURL(), "nats://", "tls://", 1)

	userOpts, err := access.ConnectOptions(filepath.Join(dir, CredsFile(access.Grant{Role: access.User})), filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, append(userOpts, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))...)
	if err != nil {
		t.Fatalf("user over TLS: %v", err)
	}
	defer nc.Close()
	if !nc.TLSRequired() {
		t.Error("the connection is not TLS")
	}
	if err := nc.Publish("cohort.v1.issuer.certify", nil); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nc.LastError(); err == nil || !strings.Contains(err.Error(), "Permissions Violation") {
		t.Errorf("a user published to certify: %v", err)
	}

	noCA, err := access.ConnectOptions(filepath.Join(dir, CredsFile(access.Grant{Role: access.User})), "")
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(url, noCA...); err == nil {
		nc.Close()
		t.Error("connected without the deployment's CA")
	}
	withCA, err := access.ConnectOptions("", filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(url, withCA...); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Errorf("connect without credentials: %v, want an authorization violation", err)
	}
}

func TestGenerateRefuses(t *testing.T) {
	for name, c := range map[string]Config{
		"no dir":      {Clusters: []string{"dev"}},
		"no clusters": {Dir: t.TempDir()},
		"bad server":  {Dir: t.TempDir(), Clusters: []string{"dev"}, Servers: []string{"a b"}},
		"bad cluster": {Dir: t.TempDir(), Clusters: []string{"a.>"}},
	} {
		if err := Generate(c); err == nil {
			t.Errorf("%s: generated", name)
		}
	}
}
