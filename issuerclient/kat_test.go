package issuerclient

// Known-answer tests of the issuer's answer to a unit's certify request, as
// the unit opens it: the report signed by the root (ReportDigest), its
// secrets sealed with HPKE (HKDF-SHA256, AES-256-GCM, the info bound to the
// request: SecretsInfo) to the request's ephemeral key, and a refusal the
// root signed (RefusalDigest over the whole request).
//
// The expected values are in testdata/vectors.json, written once from a
// reviewed run (the certificates, the sealing and the signatures were made
// then, with keys not kept) and never recomputed by the code under test: a
// change that fails them means units of this build cannot read what issuers
// of the deployed builds send. Each reply is also opened by spec below, on
// the standard library alone, with the labels as literals.
//
// To add a vector, write its inputs into the file (outputs empty) and run
//
//	go test ./issuerclient -run TestKnownAnswers -args -write-vectors
//
// which fills in the outputs of every vector from the code under test.
// Review the diff before committing: an output that changed is a wire
// break, not something to regenerate.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/hpke"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/cohort-dev/cohort/internal/kattest"
	"github.com/cohort-dev/cohort/messages"
)

// hexBytes is a byte string written as hex in the vectors; null is nil.
type hexBytes = kattest.Hex

type certifyVectors struct {
	Comment  []string        `json:"comment"`
	Reports  []reportVector  `json:"reports"`
	Refusals []refusalVector `json:"refusals"`
}

// reportVector: a certify request's body and the issuer's reply, and the
// pair the unit takes from it.
type reportVector struct {
	Name       string   `json:"name"`
	Root       hexBytes `json:"root"` // DER
	Now        int64    `json:"now"`  // Unix nanoseconds
	KEM        uint16   `json:"kem"`
	PrivateKey hexBytes `json:"private_key"` // the request's ephemeral key
	Body       hexBytes `json:"body"`        // the encoded messages.CertifyBody
	Reply      hexBytes `json:"reply"`       // the encoded messages.CertifyReply
	Task       string   `json:"task"`        // output
	Leaf       hexBytes `json:"leaf"`        // output: DER
	TaskKey    hexBytes `json:"task_key"`    // output: the task key's public key, PKIX
	Cluster    string   `json:"cluster"`     // output
	Epoch      uint32   `json:"epoch"`       // output
	ClusterKey hexBytes `json:"cluster_key"` // output
	Secrets    hexBytes `json:"secrets"`     // output: the encoded messages.Secrets, opened by spec
}

// refusalVector: a certify request and the issuer's refusal of it.
type refusalVector struct {
	Name      string   `json:"name"`
	Root      hexBytes `json:"root"`      // DER
	Request   hexBytes `json:"request"`   // the encoded messages.CertifyRequest as sent
	Refusal   hexBytes `json:"refusal"`   // the encoded messages.Error
	Authentic bool     `json:"authentic"` // output: signed by the root for this request
}

func readVectors(t *testing.T) *certifyVectors {
	t.Helper()
	var v certifyVectors
	kattest.Read(t, &v)
	return &v
}

// vectorTrust trusts root, as VerifyIssuer would once the issuer's evidence
// checked out.
func vectorTrust(t *testing.T, rootDER []byte) *Trust {
	t.Helper()
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &Trust{Root: root, roots: pool}
}

