package issuer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cohort-dev/cohort/messages"
)

// Root rotation. The policy's root_generation numbers the state's root; an
// update that raises it by one (signed like any update) rotates the root.
// Each generation's root is a record of its own, made once, create-only, by
// whichever replica first needs it: "root" for the genesis root, "root.<g>"
// after. A root after the first carries its vouchers: each earlier root's
// certificate of the next root's key (vouch), oldest first, so that a
// holder of any earlier root.pem checks its way to the current root
// (issuerclient.VerifyVouchers). Task and group certificates are made anew
// under the new root, with the same keys; cluster keys do not change.
//
// No two roots are ever served at once (fence): a replica serves only
// while it has confirmed the policy in force within the lease, and one that
// adopts a new root answers under neither for a lease first. A replica that
// has not seen the rotation has, by then, stopped for want of confirmation
// or seen it.

// rootState is one generation's root and its vouchers.
type rootState struct {
	gen      uint32
	cred     *credential
	vouchers [][]byte // DER, oldest first; empty for the genesis root
}

// rootSpec is the spec of a root record after the first: its generation
// and vouchers.
type rootSpec struct {
	V          uint16   `msgpack:"v"`
	Generation uint32   `msgpack:"generation"`
	Vouchers   [][]byte `msgpack:"vouchers"`
}

// rootRecord names a generation's root record.
func rootRecord(gen uint32) string {
	if gen <= 1 {
		return rootKey
	}
	return rootKey + "." + strconv.FormatUint(uint64(gen), 10)
}

// rootOf returns the root of generation gen, making it (vouched for by the
// root before it) when the state has none. Called only by load or under
// adopting; the roots met are cached.
func (i *Issuer) rootOf(ctx context.Context, gen uint32, validity time.Duration) (*rootState, error) {
	if r := i.roots[gen]; r != nil {
		return r, nil
	}
	if gen <= 1 {
		return nil, errors.New("issuer: the genesis root is loaded with the state")
	}
	prev, err := i.rootOf(ctx, gen-1, validity)
	if err != nil {
		return nil, err
	}
	name := rootRecord(gen)
	for {
		c, spec, rev, err := i.store.loadCredential(ctx, name)
		if err == nil {
			var s rootSpec
			if err := messages.Unmarshal(spec, maxRecord, &s); err != nil || s.V != recordVersion || s.Generation != gen || len(s.Vouchers) != int(gen-1) {
				return nil, fmt.Errorf("%w: state %q: not a root of generation %d", ErrTampered, name, gen)
			}
			r := &rootState{gen: gen, cred: c, vouchers: s.Vouchers}
			i.roots[gen] = r
			return r, nil
		}
		if !errors.Is(err, errNotFound) {
			return nil, err
		}
		next, err := newRoot(i.cfg.Rand, i.cfg.Now(), validity, i.cfg.Platform.Simulated(), gen)
		if err != nil {
			return nil, err
		}
		v, err := vouch(i.cfg.Rand, prev.cred, next)
		if err != nil {
			return nil, err
		}
		spec, err = messages.Marshal(&rootSpec{V: recordVersion, Generation: gen, Vouchers: append(append([][]byte(nil), prev.vouchers...), v)})
		if err != nil {
			return nil, err
		}
		if _, err = i.store.putCredential(ctx, name, next, spec, rev); err != nil && !errors.Is(err, errExists) {
			return nil, err
		} else if err == nil {
			i.log.Info("made the root of generation "+strconv.FormatUint(uint64(gen), 10), "root", fingerprint(next.cert), "vouched_by", fingerprint(prev.cred.cert))
		}
		// Made here, or by another replica first: load what stands.
	}
}

// fence decides whether a replica may answer under its root: only within
// the lease of its last confirmation of the policy in force, and not while
// it switches roots. Times are this process's monotonic clock, as offsets
// from base, kept in atomics: every request checks the fence, so it takes
// no lock.
type fence struct {
	lease time.Duration
	now   func() time.Time
	base  time.Time

	confirmed atomic.Int64 // when the last read that found the policy in force was sent
	until     atomic.Int64 // no answer before: the replica is switching roots
}

func newFence(lease time.Duration, now func() time.Time) *fence {
	f := &fence{lease: lease, now: now, base: now()}
	f.confirmed.Store(never)
	return f
}

// never is the confirmation time of a replica that has not confirmed.
const never = math.MinInt64 / 2

func (f *fence) at(t time.Time) int64 { return int64(t.Sub(f.base)) }

// confirm records a read, sent at sent, that found the policy this
// replica serves to be the one in force.
func (f *fence) confirm(sent time.Time) {
	at := f.at(sent)
	for {
		cur := f.confirmed.Load()
		if at <= cur || f.confirmed.CompareAndSwap(cur, at) {
			return
		}
	}
}

// switching holds every answer for a lease: the replica adopted a new
// root, which it may serve only once every replica that has not seen it
// has stopped serving the old one.
func (f *fence) switching() {
	f.until.Store(f.at(f.now().Add(f.lease)))
}

// check refuses an answer the fence holds back.
func (f *fence) check() *messages.Error {
	now := f.at(f.now())
	if until := f.until.Load(); now < until {
		return messages.Refusal(messages.CodeRotating, "the issuer replicas are switching to a new root: retry in %v", time.Duration(until-now).Round(time.Millisecond))
	}
	confirmed := f.confirmed.Load()
	if confirmed == never {
		return messages.Refusal(messages.CodeUnconfirmed, "this issuer replica has not yet confirmed the policy in force with its state stream's leader: retry")
	}
	if since := time.Duration(now - confirmed); since > f.lease {
		return messages.Refusal(messages.CodeUnconfirmed, "this issuer replica has not confirmed the policy in force for %v (its JetStream does not answer?), so cannot tell whether its root is current: retry", since.Round(time.Millisecond))
	}
	return nil
}
