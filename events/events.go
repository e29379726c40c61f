// Package events is cohort's audit stream: what happened to units and
// certificates, kept in JetStream for operators to follow with
// `cohort events -f` or `nats stream view cohort_events`.
//
// Events are JSON, one object a message, on subjects
// cohort.v1.events.<kind> (cohort.v1.events.unit.joined, …), so that the
// standard nats tools and jq read them as they are. The stream lives in the
// manager's account and keeps them under limits (age, bytes, message size),
// dropping the oldest first; the issuer publishes its events into it through
// the manager's account, and operators read it with direct gets, which write
// nothing anywhere, or through a consumer of their own that pulls, which the
// manager creates for them once VetReader passed it (package access).
//
// Guarantees:
//   - An event carries no secret: no key, no token, no sealed blob; only
//     names, measurements, addresses, codes and reasons.
//   - Publishing never blocks the caller's request path: events are
//     published asynchronously with a bounded number in flight; an event that
//     cannot be published is counted and logged, and the work it describes
//     goes on.
//   - Refusals, which anyone who may ask can cause, are limited: at most
//     RefusalBurst at once and RefusalRate a second for each kind of refusal
//     from each source, the rest counted into the next one published, so
//     that a flood of bad requests cannot push the genuine events out of the
//     stream.
//   - Decode is strict (unknown fields refused, sizes capped) and fuzzed.
package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"github.com/cohort-dev/cohort/messages"
)

// Stream and subjects.
const (
	StreamName    = messages.EventsStream
	SubjectPrefix = messages.SubjectEventsPrefix
	SubjectAll    = SubjectPrefix + ">"
	Version       = 1
	MaxEventSize  = 4 << 10
	MaxReason     = 512
)

// Kinds of events.
const (
	UnitJoined         = "unit.joined"
	UnitLeft           = "unit.left"
	UnitEvicted        = "unit.evicted"
	UnitJoinRefused    = "unit.join_refused"
	CertificateIssued  = "certificate.issued"
	CertificateRefused = "certificate.refused"
	SessionOpened      = "session.opened"
	SessionClosed      = "session.closed"
	// The issuer's trust lifecycle.
	PolicyApplied   = "policy.applied"     // an update was applied; Policy and PolicyHash say which
	PolicyRefused   = "policy.refused"     // an update was refused; Code and Reason say why
	StateKeyGranted = "issuer.key_granted" // a running issuer gave the state key to another (Measurement)
	StateKeyRefused = "issuer.key_refused" // a request for the state key was refused
	IssuerRecovered = "issuer.recovered"   // recovery-key holders restored the state key into an issuer
	RecoveryRefused = "issuer.recovery_refused"
	RecoveryShare   = "issuer.recovery_share" // a recovery holder's share was taken (Reason names the holder)
	IssuerGenesis   = "issuer.genesis"        // a new state and root were made (Root, Policy, PolicyHash)
	IssuerStopped   = "issuer.stopped"        // an issuer stopped because the policy in force does not list its build (Measurement)
	RootRotated     = "issuer.root_rotated"   // an update rotated the root (Root: the new one's SHA-256; Reason names the old)
)

var kinds = map[string]bool{
	UnitJoined: true, UnitLeft: true, UnitEvicted: true, UnitJoinRefused: true,
	CertificateIssued: true, CertificateRefused: true, SessionOpened: true, SessionClosed: true,
	PolicyApplied: true, PolicyRefused: true, StateKeyGranted: true, StateKeyRefused: true, IssuerRecovered: true, RecoveryRefused: true,
	RecoveryShare: true, IssuerGenesis: true, IssuerStopped: true, RootRotated: true,
}

