package dev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/access"
)

// pidFile holds, while a dev runs on the data folder, its process id.
const pidFile = "dev.pid"

// lock claims the data folder for this process: one dev at a time on a
// folder. A pid file left by a dev that died is taken over.
func lock(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, pidFile)
	for range 2 {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			fmt.Fprintf(f, "%d\n", os.Getpid())
			f.Close()
			return func() { _ = os.Remove(path) }, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("dev: the data folder %s: %w", dir, err)
		}
		if pid, alive := holder(dir); alive {
			return nil, fmt.Errorf("dev: another cohort dev (process %d) runs on the data folder %s: stop it, or give another --data", pid, dir)
		}
		_ = os.Remove(path) // its dev died
	}
	return nil, fmt.Errorf("dev: the data folder %s: cannot claim %s", dir, path)
}

// holder is the process the pid file names, and whether it runs.
func holder(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	err = syscall.Kill(pid, 0)
	return pid, err == nil || errors.Is(err, syscall.EPERM)
}

// running reports whether a dev runs on the data folder.
func running(dir string) bool {
	_, alive := holder(dir)
	return alive
}

// unopenable says which folder to remove when dev cannot open its data.
func unopenable(dir string, err error) error {
	if strings.Contains(err.Error(), "to start afresh") {
		return err
	}
	return fmt.Errorf("%w\ncohort dev: this build cannot open the data folder %s: remove it to start afresh (rm -rf %s; the root changes, and users run 'cohort trust' again)", err, dir, dir)
}

// registerer is where the stack's parts register their metrics: nil, an
// interface holding nothing, without a metrics address.
func (s *Stack) registerer() prometheus.Registerer {
	if s.Metrics == nil {
		return nil
	}
	return s.Metrics
}

// healthy is the stack's /healthz: every part ready.
func (s *Stack) healthy() error {
	for _, p := range []struct {
		what  string
		ready <-chan struct{}
	}{{"issuer", s.Issuer.Ready()}, {"manager", s.Manager.Ready()}} {
		select {
		case <-p.ready:
		default:
			return fmt.Errorf("the %s is not ready", p.what)
		}
	}
	for i, u := range s.Units {
		select {
		case <-u.Ready():
		default:
			return fmt.Errorf("unit %s is not ready", UnitID(i))
		}
	}
	return nil
}

// printTasks prints, for each hosted task, how to start its units.
func printTasks(w io.Writer, s *Stack, tasks []Task) {
	m := fmt.Sprintf("%x", s.IssuerMeasurement)
	for _, t := range tasks {
		fmt.Fprintf(w, "  task      %s: cluster %s, measurement %s\n            of %s\n            start its units (up to %d), each as its own process:\n", t.Name, t.Name, t.Measurement, t.Exe, TaskUnits)
		for i := range TaskUnits {
			creds := filepath.Join(s.CredsDir, access.Grant{Role: access.Unit, Cluster: t.Name, Name: TaskUnitID(t.Name, i)}.FileName())
			fmt.Fprintf(w, "              %s --nats %s --creds %s --issuer-measurement %s\n", t.Exe, s.NATS.ClientURL(), creds, m)
		}
	}
}
