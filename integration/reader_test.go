package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
)

// An operator reads the audit stream through a consumer of its own, as
// natscli's stream view does, and through nothing else: every consumer it
// asks for is vetted by the manager, which creates only one that pulls and
// expires. The attacks are the operator's, with its real permissions, on
// the real server: a pushed consumer pointed into the members bucket, onto
// the manager's subjects, at a cluster's session stream; a consumer that
// never expires; more consumers than the cap; and the API's consumer create
// asked directly, past the manager.
func TestOperatorReadsEventsThroughAReaderOnly(t *testing.T) {
	s := startSecureStack(t, nil, access.ManagerAccount)
	op := s.conn(access.Grant{Role: access.Operator}, access.State)
	prefix := access.APIPrefix(access.ManagerAccount)
	create := func(name string, cfg map[string]any) map[string]any {
		t.Helper()
		cfg["durable_name"] = name
		b, _ := json.Marshal(map[string]any{"stream_name": events.StreamName, "config": cfg})
		m, err := op.Request(prefix+".CONSUMER.CREATE."+events.StreamName+"."+name, b, deadline)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		var out map[string]any
		if err := json.Unmarshal(m.Data, &out); err != nil {
			t.Fatalf("create %s answered %q", name, m.Data)
		}
		return out
	}
	refused := func(out map[string]any, want string) {
		t.Helper()
		e, _ := out["error"].(map[string]any)
		if d, _ := e["description"].(string); !strings.Contains(d, want) {
			t.Fatalf("answer %v, want a refusal saying %q", out, want)
		}
	}
	js, err := jetstream.New(s.conn(access.Grant{Role: access.Manager}, access.State))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(testContext(t), events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	consumers := func() int {
		t.Helper()
		info, err := stream.Info(testContext(t))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Consumers
	}
	// Anything delivered into the manager's account or through its imports
	// would show on the tap.
	tap := s.tap(access.ManagerAccount)
	leaked, err := tap.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := tap.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"$KV.cohort_members.c1.u1", "cohort.v1.manager.heartbeat.c1.u1", messages.SessionsOfCluster("c1") + ".x"} {
		refused(create("push", map[string]any{"deliver_subject": target, "ack_policy": "none"}), "deliver_subject is set")
	}
	refused(create("group", map[string]any{"deliver_group": "g"}), "deliver_group is set")
	refused(create("fc", map[string]any{"flow_control": true}), "flow_control is set")
	refused(create("hb", map[string]any{"idle_heartbeat": int64(time.Second)}), "idle_heartbeat is set")
	refused(create("forever", map[string]any{"inactive_threshold": int64(10 * time.Hour)}), "over 1h0m0s")
	if n := consumers(); n != 0 {
		t.Fatalf("after the refusals the stream has %d consumers", n)
	}
	for {
		m, err := leaked.NextMsg(50 * time.Millisecond)
		if err != nil {
			break
		}
		if _, err := events.Decode(m.Data); err == nil && !strings.HasPrefix(m.Subject, events.SubjectPrefix) {
			t.Fatalf("an event was delivered to %s", m.Subject)
		}
	}

	// A reader: created with the idle limit filled in, it pulls events,
	// acknowledges them and is deleted.
	out := create("pager", map[string]any{"ack_policy": "explicit", "deliver_policy": "all"})
	if _, ok := out["error"]; ok {
		t.Fatalf("a reader was refused: %v", out)
	}
	if cfg, _ := out["config"].(map[string]any); cfg["inactive_threshold"] != float64(events.MaxReaderIdle) {
		t.Fatalf("the reader's config is %v, want inactive_threshold %d", cfg, events.MaxReaderIdle)
	}
	inbox := op.NewInbox()
	sub, err := op.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := op.PublishRequest(prefix+".CONSUMER.MSG.NEXT."+events.StreamName+".pager", inbox, []byte(`{"batch":1,"expires":2000000000}`)); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(deadline)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.Decode(m.Data)
	if err != nil {
		t.Fatalf("the reader got %q (%v): %v", m.Data, m.Header, err)
	}
	if err := m.AckSync(); err != nil {
		t.Fatal(err)
	}
	rj, err := op.Request(prefix+".CONSUMER.INFO."+events.StreamName+".pager", nil, deadline)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		AckFloor struct {
			Stream uint64 `json:"stream_seq"`
		} `json:"ack_floor"`
	}
	if err := json.Unmarshal(rj.Data, &info); err != nil || info.AckFloor.Stream != 1 {
		t.Fatalf("after the ack of %s the consumer says %s", ev.Kind, rj.Data)
	}
	if _, err := op.Request(prefix+".CONSUMER.DELETE."+events.StreamName+".pager", nil, deadline); err != nil {
		t.Fatal(err)
	}
	if n := consumers(); n != 0 {
		t.Fatalf("after the delete the stream has %d consumers", n)
	}

	// The cap.
	for i := range events.MaxReaders {
		if out := create(fmt.Sprint("r", i), map[string]any{}); out["error"] != nil {
			t.Fatalf("reader %d: %v", i, out)
		}
	}
	refused(create("one-too-many", map[string]any{}), "the most it may have")
	if n := consumers(); n != events.MaxReaders {
		t.Fatalf("the stream has %d consumers, want %d", n, events.MaxReaders)
	}

	// Past the manager: the API's own consumer create, and the vetting
	// endpoint's subject itself, are refused by the server.
	for _, subject := range []string{
		prefix + ".CONSUMER.CREATE." + events.StreamName,
		prefix + ".CONSUMER.DURABLE.CREATE." + events.StreamName + ".pager",
		prefix + ".CONSUMER.CREATE.KV_cohort_members.pager",
		messages.SubjectReaderCreate + ".pager",
		"$JS.API.CONSUMER.CREATE." + events.StreamName + ".pager",
		prefix + ".CONSUMER.MSG.NEXT.KV_cohort_members.pager",
		"$JS.ACK.KV_cohort_members.x",
	} {
		if err := op.Publish(subject, []byte(`{"config":{"deliver_subject":"$KV.cohort_members.x"}}`)); err != nil {
			t.Fatal(err)
		}
		if !s.violated(op, subject) {
			t.Errorf("the operator may publish to %s", subject)
		}
	}
	// No other role reaches the vetting endpoint.
	unit := s.conns["u1"][0]
	subject := messages.SubjectReaderCreate + ".pager"
	if err := unit.Publish(subject, nil); err != nil {
		t.Fatal(err)
	}
	if !s.violated(unit, subject) {
		t.Errorf("a unit may publish to %s", subject)
	}
}
