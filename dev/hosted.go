package dev

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/messages"
)

// Task is a task of the developer's own that dev hosts: a program, built
// from the developer's module, whose units run as processes of their own
// (package task). dev's policy accepts the program's simulated measurement
// for the task, declares a cluster of the same name, and dev writes
// credentials for TaskUnits units of it.
type Task struct {
	Name        string `json:"name"`
	Exe         string `json:"exe"`         // the program's path, absolute
	Measurement string `json:"measurement"` // hex, of Exe as it was when last accepted
}

// TasksFile lists, in dev's data folder, the tasks dev hosts, with the
// measurement of each that the policy accepts.
const TasksFile = "tasks.json"

// TaskUnits is how many unit credentials dev writes for each hosted task.
const TaskUnits = 3

// TaskUnitID is the id of unit i (from 0) of a hosted task, in the task's
// cluster.
func TaskUnitID(task string, i int) string { return fmt.Sprintf("%s-%d", task, i+1) }

// ParseTask parses NAME=PATH, as `cohort dev --task` takes it, and measures
// the program at PATH.
func ParseTask(s string) (Task, error) {
	name, path, ok := strings.Cut(s, "=")
	if !ok || name == "" || path == "" {
		return Task{}, fmt.Errorf("dev: --task %q: want NAME=PATH-TO-BINARY", s)
	}
	return MeasureTask(name, path)
}

// MeasureTask measures the program at path as a unit of task name.
func MeasureTask(name, path string) (Task, error) {
	if !messages.ValidTaskName(name) {
		return Task{}, fmt.Errorf("dev: task name %q is not valid: lower-case letters, digits and '-'", name)
	}
	if name == DemoTask || name == DemoCluster {
		return Task{}, fmt.Errorf("dev: task name %q is dev's own (its demo task and cluster are %q and %q): choose another", name, DemoTask, DemoCluster)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return Task{}, fmt.Errorf("dev: task %s: %w", name, err)
	}
	m, err := sim.MeasureFile(abs, sim.UnitIdentity(name))
	if err != nil {
		return Task{}, fmt.Errorf("dev: task %s: %w (build it first: go build -o %s ./YOUR-PACKAGE)", name, err, path)
	}
	return Task{Name: name, Exe: abs, Measurement: hex.EncodeToString(m)}, nil
}

// loadTasks reads the hosted tasks of a data folder; none when it has no
// tasks file.
func loadTasks(dataDir string) ([]Task, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, TasksFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	var tasks []Task
	if err := json.Unmarshal(b, &tasks); err != nil {
		return nil, fmt.Errorf("dev: %s does not parse: %w (remove it, and give the tasks again with --task)", filepath.Join(dataDir, TasksFile), err)
	}
	for i, t := range tasks {
		m, err := hex.DecodeString(t.Measurement)
		if !messages.ValidTaskName(t.Name) || t.Name == DemoTask || t.Name == DemoCluster || err != nil || len(m) != 32 ||
			slices.ContainsFunc(tasks[:i], func(o Task) bool { return o.Name == t.Name }) {
			return nil, fmt.Errorf("dev: %s: entry %d is not a valid task (remove it, and give the tasks again with --task)", filepath.Join(dataDir, TasksFile), i+1)
		}
	}
	return tasks, nil
}

