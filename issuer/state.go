package issuer

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cohort-dev/cohort/leaderread"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/streamcheck"
)

// DefaultBucket is the JetStream key-value bucket of the issuer's state.
const DefaultBucket = messages.IssuerStateBucket

// The state's records, by key.
const (
	metaKey        = "meta"     // plaintext: the state key's id
	policyKey      = "policy"   // the policy in force, its signatures and history
	recoveryKey    = "recovery" // the state key's shares, each sealed to a recovery holder
	rootKey        = "root"
	taskKeyPrefix  = "task."
	groupKeyPrefix = "group."
	maxRecord      = messages.MaxPolicyDocument + 64<<10
	recordVersion  = 1
	stateFormat    = 3 // the envelope of records under a state key
)

// Errors of the store.
var (
	// errExists: another issuer wrote the record first; load theirs.
	errExists = errors.New("record exists")
	// errNotFound: no record of that name.
	errNotFound = errors.New("record not found")
	// ErrTampered: a record does not open under the state key where it
	// stands: it was altered, written again out of place, or made under
	// another state key.
	ErrTampered = errors.New("issuer: state record tampered with or out of place")
)

// stateKey is the one random key everything the issuer keeps is encrypted
// under. Its id names it without revealing it.
type stateKey struct {
	raw  []byte
	id   []byte
	aead cipher.AEAD
}

func newStateKey(raw []byte) (*stateKey, error) {
	if len(raw) != messages.StateKeySize {
		return nil, fmt.Errorf("state key is %d bytes, want %d", len(raw), messages.StateKeySize)
	}
	id, err := hkdf.Key(sha256.New, raw, nil, "cohort issuer state key id v1", messages.KeyIDSize)
	if err != nil {
		return nil, err
	}
	k, err := hkdf.Key(sha256.New, raw, nil, "cohort issuer state aead v1", 32)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, err
	}
	return &stateKey{raw: bytes.Clone(raw), id: id, aead: aead}, nil
}

// meta is the bucket's first record: which state key the state is under.
type meta struct {
	V       uint16 `msgpack:"v"`
	Format  uint16 `msgpack:"format"`
	KeyID   []byte `msgpack:"key_id"`
	Created int64  `msgpack:"created"`
}

// envelope is a record encrypted under the state key.
type envelope struct {
	V     uint16 `msgpack:"v"`
	KeyID []byte `msgpack:"key_id"`
	Box   []byte `msgpack:"box"`
}

// store keeps the issuer's state in a JetStream key-value bucket, every
// record but meta encrypted under the state key. Only ciphertext and the
// key's id ever reach NATS.
//
// Each record is written with the revision it replaces as its expected last
// subject sequence, which JetStream enforces and keeps in the message's
// header, and the record's ciphertext binds that revision, its name and the
// bucket: a record written again later, elsewhere, or anywhere without that
// header does not open. The issuer's own NATS credential can therefore
// destroy its state but cannot roll it back to an earlier policy or swap
// keys between tasks.
type store struct {
	nc     *nats.Conn // for reads from the stream's leader
	js     jetstream.JetStream
	stream jetstream.Stream
	bucket string
	key    *stateKey // nil until the issuer holds it
	// fresh: this run made the state key (a new state, or --init); only
	// then does a record under another state key count as absent.
	fresh bool
}

// historyKept is how many messages of each record the bucket keeps.
const historyKept = 8

// stateStream is the configuration of the state bucket's stream: a
// key-value bucket's, but without roll-ups, purges or deletes, so that the
// issuer's own credential cannot empty a record's subject and write an old
// record there again.
func stateStream(bucket string, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              "KV_" + bucket,
		Description:       "cohort issuer: root CA, task, group and cluster keys and the policy, under the state key",
		Subjects:          []string{"$KV." + bucket + ".>"},
		MaxMsgsPerSubject: historyKept,
		MaxMsgSize:        maxRecord * 2,
		Discard:           jetstream.DiscardNew,
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		AllowDirect:       true,
		DenyDelete:        true,
		DenyPurge:         true,
		AllowRollup:       false,
	}
}

// openStore opens the state bucket, creating it if there is none. empty
// reports whether it has never held a record.
func openStore(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, bucket string, replicas int) (s *store, empty bool, err error) {
	// Created, never updated: the issuer's credential may not update,
	// purge or delete its bucket (package access).
	want := stateStream(bucket, replicas)
	st, err := js.CreateStream(ctx, want)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		st, err = js.Stream(ctx, want.Name)
	}
	if err != nil {
		return nil, false, fmt.Errorf("open state bucket %q: %w", bucket, err)
	}
	info := st.CachedInfo()
	// One made otherwise (by an earlier cohort, or by whoever holds the
	// issuer's credential or runs NATS) could let a record's history be
	// rolled up, purged, or lost (package streamcheck).
	if err := streamcheck.Check(info.Config, want); err != nil {
		return nil, false, fmt.Errorf("%w: state bucket %q was made otherwise than cohort makes it (%v): "+
			"an earlier cohort's, or tampered with; give the issuer a fresh bucket", ErrTampered, bucket, err)
	}
	return &store{nc: nc, js: js, stream: st, bucket: bucket}, info.State.LastSeq == 0, nil
}

