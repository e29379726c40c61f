// Package kattest is what cohort's known-answer tests share: a package's
// vectors file (testdata/vectors.json), read strictly, and written only when
// the test binary runs with -write-vectors; and byte strings written as hex.
//
// The vectors are written once from a reviewed run and never recomputed by
// the code under test: -write-vectors fills in outputs from the code, for a
// new vector, and its diff is reviewed before it is committed, since an
// output that changes is a wire break. Test code only: the measured binary's
// deny list refuses every package named …test (.ci/measured.sh).
package kattest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"
)

// File is where a package keeps its vectors, relative to the package.
const File = "testdata/vectors.json"

var write = flag.Bool("write-vectors", false, "fill in the outputs of "+File+" from the code under test (review the diff before committing)")

// Writing reports whether this run fills in the outputs (-write-vectors)
// rather than checking them.
func Writing() bool { return *write }

// Read decodes File into v, refusing a field v does not have.
func Read(t testing.TB, v any) {
	t.Helper()
	data, err := os.ReadFile(File)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", File, err)
	}
}

// Write writes v to File, indented, and says to review the diff.
func Write(t testing.TB, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(File, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s: review the diff before committing", File)
}

// Hex is a byte string written as hex in the vectors; null is nil.
type Hex []byte

// MarshalJSON writes h as a hex string, or null for nil.
func (h Hex) MarshalJSON() ([]byte, error) {
	if h == nil {
		return []byte("null"), nil
	}
	return json.Marshal(hex.EncodeToString(h))
}

// UnmarshalJSON reads a hex string, or null as nil.
func (h *Hex) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*h = nil
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*h = d
	return err
}