func saveTasks(dataDir string, tasks []Task) error {
	b, err := json.MarshalIndent(tasks, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dataDir, TasksFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	return nil
}

// merge returns tasks with each of updates in place of the task of its
// name, or added, in name order.
func merge(tasks, updates []Task) []Task {
	out := slices.Clone(tasks)
	for _, u := range updates {
		if i := slices.IndexFunc(out, func(t Task) bool { return t.Name == u.Name }); i >= 0 {
			out[i] = u
		} else {
			out = append(out, u)
		}
	}
	slices.SortFunc(out, func(a, b Task) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// deployment is dev's clusters and users: the demo cluster, and one cluster
// for each hosted task, named after it.
func deployment(units int, tasks []Task, users []string) access.Deployment {
	ids := make([]string, units)
	for i := range ids {
		ids[i] = UnitID(i)
	}
	d := access.Deployment{Clusters: []access.Cluster{{ID: DemoCluster, Units: ids}}, Users: users}
	for _, t := range tasks {
		ids := make([]string, TaskUnits)
		for i := range ids {
			ids[i] = TaskUnitID(t.Name, i)
		}
		d.Clusters = append(d.Clusters, access.Cluster{ID: t.Name, Units: ids})
	}
	return d
}

// AcceptConfig configures Accept.
type AcceptConfig struct {
	DataDir string // required: the data folder of the dev to update
	// Tasks to accept anew, as ParseTask makes them; none: measure every
	// hosted task again from the path it was given with.
	Tasks []Task
	// Wait is how long to wait for a running dev to apply the update;
	// default 30s.
	Wait time.Duration
}

// AcceptResult says what Accept did.
type AcceptResult struct {
	Tasks   []Task // the hosted tasks, as the policy now accepts them
	Changed []Task // those whose measurement is new
	Running bool   // a dev runs on the folder and applied the update
	Version uint64 // the policy version in force after the update (when Running)
}

// ErrNoTasks: the data folder hosts no task of the developer's own.
var ErrNoTasks = errors.New("dev: the data folder hosts no task of your own")

// Accept has the dev of a data folder accept rebuilt (or new) tasks: it
// measures them, records them in the folder, and, when a dev runs there,
// waits until that dev has signed and applied the policy update with its
// development administrator key. The root stays. Without a running dev, the
// next `cohort dev --data DIR` applies it as it starts.
func Accept(ctx context.Context, cfg AcceptConfig) (*AcceptResult, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("dev: AcceptConfig.DataDir is required")
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 30 * time.Second
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, AdminKeyFile)); err != nil {
		return nil, fmt.Errorf("dev: %s is no data folder of cohort dev (%w): start 'cohort dev --data %s --task NAME=PATH' first", cfg.DataDir, err, cfg.DataDir)
	}
	old, err := loadTasks(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	updates := cfg.Tasks
	if len(updates) == 0 {
		if len(old) == 0 {
			return nil, fmt.Errorf("%w: give --task NAME=PATH", ErrNoTasks)
		}
		for _, t := range old {
			m, err := MeasureTask(t.Name, t.Exe)
			if err != nil {
				return nil, err
			}
			updates = append(updates, m)
		}
	}
	tasks := merge(old, updates)
	r := &AcceptResult{Tasks: tasks}
	for _, t := range tasks {
		if !slices.Contains(old, t) {
			r.Changed = append(r.Changed, t)
		}
	}
	// An earlier failure's reason is not this update's.
	if err := os.Remove(filepath.Join(cfg.DataDir, acceptErrorFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("dev: %w", err)
	}
	if err := saveTasks(cfg.DataDir, tasks); err != nil {
		return nil, err
	}
	if !running(cfg.DataDir) {
		return r, nil
	}
	r.Running = true
	// The running dev applies the update and then writes the policy in
	// force: wait until it names every measurement.
	deadline := time.Now().Add(cfg.Wait)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		doc, _ := os.ReadFile(filepath.Join(cfg.DataDir, PolicyFile))
		if v, ok := accepts(doc, tasks); ok {
			r.Version = v
			return r, nil
		}
		if msg, _ := os.ReadFile(filepath.Join(cfg.DataDir, acceptErrorFile)); len(msg) > 0 {
			return nil, fmt.Errorf("dev: the running dev did not apply the update: %s", bytes.TrimSpace(msg))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dev: the dev running on %s did not apply the update within %v: see its output", cfg.DataDir, cfg.Wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// accepts reports whether a policy document accepts each task's
// measurement (and that one only), and its version.
func accepts(doc []byte, tasks []Task) (uint64, bool) {
	p, err := issuer.ParsePolicy(doc)
	if err != nil {
		return 0, false
	}
	for _, t := range tasks {
		tp, ok := p.Task(t.Name)
		if !ok || !slices.Equal(tp.Measurements, []string{t.Measurement}) {
			return 0, false
		}
	}
	return p.Version, true
}
