package identity

// Known-answer tests of the identity a certificate carries: the
// extension's OID and DER value, and the URI SAN. Every verifier of a
// cohort certificate (units, clients, group peers, an auditor with openssl)
// reads these bytes.
//
// The expected values are in testdata/vectors.json, written once from a
// reviewed run and never recomputed by the code under test: a change that
// alters any of them makes certificates already issued unreadable, and
// must come with a new extension version and new vectors. Two extensions
// are also derived by hand from DER below (TestExtensionByHand).
//
// To add a vector, write its inputs into the file (outputs empty) and run
//
//	go test ./identity -run TestKnownAnswers -args -write-vectors
//
// which fills in the outputs of every vector from the code under test.
// Review the diff before committing: an output that changed breaks every
// certificate issued, not something to regenerate.

import (
	"bytes"
	"encoding/asn1"
	"reflect"
	"testing"

	"github.com/cohort-dev/cohort/internal/kattest"
)

// hexBytes is a byte string written as hex in the vectors; null is nil.
type hexBytes = kattest.Hex

type identityVectors struct {
	Comment    []string         `json:"comment"`
	OID        string           `json:"oid"`     // output: dotted
	OIDDER     hexBytes         `json:"oid_der"` // output
	Extensions []identityVector `json:"extensions"`
}

type identityVector struct {
	Name         string     `json:"name"`
	Kind         string     `json:"kind"`
	ID           string     `json:"id"` // Identity.Name
	Measurements []hexBytes `json:"measurements"`
	Simulated    bool       `json:"simulated"`
	Clusters     []string   `json:"clusters"`
	Tasks        []string   `json:"tasks"`
	URI          string     `json:"uri"`       // output
	Extension    hexBytes   `json:"extension"` // output: the DER value
}

func (v *identityVector) identity() Identity {
	id := Identity{Kind: v.Kind, Name: v.ID, Simulated: v.Simulated, Clusters: v.Clusters, Tasks: v.Tasks}
	for _, m := range v.Measurements {
		id.Measurements = append(id.Measurements, m)
	}
	return id
}

func readVectors(t *testing.T) *identityVectors {
	t.Helper()
	var v identityVectors
	kattest.Read(t, &v)
	return &v
}

func TestKnownAnswers(t *testing.T) {
	v := readVectors(t)
	oidDER, err := asn1.Marshal(OID)
	if err != nil {
		t.Fatal(err)
	}
	if kattest.Writing() {
		v.OID, v.OIDDER = OID.String(), oidDER
		for i := range v.Extensions {
			e := &v.Extensions[i]
			id := e.identity()
			ext, err := id.Extension()
			if err != nil {
				t.Fatalf("%s: %v", e.Name, err)
			}
			e.URI, e.Extension = id.URI().String(), ext.Value
		}
		kattest.Write(t, v)
		return
	}
	if OID.String() != v.OID || !bytes.Equal(oidDER, v.OIDDER) {
		t.Errorf("OID is %s (%x), want %s (%x)", OID, oidDER, v.OID, v.OIDDER)
	}
	if len(v.Extensions) == 0 {
		t.Fatalf("%s holds no extension", kattest.File)
	}
	for _, e := range v.Extensions {
		id := e.identity()
		if got := id.URI().String(); got != e.URI {
			t.Errorf("%s: URI is %q, want %q", e.Name, got, e.URI)
		}
		ext, err := id.Extension()
		if err != nil {
			t.Errorf("%s: %v", e.Name, err)
			continue
		}
		if !ext.Id.Equal(OID) || ext.Critical || !bytes.Equal(ext.Value, e.Extension) {
			t.Errorf("%s: extension %s (critical %v)\n%x\nwant %s\n%x", e.Name, ext.Id, ext.Critical, ext.Value, v.OID, e.Extension)
		}
		parsed, err := Parse(e.Extension)
		if err != nil {
			t.Errorf("%s: the vector does not parse: %v", e.Name, err)
		} else if !reflect.DeepEqual(parsed, id) {
			t.Errorf("%s: parses as %+v, want %+v", e.Name, parsed, id)
		}
	}
}

// TestExtensionByHand derives two extensions byte by byte from DER (X.690)
// and finds them among the vectors: a SEQUENCE of the version (INTEGER 2),
// kind and name (UTF8String), the measurements (SEQUENCE OF OCTET STRING),
// simulated (BOOLEAN), the clusters and the member tasks (SEQUENCE OF
// PrintableString), the lists present even when empty.
func TestExtensionByHand(t *testing.T) {
	tlv := func(tag byte, parts ...[]byte) []byte { // short-form lengths only
		b := bytes.Join(parts, nil)
		if len(b) > 127 {
			t.Fatal("long form")
		}
		return append([]byte{tag, byte(len(b))}, b...)
	}
	seq := func(parts ...[]byte) []byte { return tlv(0x30, parts...) }
	utf8 := func(s string) []byte { return tlv(0x0c, []byte(s)) }
	printable := func(s string) []byte { return tlv(0x13, []byte(s)) }
	version := tlv(0x02, []byte{2})
	m := make([]byte, 32)
	for i := range m {
		m[i] = 0x90 + byte(i)
	}
	want := map[string][]byte{
		"task echo, nothing else": seq(version, utf8("task"), utf8("echo"), seq(), tlv(0x01, []byte{0x00}), seq(), seq()),
		"task echo, one measurement, simulated, cluster c1": seq(version, utf8("task"), utf8("echo"),
			seq(tlv(0x04, m)), tlv(0x01, []byte{0xff}), seq(printable("c1")), seq()),
		"group g1 of echo and store": seq(version, utf8("group"), utf8("g1"), seq(), tlv(0x01, []byte{0x00}), seq(),
			seq(printable("echo"), printable("store"))),
	}
	v := readVectors(t)
	for name, b := range want {
		found := false
		for _, e := range v.Extensions {
			if e.Name == name {
				found = true
				if !bytes.Equal(e.Extension, b) {
					t.Errorf("%s: the vector is\n%x\nby hand\n%x", name, e.Extension, b)
				}
			}
		}
		if !found {
			t.Errorf("no vector %q", name)
		}
	}
	// 2.25.624278307: 2*40+25, then 624278307 in base 128.
	if !bytes.Equal(v.OIDDER, []byte{0x06, 0x06, 0x69, 0x82, 0xa9, 0xd6, 0xf6, 0x23}) {
		t.Errorf("the OID vector is %x", v.OIDDER)
	}
}
