package leaderread

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/embednats"
)

// Last returns the subject's last message, headers included, and
// ErrMsgNotFound for a subject that holds none.
func TestLast(t *testing.T) {
	srv, err := embednats.StartTemp("cohort-leaderread-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "s", Subjects: []string{"s.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"one", "two"} {
		m := nats.NewMsg("s.a")
		m.Data = []byte(d)
		m.Header.Set("X-Test", d)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	m, err := Last(ctx, nc, "s", "s.a")
	if err != nil || string(m.Data) != "two" || m.Sequence != 2 || m.Header.Get("X-Test") != "two" {
		t.Fatalf("Last: %+v, %v", m, err)
	}
	if _, err := Last(ctx, nc, "s", "s.none"); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a subject without messages: %v, want %v", err, jetstream.ErrMsgNotFound)
	}
}
