package issuer

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

// policyRecord is the plaintext of the policy record: the policy in force,
// the signatures it was applied with, and the history of the policies in
// force before and up to it, oldest first.
type policyRecord struct {
	V          uint16                     `msgpack:"v"`
	Document   []byte                     `msgpack:"document"`
	Signatures []messages.PolicySignature `msgpack:"signatures"`
	History    []messages.PolicyHistory   `msgpack:"history"`
}

func decodePolicyRecord(plain []byte) (*policyRecord, error) {
	var r policyRecord
	if err := messages.Unmarshal(plain, maxRecord, &r); err != nil {
		return nil, fmt.Errorf("policy record: %w", err)
	}
	if r.V != recordVersion || len(r.Document) == 0 || len(r.History) == 0 || len(r.History) > messages.MaxPolicyHistory {
		return nil, errors.New("policy record: wrong version or empty fields")
	}
	return &r, nil
}

// loadPolicy reads the policy in force; in a new state (fresh) it writes
// the genesis policy first.
func (i *Issuer) loadPolicy(ctx context.Context, fresh bool) (*policyRecord, uint64, error) {
	for {
		plain, rev, err := i.store.load(ctx, policyKey)
		if err == nil {
			rec, err := decodePolicyRecord(plain)
			if err != nil {
				return nil, 0, fmt.Errorf("issuer: %w", err)
			}
			if g := i.cfg.Policy; g != nil && !fresh && g.Version >= lastVersion(rec) {
				// A file that looks like an update: say why it changes nothing.
				if h := g.Hash(); !bytes.Equal(h[:], hashOf(rec.Document)) {
					i.log.Warn("the policy file given differs from the policy in force, which the state keeps: ignoring the file; "+
						"change the policy with `cohort policy sign` and `cohort policy apply`", "file_version", g.Version, "file_hash", hex.EncodeToString(h[:]))
				}
			}
			return rec, rev, nil
		}
		if errors.Is(err, errNotFound) && !fresh {
			// Only a new state takes a genesis policy: one that lost its
			// policy record must not take whatever file its host gives.
			return nil, 0, fmt.Errorf("%w: the state has no policy record", ErrTampered)
		}
		if !errors.Is(err, errNotFound) {
			return nil, 0, fmt.Errorf("issuer: the policy in force: %w", err)
		}
		g := i.cfg.Policy
		if g == nil {
			return nil, 0, fmt.Errorf("%w: the state has no policy yet and none was given (--policy)", ErrNoStateKey)
		}
		h := g.Hash()
		rec := &policyRecord{V: recordVersion, Document: g.Document(),
			History: []messages.PolicyHistory{{Version: g.Version, Hash: h[:], Applied: i.cfg.Now().UnixNano()}}}
		b, err := messages.Marshal(rec)
		if err != nil {
			return nil, 0, err
		}
		if rev, err = i.store.put(ctx, policyKey, b, rev); err == nil {
			i.log.Info("genesis policy in force", "policy_version", g.Version, "policy_hash", hex.EncodeToString(h[:]), "root", fingerprint(i.roots[1].cred.cert))
			i.lifecycle(events.Event{Kind: events.IssuerGenesis, Policy: g.Version, PolicyHash: hex.EncodeToString(h[:]), Root: fingerprint(i.roots[1].cred.cert),
				Measurement: hex.EncodeToString(i.self), Simulated: i.cfg.Platform.Simulated(), Reason: genesisSummary(g)})
			return rec, rev, nil
		}
		if !errors.Is(err, errExists) {
			return nil, 0, err
		}
	}
}

// genesisSummary says in the genesis event who governs the new state.
func genesisSummary(p *Policy) string {
	return fmt.Sprintf("administrators: %d of %d; recovery holders: %d of %d; issuer builds listed: %d",
		p.Administrators.Threshold, len(p.Administrators.Keys), p.Recovery.Threshold, len(p.Recovery.Keys), len(p.issuers))
}

func lastVersion(r *policyRecord) uint64 { return r.History[len(r.History)-1].Version }

func hashOf(doc []byte) []byte {
	h := sha256.Sum256(doc)
	return h[:]
}