func (s *store) subject(name string) string { return "$KV." + s.bucket + "." + name }

// raw is one stored message of a record.
type raw struct {
	data []byte
	rev  uint64 // its sequence
	over uint64 // the revision it was written over
	cas  bool   // whether it was written conditionally (over is meaningful)
	gone bool   // a delete or purge marker
}

// directPatience is how long a read waits for the state stream to answer
// direct gets: the replicas of a replicated stream made or moved a moment
// ago serve them only once they have caught up, and until then a get has
// no responders.
const directPatience = 5 * time.Second

// get reads the last message of a record; errNotFound when there is none.
// It reads directly, from any replica of the stream, which may lag the
// leader by the last writes: current reads from the leader.
func (s *store) get(ctx context.Context, name string) (*raw, error) {
	m, err := s.stream.GetLastMsgForSubject(ctx, s.subject(name))
	for end := time.Now().Add(directPatience); errors.Is(err, nats.ErrNoResponders) && time.Now().Before(end) && ctx.Err() == nil; {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
			m, err = s.stream.GetLastMsgForSubject(ctx, s.subject(name))
		}
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("state %q: read: %w", name, err)
	}
	return s.parse(name, m)
}

// current reads the last message of a record from the stream's leader
// (package leaderread): what it returns is the record as of when the
// request was sent, or later. errNotFound when there is none.
func (s *store) current(ctx context.Context, name string) (*raw, error) {
	ctx, cancel := context.WithTimeout(ctx, directPatience)
	defer cancel()
	m, err := leaderread.Last(ctx, s.nc, s.stream.CachedInfo().Config.Name, s.subject(name))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("state %q: read from the leader: %w", name, err)
	}
	return s.parse(name, m)
}

// parse checks a stored message of a record.
func (s *store) parse(name string, m *jetstream.RawStreamMsg) (*raw, error) {
	r := &raw{data: m.Data, rev: m.Sequence}
	if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		r.gone = true
	}
	// A condition on another subject's sequence, or a roll-up, would let
	// an old record stand where it was not written: none of cohort's
	// writes carries one.
	if m.Header.Get("Nats-Expected-Last-Subject-Sequence-Subject") != "" || m.Header.Get(jetstream.MsgRollup) != "" {
		return nil, fmt.Errorf("%w: state %q was written under a condition cohort never sets", ErrTampered, name)
	}
	if h := m.Header.Get(jetstream.ExpectedLastSubjSeqHeader); h != "" {
		over, err := strconv.ParseUint(h, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: state %q: stored revision %q", ErrTampered, name, h)
		}
		r.over, r.cas = over, true
	}
	return r, nil
}

// write stores data as the record's next message, over revision over (0:
// the record must not exist). It returns the new revision, or errExists
// when another writer moved the record on first.
func (s *store) write(ctx context.Context, name string, data []byte, over uint64) (uint64, error) {
	msg := &nats.Msg{Subject: s.subject(name), Data: data, Header: nats.Header{}}
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(over))
	if wrongRevision(err) {
		return 0, errExists
	}
	if err != nil {
		return 0, fmt.Errorf("state %q: store: %w", name, err)
	}
	return ack.Sequence, nil
}

func wrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func (s *store) aad(name string, over uint64) []byte {
	a := []byte("cohort/issuer/state/v3\x00" + s.bucket + "\x00" + name + "\x00")
	return binary.BigEndian.AppendUint64(a, over)
}

// seal encrypts plain as record name written over revision over.
func (s *store) seal(name string, over uint64, plain []byte) ([]byte, error) {
	box := s.key.aead.Seal(nil, nil, plain, s.aad(name, over))
	return messages.Marshal(&envelope{V: stateFormat, KeyID: s.key.id, Box: box})
}

// open decrypts a record. errOtherKey when it was made under another
// state key (only after --init made a new one).
func (s *store) open(name string, r *raw) ([]byte, error) {
	var e envelope
	if err := messages.Unmarshal(r.data, maxRecord*2, &e); err != nil || e.V != stateFormat {
		return nil, fmt.Errorf("%w: state %q is not a record of this cohort's state format %d", ErrTampered, name, stateFormat)
	}
	if !bytes.Equal(e.KeyID, s.key.id) {
		return nil, errOtherKey
	}
	if !r.cas {
		return nil, fmt.Errorf("%w: state %q was written unconditionally", ErrTampered, name)
	}
	plain, err := s.key.aead.Open(nil, nil, e.Box, s.aad(name, r.over))
	if err != nil {
		return nil, fmt.Errorf("%w: state %q (revision %d) does not open where it stands", ErrTampered, name, r.rev)
	}
	return plain, nil
}

