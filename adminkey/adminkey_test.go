package adminkey

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cohort-dev/cohort/messages"
)

func TestKeyRoundTripAndSignature(t *testing.T) {
	k, err := Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "admin.key")
	if err := k.Save(path); err != nil {
		t.Fatal(err)
	}
	if err := k.Save(path); err == nil {
		t.Fatal("Save overwrote a key file")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.AdminPublic(), k.AdminPublic()) || !bytes.Equal(again.RecoveryPublic(), k.RecoveryPublic()) {
		t.Fatal("a loaded key is another key")
	}
	doc := []byte("version: 2\n")
	sig := k.Sign(doc)
	if !VerifySignature(doc, sig) {
		t.Fatal("a signature does not verify")
	}
	if VerifySignature([]byte("version: 3\n"), sig) {
		t.Fatal("a signature verifies over another document")
	}
	parsed, hash, err := ParseSignature(MarshalSignature(doc, sig))
	if err != nil || !bytes.Equal(parsed.Signature, sig.Signature) || !bytes.Equal(parsed.Key, sig.Key) || hash[0] == 0 && hash[1] == 0 {
		t.Fatalf("signature file round trip: %+v, %v", parsed, err)
	}
}

func TestShares(t *testing.T) {
	holder, _ := Generate(rand.Reader)
	other, _ := Generate(rand.Reader)
	id := bytes.Repeat([]byte{1}, messages.KeyIDSize)
	sealed, err := SealShare(holder.RecoveryPublic(), id, 3, []byte("share"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := holder.OpenShare(id, 3, sealed); err != nil || string(got) != "share" {
		t.Fatalf("open: %q, %v", got, err)
	}
	for name, open := range map[string]func() ([]byte, error){
		"another holder": func() ([]byte, error) { return other.OpenShare(id, 3, sealed) },
		"another index":  func() ([]byte, error) { return holder.OpenShare(id, 4, sealed) },
		"another state":  func() ([]byte, error) { return holder.OpenShare(bytes.Repeat([]byte{2}, 16), 3, sealed) },
	} {
		if _, err := open(); err == nil {
			t.Errorf("%s opened the share", name)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	k, _ := Generate(rand.Reader)
	good := k.Marshal()
	for name, b := range map[string][]byte{
		"empty": nil, "not PEM": []byte("seed"), "trailing": append(bytes.Clone(good), "x"...),
		"another type": bytes.Replace(good, []byte("ADMINISTRATOR KEY"), []byte("PRIVATE KEY"), 2),
	} {
		if _, err := Parse(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
	sig := MarshalSignature([]byte("d"), k.Sign([]byte("d")))
	for name, b := range map[string][]byte{
		"empty": nil, "unknown field": []byte(`{"v":1,"x":1}`), "version 2": bytes.Replace(sig, []byte(`"v": 1`), []byte(`"v": 2`), 1),
		"trailing": append(bytes.Clone(sig), "{}"...), "short key": []byte(`{"v":1,"key":"00","policy_sha256":"00","signature":"00"}`),
		"oversize": bytes.Repeat([]byte(" "), maxSignatureFile+1),
	} {
		if _, _, err := ParseSignature(b); !errors.Is(err, ErrFormat) {
			t.Errorf("signature %s: %v, want ErrFormat", name, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	k, _ := Generate(rand.Reader)
	f.Add(k.Marshal())
	f.Add([]byte("-----BEGIN COHORT ADMINISTRATOR KEY-----\n-----END COHORT ADMINISTRATOR KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("refusal without ErrFormat: %v", err)
			}
			return
		}
		if len(k.AdminPublic()) != 32 || len(k.RecoveryPublic()) != 32 {
			t.Fatal("a parsed key has the wrong size")
		}
	})
}

func FuzzParseSignature(f *testing.F) {
	k, _ := Generate(rand.Reader)
	f.Add(MarshalSignature([]byte("doc"), k.Sign([]byte("doc"))))
	f.Add([]byte(`{"v":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		sig, _, err := ParseSignature(data)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("refusal without ErrFormat: %v", err)
			}
			return
		}
		if len(sig.Key) != messages.AdminKeySize || len(sig.Signature) != messages.AdminSignatureSize {
			t.Fatalf("accepted %+v", sig)
		}
	})
}
