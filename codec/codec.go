// Package codec is cohort's strict msgpack: the one encoding of every value
// that crosses a trust boundary (wire messages, sealed state, evidence
// envelopes). It is a leaf: the wire types (package messages) and the
// enclave backends both build on it, and it imports nothing of cohort's.
//
// Guarantees: Unmarshal accepts only the canonical encoding of a value of
// the target type (so each value has exactly one encoding), refuses unknown
// fields, trailing bytes and oversize input, and checks every length header
// against what remains before decoding, so that no header makes it allocate
// more than the input's size; nesting and entry counts are bounded.
package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// MaxDepth bounds the nesting of any payload. cohort's messages nest two
// levels (a map holding an array of byte strings); the margin is for growth.
const MaxDepth = 8

// MaxItems bounds the entries of any one array or map. cohort's largest has
// a handful (a struct's fields, a chain of certificates).
const MaxItems = 64

// Errors that Unmarshal returns, wrapped with detail. Callers branch on them
// with errors.Is.
var (
	ErrTooLarge  = errors.New("message too large")
	ErrMalformed = errors.New("malformed message")
)

// Marshal encodes v as msgpack.
func Marshal(v any) ([]byte, error) {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("codec: encode %T: %w", v, err)
	}
	return b, nil
}

// Unmarshal strictly decodes data, at most limit bytes, into v: one msgpack
// object, no trailing bytes, no unknown field, in its canonical encoding
// only, every length header checked against what remains before anything is
// allocated, nested at most MaxDepth deep, at most MaxItems entries in any
// array or map. On error v may be partly written and must not be used.
func Unmarshal(data []byte, limit int, v any) error {
	if len(data) > limit {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), limit)
	}
	end, err := scan(data, 0, 0)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if end != len(data) {
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(data)-end)
	}
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	// Only the canonical encoding is accepted: the bytes this package's
	// encoder makes of the decoded value. The decoder would otherwise wrap an
	// integer too large for its field (0x10001 into a uint16 as 1), take an
	// array for a struct, or let a repeated key win; with this check every
	// message has exactly one encoding.
	again, err := msgpack.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: re-encode: %v", ErrMalformed, err)
	}
	if !bytes.Equal(again, data) {
		return fmt.Errorf("%w: not the canonical encoding (out-of-range number, repeated or reordered key, array for a map, or non-minimal header)", ErrMalformed)
	}
	return nil
}

// scan walks one msgpack object starting at pos and returns the offset just
// past it. It checks that every length header fits in what remains, so that a
// header claiming gigabytes is refused before any allocation.
func scan(b []byte, pos, depth int) (int, error) {
	if depth > MaxDepth {
		return 0, fmt.Errorf("nesting deeper than %d", MaxDepth)
	}
	if pos >= len(b) {
		return 0, errors.New("truncated")
	}
	c := b[pos]
	pos++
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return pos, nil // fixint, nil, bool
	case c >= 0x80 && c <= 0x8f:
		return scanItems(b, pos, int(c&0x0f), 2, depth)
	case c >= 0x90 && c <= 0x9f:
		return scanItems(b, pos, int(c&0x0f), 1, depth)
	case c >= 0xa0 && c <= 0xbf:
		return skip(b, pos, int(c&0x1f))
	}
	switch c {
	case 0xc4, 0xd9: // bin8, str8
		return lengthThenSkip(b, pos, 1, 0)
	case 0xc5, 0xda: // bin16, str16
		return lengthThenSkip(b, pos, 2, 0)
	case 0xc6, 0xdb: // bin32, str32
		return lengthThenSkip(b, pos, 4, 0)
	case 0xc7: // ext8: length, type, data
		return lengthThenSkip(b, pos, 1, 1)
	case 0xc8:
		return lengthThenSkip(b, pos, 2, 1)
	case 0xc9:
		return lengthThenSkip(b, pos, 4, 1)
	case 0xca:
		return skip(b, pos, 4)
	case 0xcb:
		return skip(b, pos, 8)
	case 0xcc, 0xd0:
		return skip(b, pos, 1)
	case 0xcd, 0xd1:
		return skip(b, pos, 2)
	case 0xce, 0xd2:
		return skip(b, pos, 4)
	case 0xcf, 0xd3:
		return skip(b, pos, 8)
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16 plus a type byte
		return skip(b, pos, 1+(1<<(c-0xd4)))
	case 0xdc, 0xde: // array16, map16
		n, p, err := readLength(b, pos, 2)
		if err != nil {
			return 0, err
		}
		return scanItems(b, p, n, 1+int(c-0xdc)/2, depth)
	case 0xdd, 0xdf: // array32, map32
		n, p, err := readLength(b, pos, 4)
		if err != nil {
			return 0, err
		}
		return scanItems(b, p, n, 1+int(c-0xdd)/2, depth)
	}
	return 0, fmt.Errorf("invalid type byte 0x%02x", c)
}