// errOtherKey: a record made under another state key than the one in
// meta; it is stale and may be written over.
var errOtherKey = errors.New("record made under another state key")

// load reads and decrypts a record, returning its plaintext and revision.
// A deleted record, or one under another state key, is errNotFound with
// its revision, so that it is made anew over it; a tampered one is
// ErrTampered.
func (s *store) load(ctx context.Context, name string) ([]byte, uint64, error) {
	r, err := s.get(ctx, name)
	if err != nil {
		return nil, 0, err
	}
	return s.decrypt(name, r)
}

// decrypt opens a record read with get or current, as load does.
func (s *store) decrypt(name string, r *raw) ([]byte, uint64, error) {
	if r.gone {
		return nil, r.rev, fmt.Errorf("%w: state %q was deleted", ErrTampered, name)
	}
	plain, err := s.open(name, r)
	if errors.Is(err, errOtherKey) {
		if s.fresh {
			// --init made a new state key in this run: the record is
			// the old state's, and is made anew over it.
			return nil, r.rev, errNotFound
		}
		return nil, r.rev, fmt.Errorf("%w: state %q is under another state key than the state's", ErrTampered, name)
	}
	return plain, r.rev, err
}

// put encrypts and stores a record over revision over.
func (s *store) put(ctx context.Context, name string, plain []byte, over uint64) (uint64, error) {
	data, err := s.seal(name, over, plain)
	if err != nil {
		return 0, err
	}
	return s.write(ctx, name, data, over)
}

// loadMeta reads the meta record; errNotFound when there is none.
func (s *store) loadMeta(ctx context.Context) (*meta, uint64, error) {
	r, err := s.get(ctx, metaKey)
	if err != nil {
		return nil, 0, err
	}
	var m meta
	if r.gone {
		return nil, r.rev, fmt.Errorf("%w: the state's meta record was deleted", ErrTampered)
	}
	if err := messages.Unmarshal(r.data, 1<<10, &m); err != nil || m.V != recordVersion || len(m.KeyID) != messages.KeyIDSize {
		return nil, r.rev, fmt.Errorf("%w: the state's meta record does not decode (made by an earlier cohort?)", ErrTampered)
	}
	return &m, r.rev, nil
}

// record is the plaintext of a key-and-certificate record.
type record struct {
	V    uint16 `msgpack:"v"`
	Key  []byte `msgpack:"key"`  // PKCS #8
	Cert []byte `msgpack:"cert"` // DER
	Spec []byte `msgpack:"spec"` // taskSpec or groupSpec; empty for the root
}

// loadCredential returns the credential stored under name, its spec and its
// revision. It returns errNotFound (with a revision to write over, or 0)
// when there is none.
func (s *store) loadCredential(ctx context.Context, name string) (*credential, []byte, uint64, error) {
	plain, rev, err := s.load(ctx, name)
	if err != nil {
		return nil, nil, rev, err
	}
	defer clear(plain)
	rec, err := decodeRecord(plain)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("state %q: %w", name, err)
	}
	key, err := x509.ParsePKCS8PrivateKey(rec.Key)
	clear(rec.Key)
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
	return &credential{key: ek, cert: cert}, rec.Spec, rev, nil
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

// putCredential stores a credential over revision over; errExists when
// another writer got there first.
func (s *store) putCredential(ctx context.Context, name string, c *credential, spec []byte, over uint64) (uint64, error) {
	key, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return 0, fmt.Errorf("state %q: marshal key: %w", name, err)
	}
	plain, err := messages.Marshal(&record{V: recordVersion, Key: key, Cert: c.cert.Raw, Spec: spec})
	clear(key)
	if err != nil {
		return 0, err
	}
	defer clear(plain)
	return s.put(ctx, name, plain, over)
}

// clusterKeyPrefix prefixes the state keys of cluster keys.
const clusterKeyPrefix = "cluster."

// clusterKey is a cluster's 256-bit key and its epoch.
type clusterKey struct {
	V     uint16 `msgpack:"v"`
	Key   []byte `msgpack:"key"`
	Epoch uint32 `msgpack:"epoch"`
}

// loadCluster returns the cluster key stored under name, or errNotFound.
func (s *store) loadCluster(ctx context.Context, name string) (*clusterKey, uint64, error) {
	plain, rev, err := s.load(ctx, name)
	if err != nil {
		return nil, rev, err
	}
	defer clear(plain)
	ck, err := decodeClusterKey(plain)
	return ck, rev, err
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

// putCluster stores a cluster key over revision over; errExists if another
// issuer stored one first.
func (s *store) putCluster(ctx context.Context, name string, ck *clusterKey, over uint64) error {
	plain, err := messages.Marshal(ck)
	if err != nil {
		return err
	}
	defer clear(plain)
	_, err = s.put(ctx, name, plain, over)
	return err
}
