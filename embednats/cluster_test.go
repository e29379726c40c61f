package embednats

import (
	"testing"
	"time"
)

func TestClusterKillRestart(t *testing.T) {
	c, err := StartCluster(ClusterConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Log(c.URL())
	c.Kill(0)
	if err := c.WaitReady(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(20 * time.Second); err != nil {
		t.Fatal(err)
	}
}