// VerifyUpdate decides whether next may replace p, the policy in force,
// with the signatures sigs: exactly Threshold or more distinct
// administrators of p must have signed next's document, every signature
// must be an administrator's and verify, and next's version must be
// higher. It returns the signers' names, or a refusal naming the reason.
func (p *Policy) VerifyUpdate(next *Policy, sigs []messages.PolicySignature) ([]string, *messages.Error) {
	if len(p.Administrators.Keys) == 0 {
		return nil, messages.Refusal(messages.CodePolicySignatures, "the policy in force (version %d) names no administrators: it cannot be updated", p.Version)
	}
	if next.Version <= p.Version {
		return nil, messages.Refusal(messages.CodePolicyVersion, "version %d is not higher than version %d in force (an old update replayed?)", next.Version, p.Version)
	}
	if next.RootGeneration != p.RootGeneration && next.RootGeneration != p.RootGeneration+1 {
		return nil, messages.Refusal(messages.CodePolicyInvalid, "root_generation %d: the policy in force has %d; an update keeps it or raises it by one (one rotation)", next.RootGeneration, p.RootGeneration)
	}
	var signers []string
	seen := map[string]bool{}
	for k, s := range sigs {
		admin := p.Administrators.find(s.Key)
		if admin == nil {
			return nil, messages.Refusal(messages.CodePolicySignatures, "signature %d is by key %x, which is not an administrator of the policy in force (version %d)", k, s.Key, p.Version)
		}
		if seen[admin.Name] {
			return nil, messages.Refusal(messages.CodePolicySignatures, "administrator %s signed twice", admin.Name)
		}
		seen[admin.Name] = true
		if len(s.Signature) != ed25519.SignatureSize || !ed25519.Verify(ed25519.PublicKey(admin.raw), messages.PolicySigned(next.raw), s.Signature) {
			h := next.Hash()
			return nil, messages.Refusal(messages.CodePolicySignatures, "the signature of administrator %s does not verify over this document (sha256 %x): it signed another one", admin.Name, h)
		}
		signers = append(signers, admin.Name)
	}
	if len(signers) < p.Administrators.Threshold {
		return nil, messages.Refusal(messages.CodePolicySignatures, "%d administrators signed; the policy in force (version %d) needs %d of its %d",
			len(signers), p.Version, p.Administrators.Threshold, len(p.Administrators.Keys))
	}
	return signers, nil
}

func (q *Quorum) find(key []byte) *NamedKey {
	for k := range q.Keys {
		if bytes.Equal(q.Keys[k].raw, key) {
			return &q.Keys[k]
		}
	}
	return nil
}

