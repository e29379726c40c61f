package issuer

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/messages"
)

// DefaultBucket is the JetStream key-value bucket of the issuer's sealed state.
const DefaultBucket = messages.IssuerStateBucket

const (
	rootKey        = "root"
	taskKeyPrefix  = "task."
	groupKeyPrefix = "group."
	maxRecord      = 16 << 10
	recordVersion  = 1
)

// errExists: another issuer created the record first; load theirs.
var errExists = errors.New("record exists")

// record is the plaintext of one sealed state entry.
type record struct {
	V    uint16 `msgpack:"v"`
	Key  []byte `msgpack:"key"`  // PKCS #8
	Cert []byte `msgpack:"cert"` // DER
	Spec []byte `msgpack:"spec"` // taskSpec or groupSpec; empty for the root
}

// store keeps the issuer's keys sealed in JetStream key-value. Only sealed
// bytes ever reach NATS. Each entry is sealed with its key name and the hash
// of the policy as additional data: entries cannot be swapped, and state made
// under one policy does not open under another, so whoever starts the issuer
// cannot put a policy of their choosing in front of an existing root.
type store struct {
	kv         jetstream.KeyValue
	sealer     enclave.Sealer
	policyHash [32]byte
}

func openStore(ctx context.Context, js jetstream.JetStream, bucket string, replicas int, sealer enclave.Sealer, policyHash [32]byte) (*store, error) {
	// Created, never updated: the issuer's credential may not update,
	// purge or delete its bucket (package access).
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       bucket,
		Description:  "cohort issuer: root CA, task and group keys, cluster keys, sealed to the issuer enclave",
		History:      4,
		MaxValueSize: maxRecord * 2,
		Storage:      jetstream.FileStorage,
		Replicas:     replicas,
	})
	if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		kv, err = js.KeyValue(ctx, bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("open state bucket %q: %w", bucket, err)
	}
	return &store{kv: kv, sealer: sealer, policyHash: policyHash}, nil
}

func (s *store) aad(name string) []byte {
	return append([]byte("cohort/issuer/state/v2/"+name+"\x00"), s.policyHash[:]...)
}

// load returns the credential stored under name, its spec and its revision.
// It returns jetstream.ErrKeyNotFound when there is none.
func (s *store) load(ctx context.Context, name string) (*credential, []byte, uint64, error) {
	e, err := s.kv.Get(ctx, name)
	if err != nil {
		return nil, nil, 0, err
	}
	rec, err := s.open(name, e.Value())
	if err != nil {
		return nil, nil, 0, err
	}
	key, err := x509.ParsePKCS8PrivateKey(rec.Key)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("state %q: parse key: %w", name, err)
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, 0, fmt.Errorf("state %q: key is %T, want ECDSA", name, key)
	}
	cert, err := x509.ParseCertificate(rec.Cert)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("state %q: parse certificate: %w", name, err)
	}
	if !ek.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, 0, fmt.Errorf("state %q: key does not match certificate", name)
	}
	return &credential{key: ek, cert: cert}, rec.Spec, e.Revision(), nil
}

// open unseals and decodes one stored value.
func (s *store) open(name string, sealed []byte) (*record, error) {
	plain, err := s.sealer.Unseal(sealed, s.aad(name))
	if err != nil {
		return nil, fmt.Errorf("state %q: %w: it was sealed by another issuer build or under another policy (policy sha256 %x here); "+
			"a changed policy needs a fresh state bucket, and so a new root", name, err, s.policyHash)
	}
	return decodeRecord(plain)
}

func decodeRecord(plain []byte) (*record, error) {
	var rec record
	if err := messages.Unmarshal(plain, maxRecord, &rec); err != nil {
		return nil, fmt.Errorf("state record: %w", err)
	}
	if rec.V != recordVersion || len(rec.Key) == 0 || len(rec.Cert) == 0 {
		return nil, errors.New("state record: wrong version or empty fields")
	}
	return &rec, nil
}

// put seals and stores a credential: created when rev is 0, else updated
// only if the stored revision is still rev. It returns errExists when another
// writer got there first.
func (s *store) put(ctx context.Context, name string, c *credential, spec []byte, rev uint64) (uint64, error) {
	key, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return 0, fmt.Errorf("state %q: marshal key: %w", name, err)
	}
	plain, err := messages.Marshal(&record{V: recordVersion, Key: key, Cert: c.cert.Raw, Spec: spec})
	if err != nil {
		return 0, err
	}
	sealed, err := s.sealer.Seal(plain, s.aad(name))
	clear(plain)
	clear(key)
	if err != nil {
		return 0, fmt.Errorf("state %q: seal: %w", name, err)
	}
	var newRev uint64
	if rev == 0 {
		newRev, err = s.kv.Create(ctx, name, sealed)
	} else {
		newRev, err = s.kv.Update(ctx, name, sealed, rev)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return 0, errExists
	case err != nil:
		return 0, fmt.Errorf("state %q: store: %w", name, err)
	}
	return newRev, nil
}

// clusterKeyPrefix prefixes the state keys of cluster keys.
const clusterKeyPrefix = "cluster."

// clusterKey is a cluster's 256-bit key and its epoch.
type clusterKey struct {
	V     uint16 `msgpack:"v"`
	Key   []byte `msgpack:"key"`
	Epoch uint32 `msgpack:"epoch"`
}

// loadCluster returns the cluster key stored under name, or
// jetstream.ErrKeyNotFound.
func (s *store) loadCluster(ctx context.Context, name string) (*clusterKey, error) {
	e, err := s.kv.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	plain, err := s.sealer.Unseal(e.Value(), s.aad(name))
	if err != nil {
		return nil, fmt.Errorf("state %q: %w: it was sealed by another issuer build or under another policy", name, err)
	}
	defer clear(plain)
	return decodeClusterKey(plain)
}

func decodeClusterKey(plain []byte) (*clusterKey, error) {
	var ck clusterKey
	if err := messages.Unmarshal(plain, maxRecord, &ck); err != nil {
		return nil, fmt.Errorf("cluster key record: %w", err)
	}
	if ck.V != recordVersion || len(ck.Key) != messages.ClusterKeySize || ck.Epoch == 0 {
		return nil, errors.New("cluster key record: wrong version, size or epoch")
	}
	return &ck, nil
}

// createCluster seals and stores a new cluster key; errExists if another
// issuer stored one first.
func (s *store) createCluster(ctx context.Context, name string, ck *clusterKey) error {
	plain, err := messages.Marshal(ck)
	if err != nil {
		return err
	}
	sealed, err := s.sealer.Seal(plain, s.aad(name))
	clear(plain)
	if err != nil {
		return fmt.Errorf("state %q: seal: %w", name, err)
	}
	if _, err := s.kv.Create(ctx, name, sealed); errors.Is(err, jetstream.ErrKeyExists) {
		return errExists
	} else if err != nil {
		return fmt.Errorf("state %q: store: %w", name, err)
	}
	return nil
}
