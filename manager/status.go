package manager

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// StatusVersion is the version of the status document.
const StatusVersion = 1

// Status is the manager's view for operators: every cluster and its units.
// It travels as JSON on messages.SubjectStatus, so `nats req
// cohort.v1.manager.status ”` shows it as it is.
type Status struct {
	V         int             `json:"v"`
	Manager   string          `json:"manager"`
	Time      time.Time       `json:"time"`
	Interval  string          `json:"heartbeat_interval"`
	Counts    Counts          `json:"counts"`
	Clusters  []ClusterStatus `json:"clusters"`
	Truncated bool            `json:"truncated,omitempty"` // more units than one reply lists
}

// Counts sums the members up.
type Counts struct {
	Clusters int `json:"clusters"`
	Units    int `json:"units"`
	Active   int `json:"active"`
	Late     int `json:"late"`
	Due      int `json:"due"`
}

// ClusterStatus is one cluster and its units.
type ClusterStatus struct {
	ID    string       `json:"id"`
	Units []UnitStatus `json:"units"`
}

// UnitStatus is one member.
type UnitStatus struct {
	Unit          string    `json:"unit"`
	Task          string    `json:"task"`
	Measurement   string    `json:"measurement"`
	State         State     `json:"state"`
	Addr          string    `json:"https"`
	Joined        time.Time `json:"joined"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
}

// Status returns the manager's current view.
func (m *Manager) Status() *Status {
	now := m.cfg.Now()
	s := &Status{V: StatusVersion, Manager: m.cfg.ID, Time: now.UTC(), Interval: m.cfg.Interval.String(), Clusters: []ClusterStatus{}}
	for i, v := range m.table.Snapshot(now) {
		if i == statusLimit {
			s.Truncated = true
			break
		}
		if n := len(s.Clusters); n == 0 || s.Clusters[n-1].ID != v.Member.Cluster {
			s.Clusters = append(s.Clusters, ClusterStatus{ID: v.Member.Cluster})
		}
		c := &s.Clusters[len(s.Clusters)-1]
		c.Units = append(c.Units, UnitStatus{
			Unit: v.Member.Unit, Task: v.Member.Task, Measurement: hex.EncodeToString(v.Member.Measurement),
			State: v.State, Addr: v.Member.Addr, Joined: time.Unix(0, v.Member.Joined).UTC(), LastHeartbeat: v.LastSeen.UTC(),
		})
		s.Counts.Units++
		switch v.State {
		case Active:
			s.Counts.Active++
		case Late:
			s.Counts.Late++
		case Due:
			s.Counts.Due++
		}
	}
	s.Counts.Clusters = len(s.Clusters)
	return s
}

// DecodeStatus strictly decodes a status document.
func DecodeStatus(data []byte) (*Status, error) {
	if len(data) > maxStatus {
		return nil, fmt.Errorf("manager: status is %d bytes, at most %d", len(data), maxStatus)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s Status
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("manager: decode status: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("manager: decode status: trailing data")
	}
	if s.V != StatusVersion {
		return nil, fmt.Errorf("manager: status version %d, want %d", s.V, StatusVersion)
	}
	return &s, nil
}
