package issuer

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/cohort-dev/cohort/messages"
)

func validRecord() *record {
	return &record{V: recordVersion, Key: bytes.Repeat([]byte{1}, 138), Cert: bytes.Repeat([]byte{2}, 500), Spec: bytes.Repeat([]byte{3}, 32)}
}

func encodeRecord(t testing.TB, v any) []byte {
	t.Helper()
	b, err := messages.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeRecord(t *testing.T) {
	for _, want := range []*record{validRecord(), {V: recordVersion, Key: []byte{1}, Cert: []byte{2}}} {
		got, err := decodeRecord(encodeRecord(t, want))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	}
	good := encodeRecord(t, validRecord())
	for name, b := range map[string][]byte{
		"empty":         nil,
		"garbage":       []byte("plaintext"),
		"version 0":     encodeRecord(t, &record{Key: []byte{1}, Cert: []byte{2}}),
		"version 2":     encodeRecord(t, &record{V: 2, Key: []byte{1}, Cert: []byte{2}}),
		"no key":        encodeRecord(t, &record{V: recordVersion, Cert: []byte{2}}),
		"no cert":       encodeRecord(t, &record{V: recordVersion, Key: []byte{1}}),
		"unknown field": encodeRecord(t, map[string]any{"v": 1, "key": []byte{1}, "cert": []byte{2}, "epoch": 1}),
		"trailing":      append(bytes.Clone(good), 0),
		"oversize":      encodeRecord(t, &record{V: recordVersion, Key: []byte{1}, Cert: make([]byte, maxRecord)}),
		"bin32 4GiB":    {0x81, 0xa3, 'k', 'e', 'y', 0xc6, 0xff, 0xff, 0xff, 0xff},
	} {
		if rec, err := decodeRecord(b); err == nil || rec != nil {
			t.Errorf("%s: got %+v, %v; want an error", name, rec, err)
		}
	}
	if _, err := decodeRecord(encodeRecord(t, &record{V: recordVersion, Key: []byte{1}, Cert: make([]byte, maxRecord)})); !errors.Is(err, messages.ErrTooLarge) {
		t.Errorf("oversize record: got %v, want ErrTooLarge", err)
	}
}

// FuzzDecodeRecord: decodeRecord never panics, and what it accepts is a
// complete record that survives re-encoding.
func FuzzDecodeRecord(f *testing.F) {
	good := encodeRecord(f, validRecord())
	f.Add(good)
	f.Add(encodeRecord(f, &record{V: recordVersion, Key: []byte{1}, Cert: []byte{2}}))
	f.Add(append(bytes.Clone(good), 0))
	f.Add(good[:len(good)-1])
	f.Add(encodeRecord(f, &record{V: 2, Key: []byte{1}, Cert: []byte{2}}))
	f.Add([]byte{0x81, 0xa3, 'k', 'e', 'y', 0xc6, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := decodeRecord(data)
		if err != nil {
			if rec != nil {
				t.Fatal("error with a record")
			}
			return
		}
		if len(data) > maxRecord || rec.V != recordVersion || len(rec.Key) == 0 || len(rec.Cert) == 0 {
			t.Fatalf("accepted an incomplete record from %d bytes: %+v", len(data), rec)
		}
		b, err := msgpack.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeRecord(b)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !reflect.DeepEqual(again, rec) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", again, rec)
		}
	})
}