// PeekVersion finds the unsigned integer under key "v" of a top-level map.
// A map without one is version 0. It reports false for anything that is not
// a well-formed map, leaving the error to Unmarshal.
func PeekVersion(b []byte) (uint64, bool) {
	if _, err := scan(b, 0, 0); err != nil || len(b) == 0 {
		return 0, false
	}
	var n, pos int
	switch c := b[0]; {
	case c >= 0x80 && c <= 0x8f:
		n, pos = int(c&0x0f), 1
	case c == 0xde && len(b) >= 3:
		n, pos = int(binary.BigEndian.Uint16(b[1:])), 3
	default:
		return 0, false
	}
	for range n {
		isV := len(b) > pos+1 && b[pos] == 0xa1 && b[pos+1] == 'v'
		valueAt, err := scan(b, pos, 1)
		if err != nil {
			return 0, false
		}
		if isV {
			return readUint(b[valueAt:])
		}
		if pos, err = scan(b, valueAt, 1); err != nil {
			return 0, false
		}
	}
	return 0, true
}

// readUint reads a msgpack unsigned integer.
func readUint(b []byte) (uint64, bool) {
	switch {
	case len(b) >= 1 && b[0] <= 0x7f:
		return uint64(b[0]), true
	case len(b) >= 2 && b[0] == 0xcc:
		return uint64(b[1]), true
	case len(b) >= 3 && b[0] == 0xcd:
		return uint64(binary.BigEndian.Uint16(b[1:])), true
	case len(b) >= 5 && b[0] == 0xce:
		return uint64(binary.BigEndian.Uint32(b[1:])), true
	case len(b) >= 9 && b[0] == 0xcf:
		return binary.BigEndian.Uint64(b[1:]), true
	}
	return 0, false
}

// scanItems scans the entries of an array (per = 1) or a map (per = 2: a key
// and a value each).
func scanItems(b []byte, pos, entries, per, depth int) (int, error) {
	if entries > MaxItems {
		return 0, fmt.Errorf("%d entries, at most %d", entries, MaxItems)
	}
	n := entries * per
	// Every item takes at least one byte: a count above what remains is a lie.
	if n > len(b)-pos {
		return 0, fmt.Errorf("header claims %d items, %d bytes remain", n, len(b)-pos)
	}
	var err error
	for range n {
		if pos, err = scan(b, pos, depth+1); err != nil {
			return 0, err
		}
	}
	return pos, nil
}

func readLength(b []byte, pos, width int) (int, int, error) {
	if len(b)-pos < width {
		return 0, 0, errors.New("truncated length")
	}
	var n uint64
	switch width {
	case 1:
		n = uint64(b[pos])
	case 2:
		n = uint64(binary.BigEndian.Uint16(b[pos:]))
	case 4:
		n = uint64(binary.BigEndian.Uint32(b[pos:]))
	}
	if n > uint64(len(b)) {
		return 0, 0, fmt.Errorf("header claims %d, payload is %d bytes", n, len(b))
	}
	return int(n), pos + width, nil
}

func lengthThenSkip(b []byte, pos, width, extra int) (int, error) {
	n, p, err := readLength(b, pos, width)
	if err != nil {
		return 0, err
	}
	return skip(b, p, n+extra)
}

func skip(b []byte, pos, n int) (int, error) {
	if n > len(b)-pos {
		return 0, fmt.Errorf("header claims %d bytes, %d remain", n, len(b)-pos)
	}
	return pos + n, nil
}

// Scan walks the one msgpack object at the start of b, as Unmarshal does
// before decoding, and returns the offset just past it.
func Scan(b []byte) (int, error) { return scan(b, 0, 0) }
