package unit

// Known-answer tests of what a unit reads and writes that others must read
// alike: the TLS session-ticket key a cluster's units share, the session
// records it learns from the stream, and the call claims it writes and
// reads (claims.go).
//
// The expected values are in testdata/vectors.json, written once from a
// reviewed run and never recomputed by the code under test: a change that
// alters any of them breaks a cluster whose units run different builds, and
// every stored record and claim. Records and claims are the session of
// channel/testdata/vectors.json; ticket keys are also derived again by spec
// below, with the label as a literal, on the standard library alone.
//
// To add a vector, write its inputs into the file (outputs empty) and run
//
//	go test ./unit -run TestKnownAnswers -args -write-vectors
//
// which fills in the outputs of every vector from the code under test.
// Review the diff before committing: an output that changed is a wire
// break, not something to regenerate.

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/channel"
	"github.com/cohort-dev/cohort/internal/kattest"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
)

// hexBytes is a byte string written as hex in the vectors; null is nil.
type hexBytes = kattest.Hex

type unitVectors struct {
	Comment    []string           `json:"comment"`
	TicketKeys []ticketKeyVector  `json:"ticket_keys"`
	Records    []learnedRecordVec `json:"records"`
	Claims     []unitClaimVector  `json:"claims"`
}

type ticketKeyVector struct {
	Name       string   `json:"name"`
	Cluster    string   `json:"cluster"`
	Epoch      uint32   `json:"epoch"`
	ClusterKey hexBytes `json:"cluster_key"`
	TicketKey  hexBytes `json:"ticket_key"` // output
}

// learnedRecordVec: a session record as the stream holds it, and the
// session a unit of the cluster learns from it.
type learnedRecordVec struct {
	Name       string   `json:"name"`
	Cluster    string   `json:"cluster"`
	Epoch      uint32   `json:"epoch"`
	ClusterKey hexBytes `json:"cluster_key"`
	Record     hexBytes `json:"record"` // an encoded messages.SessionRecord
	Now        int64    `json:"now"`    // Unix nanoseconds
	Session    hexBytes `json:"session"`
	C2S        hexBytes `json:"c2s"`     // output
	S2C        hexBytes `json:"s2c"`     // output
	Task       string   `json:"task"`    // output
	User       string   `json:"user"`    // output
	Expires    int64    `json:"expires"` // output
	Closed     bool     `json:"closed"`  // output
}

// unitClaimVector: a claim a unit writes on a call, and reads back.
type unitClaimVector struct {
	Name       string   `json:"name"`
	Cluster    string   `json:"cluster"`
	Epoch      uint32   `json:"epoch"`
	ClusterKey hexBytes `json:"cluster_key"`
	Unit       string   `json:"unit"`
	Session    hexBytes `json:"session"`
	Seq        uint64   `json:"seq"`
	State      uint8    `json:"state"`
	Prev       uint64   `json:"prev"`
	Answer     hexBytes `json:"answer"`
	Subject    string   `json:"subject"` // output
	Stored     hexBytes `json:"stored"`  // output: the message published
}

func readVectors(t *testing.T) *unitVectors {
	t.Helper()
	var v unitVectors
	kattest.Read(t, &v)
	return &v
}

