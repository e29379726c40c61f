package issuer

// The view: one policy in force and everything made from it (the root of
// its generation, the cluster keys, each task's and group's credential in a
// slot), built whole on each load or update and swapped in one pointer; and
// the reissue of a slot's certificate when it falls due.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/identity"
	"github.com/cohort-dev/cohort/messages"
)

// view is one policy in force, with the keys and certificates made from it.
type view struct {
	root     *rootState // the root of the policy's generation
	policy   *Policy
	record   *policyRecord
	rev      uint64 // of the policy record
	tasks    map[string]*slot
	groups   map[string]*slot
	clusters map[string]*clusterKey
}

// slot holds the current credential of a task or a group. The certify path
// reads it without a lock; reissue serialises the writers of one slot only.
type slot struct {
	kind  string // "task" or "group", for logs
	name  string // the task's name or the group's id
	key   string // its key in the state bucket
	spec  []byte
	issue func(*ecdsa.PrivateKey) (*x509.Certificate, error)
	// dropped, if set, reports whether a stored certificate was made for
	// code (measurements, tasks) the policy no longer accepts: its key is
	// then replaced, not reused.
	dropped func(*x509.Certificate) bool
	// clusterIDs are the clusters of a task, whose secrets set precomputes
	// from clusters, the view's cluster keys.
	clusterIDs []string
	clusters   map[string]*clusterKey
	mu         sync.Mutex
	rev        uint64    // guarded by mu
	retry      time.Time // guarded by mu: no reissue attempt before this, after a failure
	fails      int       // guarded by mu: reissues failed in a row
	cur        atomic.Pointer[held]
}

// held is an immutable snapshot of a slot's credential, with everything the
// certify path needs precomputed. It stays in the enclave.
type held struct {
	name  string // the slot's name
	cred  *credential
	pkcs8 []byte // the private key, PKCS #8
	// secrets holds, for a task, the encoded messages.Secrets of a request
	// naming no group: for no cluster (key "") and for each of its clusters.
	secrets   map[string][]byte
	reissueAt time.Time
}

// build makes the view of a policy record: every cluster key, task and
// group credential the policy declares, created when missing and reissued
// when their certificate no longer matches. It returns the view and the
// credentials it made anew.
func (i *Issuer) build(ctx context.Context, rec *policyRecord, rev uint64) (*view, []string, error) {
	p, err := ParsePolicy(rec.Document)
	if err != nil {
		return nil, nil, fmt.Errorf("issuer: the policy in force: %w", err)
	}
	root, err := i.rootOf(ctx, p.RootGeneration, p.Validity.Root)
	if err != nil {
		return nil, nil, fmt.Errorf("issuer: the root of generation %d: %w", p.RootGeneration, err)
	}
	v := &view{root: root, policy: p, record: rec, rev: rev, clusters: make(map[string]*clusterKey, len(p.Clusters))}
	for _, c := range p.Clusters {
		if v.clusters[c.ID], err = i.loadCluster(ctx, c.ID); err != nil {
			return nil, nil, fmt.Errorf("issuer: cluster %q: %w", c.ID, err)
		}
	}
	tasks := make([]*slot, 0, len(p.Tasks))
	for k := range p.Tasks {
		tasks = append(tasks, i.taskSlot(root, p, &p.Tasks[k], v.clusters))
	}
	groups := make([]*slot, 0, len(p.Groups))
	for k := range p.Groups {
		groups = append(groups, i.groupSlot(root, p, &p.Groups[k]))
	}
	var made []string
	if v.tasks, made, err = i.loadSlots(ctx, tasks, made); err != nil {
		return nil, nil, err
	}
	if v.groups, made, err = i.loadSlots(ctx, groups, made); err != nil {
		return nil, nil, err
	}
	if err := i.ensureRecovery(ctx, p, root); err != nil {
		return nil, nil, fmt.Errorf("issuer: recovery record: %w", err)
	}
	return v, made, nil
}