// Event is one entry of the audit stream.
type Event struct {
	V           int       `json:"v"`
	Time        time.Time `json:"time"`
	Kind        string    `json:"kind"`
	Source      string    `json:"source"` // who published it: "issuer", or "manager/<id>"
	Cluster     string    `json:"cluster,omitempty"`
	Task        string    `json:"task,omitempty"`
	Unit        string    `json:"unit,omitempty"`
	Measurement string    `json:"measurement,omitempty"` // hex
	Addr        string    `json:"addr,omitempty"`
	Code        string    `json:"code,omitempty"`   // the refusal's code
	Reason      string    `json:"reason,omitempty"` // the refusal's reason
	Simulated   bool      `json:"simulated,omitempty"`
	Policy      uint64    `json:"policy,omitempty"`      // the version of the policy in force, for policy events
	PolicyHash  string    `json:"policy_hash,omitempty"` // hex
	Root        string    `json:"root,omitempty"`        // the SHA-256 of the root certificate, hex, for genesis and rotation
}

// Subject is the event's subject.
func (e *Event) Subject() string { return SubjectPrefix + e.Kind }

// Encode checks and encodes an event.
func (e *Event) Encode() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // '<', '>' and '&' as themselves: events are not HTML
	if err := enc.Encode(e); err != nil {
		return nil, fmt.Errorf("events: encode: %w", err)
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > MaxEventSize {
		return nil, fmt.Errorf("events: event is %d bytes, at most %d", len(b), MaxEventSize)
	}
	return b, nil
}

// Decode strictly decodes an event.
func Decode(data []byte) (*Event, error) {
	if len(data) > MaxEventSize {
		return nil, fmt.Errorf("events: event is %d bytes, at most %d", len(data), MaxEventSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var e Event
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("events: decode: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("events: decode: trailing data")
	}
	if err := e.validate(); err != nil {
		return nil, err
	}
	e.Time = e.Time.UTC()
	return &e, nil
}

func (e *Event) validate() error {
	if e.V != Version {
		return fmt.Errorf("events: version %d, want %d", e.V, Version)
	}
	if !kinds[e.Kind] {
		return fmt.Errorf("events: unknown kind %q", e.Kind)
	}
	if e.Source == "" || e.Time.IsZero() {
		return errors.New("events: source and time are required")
	}
	if y := e.Time.UTC().Year(); y < 1970 || y > 9999 {
		return fmt.Errorf("events: time in year %d", y)
	}
	// The caps keep any valid event within MaxEventSize once encoded: control
	// characters are refused, so a byte encodes as at most two ('"', '\\').
	for _, f := range []struct {
		name, value string
		max         int
	}{
		{"source", e.Source, 80}, {"cluster", e.Cluster, 63}, {"task", e.Task, 63}, {"unit", e.Unit, 64},
		{"measurement", e.Measurement, 128}, {"addr", e.Addr, 255}, {"policy_hash", e.PolicyHash, 64}, {"root", e.Root, 64}, {"code", e.Code, 64}, {"reason", e.Reason, MaxReason},
	} {
		if len(f.value) > f.max {
			return fmt.Errorf("events: %s is %d bytes, at most %d", f.name, len(f.value), f.max)
		}
		if strings.ContainsFunc(f.value, unicode.IsControl) {
			return fmt.Errorf("events: %s has a control character", f.name)
		}
	}
	return nil
}

// String renders an event on one line for people.
func (e *Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-20s", e.Time.UTC().Format(time.RFC3339Nano), e.Kind)
	for _, kv := range [][2]string{
		{"cluster", e.Cluster}, {"task", e.Task}, {"unit", e.Unit}, {"addr", e.Addr},
		{"code", e.Code}, {"measurement", e.Measurement},
	} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	if e.Policy != 0 {
		fmt.Fprintf(&b, " policy=%d", e.Policy)
	}
	if e.PolicyHash != "" {
		fmt.Fprintf(&b, " policy_hash=%s", e.PolicyHash)
	}
	if e.Root != "" {
		fmt.Fprintf(&b, " root=%s", e.Root)
	}
	if e.Simulated {
		b.WriteString(" simulated")
	}
	if e.Reason != "" {
		fmt.Fprintf(&b, " reason=%q", e.Reason)
	}
	fmt.Fprintf(&b, " source=%s", e.Source)
	return b.String()
}