func TestKnownAnswers(t *testing.T) {
	v := readVectors(t)
	if kattest.Writing() {
		fillVectors(t, v)
		kattest.Write(t, v)
		return
	}
	if len(v.TicketKeys) == 0 || len(v.Records) == 0 || len(v.Claims) == 0 {
		t.Fatalf("%s lacks a kind of vector", kattest.File)
	}
	t.Run("ticket keys", func(t *testing.T) {
		for _, s := range v.TicketKeys {
			k, err := TicketKey(&issuerclient.ClusterKey{Cluster: s.Cluster, Epoch: s.Epoch, Key: s.ClusterKey})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(k[:], s.TicketKey) {
				t.Errorf("%s: ticket key is %x, want %x", s.Name, k, s.TicketKey)
			}
			spec, err := hkdf.Key(sha256.New, s.ClusterKey, nil, "cohort/v1 tls session tickets\x00"+s.Cluster+"\x00"+strconv.FormatUint(uint64(s.Epoch), 10), 32)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(spec, s.TicketKey) {
				t.Errorf("%s: ticket key by spec is %x, want %x", s.Name, spec, s.TicketKey)
			}
		}
	})
	t.Run("records", func(t *testing.T) {
		for _, s := range v.Records {
			got, ok := learned(&s)
			if !ok {
				t.Errorf("%s: the unit learns no session from the record", s.Name)
				continue
			}
			if want := (session{task: s.Task, user: s.User, expires: time.Unix(0, s.Expires), closed: s.Closed}); got.task != want.task ||
				got.user != want.user || !got.expires.Equal(want.expires) || got.closed != want.closed {
				t.Errorf("%s: the unit learns %+v, want %+v", s.Name, got, want)
			}
			var c2s, s2c []byte
			if got.keys != nil {
				c2s, s2c = got.keys.C2S, got.keys.S2C
			}
			if !bytes.Equal(c2s, s.C2S) || !bytes.Equal(s2c, s.S2C) {
				t.Errorf("%s: the unit learns keys %x, %x; want %x, %x", s.Name, c2s, s2c, s.C2S, s.S2C)
			}
		}
	})
	t.Run("claims", func(t *testing.T) {
		for _, s := range v.Claims {
			checkUnitClaim(t, &s)
		}
	})
}

// learned is the session a unit of the vector's cluster learns from its
// record.
func learned(s *learnedRecordVec) (*session, bool) {
	u := &Unit{cfg: Config{Cluster: s.Cluster, Now: func() time.Time { return time.Unix(0, s.Now) }}, log: slog.New(slog.DiscardHandler)}
	u.learn(&issuerclient.ClusterKey{Cluster: s.Cluster, Epoch: s.Epoch, Key: s.ClusterKey}, s.Record)
	return u.sessions.get(s.Session)
}

// claimsJS captures what a unit publishes.
type claimsJS struct {
	jetstream.JetStream
	subject string
	data    []byte
}

func (j *claimsJS) Publish(_ context.Context, subject string, data []byte, _ ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	j.subject, j.data = subject, bytes.Clone(data)
	return &jetstream.PubAck{Sequence: 1}, nil
}

// claimsStream holds one stored message.
type claimsStream struct {
	jetstream.Stream
	msg *jetstream.RawStreamMsg
}

func (s *claimsStream) GetLastMsgForSubject(_ context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	if s.msg == nil || s.msg.Subject != subject {
		return nil, jetstream.ErrMsgNotFound
	}
	return s.msg, nil
}

// claimsCluster is a cluster of the vector's unit, over js and a calls
// stream holding stored.
func claimsCluster(t *testing.T, s *unitClaimVector, js jetstream.JetStream, stored *jetstream.RawStreamMsg) *cluster {
	t.Helper()
	claimKey, err := channel.ClaimKey(s.ClusterKey, s.Cluster, s.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	st := &streams{}
	for k := range st.calls {
		st.calls[k] = &callShard{stream: &claimsStream{msg: stored}}
	}
	u := &Unit{cfg: Config{ID: s.Unit, Cluster: s.Cluster}, log: slog.New(slog.DiscardHandler), js: js}
	return &cluster{u: u, ck: &issuerclient.ClusterKey{Cluster: s.Cluster, Epoch: s.Epoch, Key: s.ClusterKey}, claimKey: claimKey, st: st}
}

// storedClaim is the claim as JetStream keeps it, written over prev.
func storedClaim(subject string, data []byte, prev uint64, withHeader bool) *jetstream.RawStreamMsg {
	m := &jetstream.RawStreamMsg{Subject: subject, Sequence: prev + 1, Data: data, Header: nats.Header{}}
	if withHeader {
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(prev, 10))
	}
	return m
}

