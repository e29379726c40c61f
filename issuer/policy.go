package issuer

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/messages"
)

// Policy bounds, so that a policy file cannot make the issuer hold or do an
// unbounded amount.
const (
	MaxPolicySize       = messages.MaxPolicyDocument
	maxTasks            = 1024
	maxClusters         = 4096
	maxTaskClusters     = 64
	maxGroups           = 1024
	maxGroupTasks       = 64 // as identity allows
	maxTaskGroups       = 64
	maxTaskMeasurements = 64
	maxNames            = 32
	maxNameLen          = 253
	minTaskValidity     = 2 * time.Second
	defaultRootValidity = 10 * 365 * 24 * time.Hour
	defaultTaskValidity = 30 * 24 * time.Hour
	maxValidity         = 20 * 365 * 24 * time.Hour
	measurementSize     = 32
	maxIssuers          = 64
	maxAdministrators   = messages.MaxPolicySignatures
	maxPolicyVersion    = 1 << 53
)

// ErrPolicy: the policy file is invalid. The wrapped text says where.
var ErrPolicy = errors.New("invalid policy")

// Policy is the issuer's manifest: which tasks exist, which code may run them,
// and how long certificates live. Its hash is bound into the issuer's evidence,
// so users and units can check which policy is in force.
//
// A policy is versioned: the first one an issuer starts with is the genesis,
// and every later one is an update that k of the administrators of the
// policy then in force signed, with a higher version (see Verify).
type Policy struct {
	// Version numbers the policy: an update must carry a higher one.
	Version uint64 `yaml:"version"`
	// Issuers are the issuer measurements (hex) whose issuers may hold the
	// state key: an issuer of another listed build obtains it from a running
	// one. Empty: only issuers of the very build that runs.
	Issuers []string `yaml:"issuers"`
	// Administrators may sign updates of this policy; Threshold of them must.
	// Without administrators the policy cannot be updated.
	Administrators Quorum `yaml:"administrators"`
	// Recovery names the recovery keys the state key is also sealed to,
	// split so that Threshold of them restore it into a fresh issuer.
	Recovery Quorum `yaml:"recovery"`
	// RootGeneration numbers the state's root: 1 (the default) is the root
	// the genesis made. An update that raises it by one rotates the root:
	// the issuer makes a new root key and certificate, which the old root
	// vouches for, every replica switches to it together, and task and
	// group certificates are made anew under it (with the same keys).
	RootGeneration uint32 `yaml:"root_generation"`
	// AcceptSimulated lets units with simulated evidence be certified. Never
	// set it in production: anyone can forge simulated evidence.
	AcceptSimulated bool         `yaml:"accept_simulated"`
	Validity        Validity     `yaml:"validity"`
	Tasks           []TaskPolicy `yaml:"tasks"`
	Clusters        []Cluster    `yaml:"clusters"`
	Groups          []Group      `yaml:"groups"`

	hash    [32]byte
	raw     []byte
	issuers [][]byte
	byName  map[string]*TaskPolicy
	byGroup map[string]*Group
}

// Quorum is a set of named public keys and how many of them must act.
type Quorum struct {
	Threshold int        `yaml:"threshold"`
	Keys      []NamedKey `yaml:"keys"`
}

