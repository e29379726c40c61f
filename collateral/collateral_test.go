package collateral

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohort-dev/cohort/enclave"
)

const samples = "../enclave/testdata/tee-samples/"

func sample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(samples + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestImportAndLookUp(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	vcekPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: sample(t, "trustee/snp_test-vcek.der")})
	want := map[string]string{ // file → what it is
		"dcap-qvl/sgx_quote_collateral.json": "intel/sgx-00a067110000-",
		"dcap-qvl/tdx_quote_collateral.json": "intel/tdx-",
		"trustee/snp_test-vcek.der":          "amd/vcek-milan-",
		"trustee/snp_test-vlek.der":          "amd/vlek-",
	}
	entries := map[string]Entry{}
	for name, prefix := range want {
		e, err := d.Import(sample(t, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.HasPrefix(filepath.ToSlash(e.File), prefix) || e.Expires.IsZero() || e.Issued.IsZero() {
			t.Fatalf("%s: %+v", name, e)
		}
		entries[name] = e
	}
	if e, err := d.Import(vcekPEM); err != nil || e.File != entries["trustee/snp_test-vcek.der"].File {
		t.Fatalf("the VCEK as PEM: %+v, %v", e, err)
	}
	// The SGX collateral's earliest next update is its TCB info's (2025-07-19) or before.
	if e := entries["dcap-qvl/sgx_quote_collateral.json"]; e.Platform != enclave.PlatformSGX || e.Expires.After(time.Date(2025, 7, 20, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("sgx entry %+v", e)
	}
	list, errs := d.List()
	if len(errs) != 0 || len(list) != 4 {
		t.Fatalf("list %+v, errors %v", list, errs)
	}

	fmspc, _ := hex.DecodeString("00a067110000")
	c, err := d.SGX(fmspc, "")
	if err != nil || !bytes.Contains(c.TCBInfo, []byte(`"fmspc":"00A067110000"`)) && !bytes.Contains(bytes.ToLower(c.TCBInfo), []byte(`"fmspc":"00a067110000"`)) {
		t.Fatalf("SGX collateral: %v", err)
	}
	if _, err := d.SGX([]byte{1, 2, 3, 4, 5, 6}, ""); !errors.Is(err, ErrNotFound) || !errors.Is(err, enclave.ErrCollateral) {
		t.Fatalf("another FMSPC: %v", err)
	}
	if _, err := d.Endorsement("Milan", "VCEK", make([]byte, 64), 0); !errors.Is(err, enclave.ErrCollateral) || !strings.Contains(err.Error(), "fetching is off") {
		t.Fatalf("a VCEK not in the cache: %v", err)
	}
	if _, err := d.Endorsement("Milan", "ARK", nil, 0); err == nil {
		t.Fatal("an ARK looked up as an endorsement")
	}
}

func TestImportRefuses(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "SEV-VCEK"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	plain, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	qvl := sample(t, "dcap-qvl/sgx_quote_collateral.json")
	for name, b := range map[string][]byte{
		"nothing":                     nil,
		"garbage":                     []byte("not collateral"),
		"a private key":               pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1}}),
		"a certificate without KDS's": plain,
		"half the collateral":         qvl[:len(qvl)/2],
		"collateral of no platform":   bytes.Replace(qvl, []byte(`\"id\":\"SGX\"`), []byte(`\"id\":\"SEV\"`), 1),
		"collateral not hex":          bytes.Replace(qvl, []byte(`"pck_crl": "30`), []byte(`"pck_crl": "zz`), 1),
	} {
		if e, err := d.Import(b); err == nil {
			t.Errorf("%s imported as %+v", name, e)
		}
	}
	if list, errs := d.List(); len(list) != 0 || len(errs) != 0 {
		t.Fatalf("a refused import left %v %v", list, errs)
	}
	// A file put in the wrong place by hand is named, not used silently.
	if err := os.WriteFile(filepath.Join(d.Path(), "intel", "sgx-000000000000-processor.json"), qvl, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errs := d.List(); len(errs) != 1 || !strings.Contains(errs[0].Error(), "belongs in") {
		t.Fatalf("misplaced file: %v", errs)
	}
}

func FuzzInspect(f *testing.F) {
	for _, name := range []string{"dcap-qvl/sgx_quote_collateral.json", "trustee/snp_test-vcek.der", "trustee/snp_test-vlek.der"} {
		f.Add(sample(f, name))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, data, err := Inspect(b)
		if err != nil {
			return
		}
		if e.File == "" || strings.Contains(e.File, "..") || len(data) == 0 {
			t.Fatalf("entry %+v", e)
		}
	})
}

func TestCollector(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Import(sample(t, "dcap-qvl/sgx_quote_collateral.json")); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 7, 19, 0, 0, 0, 0, time.UTC)
	reg := prometheus.NewRegistry()
	reg.MustRegister(d.Collector(func() time.Time { return at }))
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, f := range got {
		for _, m := range f.GetMetric() {
			values[f.GetName()] = m.GetGauge().GetValue()
		}
	}
	if v := values["cohort_collateral_expires_in_seconds"]; v <= 0 || v > 24*3600 {
		t.Errorf("expires in %v s at %v, want within the day", v, at)
	}
	if v := values["cohort_collateral_age_seconds"]; v < 29*24*3600 {
		t.Errorf("age %v s", v)
	}
	if v, ok := values["cohort_collateral_unreadable_files"]; !ok || v != 0 {
		t.Errorf("unreadable %v %v", v, ok)
	}
}
