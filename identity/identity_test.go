package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

func measurements(n int) [][]byte {
	ms := make([][]byte, n)
	for i := range ms {
		ms[i] = bytes.Repeat([]byte{byte(i + 1)}, 32)
	}
	return ms
}

func demo() Identity {
	return Identity{Kind: KindTask, Name: "demo", Measurements: measurements(2), Simulated: true}
}

// certificate makes a self-signed certificate carrying exts and uris.
func certificate(t *testing.T, exts []pkix.Extension, uris ...*url.URL) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:    big.NewInt(1),
		Subject:         pkix.Name{CommonName: "test"},
		NotBefore:       time.Unix(1_700_000_000, 0),
		NotAfter:        time.Unix(1_700_000_000, 0).Add(time.Hour),
		URIs:            uris,
		ExtraExtensions: exts,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustExtension(t *testing.T, id Identity) pkix.Extension {
	t.Helper()
	ext, err := id.Extension()
	if err != nil {
		t.Fatal(err)
	}
	return ext
}

func TestExtensionParseRoundTrip(t *testing.T) {
	for _, id := range []Identity{
		demo(),
		{Kind: KindTask, Name: "a", Measurements: measurements(maxMeasurements)},
		{Kind: KindTask, Name: strings.Repeat("n", 63), Measurements: measurements(1)},
		{Kind: KindTask, Name: "empty", Measurements: nil},
		// SEV-SNP and TDX measure in 48 bytes, beside SGX's 32.
		{Kind: KindTask, Name: "vm", Measurements: [][]byte{bytes.Repeat([]byte{7}, 48), bytes.Repeat([]byte{8}, 32)}},
	} {
		ext := mustExtension(t, id)
		if !ext.Id.Equal(OID) || ext.Critical {
			t.Fatalf("extension id %v, critical %t", ext.Id, ext.Critical)
		}
		got, err := Parse(ext.Value)
		if err != nil {
			t.Fatalf("%s: %v", id.Name, err)
		}
		if len(id.Measurements) == 0 && len(got.Measurements) == 0 {
			got.Measurements = id.Measurements
		}
		if !reflect.DeepEqual(got, id) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, id)
		}
	}
	if _, err := (Identity{Kind: KindTask, Name: "x", Measurements: measurements(maxMeasurements + 1)}).Extension(); err == nil {
		t.Fatal("Extension accepted too many measurements")
	}
	for _, n := range []int{31, 33, 47, 64} {
		if _, err := (Identity{Kind: KindTask, Name: "x", Measurements: [][]byte{make([]byte, n)}}).Extension(); err == nil {
			t.Errorf("Extension accepted a measurement of %d bytes", n)
		}
	}
}

func TestURI(t *testing.T) {
	if got := demo().URI().String(); got != "urn:cohort:task:demo" {
		t.Fatalf("URI = %q", got)
	}
}

func TestParseRefuses(t *testing.T) {
	enc := func(e extension) []byte {
		b, err := asn1.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	none := []string{}
	good := enc(extension{extensionVersion, KindTask, "demo", measurements(1), false, none, none})
	for name, value := range map[string][]byte{
		"empty":                     nil,
		"garbage":                   []byte("not asn.1"),
		"trailing":                  append(bytes.Clone(good), 0x05, 0x00),
		"truncated":                 good[:len(good)-1],
		"version 3":                 enc(extension{3, KindTask, "demo", measurements(1), false, none, none}),
		"version 0":                 enc(extension{0, KindTask, "demo", measurements(1), false, none, none}),
		"other kind":                enc(extension{extensionVersion, "party", "demo", measurements(1), false, none, none}),
		"empty name":                enc(extension{extensionVersion, KindTask, "", measurements(1), false, none, none}),
		"long name":                 enc(extension{extensionVersion, KindTask, strings.Repeat("n", 64), measurements(1), false, none, none}),
		"many measurements":         enc(extension{extensionVersion, KindTask, "demo", measurements(maxMeasurements + 1), false, none, none}),
		"task naming tasks":         enc(extension{extensionVersion, KindTask, "demo", nil, false, none, []string{"a"}}),
		"group without tasks":       enc(extension{extensionVersion, KindGroup, "g", nil, false, none, none}),
		"group with measurements":   enc(extension{extensionVersion, KindGroup, "g", measurements(1), false, none, []string{"a"}}),
		"group with clusters":       enc(extension{extensionVersion, KindGroup, "g", nil, false, []string{"c"}, []string{"a"}}),
		"group naming a task twice": enc(extension{extensionVersion, KindGroup, "g", nil, false, none, []string{"a", "b", "a"}}),
		"group bad task name":       enc(extension{extensionVersion, KindGroup, "g", nil, false, none, []string{"A"}}),
		"group of too many":         enc(extension{extensionVersion, KindGroup, "g", nil, false, none, taskNames(maxTasks + 1)}),
		"oversize":                  bytes.Repeat([]byte{0}, maxExtension+1),
		"huge length":               {0x30, 0x84, 0xff, 0xff, 0xff, 0xff},
	} {
		if id, err := Parse(value); err == nil {
			t.Errorf("%s: accepted as %+v", name, id)
		}
	}
}

func TestFromCertificate(t *testing.T) {
	id := demo()
	c := certificate(t, []pkix.Extension{mustExtension(t, id)},
		&url.URL{Scheme: "https", Host: "example.com"}, id.URI())
	got, err := FromCertificate(c)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, id) {
		t.Fatalf("got %+v, want %+v", got, id)
	}
}