// pending is the request of s as Prepare would have left it.
func (s *reportVector) pending(t *testing.T) *Pending {
	t.Helper()
	var body messages.CertifyBody
	if err := messages.Decode(s.Body, messages.MaxCertifyBody, &body); err != nil {
		t.Fatalf("%s: the request body: %v", s.Name, err)
	}
	kem, err := hpke.NewKEM(s.KEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := kem.NewPrivateKey(s.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if body.KEM != s.KEM || !bytes.Equal(body.PublicKey, key.PublicKey().Bytes()) {
		t.Fatalf("%s: the request body carries another key", s.Name)
	}
	c := &Certifier{cfg: CertifierConfig{Trust: vectorTrust(t, s.Root), KEM: s.KEM, Cluster: body.Cluster, Groups: body.Groups, Now: func() time.Time { return time.Unix(0, s.Now) }}}
	return &Pending{c: c, task: body.Task, cluster: body.Cluster, key: key, requestHash: messages.RequestHash(s.Body)}
}

func TestKnownAnswers(t *testing.T) {
	v := readVectors(t)
	if kattest.Writing() {
		for i := range v.Reports {
			s := &v.Reports[i]
			pair, err := s.pending(t).Open(s.Reply)
			if err != nil {
				t.Fatalf("%s: %v", s.Name, err)
			}
			pub, err := x509.MarshalPKIXPublicKey(&pair.Key.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			s.Task, s.Leaf, s.TaskKey = pair.Task, pair.Chain[0], pub
			s.Cluster, s.Epoch, s.ClusterKey = "", 0, nil
			if pair.ClusterKey != nil {
				s.Cluster, s.Epoch, s.ClusterKey = pair.ClusterKey.Cluster, pair.ClusterKey.Epoch, pair.ClusterKey.Key
			}
			s.Secrets = specSecrets(t, s)
		}
		for i := range v.Refusals {
			s := &v.Refusals[i]
			s.Authentic = refusalAuthentic(t, s)
		}
		kattest.Write(t, v)
		return
	}
	if len(v.Reports) == 0 || len(v.Refusals) == 0 {
		t.Fatalf("%s lacks a kind of vector", kattest.File)
	}
	for _, s := range v.Reports {
		checkReport(t, &s)
	}
	for _, s := range v.Refusals {
		if got := refusalAuthentic(t, &s); got != s.Authentic {
			t.Errorf("%s: authentic %v, want %v", s.Name, got, s.Authentic)
		}
		if got := specRefusalAuthentic(t, &s); got != s.Authentic {
			t.Errorf("%s: authentic by spec %v, want %v", s.Name, got, s.Authentic)
		}
	}
}

func checkReport(t *testing.T, s *reportVector) {
	pair, err := s.pending(t).Open(s.Reply)
	if err != nil {
		t.Errorf("%s: %v", s.Name, err)
		return
	}
	pub, err := x509.MarshalPKIXPublicKey(&pair.Key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if pair.Task != s.Task || !bytes.Equal(pair.Chain[0], s.Leaf) || !bytes.Equal(pub, s.TaskKey) {
		t.Errorf("%s: the pair is task %q, leaf %x, key %x", s.Name, pair.Task, pair.Chain[0], pub)
	}
	var cluster string
	var epoch uint32
	var key []byte
	if pair.ClusterKey != nil {
		cluster, epoch, key = pair.ClusterKey.Cluster, pair.ClusterKey.Epoch, pair.ClusterKey.Key
	}
	if cluster != s.Cluster || epoch != s.Epoch || !bytes.Equal(key, s.ClusterKey) {
		t.Errorf("%s: the cluster key is %q, %d, %x; want %q, %d, %x", s.Name, cluster, epoch, key, s.Cluster, s.Epoch, s.ClusterKey)
	}
	if got := specSecrets(t, s); !bytes.Equal(got, s.Secrets) {
		t.Errorf("%s: the secrets by spec are\n%x\nwant\n%x", s.Name, got, s.Secrets)
	}

	// The same reply does not open for another request, nor altered.
	other := s.pending(t)
	other.requestHash[0] ^= 1
	if _, err := other.Open(s.Reply); !errors.Is(err, ErrUnauthentic) {
		t.Errorf("%s: opened for another request: %v", s.Name, err)
	}
	altered := bytes.Clone(s.Reply)
	altered[len(altered)/2] ^= 1
	if _, err := s.pending(t).Open(altered); err == nil {
		t.Errorf("%s: an altered reply opened", s.Name)
	}
}

func refusalAuthentic(t *testing.T, s *refusalVector) bool {
	var e messages.Error
	if err := messages.Decode(s.Refusal, len(s.Refusal), &e); err != nil {
		t.Fatalf("%s: the refusal: %v", s.Name, err)
	}
	p := &Pending{c: &Certifier{cfg: CertifierConfig{Trust: vectorTrust(t, s.Root)}}, sentHash: sha256.Sum256(s.Request)}
	return errors.Is(p.Refusal(&e), ErrAuthenticRefusal)
}

// The spec, from the design, on the standard library alone.

// specSecrets checks the report's signature by the root, over SHA-256 of
// its label and the encoded ReportBody, and opens its secrets: HPKE base
// mode, HKDF-SHA256, AES-256-GCM, info the label and SHA-256 of the
// request's body.
func specSecrets(t *testing.T, s *reportVector) []byte {
	t.Helper()
	var reply messages.CertifyReply
	if err := messages.Decode(s.Reply, len(s.Reply), &reply); err != nil {
		t.Fatalf("%s: %v", s.Name, err)
	}
	root, err := x509.ParseCertificate(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(append([]byte("cohort/v1/certify-report-signature\x00"), reply.Body...))
	if !ecdsa.VerifyASN1(root.PublicKey.(*ecdsa.PublicKey), d[:], reply.Signature) {
		t.Errorf("%s: the report's signature does not verify by spec", s.Name)
	}
	var body messages.ReportBody
	if err := messages.Decode(reply.Body, len(reply.Body), &body); err != nil {
		t.Fatalf("%s: %v", s.Name, err)
	}
	kem, err := hpke.NewKEM(s.KEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := kem.NewPrivateKey(s.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	rh := sha256.Sum256(s.Body)
	plain, err := hpke.Open(key, hpke.HKDFSHA256(), hpke.AES256GCM(), append([]byte("cohort/v1/certify-report-secrets\x00"), rh[:]...), body.Sealed)
	if err != nil {
		t.Errorf("%s: the secrets do not open by spec: %v", s.Name, err)
	}
	return plain
}

// specRefusalAuthentic: the refusal's proof is the root's signature over
// SHA-256 of SHA-512 report data (length-prefixed label, the request's
// SHA-256, the code and the reason).
func specRefusalAuthentic(t *testing.T, s *refusalVector) bool {
	var e messages.Error
	if err := messages.Decode(s.Refusal, len(s.Refusal), &e); err != nil {
		t.Fatalf("%s: the refusal: %v", s.Name, err)
	}
	root, err := x509.ParseCertificate(s.Root)
	if err != nil {
		t.Fatal(err)
	}
	rh := sha256.Sum256(s.Request)
	bound := specBind("cohort/v5/certify-refusal", rh[:], []byte(e.Code), []byte(e.Reason))
	d := sha256.Sum256(bound)
	return len(e.Proof) > 0 && ecdsa.VerifyASN1(root.PublicKey.(*ecdsa.PublicKey), d[:], e.Proof)
}

// specBind is report data: SHA-512 over the label and the parts, each
// prefixed with its length as 8 big-endian bytes.
func specBind(label string, parts ...[]byte) []byte {
	h := sha512.New()
	for _, p := range append([][]byte{[]byte(label)}, parts...) {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(p))))
		h.Write(p)
	}
	return h.Sum(nil)
}
