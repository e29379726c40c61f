package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
)

var twoClusters = access.Deployment{
	Clusters: []access.Cluster{{ID: "dev", Units: []string{"unit-1", "unit-2"}}, {ID: "prod", Units: []string{"unit-1"}}},
	Users:    []string{"alice"},
}

// The three servers' configurations parse as nats-server parses them, with
// routes to the two others over verified TLS, strict JetStream, and every
// identity's keys in its account.
func TestServerConfigsParse(t *testing.T) {
	dir := t.TempDir()
	if err := Generate(Config{Dir: dir, Root: dir, Deployment: twoClusters}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nats-1", "nats-2", "nats-3"} {
		o, err := server.ProcessConfigFile(filepath.Join(dir, ServerConfigFile(name)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if o.ServerName != name || !o.JetStream || o.NoJetStreamStrict || o.TLSConfig == nil || o.Cluster.TLSConfig == nil || len(o.Routes) != 2 {
			t.Errorf("%s: name %q, jetstream %v (not strict %v), tls %v, route tls %v, routes %v", name, o.ServerName, o.JetStream, o.NoJetStreamStrict, o.TLSConfig != nil, o.Cluster.TLSConfig != nil, o.Routes)
		}
		// issuer, manager and three units with two keys each; operator, alice.
		if len(o.Nkeys) != 12 || len(o.Accounts) != 6 {
			t.Errorf("%s: %d users in %d accounts, want 12 in 6", name, len(o.Nkeys), len(o.Accounts))
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
	if err := Generate(Config{Dir: dir, Root: dir, Servers: []string{"nats-1"}, Deployment: twoClusters, Sync: "always"}); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(filepath.Join(dir, ServerConfigFile("nats-1")))
	if err != nil {
		t.Fatal(err)
	}
	if !o.SyncAlways {
		t.Error("sync always not set")
	}
	o.Host, o.Port, o.HTTPPort, o.StoreDir = "127.0.0.1", server.RANDOM_PORT, 0, t.TempDir()
	_, url := serve(t, o)

	alice := access.Grant{Role: access.User, Name: "alice"}
	userOpts := connectOptions(t, filepath.Join(dir, CredsFile(alice)), filepath.Join(dir, CAFile))
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

	noCA := connectOptions(t, filepath.Join(dir, CredsFile(alice)), "")
	if nc, err := nats.Connect(url, noCA...); err == nil {
		nc.Close()
		t.Error("connected without the deployment's CA")
	}
	withCA := connectOptions(t, "", filepath.Join(dir, CAFile))
	if nc, err := nats.Connect(url, withCA...); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Errorf("connect without credentials: %v, want an authorization violation", err)
	}
}

// serve starts a server with options from a generated configuration and
// returns it and its TLS client URL.
func serve(t *testing.T, o *server.Options) (*server.Server, string) {
	t.Helper()
	o.NoSigs, o.NoLog = true, true
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	return ns, strings.Replace(ns.ClientURL(), "nats://", "tls://", 1)
}

// connectOptions connects as the State key of the credentials in credsFile,
// if given, over TLS verified against caFile, if given.
func connectOptions(t *testing.T, credsFile, caFile string) []nats.Option {
	t.Helper()
	var opts []nats.Option
	if credsFile != "" {
		c, err := access.LoadCredential(credsFile)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, c.Options(access.State)...)
	}
	if caFile != "" {
		opts = append(opts, nats.RootCAs(caFile))
	}
	return opts
}

// A user added to a generated deployment is admitted once the server
// reloads its configuration (twice: see embednats.ReloadAccounts), keeps
// the credentials there were, and reaches the clusters as itself.
func TestAddUser(t *testing.T) {
	dir := t.TempDir()
	if err := Generate(Config{Dir: dir, Root: dir, Servers: []string{"nats-1"}, Deployment: twoClusters}); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, CredsFile(access.Grant{Role: access.User, Name: "alice"})))
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, ServerConfigFile("nats-1"))
	port, store := freePort(t), t.TempDir()
	local(t, conf, port, store)
	o, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	ns, url := serve(t, o)
	path, err := AddUser(dir, "dave")
	if err != nil {
		t.Fatal(err)
	}
	dave := connectOptions(t, path, filepath.Join(dir, CAFile))
	if nc, err := nats.Connect(url, dave...); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("dave before the reload: %v, want an authorization violation", err)
	}
	local(t, conf, port, store)
	if err := ns.Reload(); err != nil { // the server's own reload of its file, as on SIGHUP
		t.Fatal(err)
	}
	if err := ns.Reload(); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, dave...)
	if err != nil {
		t.Fatalf("dave after the reload: %v", err)
	}
	defer nc.Close()
	// A responder in the cluster's account, as a unit's serving key: dave
	// reaches it under his own name, through his account's import.
	srvOpts := connectOptionsKey(t, filepath.Join(dir, CredsFile(access.Grant{Role: access.Unit, Cluster: "dev", Name: "unit-1"})), filepath.Join(dir, CAFile), access.Serve)
	unc, err := nats.Connect(url, srvOpts...)
	if err != nil {
		t.Fatal(err)
	}
	defer unc.Close()
	if _, err := unc.Subscribe("cohort.v1.cluster.dev.handshake.*", func(m *nats.Msg) { _ = m.Respond([]byte(m.Subject)) }); err != nil {
		t.Fatal(err)
	}
	if err := unc.Flush(); err != nil {
		t.Fatal(err)
	}
	r, err := nc.Request("cohort.v1.cluster.dev.handshake.dave", nil, 5*time.Second)
	if err != nil || string(r.Data) != "cohort.v1.cluster.dev.handshake.dave" {
		t.Fatalf("dave's handshake: %v %v", r, err)
	}
	after, err := os.ReadFile(filepath.Join(dir, CredsFile(access.Grant{Role: access.User, Name: "alice"})))
	if err != nil || !bytes.Equal(before, after) {
		t.Errorf("alice's credentials changed: %v", err)
	}
	if _, err := AddUser(t.TempDir(), "erin"); err == nil {
		t.Error("a user added to a folder that is no deployment")
	}
	if _, err := AddUser(dir, "Erin"); err == nil {
		t.Error("an invalid user name added")
	}
}

