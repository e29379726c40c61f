package issuer

import (
	"bytes"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/cohort-dev/cohort/identity"
)

func TestWindow(t *testing.T) {
	now := time.Date(2026, 5, 6, 7, 8, 9, 123456789, time.FixedZone("X", 3600))
	for _, tc := range []struct {
		lifetime, back time.Duration
	}{
		{time.Hour, 5 * time.Minute},
		{24 * time.Hour, 5 * time.Minute},
		{defaultRootValidity, maxBackdate},
		{50 * time.Minute, 5 * time.Minute},
		{10 * time.Second, time.Second},
		{2 * time.Second, 200 * time.Millisecond},
	} {
		nb, na := window(now, tc.lifetime)
		if nb.Location() != time.UTC || nb.Nanosecond() != 0 {
			t.Errorf("lifetime %v: NotBefore %v is not whole seconds in UTC", tc.lifetime, nb)
		}
		if latest := now.Add(-tc.back); nb.After(latest) || latest.Sub(nb) >= time.Second {
			t.Errorf("lifetime %v: NotBefore %v, want within a second before %v", tc.lifetime, nb, latest)
		}
		if na.Sub(nb) != tc.lifetime {
			t.Errorf("lifetime %v: window is %v", tc.lifetime, na.Sub(nb))
		}
		if !na.After(now) {
			t.Errorf("lifetime %v: NotAfter %v is not after now", tc.lifetime, na)
		}
	}
}

func TestReissueAt(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(10 * time.Hour)}
	if got, want := reissueAt(c), nb.Add(6*time.Hour); !got.Equal(want) {
		t.Fatalf("reissueAt = %v, want %v", got, want)
	}
	// Before units renew, at two thirds.
	if twoThirds := nb.Add(10 * time.Hour * 2 / 3); !reissueAt(c).Before(twoThirds) {
		t.Fatal("the issuer reissues after units renew")
	}
}

func TestSerialNumber(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string // hex
	}{
		{bytes.Repeat([]byte{0xff}, 16), "7fffffffffffffffffffffffffffffff"},
		{make([]byte, 16), "40000000000000000000000000000000"},
		{[]byte{0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, "400102030405060708090a0b0c0d0e0f"},
		{[]byte{0x3f, 0xee, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, "7fee02030405060708090a0b0c0d0e0f"},
	} {
		r := bytes.NewReader(append(bytes.Clone(tc.in), 0xaa))
		s, err := serialNumber(r)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := new(big.Int).SetString(tc.want, 16)
		if s.Cmp(want) != 0 || s.Sign() <= 0 || len(s.Bytes()) != 16 {
			t.Fatalf("serial from %x = %x, want %s", tc.in, s, tc.want)
		}
		if r.Len() != 1 {
			t.Fatalf("serialNumber read %d bytes, want 16", 17-r.Len())
		}
	}
	for name, r := range map[string]io.Reader{
		"short":  bytes.NewReader(make([]byte, 15)),
		"failed": iotest.ErrReader(errors.New("no entropy")),
	} {
		if s, err := serialNumber(r); err == nil {
			t.Errorf("%s reader: serial %v, want an error", name, s)
		}
	}
}

// fixedRand is a deterministic reader for serial numbers.
type fixedRand struct{ b byte }

func (r *fixedRand) Read(p []byte) (int, error) {
	for i := range p {
		r.b++
		p[i] = r.b
	}
	return len(p), nil
}

func TestIssueTask(t *testing.T) {
	p := mustParsePolicy(t, policyYAML(true))
	now := time.Now()
	root, err := newRoot(&fixedRand{}, now, 2*time.Hour, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !root.cert.IsCA || !strings.Contains(root.cert.Subject.CommonName, "SIMULATED") {
		t.Fatalf("root %v", root.cert.Subject)
	}
	demo, _ := p.Task("demo")
	key, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := issueTask(&fixedRand{b: 100}, now, root, demo, key, time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root.cert)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "demo.example", CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Fatalf("task certificate does not verify for %v: %v", usage, err)
		}
	}
	id, err := identity.FromCertificate(cert)
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "demo" || id.Kind != identity.KindTask || !id.Simulated || len(id.Measurements) != 1 || !bytes.Equal(id.Measurements[0], m1) {
		t.Fatalf("identity %+v", id)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != (&url.URL{Scheme: "urn", Opaque: "cohort:task:demo"}).String() {
		t.Fatalf("URIs %v", cert.URIs)
	}
	if len(cert.IPAddresses) != 2 || len(cert.DNSNames) != 2 || cert.Subject.CommonName != "demo" {
		t.Fatalf("names %v %v %v", cert.Subject, cert.DNSNames, cert.IPAddresses)
	}
	// A task lifetime past the root's end is cut at the root's end.
	long, err := issueTask(&fixedRand{}, now, root, demo, key, 10*time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if !long.NotAfter.Equal(root.cert.NotAfter) {
		t.Fatalf("NotAfter %v, want the root's %v", long.NotAfter, root.cert.NotAfter)
	}
	if id, _ := identity.FromCertificate(long); id.Simulated {
		t.Fatal("certificate issued with simulated=false says simulated")
	}
}

func TestTaskSpec(t *testing.T) {
	p := mustParsePolicy(t, policyYAML(true))
	root, err := newRoot(&fixedRand{}, time.Now(), 2*time.Hour, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	other, err := newRoot(&fixedRand{}, time.Now(), 2*time.Hour, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	demo, _ := p.Task("demo")
	dbg, _ := p.Task("dbg")
	base := taskSpec(root.cert, demo, time.Hour, true)
	if !bytes.Equal(base, taskSpec(root.cert, demo, time.Hour, true)) {
		t.Fatal("taskSpec is not deterministic")
	}
	// The same policy parsed again gives the same spec.
	again, _ := mustParsePolicy(t, policyYAML(true)).Task("demo")
	if !bytes.Equal(base, taskSpec(root.cert, again, time.Hour, true)) {
		t.Fatal("taskSpec differs for an identical policy")
	}
	moreNames, _ := mustParsePolicy(t, bytes.Replace(policyYAML(true), []byte("demo.example"), []byte("demo.example, x.example"), 1)).Task("demo")
	for name, spec := range map[string][]byte{
		"other root":      taskSpec(other.cert, demo, time.Hour, true),
		"other task":      taskSpec(root.cert, dbg, time.Hour, true),
		"other lifetime":  taskSpec(root.cert, demo, 2*time.Hour, true),
		"not simulated":   taskSpec(root.cert, demo, time.Hour, false),
		"other DNS names": taskSpec(root.cert, moreNames, time.Hour, true),
	} {
		if bytes.Equal(spec, base) {
			t.Errorf("%s: same spec", name)
		}
	}
}
