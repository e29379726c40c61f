package manager

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/streamcheck/streamchecktest"
)

// Every untrusted setting of the members bucket's stream, made by whoever
// holds the manager's credential or runs NATS before the manager takes it,
// is refused, and named; the bucket as the manager makes it, and as an
// earlier manager made it once an administrator denied its roll-ups and
// purges, is taken and works.
func TestUntrustedMembersBucketIsRefused(t *testing.T) {
	_, js, ctx := streamchecktest.Server(t)
	// A bucket of its own for each mutation (see package streamchecktest).
	for k, m := range streamchecktest.Mutations() {
		bucket := fmt.Sprintf("members_%d", k)
		want := membersStream(bucket, 1)
		if !m.Applies(want) {
			continue
		}
		t.Run(m.Setting, func(t *testing.T) {
			defer func() {
				if err := streamchecktest.Remove(ctx, js, want.Name); err != nil {
					t.Fatal(err)
				}
			}()
			if err := m.Make(ctx, js, want); err != nil {
				t.Fatalf("making the stream: %v", err)
			}
			if _, err := openMembers(ctx, js, bucket, 1); !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), m.Setting) {
				t.Fatalf("openMembers: %v; want the bucket refused, naming %s", err, m.Setting)
			}
		})
	}

	// An earlier manager's bucket: refused until its roll-ups and purges
	// are denied.
	want := membersStream(DefaultBucket, 1)
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: DefaultBucket, History: 1, MaxValueSize: maxMember, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := openMembers(ctx, js, DefaultBucket, 1); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("an earlier manager's bucket: %v, want ErrUntrusted", err)
	}
	st, err := js.Stream(ctx, want.Name)
	if err != nil {
		t.Fatal(err)
	}
	edited := st.CachedInfo().Config
	edited.AllowRollup, edited.DenyPurge = false, true
	if _, err := js.UpdateStream(ctx, edited); err != nil {
		t.Fatal(err)
	}
	if _, err := openMembers(ctx, js, DefaultBucket, 1); err != nil {
		t.Fatalf("an earlier manager's bucket, edited: %v", err)
	}
	// And one made by this manager takes a record, and its delete.
	if err := js.DeleteStream(ctx, want.Name); err != nil {
		t.Fatal(err)
	}
	kv, err := openMembers(ctx, js, "members", 1)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "c1.u1", []byte("member"))
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "c1.u1", jetstream.LastRevision(rev)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "c1.u1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("a deleted member: %v", err)
	}
}