// local points a generated server configuration at a loopback port and a
// store of the test's, without the monitoring port.
func local(t *testing.T, conf string, port int, store string) {
	t.Helper()
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	header, body, _ := bytes.Cut(b, []byte("\n"))
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	m["listen"] = fmt.Sprintf("127.0.0.1:%d", port)
	delete(m, "http")
	m["jetstream"].(map[string]any)["store_dir"] = store
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, append(append(header, '\n'), out.Bytes()...), 0o644); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func connectOptionsKey(t *testing.T, credsFile, caFile string, k access.Key) []nats.Option {
	t.Helper()
	c, err := access.LoadCredential(credsFile)
	if err != nil {
		t.Fatal(err)
	}
	return append(c.Options(k), nats.RootCAs(caFile))
}

func TestGenerateRefuses(t *testing.T) {
	one := access.Deployment{Clusters: []access.Cluster{{ID: "dev"}}}
	for name, c := range map[string]Config{
		"no dir":      {Deployment: one},
		"no clusters": {Dir: t.TempDir()},
		"bad server":  {Dir: t.TempDir(), Deployment: one, Servers: []string{"a b"}},
		"bad cluster": {Dir: t.TempDir(), Deployment: access.Deployment{Clusters: []access.Cluster{{ID: "a.>"}}}},
	} {
		if err := Generate(c); err == nil {
			t.Errorf("%s: generated", name)
		}
	}
}

// A deployment fsyncs every write unless told an interval.
func TestSyncDefaultsToAlways(t *testing.T) {
	for sync, want := range map[string]bool{"": true, "always": true, "2m": false} {
		dir := t.TempDir()
		if err := Generate(Config{Dir: dir, Root: dir, Servers: []string{"nats-1"}, Deployment: twoClusters, Sync: sync}); err != nil {
			t.Fatal(err)
		}
		o, err := server.ProcessConfigFile(filepath.Join(dir, ServerConfigFile("nats-1")))
		if err != nil {
			t.Fatal(err)
		}
		if o.SyncAlways != want {
			t.Errorf("Sync %q: sync always %v, want %v", sync, o.SyncAlways, want)
		}
	}
}