// apply answers a policy update: it is checked against the policy in
// force, stored (the one write that commits it), then adopted here; other
// replicas adopt it when they next look (follow).
func (i *Issuer) apply(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	var req messages.PolicyApply
	if err := messages.Decode(data, messages.MaxPolicyApply, &req); err != nil {
		return nil, i.refusePolicy(0, service.DecodeRefusal("policy update", err))
	}
	next, err := ParsePolicy(req.Document)
	if err != nil {
		return nil, i.refusePolicy(0, messages.Refusal(messages.CodePolicyInvalid, "%v", err))
	}
	i.adopting.Lock()
	defer i.adopting.Unlock()
	for attempt := 0; ; attempt++ {
		v := i.view.Load()
		if h := next.Hash(); bytes.Equal(h[:], hashOf(v.record.Document)) {
			// Applying the policy in force again changes nothing: an
			// update whose answer was lost is applied again safely.
			return i.applied(v, nil)
		}
		signers, refusal := v.policy.VerifyUpdate(next, req.Signatures)
		if refusal != nil {
			return nil, i.refusePolicy(next.Version, refusal)
		}
		h := next.Hash()
		hist := append(v.record.History, messages.PolicyHistory{Version: next.Version, Hash: h[:], Signers: signers, Applied: i.cfg.Now().UnixNano()})
		if len(hist) > messages.MaxPolicyHistory {
			hist = hist[len(hist)-messages.MaxPolicyHistory:]
		}
		rec := &policyRecord{V: recordVersion, Document: next.Document(), Signatures: req.Signatures, History: hist}
		b, err := messages.Marshal(rec)
		if err != nil {
			return nil, messages.Refusal(messages.CodeInternal, "encoding the policy record failed")
		}
		if next.RootGeneration != v.policy.RootGeneration {
			// The new root is made, create-only, before the update that
			// names it commits: a replica that adopts the update finds it.
			if _, err := i.rootOf(ctx, next.RootGeneration, next.Validity.Root); err != nil {
				i.log.Error("make the rotated root", "err", err)
				return nil, messages.Refusal(messages.CodeInternal, "making the new root failed; nothing changed")
			}
		}
		sent := time.Now()
		rev, err := i.store.put(ctx, policyKey, b, v.rev)
		if errors.Is(err, errExists) && attempt == 0 {
			// Another replica applied an update first: judge this one
			// against what is in force now.
			if err := i.refreshLocked(ctx); err != nil {
				return nil, messages.Refusal(messages.CodeInternal, "reading the policy in force failed")
			}
			continue
		}
		if err != nil {
			i.log.Error("store policy update", "err", err)
			return nil, messages.Refusal(messages.CodeInternal, "storing the update failed; nothing changed")
		}
		if i.cfg.afterCommit != nil {
			i.cfg.afterCommit()
		}
		nv, made, err := i.build(ctx, rec, rev)
		if err != nil {
			// Committed: the next look (follow) adopts it; a restart does too.
			i.log.Error("adopt the policy update", "err", err)
			return nil, messages.Refusal(messages.CodeInternal, "the update is stored but its certificates are not all made yet: apply it again")
		}
		i.adopt(v, nv, sent)
		i.toCache(i.store.key, nv.policy.Version)
		i.log.Info("policy update applied", "policy_version", next.Version, "policy_hash", hex.EncodeToString(h[:]), "signers", signers, "reissued", made)
		i.lifecycle(events.Event{Kind: events.PolicyApplied, Policy: next.Version, PolicyHash: hex.EncodeToString(h[:]), Reason: "signed by " + joinNames(signers)})
		if nv.root != v.root {
			i.log.Warn("root rotated", "root_generation", nv.root.gen, "root", fingerprint(nv.root.cred.cert), "previous", fingerprint(v.root.cred.cert), "signers", signers)
			i.lifecycle(events.Event{Kind: events.RootRotated, Policy: next.Version, PolicyHash: hex.EncodeToString(h[:]), Root: fingerprint(nv.root.cred.cert),
				Reason: fmt.Sprintf("root generation %d (sha256 %s) replaces generation %d (sha256 %s), which vouches for it; signed by %s",
					nv.root.gen, fingerprint(nv.root.cred.cert), v.root.gen, fingerprint(v.root.cred.cert), joinNames(signers))})
		}
		return i.applied(nv, made)
	}
}

func (i *Issuer) applied(v *view, made []string) ([]byte, *messages.Error) {
	h := v.policy.Hash()
	last := v.record.History[len(v.record.History)-1]
	return service.Encode(&messages.PolicyApplied{V: messages.Version, Version: v.policy.Version, Hash: h[:], Signers: last.Signers, Reissued: made})
}

func (i *Issuer) refusePolicy(version uint64, r *messages.Error) *messages.Error {
	i.log.Warn("policy update refused", "code", r.Code, "reason", r.Reason, "version", version)
	i.event(events.Event{Kind: events.PolicyRefused, Policy: version, Code: string(r.Code), Reason: r.Reason})
	return r
}

func joinNames(names []string) string {
	var b bytes.Buffer
	for k, n := range names {
		if k > 0 {
			b.WriteString(", ")
		}
		b.WriteString(n)
	}
	return b.String()
}

// show answers with the policy in force and its history.
func (i *Issuer) show(data []byte) ([]byte, *messages.Error) {
	var req messages.PolicyShowRequest
	if err := messages.Decode(data, 64, &req); err != nil {
		return nil, service.DecodeRefusal("policy show request", err)
	}
	v := i.view.Load()
	h := v.policy.Hash()
	return service.Encode(&messages.PolicyShowReply{V: messages.Version, Version: v.policy.Version, Hash: h[:],
		Document: v.record.Document, Signatures: v.record.Signatures, History: v.record.History})
}