// NamedKey is a public key, in hex, and its holder's name: an Ed25519 key
// for an administrator, an X25519 key for recovery (both printed by `cohort
// policy keygen`).
type NamedKey struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`

	raw []byte
}

// Group is a set of different tasks, one per party of a multi-party
// computation say, that share one certificate and key: the units of any of
// its tasks may ask for the pair and use it for mutual TLS with one another.
// The issuer makes the pair when the group is declared.
type Group struct {
	ID    string   `yaml:"id"`
	Tasks []string `yaml:"tasks"`
}

// Has reports whether task is a member of the group.
func (g *Group) Has(task string) bool { return slices.Contains(g.Tasks, task) }

// Cluster is a set of units of one task that serve as one: they join the
// manager under the cluster's id and share its cluster key. A task's
// certificate names the clusters of that task, and a unit may join only those.
type Cluster struct {
	ID   string `yaml:"id"`
	Task string `yaml:"task"`
}

// Validity sets certificate lifetimes. Zero means the default.
type Validity struct {
	Root  time.Duration `yaml:"root"`  // default 10 years
	Task  time.Duration `yaml:"task"`  // default 30 days
	Group time.Duration `yaml:"group"` // default: as Task
}

// TaskPolicy says which enclaves may hold a task's certificate and what the
// certificate names. A unit is accepted when its measurement is one of
// Measurements, or, when Signer is set, when its signer and product match and
// its security version is at least MinSecurityVersion.
type TaskPolicy struct {
	Name               string   `yaml:"name"`
	Measurements       []string `yaml:"measurements"` // hex
	Signer             string   `yaml:"signer"`       // hex
	ProductID          uint16   `yaml:"product_id"`
	MinSecurityVersion uint16   `yaml:"min_security_version"`
	AllowDebug         bool     `yaml:"allow_debug"`
	DNSNames           []string `yaml:"dns_names"`
	IPAddresses        []string `yaml:"ip_addresses"`
	// Platform is where the task's code runs: sim, sgx, snp or tdx.
	// Empty: SGX, or simulated where the policy accepts simulated
	// attestation (as every policy meant before there were others).
	// Measurements are 32 bytes on sgx and sim, 48 on snp and tdx.
	Platform string `yaml:"platform"`
	// TCBStatuses are the TCB statuses accepted besides UpToDate, each
	// named: SWHardeningNeeded, ConfigurationNeeded,
	// ConfigurationAndSWHardeningNeeded, OutOfDate,
	// OutOfDateConfigurationNeeded (SGX, TDX), Provisional (SEV-SNP).
	// Default none: only an up-to-date TCB.
	TCBStatuses []string `yaml:"tcb_statuses"`
	// SNP and TDX are the settings of those platforms.
	SNP SNPSettings `yaml:"snp"`
	TDX TDXSettings `yaml:"tdx"`

	measurements [][]byte
	signer       []byte
	ips          []net.IP
	clusters     []string
	groups       []string
	hostData     []byte
	minTEETCBSVN []byte
}

// SNPSettings are a task's requirements of an SEV-SNP guest beyond its
// measurement.
type SNPSettings struct {
	// MinTCB is the least TCB version, by component, that the report's
	// reported TCB must hold.
	MinTCB struct {
		BootLoader uint8 `yaml:"boot_loader"`
		TEE        uint8 `yaml:"tee"`
		SNP        uint8 `yaml:"snp"`
		Microcode  uint8 `yaml:"microcode"`
		FMC        uint8 `yaml:"fmc"`
	} `yaml:"min_tcb"`
	// AllowSMT accepts a host with simultaneous multithreading enabled;
	// default refused.
	AllowSMT bool `yaml:"allow_smt"`
	// MaxVMPL is the least privileged VM privilege level a report may come
	// from (0 is the most privileged); default 0.
	MaxVMPL uint32 `yaml:"max_vmpl"`
	// HostData, when set, is the 32 bytes of hex the host must have given
	// the guest at launch.
	HostData string `yaml:"host_data"`
}

// TDXSettings are a task's requirements of a TDX guest beyond its
// measurement.
type TDXSettings struct {
	// MinTEETCBSVN is the least TEE_TCB_SVN, 16 bytes of hex, compared
	// byte by byte (each byte is a component's security version).
	MinTEETCBSVN string `yaml:"min_tee_tcb_svn"`
}

// TCB statuses that a task may accept besides UpToDate.
var knownTCBStatuses = []string{
	"SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
	"OutOfDate", "OutOfDateConfigurationNeeded", snp.TCBProvisional, snp.TCBReportedBelowCurrent,
}

// ParsePolicy parses and checks a YAML policy. Unknown fields are errors.
func ParsePolicy(data []byte) (*Policy, error) {
	if len(data) > MaxPolicySize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrPolicy, len(data), MaxPolicySize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	p := &Policy{}
	if err := dec.Decode(p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	// The hash covers the whole file, so the whole file must be the policy.
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrPolicy)
	}
	if err := p.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	p.hash = sha256.Sum256(data)
	p.raw = bytes.Clone(data)
	return p, nil
}

// Document returns the policy file as given, the bytes its hash covers and
// administrators sign.
func (p *Policy) Document() []byte { return bytes.Clone(p.raw) }

func (q *Quorum) check(name string, size int) error {
	if len(q.Keys) == 0 {
		if q.Threshold != 0 {
			return fmt.Errorf("%s: a threshold without keys", name)
		}
		return nil
	}
	if len(q.Keys) > maxAdministrators {
		return fmt.Errorf("%s: %d keys, at most %d", name, len(q.Keys), maxAdministrators)
	}
	if q.Threshold < 1 || q.Threshold > len(q.Keys) {
		return fmt.Errorf("%s: threshold %d, want 1 to %d (the number of keys)", name, q.Threshold, len(q.Keys))
	}
	names := map[string]bool{}
	keys := map[string]bool{}
	for i := range q.Keys {
		k := &q.Keys[i]
		if k.Name == "" || len(k.Name) > messages.MaxSignerName {
			return fmt.Errorf("%s.keys[%d]: name must be 1 to %d bytes", name, i, messages.MaxSignerName)
		}
		b, err := hex.DecodeString(k.Key)
		if err != nil || len(b) != size {
			return fmt.Errorf("%s.keys[%d] (%s): key is not %d bytes of hex", name, i, k.Name, size)
		}
		if names[k.Name] || keys[string(b)] {
			return fmt.Errorf("%s.keys[%d]: %s or its key is named twice", name, i, k.Name)
		}
		names[k.Name], keys[string(b)] = true, true
		k.raw = b
	}
	return nil
}

func (p *Policy) check() error {
	if p.Version < 1 || p.Version > maxPolicyVersion {
		return fmt.Errorf("version %d, want 1 to %d", p.Version, uint64(maxPolicyVersion))
	}
	if p.RootGeneration == 0 {
		p.RootGeneration = 1
	}
	if p.RootGeneration > messages.MaxVouchers+1 {
		return fmt.Errorf("root_generation %d, at most %d", p.RootGeneration, messages.MaxVouchers+1)
	}
	if len(p.Issuers) > maxIssuers {
		return fmt.Errorf("%d issuer measurements, at most %d", len(p.Issuers), maxIssuers)
	}
	for i, m := range p.Issuers {
		b, err := hex.DecodeString(m)
		if err != nil || !enclave.ValidMeasurement(b) {
			return fmt.Errorf("issuers[%d]: %q is not 32 or 48 bytes of hex", i, m)
		}
		if slices.ContainsFunc(p.issuers, func(x []byte) bool { return bytes.Equal(x, b) }) {
			return fmt.Errorf("issuers[%d]: %s named twice", i, m)
		}
		p.issuers = append(p.issuers, b)
	}
	if err := p.Administrators.check("administrators", messages.AdminKeySize); err != nil {
		return err
	}
	if err := p.Recovery.check("recovery", messages.RecoveryKeySize); err != nil {
		return err
	}
	if err := checkValidity("validity.root", &p.Validity.Root, defaultRootValidity, time.Hour); err != nil {
		return err
	}
	if err := checkValidity("validity.task", &p.Validity.Task, defaultTaskValidity, minTaskValidity); err != nil {
		return err
	}
	if err := checkValidity("validity.group", &p.Validity.Group, p.Validity.Task, minTaskValidity); err != nil {
		return err
	}
	if p.Validity.Task > p.Validity.Root || p.Validity.Group > p.Validity.Root {
		return errors.New("validity.task or validity.group is longer than validity.root")
	}
	if len(p.Tasks) == 0 || len(p.Tasks) > maxTasks {
		return fmt.Errorf("%d tasks, want 1 to %d", len(p.Tasks), maxTasks)
	}
	p.byName = make(map[string]*TaskPolicy, len(p.Tasks))
	for i := range p.Tasks {
		t := &p.Tasks[i]
		if err := t.check(); err != nil {
			return fmt.Errorf("tasks[%d]: %w", i, err)
		}
		if _, dup := p.byName[t.Name]; dup {
			return fmt.Errorf("tasks[%d]: task %q declared twice", i, t.Name)
		}
		p.byName[t.Name] = t
	}
	if len(p.Clusters) > maxClusters {
		return fmt.Errorf("%d clusters, at most %d", len(p.Clusters), maxClusters)
	}
	ids := make(map[string]bool, len(p.Clusters))
	for i, c := range p.Clusters {
		if !messages.ValidTaskName(c.ID) {
			return fmt.Errorf("clusters[%d]: id %q: want lower-case letters, digits and inner hyphens", i, c.ID)
		}
		if ids[c.ID] {
			return fmt.Errorf("clusters[%d]: cluster %q declared twice", i, c.ID)
		}
		ids[c.ID] = true
		t, ok := p.byName[c.Task]
		if !ok {
			return fmt.Errorf("clusters[%d]: cluster %q names task %q, which the policy does not declare", i, c.ID, c.Task)
		}
		if len(t.clusters) >= maxTaskClusters {
			return fmt.Errorf("clusters[%d]: task %q has more than %d clusters", i, c.Task, maxTaskClusters)
		}
		t.clusters = append(t.clusters, c.ID)
	}
	return p.checkGroups()
}

func (p *Policy) checkGroups() error {
	if len(p.Groups) > maxGroups {
		return fmt.Errorf("%d groups, at most %d", len(p.Groups), maxGroups)
	}
	p.byGroup = make(map[string]*Group, len(p.Groups))
	for i := range p.Groups {
		g := &p.Groups[i]
		if !messages.ValidTaskName(g.ID) {
			return fmt.Errorf("groups[%d]: id %q: want lower-case letters, digits and inner hyphens", i, g.ID)
		}
		if _, dup := p.byGroup[g.ID]; dup {
			return fmt.Errorf("groups[%d]: group %q declared twice", i, g.ID)
		}
		if len(g.Tasks) < 2 || len(g.Tasks) > maxGroupTasks {
			return fmt.Errorf("groups[%d]: group %q has %d tasks, want 2 to %d (a group joins different tasks)", i, g.ID, len(g.Tasks), maxGroupTasks)
		}
		for k, name := range g.Tasks {
			t, ok := p.byName[name]
			if !ok {
				return fmt.Errorf("groups[%d]: group %q names task %q, which the policy does not declare", i, g.ID, name)
			}
			if slices.Contains(g.Tasks[:k], name) {
				return fmt.Errorf("groups[%d]: group %q names task %q twice", i, g.ID, name)
			}
			if len(t.groups) >= maxTaskGroups {
				return fmt.Errorf("groups[%d]: task %q is in more than %d groups", i, name, maxTaskGroups)
			}
			t.groups = append(t.groups, g.ID)
		}
		p.byGroup[g.ID] = g
	}
	return nil
}

func checkValidity(name string, d *time.Duration, def, lo time.Duration) error {
	if *d == 0 {
		*d = def
	}
	if *d < lo || *d > maxValidity {
		return fmt.Errorf("%s is %v, want %v to %v", name, *d, lo, maxValidity)
	}
	return nil
}

func (t *TaskPolicy) check() error {
	if !messages.ValidTaskName(t.Name) {
		return fmt.Errorf("name %q: want lower-case letters, digits and inner hyphens, at most %d", t.Name, messages.MaxTaskName)
	}
	if len(t.Measurements) == 0 && t.Signer == "" {
		return fmt.Errorf("task %q accepts no code: give measurements or a signer", t.Name)
	}
	if len(t.Measurements) > maxTaskMeasurements {
		return fmt.Errorf("task %q: %d measurements, at most %d", t.Name, len(t.Measurements), maxTaskMeasurements)
	}
	size := enclave.MeasurementSize
	switch t.Platform {
	case "", enclave.PlatformSim, enclave.PlatformSGX:
	case enclave.PlatformSNP, enclave.PlatformTDX:
		size = enclave.MeasurementSize384
		if t.Signer != "" {
			return fmt.Errorf("task %q: a signer is SGX's; on %s give measurements", t.Name, t.Platform)
		}
	default:
		return fmt.Errorf("task %q: platform %q, want sim, sgx, snp or tdx", t.Name, t.Platform)
	}
	for _, m := range t.Measurements {
		b, err := hex.DecodeString(m)
		if err != nil || len(b) != size {
			return fmt.Errorf("task %q: measurement %q is not %d bytes of hex (platform %s)", t.Name, m, size, cmp.Or(t.Platform, "sgx or sim"))
		}
		t.measurements = append(t.measurements, b)
	}
	if len(t.TCBStatuses) > len(knownTCBStatuses) {
		return fmt.Errorf("task %q: %d TCB statuses, at most %d", t.Name, len(t.TCBStatuses), len(knownTCBStatuses))
	}
	for i, s := range t.TCBStatuses {
		if !slices.Contains(knownTCBStatuses, s) || slices.Contains(t.TCBStatuses[:i], s) {
			return fmt.Errorf("task %q: TCB status %q is not one of %v, or is named twice (UpToDate is always accepted)", t.Name, s, knownTCBStatuses)
		}
	}
	if t.SNP != (SNPSettings{}) && t.Platform != enclave.PlatformSNP {
		return fmt.Errorf("task %q: snp settings on platform %q", t.Name, cmp.Or(t.Platform, "sgx"))
	}
	if t.TDX != (TDXSettings{}) && t.Platform != enclave.PlatformTDX {
		return fmt.Errorf("task %q: tdx settings on platform %q", t.Name, cmp.Or(t.Platform, "sgx"))
	}
	if h := t.SNP.HostData; h != "" {
		if b, err := hex.DecodeString(h); err != nil || len(b) != 32 {
			return fmt.Errorf("task %q: snp.host_data is not 32 bytes of hex", t.Name)
		} else {
			t.hostData = b
		}
	}
	if t.SNP.MaxVMPL > 3 {
		return fmt.Errorf("task %q: snp.max_vmpl %d, want 0 to 3", t.Name, t.SNP.MaxVMPL)
	}
	if s := t.TDX.MinTEETCBSVN; s != "" {
		if b, err := hex.DecodeString(s); err != nil || len(b) != 16 {
			return fmt.Errorf("task %q: tdx.min_tee_tcb_svn is not 16 bytes of hex", t.Name)
		} else {
			t.minTEETCBSVN = b
		}
	}
	if t.Signer != "" {
		b, err := hex.DecodeString(t.Signer)
		if err != nil || len(b) != measurementSize {
			return fmt.Errorf("task %q: signer is not %d bytes of hex", t.Name, measurementSize)
		}
		t.signer = b
	}
	if len(t.DNSNames)+len(t.IPAddresses) > maxNames {
		return fmt.Errorf("task %q: more than %d DNS names and addresses", t.Name, maxNames)
	}
	for _, n := range t.DNSNames {
		if n == "" || len(n) > maxNameLen {
			return fmt.Errorf("task %q: DNS name %q out of bounds", t.Name, n)
		}
	}
	for _, a := range t.IPAddresses {
		ip := net.ParseIP(a)
		if ip == nil {
			return fmt.Errorf("task %q: %q is not an IP address", t.Name, a)
		}
		t.ips = append(t.ips, ip)
	}
	return nil
}

// Hash is the SHA-256 of the policy file as given: `sha256sum policy.yaml`.
func (p *Policy) Hash() [32]byte { return p.hash }

// ClusterIDs returns the ids of the clusters that run the task.
func (t *TaskPolicy) ClusterIDs() []string { return slices.Clone(t.clusters) }

// GroupIDs returns the ids of the groups the task is a member of.
func (t *TaskPolicy) GroupIDs() []string { return slices.Clone(t.groups) }

// Group returns the group with the given id.
func (p *Policy) Group(id string) (*Group, bool) {
	g, ok := p.byGroup[id]
	return g, ok
}

// Task returns the named task's policy.
func (p *Policy) Task(name string) (*TaskPolicy, bool) {
	t, ok := p.byName[name]
	return t, ok
}
