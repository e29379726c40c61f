package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/access"
)

// The operator may list the manager's account's streams (natscli's stream
// ls and kv ls), which reads only what stream info shows it already; it may
// not ask the API for a consumer (one could deliver anywhere in that
// account: its requests go to the manager, TestOperatorReadsEventsThroughAReaderOnly),
// nor change or delete a stream.
func TestOperatorListsStreamsAndChangesNone(t *testing.T) {
	s := startSecureStack(t, nil)
	op := s.conn(access.Grant{Role: access.Operator}, access.State)
	prefix := access.APIPrefix(access.ManagerAccount)
	for _, verb := range []string{"STREAM.LIST", "STREAM.NAMES"} {
		m, err := op.Request(prefix+"."+verb, nil, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", verb, err)
		}
		if !strings.Contains(string(m.Data), "cohort_events") || !strings.Contains(string(m.Data), "KV_cohort_members") {
			t.Fatalf("%s answered %s", verb, m.Data)
		}
	}
	for _, subject := range []string{
		prefix + ".CONSUMER.CREATE.cohort_events",
		prefix + ".CONSUMER.DURABLE.CREATE.cohort_events.pager",
		prefix + ".STREAM.UPDATE.cohort_events",
		prefix + ".STREAM.DELETE.cohort_events",
		prefix + ".STREAM.PURGE.KV_cohort_members",
		"$JS.API.STREAM.LIST",
	} {
		if err := op.Publish(subject, []byte(`{"config":{"deliver_subject":"$KV.cohort_members.x"}}`)); err != nil {
			t.Fatal(err)
		}
		if !s.violated(op, subject) {
			t.Errorf("the operator may publish to %s", subject)
		}
	}
}
