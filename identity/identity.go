// Package identity defines what a cohort certificate says about its holder:
// the task or the group it was issued for, the measurements the issuer's
// policy accepted for a task, the member tasks of a group, and whether the
// attestation behind it was simulated.
//
// The identity travels twice in every certificate the issuer makes: as a URI
// SAN (urn:cohort:task:NAME or urn:cohort:group:ID), which any TLS stack
// shows, and as a non-critical extension (OID), which carries the rest.
// FromCertificate reads the extension and checks that the URI SAN agrees.
//
// Extension versions: 1 carried a task only; 2 adds the kind "group" and the
// member tasks.
package identity

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net/url"
	"slices"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/messages"
)

// OID identifies cohort's identity extension. It sits under the X.667 UUID arc
// 2.25, which needs no registration. The arc value is a random 31-bit integer
// rather than a full 128-bit UUID because Go's certificate parser reads OID
// arcs of at most 31 bits; no properly random UUID arc falls below 2^31 (the
// odds are 2^-97), so it cannot collide with one.
var OID = asn1.ObjectIdentifier{2, 25, 624278307}

// Kinds of identity.
const (
	// KindTask is a task certificate, shared by every replica of a task.
	KindTask = "task"
	// KindGroup is a group certificate, shared by the units of every task of
	// a group. It names the member tasks, not which of them holds it.
	KindGroup = "group"
)

const (
	extensionVersion = 2
	maxMeasurements  = 64
	maxTasks         = 64 // member tasks of a group
	maxExtension     = 8 << 10
	maxClusters      = 64
)

// ErrNoIdentity: the certificate carries no cohort identity.
var ErrNoIdentity = errors.New("identity: certificate carries no cohort identity")

// Identity is what a certificate says about its holder.
type Identity struct {
	Kind         string
	Name         string
	Measurements [][]byte // the measurements the policy accepted for this task
	Simulated    bool     // issued under a policy that accepts simulated attestation
	Clusters     []string // the clusters whose units run this task: the only ones they may join
	Tasks        []string // a group's member tasks; empty for a task
}

// HasTask reports whether the group identity counts task among its members.
func (id Identity) HasTask(task string) bool { return slices.Contains(id.Tasks, task) }

// InCluster reports whether the identity covers cluster.
func (id Identity) InCluster(cluster string) bool { return slices.Contains(id.Clusters, cluster) }

type extension struct {
	Version      int
	Kind         string `asn1:"utf8"`
	Name         string `asn1:"utf8"`
	Measurements [][]byte
	Simulated    bool
	Clusters     []string // PrintableString: cluster ids are [a-z0-9-]
	Tasks        []string // PrintableString: task names are [a-z0-9-]
}

// URI is the identity's URI SAN.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: "urn", Opaque: "cohort:" + id.Kind + ":" + id.Name}
}

// Extension encodes the identity as a certificate extension. It refuses what
// Parse would refuse.
func (id Identity) Extension() (pkix.Extension, error) {
	if err := check(id.Kind, id.Name, id.Measurements, id.Clusters, id.Tasks); err != nil {
		return pkix.Extension{}, err
	}
	ms := id.Measurements
	if ms == nil {
		ms = [][]byte{}
	}
	cs := id.Clusters
	if cs == nil {
		cs = []string{}
	}
	ts := id.Tasks
	if ts == nil {
		ts = []string{}
	}
	v, err := asn1.Marshal(extension{extensionVersion, id.Kind, id.Name, ms, id.Simulated, cs, ts})
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("identity: encode extension: %w", err)
	}
	return pkix.Extension{Id: OID, Value: v}, nil
}

// Parse decodes the value of an identity extension.
func Parse(value []byte) (Identity, error) {
	if len(value) > maxExtension {
		return Identity{}, fmt.Errorf("identity: extension is %d bytes, at most %d", len(value), maxExtension)
	}
	var e extension
	rest, err := asn1.Unmarshal(value, &e)
	if err != nil {
		return Identity{}, fmt.Errorf("identity: decode extension: %w", err)
	}
	if len(rest) != 0 {
		return Identity{}, errors.New("identity: trailing bytes after extension")
	}
	if e.Version != extensionVersion {
		return Identity{}, fmt.Errorf("identity: extension version %d, want %d", e.Version, extensionVersion)
	}
	if err := check(e.Kind, e.Name, e.Measurements, e.Clusters, e.Tasks); err != nil {
		return Identity{}, err
	}
	id := Identity{Kind: e.Kind, Name: e.Name, Simulated: e.Simulated}
	if len(e.Measurements) > 0 {
		id.Measurements = e.Measurements
	}
	if len(e.Clusters) > 0 {
		id.Clusters = e.Clusters
	}
	if len(e.Tasks) > 0 {
		id.Tasks = e.Tasks
	}
	return id, nil
}

func check(kind, name string, measurements [][]byte, clusters, tasks []string) error {
	switch kind {
	case KindTask:
		if len(tasks) != 0 {
			return errors.New("identity: a task identity names member tasks")
		}
	case KindGroup:
		if len(measurements) != 0 || len(clusters) != 0 {
			return errors.New("identity: a group identity names measurements or clusters")
		}
		if len(tasks) == 0 || len(tasks) > maxTasks {
			return fmt.Errorf("identity: a group of %d tasks, want 1 to %d", len(tasks), maxTasks)
		}
		for i, t := range tasks {
			if !messages.ValidTaskName(t) {
				return fmt.Errorf("identity: %q is not a valid task name", t)
			}
			if slices.Contains(tasks[:i], t) {
				return fmt.Errorf("identity: task %q named twice", t)
			}
		}
	default:
		return fmt.Errorf("identity: kind %q, want %q or %q", kind, KindTask, KindGroup)
	}
	if !messages.ValidTaskName(name) {
		return fmt.Errorf("identity: %q is not a valid %s name", name, kind)
	}
	if len(measurements) > maxMeasurements {
		return fmt.Errorf("identity: %d measurements, at most %d", len(measurements), maxMeasurements)
	}
	for _, m := range measurements {
		if !enclave.ValidMeasurement(m) {
			return fmt.Errorf("identity: a measurement is %d bytes, want %d or %d", len(m), enclave.MeasurementSize, enclave.MeasurementSize384)
		}
	}
	if len(clusters) > maxClusters {
		return fmt.Errorf("identity: %d clusters, at most %d", len(clusters), maxClusters)
	}
	for _, c := range clusters {
		if !messages.ValidTaskName(c) {
			return fmt.Errorf("identity: %q is not a valid cluster id", c)
		}
	}
	return nil
}

// FromCertificate reads the identity a cohort certificate carries and checks
// that its URI SAN agrees.
func FromCertificate(c *x509.Certificate) (Identity, error) {
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(OID) {
			continue
		}
		id, err := Parse(ext.Value)
		if err != nil {
			return Identity{}, err
		}
		want := id.URI().String()
		for _, u := range c.URIs {
			if u.String() == want {
				return id, nil
			}
		}
		return Identity{}, fmt.Errorf("identity: extension names %s:%s but no URI SAN %s", id.Kind, id.Name, want)
	}
	return Identity{}, ErrNoIdentity
}
