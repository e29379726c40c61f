// Package embednats runs a NATS server with JetStream inside the process, for
// `cohort dev`, `cohort demo`, the benchmarks and the tests. It is the real
// nats-server, listening on a loopback TCP port (random unless given), with
// its JetStream files under one folder.
package embednats

import (
	"errors"
	"fmt"
	"os"
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
}

// Server is a running embedded NATS server.
type Server struct {
	ns      *server.Server
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
	port := cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "cohort-embedded",
		Host:       cfg.Host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		SyncAlways: cfg.SyncAlways,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("embednats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(readyTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("embednats: server on %s:%d not ready within %v", cfg.Host, cfg.Port, readyTimeout)
	}
	return &Server{ns: ns}, nil
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
