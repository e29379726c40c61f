// Package leaderread reads the last message of a subject from a JetStream
// stream's leader, through the API's message get rather than a direct get.
//
// A direct get may be answered by any replica of a replicated stream, and a
// replica may lag the writes its leader has acknowledged; the leader
// answers only with what is committed, and nothing once it has lost its
// leadership. So what Last returns is the subject's last message as of when
// the request was sent, or later. It costs a round trip to the leader: use
// it where a stale read would be wrong (a miss that must be a miss, a
// confirmation that nothing changed), not on every read.
package leaderread

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// answer is the JetStream API's answer to a message get.
type answer struct {
	Message *struct {
		Subject string `json:"subject"`
		Seq     uint64 `json:"seq"`
		Header  []byte `json:"hdrs,omitempty"`
		Data    []byte `json:"data,omitempty"`
	} `json:"message"`
	Error *jetstream.APIError `json:"error"`
}

// Last returns the last message of subject in stream, from the stream's
// leader, or jetstream.ErrMsgNotFound when the subject holds none. The
// connection's credential must allow $JS.API.STREAM.MSG.GET.<stream>; ctx
// should carry a deadline, since a stream without a leader does not answer.
func Last(ctx context.Context, nc *nats.Conn, stream, subject string) (*jetstream.RawStreamMsg, error) {
	req, err := json.Marshal(map[string]string{"last_by_subj": subject})
	if err != nil {
		return nil, err
	}
	reply, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, req)
	if err != nil {
		return nil, fmt.Errorf("leaderread: %s: %w", subject, err)
	}
	var a answer
	if err := json.Unmarshal(reply.Data, &a); err != nil {
		return nil, fmt.Errorf("leaderread: %s: %w", subject, err)
	}
	if a.Error != nil {
		if a.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, fmt.Errorf("leaderread: %s: %w", subject, a.Error)
	}
	if a.Message == nil || a.Message.Subject != subject {
		return nil, fmt.Errorf("leaderread: %s: no message of that subject in the answer", subject)
	}
	m := &jetstream.RawStreamMsg{Subject: a.Message.Subject, Sequence: a.Message.Seq, Data: a.Message.Data, Header: nats.Header{}}
	if len(a.Message.Header) > 0 {
		if m.Header, err = nats.DecodeHeadersMsg(a.Message.Header); err != nil {
			return nil, fmt.Errorf("leaderread: %s: headers: %w", subject, err)
		}
	}
	return m, nil
}
