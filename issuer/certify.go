package issuer

// The certify decision: a unit's request, its evidence verified and judged
// against the policy in force, answered with a report sealed to the unit's
// key, or with a refusal signed by the root.

import (
	"context"
	"crypto/ecdsa"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/replay"
	"github.com/cohort-dev/cohort/service"
)

// Certify decides an encoded certify request in process, without NATS: the
// same work the certify endpoint does. It returns the encoded reply, or a
// *messages.Error. The benchmark uses it to measure the protocol's ceiling.
func (i *Issuer) Certify(ctx context.Context, data []byte) ([]byte, error) {
	reply, refusal := i.certify(ctx, data)
	if refusal != nil {
		return nil, refusal
	}
	return reply, nil
}

// outcome is what a certify request came to, as far as it got: for the
// log, the audit event and the metrics.
type outcome struct {
	root        *rootState // the root of the view the request was decided in
	task        string
	measurement []byte
	simulated   bool
	requestHash []byte // SHA-256 of the whole request, once its body decoded: refusals are then signed
	verified    string // "", or what verifying the evidence came to: verified, invalid, collateral
	platform    string // the platform and TCB status the evidence verified as
	tcbStatus   string
}

// certify decides a certify request and reports the outcome. It returns the
// encoded reply, or a refusal; a refusal changes nothing.
func (i *Issuer) certify(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	start := time.Now()
	if refusal := i.fence.check(); refusal != nil {
		return nil, refusal // unsigned: the unit retries
	}
	o := outcome{root: i.view.Load().root}
	reply, refusal := i.decide(ctx, data, &o)
	i.report(&o, refusal, time.Since(start))
	if reply != nil {
		// Checked again as it leaves: a root adopted meanwhile holds it back.
		if r := i.fence.check(); r != nil || i.view.Load().root != o.root {
			return nil, firstRefusal(r, messages.Refusal(messages.CodeRotating, "the issuer switched roots while it answered: retry"))
		}
	}
	if refusal != nil && o.requestHash != nil {
		// Signed by the root, so that the unit can tell this refusal from
		// one anybody on NATS could send. Signed or not at all: one that
		// cannot be signed is answered with an internal error in its
		// place, which decides nothing (a unit acts only on a signed
		// refusal, and tries an internal error again) and says what
		// happened, rather than with the decision unsigned, which would
		// read as the issuer's to whoever does not check the proof.
		d := messages.RefusalDigest(o.requestHash, refusal.Code, refusal.Reason)
		sig, err := i.signRefusal(i.cfg.Rand, o.root.cred.key, d[:])
		if err != nil {
			i.log.Error("signing a refusal failed: answering an internal error in its place", "code", refusal.Code, "reason", refusal.Reason, "err", err)
			return nil, messages.Refusal(messages.CodeInternal, "the issuer could not sign its refusal: retry")
		}
		signed := *refusal
		signed.Proof = sig
		refusal = &signed
	}
	return reply, refusal
}

func (i *Issuer) report(o *outcome, refusal *messages.Error, took time.Duration) {
	ev := events.Event{Kind: events.CertificateIssued, Task: o.task, Simulated: o.simulated}
	if o.measurement != nil {
		ev.Measurement = hex.EncodeToString(o.measurement)
	}
	code := "issued"
	if refusal != nil {
		code = string(refusal.Code)
		ev.Kind, ev.Code, ev.Reason = events.CertificateRefused, code, refusal.Reason
		level := slog.LevelInfo
		if refusal.Code == messages.CodeReplay || refusal.Code == messages.CodeInternal {
			level = slog.LevelWarn
		}
		i.log.Log(context.Background(), level, "certify refused", "task", o.task, "code", refusal.Code, "reason", refusal.Reason, "measurement", ev.Measurement)
	} else if i.log.Enabled(context.Background(), slog.LevelDebug) {
		i.log.Debug("certified", "task", o.task, "measurement", ev.Measurement, "simulated", o.simulated)
	}
	i.metrics.observe(code, took)
	if o.verified != "" {
		i.metrics.verification(o.platform, o.tcbStatus, o.verified)
	}
	if i.events != nil {
		i.events.Publish(ev)
	}
}

