package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Operators page the audit stream with natscli (`nats stream view
// cohort_events`), which reads a limits stream through a durable pull
// consumer of its own. A consumer is configured by its creator, and one that
// pushes delivers wherever its configuration says, as the stream's account:
// into the members bucket, onto a unit's subjects, into a cluster's session
// stream through an import. So an operator never creates one itself: its
// requests reach the manager (subject messages.SubjectReaderCreate), which
// forwards only a reader's, the request VetReader returns.
const (
	// MaxReaders bounds the consumers on the audit stream at once: each
	// costs the server memory and a timer, and only operators make them.
	MaxReaders = 16
	// MaxReaderIdle is the longest a reader's consumer outlives its last
	// pull; one that names no limit gets it, so that a reader that went
	// away without deleting its consumer leaves nothing behind for long.
	MaxReaderIdle = time.Hour
	// MaxReaderRequest bounds a consumer-create request.
	MaxReaderRequest = 16 << 10
	// ReaderCreateResponse is the type of the JetStream API's answer to a
	// consumer create, which a refusal takes so that natscli reports it.
	ReaderCreateResponse = "io.nats.jetstream.api.v1.consumer_create_response"
)

// ErrReaderRefused is the error of every refused reader request.
var ErrReaderRefused = errors.New("events: consumer refused")

// Reader is a vetted consumer-create request.
type Reader struct {
	// Request is the request to forward: the one asked, with the reader's
	// limits filled in, encoded once more so that the server reads exactly
	// what was vetted (a key given twice counts once, as decoded here).
	Request []byte
	// Update is whether the request asks only to update an existing
	// consumer, which does not add one.
	Update bool
}

// VetReader checks a JetStream consumer-create request (the JSON body of
// $JS.API.CONSUMER.CREATE.<stream>.<name>…) for the audit stream and returns
// the request to forward, or an error wrapping ErrReaderRefused that names
// what is refused. consumers is the number of consumers the stream has now.
//
// A reader pulls: it names no deliver subject, group, flow control or idle
// heartbeat, which only a pushed consumer has; it expires within
// MaxReaderIdle of its last pull; and at most MaxReaders exist at once.
// Everything else is the server's to check. VetReader does no I/O.
func VetReader(body []byte, consumers int) (*Reader, error) {
	if len(body) > MaxReaderRequest {
		return nil, fmt.Errorf("%w: the request has %d bytes, over %d", ErrReaderRefused, len(body), MaxReaderRequest)
	}
	var req map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil || req == nil {
		return nil, fmt.Errorf("%w: the request is not a JSON object", ErrReaderRefused)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: the request has data after its JSON object", ErrReaderRefused)
	}
	if name, _ := req["stream_name"].(string); name != StreamName {
		return nil, fmt.Errorf("%w: stream_name must be %q", ErrReaderRefused, StreamName)
	}
	cfg, ok := req["config"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: the request has no config object", ErrReaderRefused)
	}
	// The server decodes into structs, whose field names encoding/json
	// matches without regard to case, and with Unicode's folding ("ſ" for
	// "s", "K" for "k"): a key spelled otherwise than the API spells it would
	// reach a field this check reads under another name.
	for _, obj := range []map[string]any{req, cfg} {
		for k := range obj {
			if !apiKey(k) {
				return nil, fmt.Errorf("%w: key %q is not as the JetStream API spells its keys (a-z, 0-9, _)", ErrReaderRefused, k)
			}
		}
	}
	for _, key := range []string{"deliver_subject", "deliver_group"} {
		if v, set := cfg[key]; set && !isZero(v) {
			return nil, fmt.Errorf("%w: %s is set: a reader of the audit stream pulls (a pushed consumer would deliver wherever its creator points it)", ErrReaderRefused, key)
		}
	}
	if v, set := cfg["flow_control"]; set && v != nil && v != false {
		return nil, fmt.Errorf("%w: flow_control is set: only a pushed consumer has it, and a reader pulls", ErrReaderRefused)
	}
	if v, set := cfg["idle_heartbeat"]; set && !isZero(v) {
		return nil, fmt.Errorf("%w: idle_heartbeat is set: only a pushed consumer has it, and a reader pulls", ErrReaderRefused)
	}
	switch v, set := cfg["inactive_threshold"]; {
	case !set || isZero(v):
		cfg["inactive_threshold"] = int64(MaxReaderIdle)
	default:
		n, ok := v.(json.Number)
		d, err := strconv.ParseInt(string(n), 10, 64)
		if !ok || err != nil || d < 0 {
			return nil, fmt.Errorf("%w: inactive_threshold is not a number of nanoseconds", ErrReaderRefused)
		}
		if time.Duration(d) > MaxReaderIdle {
			return nil, fmt.Errorf("%w: inactive_threshold %v is over %v: a reader's consumer expires within %v of its last pull", ErrReaderRefused, time.Duration(d), MaxReaderIdle, MaxReaderIdle)
		}
	}
	update := req["action"] == "update"
	if !update && consumers >= MaxReaders {
		return nil, fmt.Errorf("%w: the audit stream has %d consumers, the most it may have: delete one (nats consumer rm %s NAME) or wait until one expires (%v after its last pull)", ErrReaderRefused, consumers, StreamName, MaxReaderIdle)
	}
	out, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReaderRefused, err)
	}
	return &Reader{Request: out, Update: update}, nil
}

// apiKey reports whether k is spelled as the JetStream API spells its keys.
func apiKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// isZero reports whether a decoded JSON value is absent in effect: null, 0 or
// "".
func isZero(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case string:
		return v == ""
	case json.Number:
		f, err := v.Float64()
		return err == nil && f == 0
	}
	return false
}

// ReaderRefusal is the JetStream API's form of a refused consumer create,
// which natscli and nats.go print as they print the server's own.
func ReaderRefusal(err error) []byte {
	b, _ := json.Marshal(map[string]any{
		"type":  ReaderCreateResponse,
		"error": map[string]any{"code": 403, "description": err.Error()},
	})
	return b
}