// taskSlot is the slot of task t under the policy p and its root.
func (i *Issuer) taskSlot(root *rootState, p *Policy, t *TaskPolicy, clusters map[string]*clusterKey) *slot {
	return &slot{
		kind: "task", name: t.Name, key: taskKeyPrefix + t.Name, clusterIDs: t.clusters, clusters: clusters,
		dropped: func(c *x509.Certificate) bool {
			id, err := identity.FromCertificate(c)
			return err == nil && slices.ContainsFunc(id.Measurements, func(m []byte) bool {
				return !slices.ContainsFunc(t.measurements, func(k []byte) bool { return bytes.Equal(k, m) })
			})
		},
		spec: taskSpec(root.cred.cert, t, p.Validity.Task, p.AcceptSimulated),
		issue: func(key *ecdsa.PrivateKey) (*x509.Certificate, error) {
			return issueTask(i.cfg.Rand, i.cfg.Now(), root.cred, t, key, p.Validity.Task, p.AcceptSimulated)
		},
	}
}

// groupSlot is the slot of group g under the policy p and its root.
func (i *Issuer) groupSlot(root *rootState, p *Policy, g *Group) *slot {
	return &slot{
		kind: "group", name: g.ID, key: groupKeyPrefix + g.ID,
		dropped: func(c *x509.Certificate) bool {
			id, err := identity.FromCertificate(c)
			return err == nil && slices.ContainsFunc(id.Tasks, func(task string) bool { return !g.Has(task) })
		},
		spec: groupSpec(root.cred.cert, g, p.Validity.Group, p.AcceptSimulated),
		issue: func(key *ecdsa.PrivateKey) (*x509.Certificate, error) {
			return issueGroup(i.cfg.Rand, i.cfg.Now(), root.cred, g, key, p.Validity.Group, p.AcceptSimulated)
		},
	}
}

// loadSlots loads each slot (loadSlot) and returns them by name, with made
// extended by those it made or reissued, as kind/name.
func (i *Issuer) loadSlots(ctx context.Context, slots []*slot, made []string) (map[string]*slot, []string, error) {
	m := make(map[string]*slot, len(slots))
	for _, s := range slots {
		changed, err := i.loadSlot(ctx, s)
		if err != nil {
			return nil, nil, fmt.Errorf("issuer: %s %q: %w", s.kind, s.name, err)
		}
		if changed {
			made = append(made, s.kind+"/"+s.name)
		}
		m[s.name] = s
	}
	return m, made, nil
}

// loadCluster returns a cluster's key, creating it (epoch 1) if the state has
// none: keys are made when a cluster is declared, never on first request.
func (i *Issuer) loadCluster(ctx context.Context, id string) (*clusterKey, error) {
	name := clusterKeyPrefix + id
	for {
		ck, rev, err := i.store.loadCluster(ctx, name)
		if err == nil {
			return ck, nil
		}
		if !errors.Is(err, errNotFound) {
			return nil, err
		}
		ck = &clusterKey{V: recordVersion, Key: make([]byte, messages.ClusterKeySize), Epoch: 1}
		if _, err := rand.Read(ck.Key); err != nil {
			return nil, err
		}
		if err = i.store.putCluster(ctx, name, ck, rev); err == nil {
			i.log.Info("created cluster key", "cluster", id, "epoch", ck.Epoch)
			return ck, nil
		}
		if !errors.Is(err, errExists) {
			return nil, err
		}
		// Another issuer created it first: load theirs.
	}
}

// loadSlot loads a task's or a group's credential, creating it when the
// state has none and reissuing its certificate, with the same key, when the
// policy changed or it is due. It reports whether it made either.
func (i *Issuer) loadSlot(ctx context.Context, s *slot) (bool, error) {
	for {
		c, spec, rev, err := i.store.loadCredential(ctx, s.key)
		var key *ecdsa.PrivateKey
		var made string
		switch {
		case errors.Is(err, errNotFound):
			if key, err = newKey(); err != nil {
				return false, err
			}
			made = "created " + s.kind + " key and certificate"
		case err != nil:
			return false, err
		case string(spec) != string(s.spec) || !i.cfg.Now().Before(reissueAt(c.cert)):
			// The policy changed, or the certificate is due: same key, new
			// certificate; but a new key when the policy dropped code that
			// held the old one, so that a removed build's units, which keep
			// the old key, hold nothing the next certificates vouch for.
			key, made = c.key, "reissued "+s.kind+" certificate"
			if s.dropped != nil && s.dropped(c.cert) {
				if key, err = newKey(); err != nil {
					return false, err
				}
				i.log.Info("new "+s.kind+" key: the policy no longer accepts code that held the old one", s.kind, s.name)
			}
		default:
			s.rev = rev
			return false, i.set(s, c)
		}
		if c, err = s.make(key); err != nil {
			return false, err
		}
		if rev, err = i.store.putCredential(ctx, s.key, c, s.spec, rev); errors.Is(err, errExists) {
			continue // another issuer stored one first: load it
		} else if err != nil {
			return false, err
		}
		i.log.Info(made, s.kind, s.name, "cert", fingerprint(c.cert))
		s.rev = rev
		return true, i.set(s, c)
	}
}

