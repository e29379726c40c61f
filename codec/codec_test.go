package codec

import (
	"bytes"
	"errors"
	"testing"
)

type inner struct {
	A uint16 `msgpack:"a"`
	B []byte `msgpack:"b"`
}

type outer struct {
	V     uint16   `msgpack:"v"`
	Name  string   `msgpack:"name"`
	Items []inner  `msgpack:"items"`
	Tags  []string `msgpack:"tags"`
}

func sample() *outer {
	return &outer{V: 7, Name: "n", Items: []inner{{A: 1, B: []byte{2}}}, Tags: []string{"x"}}
}

// TestUnmarshalCanonicalOnly: the value's own encoding decodes to it; a
// non-canonical encoding of the same value, trailing bytes, an unknown
// field and oversize input are each refused with the sentinel callers
// branch on.
func TestUnmarshalCanonicalOnly(t *testing.T) {
	b, err := Marshal(sample())
	if err != nil {
		t.Fatal(err)
	}
	var got outer
	if err := Unmarshal(b, len(b), &got); err != nil {
		t.Fatalf("own encoding: %v", err)
	}
	if again, _ := Marshal(&got); !bytes.Equal(again, b) {
		t.Fatal("decoded value encodes otherwise")
	}
	// {"v": 7} with 7 as a uint16 (0xcd 0x00 0x07): a non-minimal integer.
	nonMinimal := []byte{0x81, 0xa1, 'v', 0xcd, 0x00, 0x07}
	unknown := []byte{0x81, 0xa1, 'z', 0x01}
	for name, c := range map[string]struct {
		data  []byte
		limit int
		want  error
	}{
		"non-minimal integer": {nonMinimal, 64, ErrMalformed},
		"trailing byte":       {append(bytes.Clone(b), 0xc0), 1 << 10, ErrMalformed},
		"unknown field":       {unknown, 64, ErrMalformed},
		"truncated":           {b[:len(b)-1], 1 << 10, ErrMalformed},
		"over the limit":      {b, len(b) - 1, ErrTooLarge},
		"empty":               {nil, 64, ErrMalformed},
	} {
		var v outer
		if err := Unmarshal(c.data, c.limit, &v); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

// TestScanBounds: a header claiming more than remains, nesting past
// MaxDepth and more than MaxItems entries are refused before decoding.
func TestScanBounds(t *testing.T) {
	lying := []byte{0xc6, 0x7f, 0xff, 0xff, 0xff} // bin32 of 2 GiB, nothing after
	if _, err := Scan(lying); err == nil {
		t.Error("a bin32 header claiming 2 GiB scanned")
	}
	deep := bytes.Repeat([]byte{0x91}, MaxDepth+1) // arrays of one, nested
	deep = append(deep, 0xc0)
	if _, err := Scan(deep); err == nil {
		t.Errorf("nesting %d scanned", MaxDepth+1)
	}
	many := append([]byte{0xdc, 0x00, MaxItems + 1}, bytes.Repeat([]byte{0xc0}, MaxItems+1)...)
	if _, err := Scan(many); err == nil {
		t.Errorf("an array of %d entries scanned", MaxItems+1)
	}
	if v, ok := PeekVersion([]byte{0x81, 0xa1, 'v', 0x07}); !ok || v != 7 {
		t.Errorf("PeekVersion = %d, %v; want 7", v, ok)
	}
}

// FuzzUnmarshal: no input crashes the decoder, and whatever it accepts is
// the canonical encoding of what it decoded.
func FuzzUnmarshal(f *testing.F) {
	b, _ := Marshal(sample())
	for _, seed := range [][]byte{b, nil, {0xc0}, {0x80}, {0xc6, 0x7f, 0xff, 0xff, 0xff}} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v outer
		if Unmarshal(data, 1<<12, &v) != nil {
			return
		}
		again, err := Marshal(&v)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("accepted %x, which encodes back as %x (%v)", data, again, err)
		}
	})
}
