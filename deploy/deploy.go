// Package deploy writes what a scale-out deployment of cohort needs besides
// its binaries: a NATS cluster's server configurations (JetStream, routes,
// TLS, the accounts, users and permissions of package access), a private CA
// and the servers' TLS certificates, one credentials file per identity (the
// issuer, the manager, the operator, each unit, each user), the issuer's
// policy, and a manifest of who is in the deployment, from which AddUser
// (`cohort user add`) admits another user. `cohort deploy` runs Generate;
// docker-compose.yml mounts what it writes.
//
// Guarantees: client connections and routes speak TLS (routes verify both
// ends against the deployment's CA); the servers admit only the credentials
// written here, each in its account and to its subjects; JetStream's API is
// strict; secrets (the credentials' seeds and the servers' TLS keys) are
// written readable by their owner only, and the CA's private key is never
// written: a deployment that needs another server certificate is generated
// again. Credentials already in the folder are kept.
package deploy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/messages"
)

// Config says what to generate. Zero fields take the defaults noted.
type Config struct {
	Dir     string   // required: where the files go
	Servers []string // NATS servers' host names; default nats-1, nats-2, nats-3
	// Deployment is who the servers admit: the clusters, each with its
	// units, and the users. At least one cluster is required.
	Deployment access.Deployment
	Policy     []byte // the issuer's policy, written as policy.yaml; optional
	// Root is where Dir is mounted in the servers' containers; the server
	// configurations name their files under it. Default /etc/cohort.
	Root string
	// ExtraNames are further names and addresses the servers' certificates
	// hold, for clients outside the containers' network; default localhost
	// and 127.0.0.1.
	ExtraNames []string
	Validity   time.Duration    // of the CA and the certificates; default 1 year
	Now        func() time.Time // default time.Now
	Rand       io.Reader        // default crypto/rand
	// Sync is JetStream's fsync interval (sync_interval). The default,
	// "always", fsyncs every write before it is acknowledged: what was
	// acknowledged survives any crash, a power loss of every server at
	// once included. An interval ("2m" is the server's own default) leaves
	// it to replication: an acknowledged write is on a majority of the
	// servers, and survives any process crash and the operating-system crash
	// or power loss of fewer than a majority at once, not of all.
	Sync string
}