func checkUnitClaim(t *testing.T, s *unitClaimVector) {
	subject := messages.ClaimSubject(s.Cluster, s.Session, s.Seq)
	if s.State == messages.ClaimClosed {
		subject = messages.ClosedSubject(s.Cluster, s.Session)
	}
	if subject != s.Subject {
		t.Errorf("%s: subject is %q, want %q", s.Name, subject, s.Subject)
	}
	js := &claimsJS{}
	if _, err := claimsCluster(t, s, js, nil).write(context.Background(), s.Subject, s.State, s.Prev, s.Answer, time.Minute); err != nil {
		t.Fatalf("%s: write: %v", s.Name, err)
	}
	if js.subject != s.Subject || !bytes.Equal(js.data, s.Stored) {
		t.Errorf("%s: the unit publishes at %q\n%x\nwant at %q\n%x", s.Name, js.subject, js.data, s.Subject, s.Stored)
	}

	// The stored claim reads back as the unit's, where it stands; the same
	// bytes over another revision, or without one, are tampered with.
	// (read refuses a closed mark on a call's subject.)
	if s.State == messages.ClaimClosed {
		return
	}
	c := claimsCluster(t, s, nil, storedClaim(s.Subject, s.Stored, s.Prev, true))
	last, err := c.read(context.Background(), s.Session, s.Subject)
	if err != nil {
		t.Errorf("%s: read: %v", s.Name, err)
	} else if last.claim.Unit != s.Unit || last.claim.State != s.State || last.claim.Prev != s.Prev || !bytes.Equal(last.claim.Answer, s.Answer) {
		t.Errorf("%s: read %+v", s.Name, last.claim)
	}
	for name, m := range map[string]*jetstream.RawStreamMsg{
		"over another revision": storedClaim(s.Subject, s.Stored, s.Prev+1, true),
		"without its revision":  storedClaim(s.Subject, s.Stored, s.Prev, false),
	} {
		if _, err := claimsCluster(t, s, nil, m).read(context.Background(), s.Session, s.Subject); !errors.Is(err, channel.ErrTampered) {
			t.Errorf("%s: stored %s: %v, want %v", s.Name, name, err, channel.ErrTampered)
		}
	}
}

// fillVectors computes the outputs of every vector from the code under
// test; only for -write-vectors.
func fillVectors(t *testing.T, v *unitVectors) {
	for i := range v.TicketKeys {
		s := &v.TicketKeys[i]
		k, err := TicketKey(&issuerclient.ClusterKey{Cluster: s.Cluster, Epoch: s.Epoch, Key: s.ClusterKey})
		if err != nil {
			t.Fatal(err)
		}
		s.TicketKey = k[:]
	}
	for i := range v.Records {
		s := &v.Records[i]
		got, ok := learned(s)
		if !ok {
			t.Fatalf("%s: the unit learns no session", s.Name)
		}
		s.Task, s.User, s.Expires, s.Closed = got.task, got.user, got.expires.UnixNano(), got.closed
		s.C2S, s.S2C = nil, nil
		if got.keys != nil {
			s.C2S, s.S2C = got.keys.C2S, got.keys.S2C
		}
	}
	for i := range v.Claims {
		s := &v.Claims[i]
		s.Subject = messages.ClaimSubject(s.Cluster, s.Session, s.Seq)
		if s.State == messages.ClaimClosed {
			s.Subject = messages.ClosedSubject(s.Cluster, s.Session)
		}
		js := &claimsJS{}
		if _, err := claimsCluster(t, s, js, nil).write(context.Background(), s.Subject, s.State, s.Prev, s.Answer, time.Minute); err != nil {
			t.Fatal(fmt.Errorf("%s: %w", s.Name, err))
		}
		s.Stored = js.data
	}
}