// decide is certify's decision, filling o as it learns who asks.
func (i *Issuer) decide(ctx context.Context, data []byte, o *outcome) ([]byte, *messages.Error) {
	var req messages.CertifyRequest
	if err := messages.Decode(data, messages.MaxCertifyRequest, &req); err != nil {
		return nil, service.DecodeRefusal("certify request", err)
	}
	var body messages.CertifyBody
	if err := messages.Decode(req.Body, messages.MaxCertifyBody, &body); err != nil {
		return nil, service.DecodeRefusal("certify request body", err)
	}
	// A refusal is signed over the whole request, evidence included, so
	// that it answers this request only: another evidence attached to a
	// unit's body gets a refusal the unit does not take for its own.
	full := sha256.Sum256(data)
	o.requestHash = full[:]
	pub, refusal := i.fresh(body.KEM, body.PublicKey, body.Time)
	if refusal != nil {
		return nil, refusal
	}
	now := i.cfg.Now()
	o.task = body.Task
	claims, err := i.cfg.Verifier.Verify(ctx, req.Evidence)
	if err != nil && !errors.Is(err, enclave.ErrInvalidEvidence) && ctx.Err() != nil {
		// Given up on as the issuer stops: nothing is known of the evidence.
		return nil, messages.Refusal(messages.CodeInternal, "the issuer stopped while it verified the evidence")
	}
	if err != nil {
		o.verified = "invalid"
		if errors.Is(err, enclave.ErrCollateral) {
			// Not the evidence's fault: the issuer's cache lacks what it
			// needs, or holds it expired. The unit retries.
			o.verified = "collateral"
			return nil, messages.Refusal(messages.CodeCollateral, "%v", err)
		}
		return nil, messages.Refusal(messages.CodeEvidence, "%v", err)
	}
	o.verified, o.platform, o.tcbStatus = "verified", claims.Backend, claims.TCBStatus
	o.measurement, o.simulated = claims.UniqueID, claims.Simulated
	if claims.ReportData != messages.CertifyBinding(req.Body) {
		return nil, messages.Refusal(messages.CodeBinding, "the evidence's report data does not bind this request")
	}
	// One view for the whole request: an update swaps it whole.
	v := i.view.Load()
	o.root = v.root
	// Task names are answered only to verified evidence that binds the request.
	task, ok := v.tasks[body.Task]
	if !ok {
		return nil, messages.Refusal(messages.CodeUnknownTask, "the policy names no task %q", body.Task)
	}
	if refusal := v.policy.accept(body.Task, claims); refusal != nil {
		return nil, refusal
	}
	if body.Cluster != "" && !slices.Contains(task.clusterIDs, body.Cluster) {
		return nil, messages.Refusal(messages.CodeClusterNotCovered, "task %q does not run cluster %q (it runs %v)", body.Task, body.Cluster, task.clusterIDs)
	}
	// Every group is checked before anything is handed out: one the unit
	// may not hold refuses the whole request.
	groups := make([]*slot, len(body.Groups))
	for k, id := range body.Groups {
		g, ok := v.policy.Group(id)
		if !ok {
			return nil, messages.Refusal(messages.CodeUnknownGroup, "the policy names no group %q", id)
		}
		if !g.Has(body.Task) {
			// The reason does not list the group's tasks: the requester is not one.
			return nil, messages.Refusal(messages.CodeNotInGroup, "task %q is not a member of group %q", body.Task, id)
		}
		groups[k] = v.groups[id]
	}
	switch i.replay.Check(body.Nonce, now) {
	case replay.Seen:
		return nil, messages.Refusal(messages.CodeReplay, "this request's nonce was used before")
	case replay.Full:
		return nil, messages.Refusal(messages.CodeOverloaded, "too many recent requests to track replays")
	}

	th := i.current(ctx, task)
	plain := th.secrets[body.Cluster] // present: the cluster was checked above
	var groupCerts []messages.GroupCert
	if len(groups) > 0 {
		gh := make([]*held, len(groups))
		for k, g := range groups {
			gh[k] = i.current(ctx, g)
			groupCerts = append(groupCerts, messages.GroupCert{ID: gh[k].name, Cert: gh[k].cred.cert.Raw})
		}
		if plain, err = messages.Marshal(secrets(v.clusters, th, body.Cluster, gh)); err != nil {
			return nil, messages.Refusal(messages.CodeInternal, "encoding the secrets failed")
		}
		defer clear(plain)
	}
	requestHash := messages.RequestHash(req.Body)
	sealed, err := hpke.Seal(pub, hpke.HKDFSHA256(), hpke.AES256GCM(), messages.SecretsInfo(requestHash[:]), plain)
	if err != nil {
		i.log.Error("seal report", "task", body.Task, "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "sealing the report failed")
	}
	chain := [][]byte{th.cred.cert.Raw, v.root.cred.cert.Raw}
	rb, err := messages.Marshal(&messages.ReportBody{
		V: messages.Version, RequestHash: requestHash[:], Task: body.Task, Chain: chain, Groups: groupCerts, Sealed: sealed,
	})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the report failed")
	}
	digest := messages.ReportDigest(rb)
	sig, err := ecdsa.SignASN1(i.cfg.Rand, v.root.cred.key, digest[:])
	if err != nil {
		i.log.Error("sign report", "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "signing the report failed")
	}
	out, err := messages.Marshal(&messages.CertifyReply{V: messages.Version, Body: rb, Signature: sig})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the reply failed")
	}
	return out, nil
}

// fresh checks what every sealed-to request carries: a KEM the issuer
// accepts, a valid public key for it, and a time within the clock skew.
func (i *Issuer) fresh(kemID uint16, publicKey []byte, at int64) (hpke.PublicKey, *messages.Error) {
	kem, err := acceptedKEM(kemID)
	if err != nil {
		return nil, messages.Refusal(messages.CodeUnsupportedKEM, "%v", err)
	}
	pub, err := kem.NewPublicKey(publicKey)
	if err != nil {
		return nil, messages.Refusal(messages.CodeMalformed, "public key is not a valid key for KEM 0x%04x", kemID)
	}
	if skew := i.cfg.Now().Sub(time.Unix(0, at)); skew > i.cfg.MaxClockSkew || skew < -i.cfg.MaxClockSkew {
		return nil, messages.Refusal(messages.CodeStale, "request time is %v from the issuer's clock, more than %v", skew.Round(time.Millisecond), i.cfg.MaxClockSkew)
	}
	return pub, nil
}

// acceptedKEM returns the HPKE KEM for id if the issuer accepts it.
func acceptedKEM(id uint16) (hpke.KEM, error) {
	switch id {
	case messages.KEMMLKEM768X25519, messages.KEMX25519:
		return hpke.NewKEM(id)
	}
	return nil, fmt.Errorf("KEM 0x%04x is not accepted (want 0x%04x ML-KEM-768+X25519 or 0x%04x X25519)", id, messages.KEMMLKEM768X25519, messages.KEMX25519)
}

// firstRefusal returns the first refusal that is not nil.
func firstRefusal(a, b *messages.Error) *messages.Error {
	if a != nil {
		return a
	}
	return b
}
