package identity

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzParse: Parse never panics, and what it accepts is within bounds and
// survives Extension → Parse unchanged.
func FuzzParse(f *testing.F) {
	for _, id := range []Identity{demo(), {Kind: KindTask, Name: "x"}, {Kind: KindTask, Name: "m", Measurements: measurements(maxMeasurements)},
		{Kind: KindGroup, Name: "g", Tasks: []string{"a", "b"}}} {
		ext, err := id.Extension()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(ext.Value)
		f.Add(append(bytes.Clone(ext.Value), 0))
	}
	f.Add([]byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, value []byte) {
		id, err := Parse(value)
		if err != nil {
			return
		}
		if len(value) > maxExtension || (id.Kind != KindTask && id.Kind != KindGroup) || id.Name == "" || len(id.Name) > 63 ||
			len(id.Measurements) > maxMeasurements || len(id.Tasks) > maxTasks || (id.Kind == KindGroup) != (len(id.Tasks) > 0) {
			t.Fatalf("accepted out of bounds: %d bytes, %+v", len(value), id)
		}
		ext, err := id.Extension()
		if err != nil {
			t.Fatalf("accepted identity does not encode: %v", err)
		}
		if !ext.Id.Equal(OID) {
			t.Fatal("wrong OID")
		}
		again, err := Parse(ext.Value)
		if err != nil {
			t.Fatalf("re-encoded identity does not parse: %v", err)
		}
		if len(again.Measurements) == 0 && len(id.Measurements) == 0 {
			again.Measurements = id.Measurements
		}
		if !reflect.DeepEqual(again, id) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", again, id)
		}
	})
}