func (c *Config) fill() error {
	if c.Dir == "" {
		return errors.New("deploy: Config.Dir is required")
	}
	if len(c.Servers) == 0 {
		c.Servers = []string{"nats-1", "nats-2", "nats-3"}
	}
	for _, s := range c.Servers {
		if !messages.ValidTaskName(s) {
			return fmt.Errorf("deploy: server name %q: want lower-case letters, digits and dashes", s)
		}
	}
	if len(c.Deployment.Clusters) == 0 {
		return errors.New("deploy: Config.Deployment needs a cluster: units get credentials per cluster")
	}
	if err := c.Deployment.Validate(); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	if c.Root == "" {
		c.Root = "/etc/cohort"
	}
	if c.ExtraNames == nil {
		c.ExtraNames = []string{"localhost", "127.0.0.1"}
	}
	if c.Validity == 0 {
		c.Validity = 365 * 24 * time.Hour
	}
	if c.Sync == "" {
		c.Sync = "always"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	return nil
}

// Files, relative to Config.Dir.
const (
	CAFile       = "tls/ca.pem"
	PolicyFile   = "policy.yaml"
	ManifestFile = "deployment.json"
)

// CredsFile is the credentials file of a grant, relative to Config.Dir.
func CredsFile(g access.Grant) string { return "creds/" + g.FileName() }

// ServerConfigFile is a server's configuration, relative to Config.Dir.
func ServerConfigFile(name string) string { return "nats/" + name + ".conf" }

// Manifest is what a deployment's folder records of how it was generated,
// so that it can be changed without being generated again.
type Manifest struct {
	Servers    []string          `json:"servers"`
	Deployment access.Deployment `json:"deployment"`
	Root       string            `json:"root"`
	Sync       string            `json:"sync,omitempty"`
}

// Generate writes the deployment into cfg.Dir.
func Generate(cfg Config) error {
	if err := cfg.fill(); err != nil {
		return err
	}
	for _, d := range []string{"tls", "creds", "nats"} {
		dir := filepath.Join(cfg.Dir, d)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("deploy: %w", err)
		}
		if err := os.Chmod(dir, 0o700); err != nil { // one made before keeps its mode otherwise
			return fmt.Errorf("deploy: %w", err)
		}
	}
	ca, caKey, err := newCA(&cfg)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(cfg.Dir, CAFile), 0o644, "CERTIFICATE", ca.Raw); err != nil {
		return err
	}
	for _, s := range cfg.Servers {
		if err := serverCert(&cfg, ca, caKey, s); err != nil {
			return err
		}
	}
	m := &Manifest{Servers: cfg.Servers, Deployment: cfg.Deployment, Root: cfg.Root, Sync: cfg.Sync}
	if err := write(cfg.Dir, m, cfg.Rand); err != nil {
		return err
	}
	if cfg.Policy != nil {
		if err := writeFile(filepath.Join(cfg.Dir, PolicyFile), cfg.Policy, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// AddUser admits another user to the deployment in dir: it writes the
// user's credentials (creds/user-NAME.creds) and the servers'
// configurations again, and returns the credentials file's path. The
// servers take the new configuration when they reload it (nats-server on
// SIGHUP).
func AddUser(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return "", fmt.Errorf("deploy: %s is no deployment folder ('cohort deploy' writes one): %w", dir, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("deploy: %s: %w", ManifestFile, err)
	}
	if !slices.Contains(m.Deployment.Users, name) {
		m.Deployment.Users = append(m.Deployment.Users, name)
	}
	if err := m.Deployment.Validate(); err != nil {
		return "", fmt.Errorf("deploy: %w", err)
	}
	if err := write(dir, &m, nil); err != nil {
		return "", err
	}
	return filepath.Join(dir, CredsFile(access.Grant{Role: access.User, Name: name})), nil
}

// write writes the credentials of m's deployment that are missing, the
// servers' configurations and the manifest.
func write(dir string, m *Manifest, rnd io.Reader) error {
	creds := map[access.Grant]*access.Credential{}
	for _, g := range m.Deployment.Grants() {
		path := filepath.Join(dir, CredsFile(g))
		c, err := access.LoadCredential(path)
		if errors.Is(err, os.ErrNotExist) {
			if c, err = access.NewCredential(g, rnd); err == nil {
				err = c.WriteFile(path)
			}
		}
		if err != nil {
			return err
		}
		if c.Grant != g {
			return fmt.Errorf("deploy: %s holds a credential for %s, not %s", path, c.Grant, g)
		}
		creds[g] = c
	}
	accounts, err := access.Accounts(m.Deployment, creds)
	if err != nil {
		return err
	}
	for _, s := range m.Servers {
		conf, err := serverConfig(m, s, accounts)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(dir, ServerConfigFile(s)), conf, 0o644); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	return writeFile(filepath.Join(dir, ManifestFile), append(b, '\n'), 0o644)
}

// Ports the servers listen on inside their containers.
const (
	ClientPort  = 4222
	ClusterPort = 6222
	MonitorPort = 8222
)

// serverConfig renders one server's configuration. nats-server reads JSON
// as configuration, so the structure is built as data and marshalled: no
// quoting by hand.
func serverConfig(cfg *Manifest, name string, accounts map[string]any) ([]byte, error) {
	in := func(rel string) string { return cfg.Root + "/" + rel }
	tlsBlock := map[string]any{
		"cert_file": in("tls/" + name + ".pem"),
		"key_file":  in("tls/" + name + "-key.pem"),
		"timeout":   2,
	}
	// The JetStream API's strictness is set, not left to a default: a
	// request with a field the server does not know is refused.
	js := map[string]any{"store_dir": "/data", "strict": true}
	if cfg.Sync != "" {
		js["sync_interval"] = cfg.Sync
	}
	conf := map[string]any{
		"server_name": name,
		"listen":      fmt.Sprintf("0.0.0.0:%d", ClientPort),
		"http":        fmt.Sprintf("0.0.0.0:%d", MonitorPort),
		"jetstream":   js,
		"tls":         tlsBlock,
		"accounts":    accounts,
	}
	if len(cfg.Servers) > 1 {
		var routes []string
		for _, o := range cfg.Servers {
			if o != name {
				routes = append(routes, fmt.Sprintf("nats-route://%s:%d", o, ClusterPort))
			}
		}
		routeTLS := map[string]any{"ca_file": in(CAFile), "verify": true}
		for k, v := range tlsBlock {
			routeTLS[k] = v
		}
		conf["cluster"] = map[string]any{
			"name":   "cohort",
			"listen": fmt.Sprintf("0.0.0.0:%d", ClusterPort),
			"routes": routes,
			"tls":    routeTLS,
			// Clients are given every server's address; the containers'
			// internal names are of no use to clients outside.
			"no_advertise": true,
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# NATS server %s of a cohort deployment, written by 'cohort deploy'. JSON is NATS configuration.\n", name)
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // NATS configuration knows no \u escapes; subjects hold '>'
	if err := enc.Encode(conf); err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	return b.Bytes(), nil
}

func newCA(cfg *Config) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), cfg.Rand)
	if err != nil {
		return nil, nil, fmt.Errorf("deploy: %w", err)
	}
	now := cfg.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "cohort deployment NATS CA", Organization: []string{"cohort"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(cfg.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if tmpl.SerialNumber, err = serial(cfg.Rand); err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificate(cfg.Rand, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("deploy: CA: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	return ca, key, err
}

func serverCert(cfg *Config, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), cfg.Rand)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	now := cfg.Now()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"cohort"}},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(cfg.Validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, // client: routes
		DNSNames:    []string{name},
	}
	for _, n := range cfg.ExtraNames {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if !slices.Contains(tmpl.DNSNames, n) {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if tmpl.SerialNumber, err = serial(cfg.Rand); err != nil {
		return err
	}
	der, err := x509.CreateCertificate(cfg.Rand, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("deploy: certificate of %s: %w", name, err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	if err := writePEM(filepath.Join(cfg.Dir, "tls", name+".pem"), 0o644, "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(filepath.Join(cfg.Dir, "tls", name+"-key.pem"), 0o600, "PRIVATE KEY", pk)
}

func serial(rnd io.Reader) (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(rnd, b); err != nil {
		return nil, fmt.Errorf("deploy: serial: %w", err)
	}
	b[0] &= 0x7f
	return new(big.Int).SetBytes(b), nil
}

func writePEM(path string, mode os.FileMode, typ string, der []byte) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// writeFile writes data with mode, which a file there before takes too.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	return nil
}
