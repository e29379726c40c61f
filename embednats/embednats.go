// Package embednats runs NATS servers with JetStream inside the process, for
// `cohort dev`, `cohort demo`, the benchmarks and the tests. It is the real
// nats-server, listening on a loopback TCP port (random unless given), with
// its JetStream files under one folder: one server (Start), or a cluster of
// servers joined by routes whose JetStream replicates streams across them
// (StartCluster), each of which can be killed and started again.
//
// A server given Accounts admits only the clients its accounts name (each
// proves its nkey) and holds each to its account and its permissions; one
// given TLS speaks TLS to clients. JetStream's API is always strict: a
// request with a field it does not know is refused, not half-understood.
package embednats

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

const readyTimeout = 10 * time.Second

// Config configures an embedded server.
type Config struct {
	Host     string // default 127.0.0.1
	Port     int    // 0 picks a free port
	StoreDir string // required: JetStream storage
	// SyncAlways makes JetStream fsync every write before acknowledging it.
	SyncAlways bool
	// MaxStore bounds JetStream's file storage, which streams reserve
	// their MaxBytes from; default the server's (three quarters of the
	// disk's free space).
	MaxStore int64
	Name     string // server name; default "cohort-embedded"
	// Accounts, when set, is the "accounts" block of the server's
	// configuration, as package access renders it: its users are the only
	// clients admitted, each in its account and held to its permissions.
	Accounts map[string]any
	// TLS, when set, is the server's TLS configuration for client
	// connections; clients must then use TLS.
	TLS *tls.Config
	// Cluster, when set, makes the server one of a cluster.
	Cluster *Route
}

// Route configures a server's cluster listener and its routes to the others.
type Route struct {
	Name   string   // the cluster's name
	Port   int      // the cluster listener's port on Host; 0 picks a free one
	Routes []string // other servers' cluster URLs, nats-route://host:port
}

// options maps the configuration to the server's options.
func (cfg *Config) options() (*server.Options, error) {
	port := cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	name := cfg.Name
	if name == "" {
		name = "cohort-embedded"
	}
	o := &server.Options{}
	if cfg.Accounts != nil {
		// Accounts, their users, exports and imports are what nats-server's
		// configuration parser builds: the same text a deployment's servers
		// read, parsed the same way.
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false) // NATS configuration knows no \u escapes; subjects hold '>'
		if err := enc.Encode(map[string]any{"accounts": cfg.Accounts}); err != nil {
			return nil, fmt.Errorf("embednats: accounts: %w", err)
		}
		if err := o.ProcessConfigString(b.String()); err != nil {
			return nil, fmt.Errorf("embednats: accounts: %w", err)
		}
	}
	o.ServerName, o.Host, o.Port = name, cfg.Host, port
	o.JetStream, o.StoreDir, o.SyncAlways = true, cfg.StoreDir, cfg.SyncAlways
	o.NoJetStreamStrict = false // set, not left to the default
	if cfg.MaxStore > 0 {
		o.JetStreamMaxStore = cfg.MaxStore
	}
	o.NoSigs, o.NoLog = true, os.Getenv("EMBEDNATS_LOG") == ""
	if cfg.TLS != nil {
		o.TLS, o.TLSConfig, o.TLSTimeout = true, cfg.TLS, 2
	}
	if c := cfg.Cluster; c != nil {
		o.Cluster.Name, o.Cluster.Host, o.Cluster.Port = c.Name, cfg.Host, c.Port
		if c.Port == 0 {
			o.Cluster.Port = server.RANDOM_PORT
		}
		if len(c.Routes) > 0 {
			o.Routes = server.RoutesFromStr(strings.Join(c.Routes, ","))
			if len(o.Routes) != len(c.Routes) {
				return nil, fmt.Errorf("embednats: routes %q do not parse", c.Routes)
			}
		}
	}
	return o, nil
}

// Server is a running embedded NATS server.
type Server struct {
	ns      *server.Server
	cfg     Config
	once    sync.Once
	tempDir string // removed by Close; set by StartTemp
}

// Start starts a server and waits until it accepts connections.
func Start(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("embednats: Config.StoreDir is required")
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port > 0 {
		// The server would only log that it cannot listen, and never be
		// ready: say at once that the port is taken.
		ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
		if err != nil {
			return nil, fmt.Errorf("embednats: %w", err)
		}
		ln.Close()
	}
	opts, err := cfg.options()
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embednats: %w", err)
	}
	if !opts.NoLog {
		ns.ConfigureLogger()
	}
	ns.Start()
	if !ns.ReadyForConnections(readyTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("embednats: server on %s:%d not ready within %v", cfg.Host, cfg.Port, readyTimeout)
	}
	return &Server{ns: ns, cfg: cfg}, nil
}

// ReloadAccounts has the running server take another accounts block, as a
// server reloads its configuration: clients it no longer admits are
// disconnected, new ones are admitted, the others stay connected. Not safe
// to call concurrently with itself.
//
// It reloads twice: nats-server v2.15.2 registers an account that a reload
// adds without subscribing its service imports (configureAccounts skips them
// "if reloading"); the second reload finds the account registered and
// subscribes them. A deployment's servers need two SIGHUPs for the same
// reason.
func (s *Server) ReloadAccounts(accounts map[string]any) error {
	cfg := s.cfg
	cfg.Accounts = accounts
	cfg.Port = s.ns.Addr().(*net.TCPAddr).Port
	for range 2 {
		o, err := cfg.options()
		if err != nil {
			return err
		}
		if err := s.ns.ReloadOptions(o); err != nil {
			return fmt.Errorf("embednats: reload: %w", err)
		}
	}
	s.cfg = cfg
	return nil
}

// ClientURL is the URL other processes connect to.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Connect opens a TCP connection to the server.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		return nil, fmt.Errorf("embednats: connect: %w", err)
	}
	return nc, nil
}

// Close shuts the server down and waits for it. Safe to call twice.
func (s *Server) Close() {
	s.once.Do(func() {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		if s.tempDir != "" {
			os.RemoveAll(s.tempDir)
		}
	})
}

// StartTemp starts a server on a free loopback port with its JetStream store
// in a fresh temporary folder named after prefix, which Close removes.
func StartTemp(prefix string) (*Server, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, fmt.Errorf("embednats: %w", err)
	}
	s, err := Start(Config{StoreDir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.tempDir = dir
	return s, nil
}