func TestFromCertificateRefusesMismatchedURI(t *testing.T) {
	id := demo()
	other := Identity{Kind: KindTask, Name: "other"}
	for name, uris := range map[string][]*url.URL{
		"no URI SAN":         nil,
		"other task's URI":   {other.URI()},
		"URI with a suffix":  {{Scheme: "urn", Opaque: "cohort:task:demo2"}},
		"URI of other kind":  {{Scheme: "urn", Opaque: "cohort:group:demo"}},
		"upper-case variant": {{Scheme: "urn", Opaque: "cohort:task:DEMO"}},
	} {
		c := certificate(t, []pkix.Extension{mustExtension(t, id)}, uris...)
		if got, err := FromCertificate(c); err == nil || errors.Is(err, ErrNoIdentity) {
			t.Errorf("%s: got %+v, %v; want a mismatch refusal", name, got, err)
		}
	}
}

func TestFromCertificateNoIdentity(t *testing.T) {
	c := certificate(t, []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: []byte{0x05, 0x00}}}, demo().URI())
	if _, err := FromCertificate(c); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("got %v, want ErrNoIdentity", err)
	}
	if _, err := FromCertificate(&x509.Certificate{}); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("empty certificate: got %v, want ErrNoIdentity", err)
	}
}

func TestFromCertificateBadExtension(t *testing.T) {
	c := certificate(t, []pkix.Extension{{Id: OID, Value: []byte{0x05, 0x00}}}, demo().URI())
	if _, err := FromCertificate(c); err == nil || errors.Is(err, ErrNoIdentity) {
		t.Fatalf("got %v, want a parse error", err)
	}
}

func TestClustersRoundTrip(t *testing.T) {
	id := Identity{Kind: KindTask, Name: "demo", Measurements: measurements(1), Clusters: []string{"east", "west"}}
	ext, err := id.Extension()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(ext.Value)
	if err != nil {
		t.Fatal(err)
	}
	if !got.InCluster("east") || !got.InCluster("west") || got.InCluster("north") {
		t.Errorf("clusters %v", got.Clusters)
	}
	if _, err := (Identity{Kind: KindTask, Name: "demo", Clusters: []string{"Not Valid"}}).Extension(); err == nil {
		t.Error("an invalid cluster id was encoded")
	}
}

func taskNames(n int) []string {
	ts := make([]string, n)
	for i := range ts {
		ts[i] = fmt.Sprintf("t%d", i)
	}
	return ts
}

func TestGroupRoundTrip(t *testing.T) {
	id := Identity{Kind: KindGroup, Name: "mpc", Tasks: []string{"alpha", "beta", "gamma"}, Simulated: true}
	c := certificate(t, []pkix.Extension{mustExtension(t, id)}, id.URI())
	got, err := FromCertificate(c)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, id) {
		t.Fatalf("got %+v, want %+v", got, id)
	}
	if got.URI().String() != "urn:cohort:group:mpc" {
		t.Errorf("URI %s", got.URI())
	}
	if !got.HasTask("beta") || got.HasTask("delta") {
		t.Errorf("HasTask wrong for %v", got.Tasks)
	}
	many := Identity{Kind: KindGroup, Name: "big", Tasks: taskNames(maxTasks)}
	if _, err := many.Extension(); err != nil {
		t.Errorf("a group of %d tasks: %v", maxTasks, err)
	}
	// A task certificate's URI does not stand for the group of the same name.
	task := Identity{Kind: KindTask, Name: "mpc"}
	if c := certificate(t, []pkix.Extension{mustExtension(t, id)}, task.URI()); func() error { _, err := FromCertificate(c); return err }() == nil {
		t.Error("a group extension with a task URI was accepted")
	}
}
