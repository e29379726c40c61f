package service

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/messages"
)

// TestAdmitRefusesBeforeTheQueue: what Admit refuses is answered at once
// with its refusal, while every worker is busy and the queue is full, so it
// neither waits nor crowds out what was taken; a panic in Admit refuses as
// internal and leaves the service serving.
func TestAdmitRefusesBeforeTheQueue(t *testing.T) {
	nc := start(t)
	release := make(chan struct{})
	started := make(chan struct{}, 16)
	s := newService(t, nc, Endpoint{Name: "slow", Subject: "svc.slow",
		Admit: func(m Msg) *messages.Error {
			switch string(m.Data) {
			case "refuse":
				return messages.Refusal(messages.CodeRateLimited, "too fast")
			case "panic":
				panic("admit")
			}
			return nil
		},
		Handle: func(m Msg) ([]byte, *messages.Error) {
			started <- struct{}{}
			<-release
			return m.Data, nil
		}})
	defer s.Stop()
	defer close(release)
	// Two workers busy, four requests queued: the pool holds all it can.
	inbox := nats.NewInbox()
	if _, err := nc.SubscribeSync(inbox); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		if err := nc.PublishRequest("svc.slow", inbox, []byte("take")); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("the workers did not start")
		}
	}
	for _, data := range []string{"refuse", "panic"} {
		r, err := nc.Request("svc.slow", []byte(data), 10*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		want := messages.CodeRateLimited
		if data == "panic" {
			want = messages.CodeInternal
		}
		if code := r.Header.Get(ErrorCodeHeader); code != string(want) {
			t.Errorf("%s: code %q, want %s", data, code, want)
		}
	}
}

// TestSenderOf: the stamp's fields, no stamp, and stamps that do not decode.
func TestSenderOf(t *testing.T) {
	stamp := func(info string) nats.Header { return nats.Header{RequestInfoHeader: []string{info}} }
	s, ok, err := SenderOf(stamp(`{"acc":"user-alice","user":"UABC","kind":"Client","rtt":"1ms"}`))
	if err != nil || !ok || s != (Sender{Account: "user-alice", User: "UABC", Kind: "Client"}) || !s.Client() {
		t.Errorf("a client's stamp: %+v %v %v", s, ok, err)
	}
	if _, ok, err := SenderOf(nil); ok || err != nil {
		t.Errorf("no stamp: %v %v", ok, err)
	}
	for _, bad := range []string{`{"kind":`, `{"kind":"Client","name":"` + strings.Repeat("x", MaxRequestInfo) + `"}`} {
		if _, ok, err := SenderOf(stamp(bad)); !ok || !errors.Is(err, ErrStamp) {
			t.Errorf("%.20q: %v %v, want ErrStamp", bad, ok, err)
		}
	}
}