// make issues the slot's certificate for key.
func (s *slot) make(key *ecdsa.PrivateKey) (*credential, error) {
	cert, err := s.issue(key)
	if err != nil {
		return nil, err
	}
	return &credential{key: key, cert: cert}, nil
}

// set makes c the slot's current credential. For a task it precomputes the
// secrets of a request naming no group, for no cluster and for each of the
// task's clusters.
func (i *Issuer) set(s *slot, c *credential) error {
	pk, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return fmt.Errorf("marshal %s key: %w", s.kind, err)
	}
	h := &held{name: s.name, cred: c, pkcs8: pk, reissueAt: reissueAt(c.cert)}
	if s.kind == "task" {
		h.secrets = map[string][]byte{}
		for _, id := range append([]string{""}, s.clusterIDs...) {
			if h.secrets[id], err = messages.Marshal(secrets(s.clusters, h, id, nil)); err != nil {
				return err
			}
		}
	}
	s.cur.Store(h)
	return nil
}

// secrets assembles the secrets of a report for a task's credential, the
// cluster the request named (if any) and the groups it named.
func secrets(clusters map[string]*clusterKey, task *held, cluster string, groups []*held) *messages.Secrets {
	sec := &messages.Secrets{V: messages.Version, TaskKey: task.pkcs8}
	if ck := clusters[cluster]; ck != nil {
		sec.Cluster, sec.ClusterEpoch, sec.ClusterKey = cluster, ck.Epoch, ck.Key
	}
	for _, g := range groups {
		sec.Groups = append(sec.Groups, messages.GroupKey{ID: g.name, Key: g.pkcs8})
	}
	return sec
}

// reissueBackoff spaces the reissues of a certificate that failed: from 2 s
// after the first failure to a minute.
var reissueBackoff = backoff.Policy{Min: time.Second, Max: time.Minute}

// current returns the slot's credential, reissuing it first when it is due.
// Only one request reissues; the others meanwhile get the current
// certificate, which stays valid until its NotAfter, well after it is due. A
// reissue that fails is tried again after a backoff, never on every request.
func (i *Issuer) current(ctx context.Context, s *slot) *held {
	h := s.cur.Load()
	now := i.cfg.Now()
	if now.Before(h.reissueAt) || !s.mu.TryLock() {
		return h
	}
	defer s.mu.Unlock()
	if h = s.cur.Load(); now.Before(h.reissueAt) || now.Before(s.retry) {
		return h // reissued meanwhile, or backing off after a failure
	}
	ctx, cancel := context.WithTimeout(ctx, reissueTimeout)
	defer cancel()
	if err := i.reissue(ctx, s, h); err != nil {
		s.fails++
		s.retry = now.Add(reissueBackoff.Delay(s.fails))
		i.log.Error("reissue "+s.kind+" certificate", s.kind, s.name, "err", err, "retry_at", s.retry)
		return h
	}
	s.fails = 0
	return s.cur.Load()
}

// reissue makes the next certificate of a slot, or adopts the one another
// issuer stored first. Called with s.mu held.
func (i *Issuer) reissue(ctx context.Context, s *slot, h *held) error {
	c, err := s.make(h.cred.key)
	if err != nil {
		return err
	}
	rev, err := i.store.putCredential(ctx, s.key, c, s.spec, s.rev)
	if errors.Is(err, errExists) {
		if c, _, rev, err = i.store.loadCredential(ctx, s.key); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	s.rev = rev
	i.log.Info("reissued "+s.kind+" certificate", s.kind, s.name, "cert", fingerprint(c.cert))
	return i.set(s, c)
}
