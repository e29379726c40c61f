package issuer

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/rate"
	"github.com/cohort-dev/cohort/service"
)

// The evidence endpoint's bounds. Every account may ask for the issuer's
// evidence, and each answer costs one attestation (on hardware, a call to
// the platform's firmware or quoting service that takes milliseconds), so
// the endpoint is bounded on its own: a pool of its own (EvidenceWorkers),
// which never holds a certify worker; each requester's rate (EvidenceRate),
// refused as rate_limited before the request is queued; and a total for
// each class of requesters together (EvidenceTotal).
//
// The requester is the account and the key the NATS server stamped the
// request with (service.SenderOf): every account imports the endpoint
// sharing its requesters (package access), and the server writes the stamp
// over any the sender wrote. A request with no stamp crossed no import: it
// comes from within the issuer's own account (whose credential may not
// publish it: package access), or from a deployment without accounts
// (embedded, tests, benchmarks), where no requester can be told from
// another; those all count as one requester, held to EvidenceTotal.
//
// The classes, each held to EvidenceTotal: the units of every cluster
// (accounts cluster-<C>), who ask before they certify and every RootCheck;
// everyone else (users, operators, managers); and the unstamped. So no
// number of users together leaves the units without evidence, and the
// attestations the endpoint makes are at most three times EvidenceTotal.
var (
	// DefaultEvidenceRate is Config.EvidenceRate's default. A unit asks
	// once when it certifies and once a RootCheck (a minute) after; a user
	// when it trusts the issuer; an operator at each `cohort status`,
	// which `cohort faults` polls every 50 ms while it waits for a
	// deployment to recover: at 5 a second that wait learns of it at most
	// 200 ms late. One requester at this rate holds a tenth of a worker
	// whose attestations take 20 ms.
	DefaultEvidenceRate = rate.Limit{Rate: 5, Burst: 10}
	// DefaultEvidenceTotal is Config.EvidenceTotal's default: ten
	// requesters of a class at their full rate; 100 units (re)starting at
	// once are answered at once, then 50 a second. The units and the users
	// at their totals, 100 attestations a second, take
	// DefaultEvidenceWorkers' time while an attestation takes up to 20 ms:
	// what is admitted is answered as fast as it comes.
	DefaultEvidenceTotal = rate.Limit{Rate: 50, Burst: 100}
)

// DefaultEvidenceWorkers is Config.EvidenceWorkers' default: attestations
// mostly wait on the platform (the firmware, or a quoting service), which
// serves one at a time; two workers overlap one's wait with the other's
// work. Where attestation is computed (the simulated platform's, 25 µs),
// the totals hold it to a few milliseconds of CPU a second.
const DefaultEvidenceWorkers = 2

// maxEvidenceRequesters bounds the requesters whose rates the issuer tracks
// at once (package rate: beyond, those whose buckets are full are forgotten).
const maxEvidenceRequesters = 1 << 14

// The classes of evidence requesters.
const (
	classUnits  = "units"
	classOthers = "others"
	classOwn    = "own"
)

var classNames = map[string]string{
	classUnits:  "the units of every cluster",
	classOthers: "users, operators and managers",
	classOwn:    "requests that crossed no import (from within the issuer's account, or every requester in a deployment without accounts)",
}

// clusterAccountPrefix starts the name of a cluster's account
// (access.ClusterAccount).
const clusterAccountPrefix = "cluster-"

// evidenceGate holds the evidence endpoint's rates.
type evidenceGate struct {
	each, total *rate.Buckets
	logs        *rate.Buckets // refusals logged, by requester
	now         func() time.Time
	unshared    atomic.Bool // a request stamped with its account only was logged
}

func newEvidenceGate(each, total rate.Limit) *evidenceGate {
	return &evidenceGate{
		each:  rate.New(each, maxEvidenceRequesters),
		total: rate.New(total, len(classNames)),
		logs:  rate.New(rate.Limit{Rate: events.RefusalRate, Burst: events.RefusalBurst}, maxEvidenceRequesters),
		now:   time.Now, // rates are of real time, whatever Config.Now says
	}
}

// requester names who sent a request, from the NATS server's stamp, and the
// class it counts in. The name is the account and the key (what the
// server's stamp names: a key's public part), "" for the unstamped.
// unshared reports a stamp that names the account only: the account's
// import does not share its requesters.
func requester(m service.Msg) (key, class string, unshared bool, refusal *messages.Error) {
	s, stamped, err := service.SenderOf(m.Header)
	switch {
	case !stamped:
		return "", classOwn, false, nil
	case err != nil:
		return "", "", false, messages.Refusal(messages.CodeMalformed, "%v", err)
	}
	key = "account " + s.Account
	if s.User != "" {
		key += " key " + s.User
	}
	class = classOthers
	if strings.HasPrefix(s.Account, clusterAccountPrefix) {
		class = classUnits
	}
	return key, class, s.User == "", nil
}

