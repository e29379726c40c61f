package events

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

func TestVetReader(t *testing.T) {
	req := func(cfg string) []byte {
		return []byte(`{"stream_name":"cohort_events","config":` + cfg + `}`)
	}
	for _, c := range []struct {
		name      string
		body      []byte
		consumers int
		refusal   string // "" when the request passes
	}{
		{"natscli's pager", req(`{"durable_name":"p","ack_policy":"explicit","inactive_threshold":3600000000000,"mem_storage":true}`), 0, ""},
		{"no threshold", req(`{"durable_name":"p"}`), 0, ""},
		{"zero fields", req(`{"deliver_subject":"","flow_control":false,"idle_heartbeat":0}`), 0, ""},
		{"an update at the cap", []byte(`{"stream_name":"cohort_events","action":"update","config":{}}`), MaxReaders, ""},
		{"push", req(`{"deliver_subject":"$KV.cohort_members.x"}`), 0, "deliver_subject is set"},
		{"push, a number", req(`{"deliver_subject":7}`), 0, "deliver_subject is set"},
		{"push twice, the last wins", req(`{"deliver_subject":"","deliver_subject":"x"}`), 0, "deliver_subject is set"},
		{"push, capitalised", req(`{"Deliver_Subject":"x"}`), 0, `key "Deliver_Subject" is not`},
		{"push, folded", req(`{"deliver_ſubject":"x"}`), 0, `is not as the JetStream API spells`},
		{"forever, folded", req(`{"inactive_threshold":1,"Inactive_threshold":36000000000000}`), 0, `is not as the JetStream API spells`},
		{"group", req(`{"deliver_group":"g"}`), 0, "deliver_group is set"},
		{"flow control", req(`{"flow_control":true}`), 0, "flow_control is set"},
		{"heartbeat", req(`{"idle_heartbeat":1000000000}`), 0, "idle_heartbeat is set"},
		{"forever", req(`{"inactive_threshold":36000000000000}`), 0, "over 1h0m0s"},
		{"negative", req(`{"inactive_threshold":-1}`), 0, "not a number of nanoseconds"},
		{"a string", req(`{"inactive_threshold":"1h"}`), 0, "not a number of nanoseconds"},
		{"fraction", req(`{"inactive_threshold":1.5}`), 0, "not a number of nanoseconds"},
		{"over the cap", req(`{}`), MaxReaders, "the most it may have"},
		{"another stream", []byte(`{"stream_name":"KV_cohort_members","config":{}}`), 0, "stream_name must be"},
		{"no config", []byte(`{"stream_name":"cohort_events"}`), 0, "no config object"},
		{"not JSON", []byte(`{`), 0, "not a JSON object"},
		{"null", []byte(`null`), 0, "not a JSON object"},
		{"an array", []byte(`[]`), 0, "not a JSON object"},
		{"trailing", append(req(`{}`), `{}`...), 0, "data after"},
		{"too large", append(req(`{}`), make([]byte, MaxReaderRequest)...), 0, "over 16384"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := VetReader(c.body, c.consumers)
			if c.refusal != "" {
				if !errors.Is(err, ErrReaderRefused) || !strings.Contains(err.Error(), c.refusal) {
					t.Fatalf("VetReader = %v, want a refusal saying %q", err, c.refusal)
				}
				var out map[string]any
				if json.Unmarshal(ReaderRefusal(err), &out) != nil || out["type"] != ReaderCreateResponse {
					t.Fatalf("the refusal is %s", ReaderRefusal(err))
				}
				return
			}
			if err != nil {
				t.Fatalf("VetReader: %v", err)
			}
			checkReader(t, r.Request)
		})
	}
}

// checkReader asserts what every forwarded request holds, read as the
// server reads it (its own type): it pulls, and expires within
// MaxReaderIdle.
func checkReader(t *testing.T, b []byte) {
	t.Helper()
	var out server.CreateConsumerRequest
	if err := json.Unmarshal(b, &out); err != nil {
		return // the server refuses it as it refuses any request it cannot read
	}
	c := out.Config
	if out.Stream != StreamName {
		t.Fatalf("the forwarded request %s names stream %q", b, out.Stream)
	}
	if c.DeliverSubject != "" || c.DeliverGroup != "" || c.FlowControl || c.Heartbeat != 0 {
		t.Fatalf("the forwarded request %s pushes: %+v", b, c)
	}
	if c.InactiveThreshold <= 0 || c.InactiveThreshold > MaxReaderIdle {
		t.Fatalf("the forwarded request %s has inactive_threshold %v", b, c.InactiveThreshold)
	}
}

// No input crashes VetReader, and what it passes holds the reader's rules.
func FuzzVetReader(f *testing.F) {
	f.Add([]byte(`{"stream_name":"cohort_events","config":{"durable_name":"p","inactive_threshold":3600000000000}}`), 0)
	f.Add([]byte(`{"stream_name":"cohort_events","config":{"deliver_subject":"x"}}`), 0)
	f.Add([]byte(`{"stream_name":"cohort_events","action":"update","config":{"deliver_subject":"","deliver_subject":"y"}}`), 16)
	f.Add([]byte(`{"stream_name":"cohort_events","config":{"Deliver_Subject":"x","inactive_threshold":1}}`), 0)
	f.Fuzz(func(t *testing.T, body []byte, consumers int) {
		r, err := VetReader(body, consumers)
		if err != nil {
			if !errors.Is(err, ErrReaderRefused) {
				t.Fatalf("an error that is not a refusal: %v", err)
			}
			return
		}
		checkReader(t, r.Request)
		// What was vetted vets again to itself.
		again, err := VetReader(r.Request, 0)
		if err != nil || string(again.Request) != string(r.Request) {
			t.Fatalf("the forwarded request %s vets to %v, %v", r.Request, again, err)
		}
	})
}