// follow adopts the updates other replicas apply, until ctx is done. It
// returns ErrRemoved when the policy in force stops listing this build.
func (i *Issuer) follow(ctx context.Context) error {
	t := time.NewTicker(i.cfg.PolicyPoll)
	defer t.Stop()
	// An issuer not listed when it starts (restored by its recovery holders
	// before the update that lists its build) serves on; one that an update
	// drops stops.
	seen := i.view.Load().policy.Version
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		sent := time.Now()
		if err := i.refresh(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			i.log.Warn("following the policy in force", "err", err)
		} else {
			// What this replica serves is the policy in force as of sent.
			i.fence.confirm(sent)
		}
		p := i.view.Load().policy
		if p.Version != seen && len(p.issuers) > 0 && !p.AcceptsIssuer(i.self, i.self) {
			i.lifecycle(events.Event{Kind: events.IssuerStopped, Measurement: hex.EncodeToString(i.self), Policy: p.Version, Code: string(messages.CodeIssuerNotAccepted),
				Reason: "an update dropped this issuer build from issuers", Simulated: i.cfg.Platform.Simulated()})
			return fmt.Errorf("%w: version %d lists %d issuer builds, not this one (measurement %x); stopping", ErrRemoved, p.Version, len(p.issuers), i.self)
		}
		seen = p.Version
	}
}

// adopt makes nv the view served after cur. A new root is served only
// after a lease in which this replica answers under neither: every replica
// that still serves the old root stops within the lease, for want of a
// confirmation, or adopts the new one. sent, when not zero, is when the
// write that put nv's policy in force was sent: the replica that made it
// confirms it.
func (i *Issuer) adopt(cur, nv *view, sent time.Time) {
	if nv.root != cur.root {
		i.fence.switching()
	}
	i.view.Store(nv)
	if !sent.IsZero() {
		i.fence.confirm(sent)
	}
}

// refresh adopts the policy record in force when it moved on. It reads
// from the stream's leader: when it returns nil, this replica serves the
// policy that was in force when it was called.
func (i *Issuer) refresh(ctx context.Context) error {
	r, err := i.store.current(ctx, policyKey)
	if err != nil {
		return err
	}
	if r.rev == i.view.Load().rev {
		return nil
	}
	i.adopting.Lock()
	defer i.adopting.Unlock()
	return i.refreshLocked(ctx)
}

func (i *Issuer) refreshLocked(ctx context.Context) error {
	r, err := i.store.current(ctx, policyKey)
	if err != nil {
		return err
	}
	plain, rev, err := i.store.decrypt(policyKey, r)
	if err != nil {
		return err
	}
	cur := i.view.Load()
	if rev == cur.rev {
		return nil
	}
	rec, err := decodePolicyRecord(plain)
	if err != nil {
		return err
	}
	next, err := ParsePolicy(rec.Document)
	if err != nil {
		return err
	}
	// The record is authentic (it opened under the state key); check it
	// again anyway, as every replica checks what it serves.
	if next.Version < cur.policy.Version {
		return fmt.Errorf("the stored policy (version %d) is older than the one in force here (version %d): refusing it", next.Version, cur.policy.Version)
	}
	if h := rec.History; next.Version > cur.policy.Version && len(h) >= 2 && h[len(h)-2].Version == cur.policy.Version {
		// One step on from what this replica serves: the signatures are
		// by administrators of the policy it serves.
		if _, refusal := cur.policy.VerifyUpdate(next, rec.Signatures); refusal != nil {
			return fmt.Errorf("the stored policy (version %d) does not verify against the one in force here: %s", next.Version, refusal.Reason)
		}
	}
	nv, made, err := i.build(ctx, rec, rev)
	if err != nil {
		return err
	}
	i.adopt(cur, nv, time.Time{})
	if nv.root != cur.root {
		i.log.Warn("root rotated by another replica: this one answers under neither root for a lease, then under the new", "root_generation", nv.root.gen,
			"root", fingerprint(nv.root.cred.cert), "previous", fingerprint(cur.root.cred.cert), "lease", i.cfg.Lease)
	}
	i.toCache(i.store.key, nv.policy.Version)
	h := next.Hash()
	i.log.Info("adopted the policy in force", "policy_version", next.Version, "policy_hash", hex.EncodeToString(h[:]), "reissued", made)
	return nil
}

// Apply decides an encoded policy update (messages.PolicyApply) in process,
// without NATS: the same work the policy-apply endpoint does. It returns the
// encoded messages.PolicyApplied, or a *messages.Error. Tests use it to put
// one update to each replica in turn.
func (i *Issuer) Apply(ctx context.Context, data []byte) ([]byte, error) {
	reply, refusal := i.apply(ctx, data)
	if refusal != nil {
		return nil, refusal
	}
	return reply, nil
}
