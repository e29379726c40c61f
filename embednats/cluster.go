package embednats

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ClusterConfig configures a cluster of embedded servers.
type ClusterConfig struct {
	Size       int    // servers; default 3
	Dir        string // required: server i keeps its JetStream store in Dir/cohort-<i+1>
	SyncAlways bool
	Accounts   map[string]any // as Config.Accounts, on every server
	TLS        *tls.Config
}

// Cluster is a running cluster of embedded servers. Its methods are safe for
// concurrent use.
type Cluster struct {
	mu      sync.Mutex
	cfgs    []Config
	servers []*Server // nil where killed
	urls    []string  // every server's client URL, killed ones too
	once    sync.Once
}

// StartCluster starts the servers, joins them by routes and waits until
// their JetStream has a leader.
func StartCluster(cc ClusterConfig) (*Cluster, error) {
	if cc.Dir == "" {
		return nil, errors.New("embednats: ClusterConfig.Dir is required")
	}
	if cc.Size == 0 {
		cc.Size = 3
	}
	if cc.Size < 1 || cc.Size > 9 {
		return nil, fmt.Errorf("embednats: cluster of %d servers, want 1 to 9", cc.Size)
	}
	// JetStream in a cluster wants its routes from the start, so the
	// cluster ports are chosen first.
	ports, err := freePorts(cc.Size)
	if err != nil {
		return nil, err
	}
	routes := make([]string, cc.Size)
	for i, p := range ports {
		routes[i] = "nats-route://127.0.0.1:" + strconv.Itoa(p)
	}
	c := &Cluster{servers: make([]*Server, cc.Size)}
	for i := range cc.Size {
		name := "cohort-" + strconv.Itoa(i+1)
		cfg := Config{
			Host: "127.0.0.1", Name: name, StoreDir: filepath.Join(cc.Dir, name),
			SyncAlways: cc.SyncAlways, Accounts: cc.Accounts, TLS: cc.TLS,
			Cluster: &Route{Name: "cohort", Port: ports[i], Routes: slices.Delete(slices.Clone(routes), i, i+1)},
		}
		if err := os.MkdirAll(cfg.StoreDir, 0o700); err != nil {
			c.Close()
			return nil, fmt.Errorf("embednats: %w", err)
		}
		s, err := Start(cfg)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.servers[i] = s
		cfg.Port = s.ns.Addr().(*net.TCPAddr).Port // a restart keeps it
		c.cfgs = append(c.cfgs, cfg)
		c.urls = append(c.urls, s.ClientURL())
	}
	if err := c.WaitReady(readyTimeout); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// URL is every server's client URL, comma-separated, as nats.Connect takes
// it: a client fails over to the next server when its own goes.
func (c *Cluster) URL() string { return strings.Join(c.urls, ",") }

// Size is the number of servers, running or killed.
func (c *Cluster) Size() int { return len(c.cfgs) }

// Kill shuts server i down at once; its clients fail over to the others.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

// Restart starts server i again, on its ports and with its store, and
// waits until it accepts connections.
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.servers[i] != nil {
		return fmt.Errorf("embednats: server %s is running", c.cfgs[i].Name)
	}
	s, err := Start(c.cfgs[i])
	if err != nil {
		return err
	}
	c.servers[i] = s
	return nil
}

// WaitReady waits until every running server is routed to every other
// running one and JetStream has a current meta leader.
func (c *Cluster) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if c.ready() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("embednats: cluster not ready within %v", timeout)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
}

// Healthy reports whether every server runs, routed to the others, and
// JetStream has a current meta leader.
func (c *Cluster) Healthy() error {
	c.mu.Lock()
	for i, s := range c.servers {
		if s == nil {
			c.mu.Unlock()
			return fmt.Errorf("embednats: server %s is down", c.cfgs[i].Name)
		}
	}
	c.mu.Unlock()
	if !c.ready() {
		return errors.New("embednats: JetStream has no current leader of all the servers")
	}
	return nil
}

func (c *Cluster) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	var live []*server.Server
	for _, s := range c.servers {
		if s != nil {
			live = append(live, s.ns)
		}
	}
	leader := false
	for _, ns := range live {
		if !ns.JetStreamIsCurrent() {
			return false
		}
		if ns.JetStreamIsLeader() {
			// Only the leader lists the peers it hears from.
			leader = len(ns.JetStreamClusterPeers()) >= len(live)
		}
	}
	return leader
}

// Close shuts every server down. Safe to call twice.
func (c *Cluster) Close() {
	c.once.Do(func() {
		for i := range c.servers {
			c.Kill(i)
		}
	})
}

// freePorts finds n free loopback ports.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("embednats: %w", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Connect opens a connection that fails over between the servers.
func (c *Cluster) Connect(opts ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(c.URL(), opts...)
	if err != nil {
		return nil, fmt.Errorf("embednats: connect: %w", err)
	}
	return nc, nil
}