// admitEvidence takes an evidence request within its requester's rate and
// its class's total, and refuses it as rate_limited otherwise: on the
// subscription's goroutine, before it is queued or attested.
func (i *Issuer) admitEvidence(m service.Msg) *messages.Error {
	key, class, unshared, refusal := requester(m)
	if unshared && i.gate.unshared.CompareAndSwap(false, true) {
		i.log.Warn("an evidence request is stamped with its account only: the account's import of the evidence does not share its requesters, "+
			"so all of the account's keys are one requester to the rates; reload the NATS servers' configuration from this cohort's deployment", "requester", key)
	}
	if refusal == nil {
		refusal = i.gate.take(key, class)
	}
	if refusal != nil {
		i.metrics.evidenceOutcome(string(refusal.Code))
		i.gate.logRefusal(i.log, key, refusal)
	}
	return refusal
}

// take takes one request of key, in class, at now.
func (g *evidenceGate) take(key, class string) *messages.Error {
	now := g.now()
	if class != classOwn {
		if ok, _ := g.each.Take(key, 1, now); !ok {
			l := g.each.Limit()
			return messages.Refusal(messages.CodeRateLimited, "%s asks for the issuer's evidence faster than %g a second (%g at once): each answer costs an attestation", key, l.Rate, l.Burst)
		}
	}
	if ok, _ := g.total.Take(class, 1, now); !ok {
		l := g.total.Limit()
		return messages.Refusal(messages.CodeRateLimited, "the issuer answers %s at most %g evidence requests a second together (%g at once)", classNames[class], l.Rate, l.Burst)
	}
	return nil
}

// logRefusal logs a refusal, at most RefusalBurst at once and RefusalRate a
// second for each requester; the next one logged says how many were not.
func (g *evidenceGate) logRefusal(log *slog.Logger, key string, refusal *messages.Error) {
	ok, held := g.logs.Take(key, 1, g.now())
	if !ok {
		return
	}
	attrs := []any{"requester", key, "code", refusal.Code, "reason", refusal.Reason}
	if held > 0 {
		attrs = append(attrs, "not_logged", held)
	}
	log.Log(context.Background(), slog.LevelInfo, "evidence refused", attrs...)
}

// validLimit checks a rate limit of the configuration.
func validLimit(name string, l rate.Limit) error {
	if !(l.Rate > 0) || !(l.Burst >= 1) {
		return fmt.Errorf("issuer: Config.%s %+v: want a rate above 0 and a burst of at least 1", name, l)
	}
	return nil
}

// answerEvidence answers an evidence request, counting the outcome.
func (i *Issuer) answerEvidence(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	reply, refusal := i.evidence(ctx, data)
	outcome := "answered"
	if refusal != nil {
		outcome = string(refusal.Code)
	}
	i.metrics.evidenceOutcome(outcome)
	return reply, refusal
}

// evidence answers an evidence request: the issuer's evidence, binding its
// root, its policy and the requester's nonce.
func (i *Issuer) evidence(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	var m messages.EvidenceRequest
	if err := messages.Decode(data, messages.MaxEvidenceRequest, &m); err != nil {
		return nil, service.DecodeRefusal("evidence request", err)
	}
	if refusal := i.fence.check(); refusal != nil {
		return nil, refusal
	}
	v := i.view.Load()
	p, root := v.policy, v.root
	hash := p.Hash()
	rd := messages.EvidenceBinding(root.cred.cert.Raw, hash[:], p.Version, m.Nonce)
	ev, err := i.cfg.Platform.Attest(ctx, rd)
	if err != nil {
		i.log.Error("attest", "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "the issuer could not produce evidence")
	}
	// Checked again as it leaves: a root adopted meanwhile holds it back.
	if refusal := i.fence.check(); refusal != nil || i.view.Load().root != root {
		return nil, firstRefusal(refusal, messages.Refusal(messages.CodeRotating, "the issuer switched roots while it answered: retry"))
	}
	return service.Encode(&messages.EvidenceReply{
		V: messages.Version, Evidence: ev, Root: root.cred.cert.Raw, PolicyHash: hash[:], PolicyVersion: p.Version, Backend: i.cfg.Platform.Name(),
		Vouchers: root.vouchers,
	})
}
