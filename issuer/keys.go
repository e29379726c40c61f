package issuer

import (
	"bytes"
	"context"
	"crypto/hpke"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/replay"
	"github.com/cohort-dev/cohort/service"
)

// ErrNoStateKey: the issuer could not obtain the state key and will not
// make a new root on its own. The wrapped text says what to do.
var ErrNoStateKey = errors.New("issuer: cannot open the state")

// KeyCache keeps the state key, sealed to this platform, between runs of
// one issuer on one machine. A real enclave's seal key is bound to the CPU
// and the build, so the cache opens only for the same build on the same
// machine; every other issuer obtains the key from a running one.
type KeyCache interface {
	// Load returns what Store stored, or an error wrapping fs.ErrNotExist.
	Load() ([]byte, error)
	Store(sealed []byte) error
}

// FileKeyCache is a KeyCache in a file (mode 0600).
type FileKeyCache string

// KeyCacheFile is the file name of the key cache in an issuer's data folder.
const KeyCacheFile = "issuer-state-key.sealed"

// Load implements KeyCache.
func (f FileKeyCache) Load() ([]byte, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, err
	}
	if len(b) > 4<<10 {
		return nil, fmt.Errorf("key cache %s is %d bytes, too large", f, len(b))
	}
	return b, nil
}

// Store implements KeyCache: a temporary file renamed into place.
func (f FileKeyCache) Store(sealed []byte) error {
	dir := filepath.Dir(string(f))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".key-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(sealed); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), string(f))
}

// cached is what the key cache holds: the state key sealed to this
// platform, and the highest policy version this issuer has served, which
// the seal authenticates: a state whose policy record is older was rolled
// back.
type cached struct {
	V      uint16 `msgpack:"v"`
	KeyID  []byte `msgpack:"key_id"`
	Floor  uint64 `msgpack:"floor"`
	Sealed []byte `msgpack:"sealed"`
}

func (i *Issuer) cacheAAD(keyID []byte, floor uint64) []byte {
	a := append([]byte("cohort/issuer/state-key-cache/v2\x00"+i.cfg.Bucket+"\x00"), keyID...)
	return binary.BigEndian.AppendUint64(a, floor)
}

// keySource is where an issuer got the state key from.
type keySource int

const (
	fromNew      keySource = iota // a new state: an empty bucket, or --init
	fromCache                     // this machine's key cache
	fromPeer                      // a running issuer
	fromRecovery                  // the recovery holders
)

// fromCache opens the cached state key for keyID; nil when the cache has
// none that opens here.
func (i *Issuer) fromCache(keyID []byte) (*stateKey, uint64) {
	if i.cfg.KeyCache == nil {
		return nil, 0
	}
	b, err := i.cfg.KeyCache.Load()
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			i.log.Warn("key cache unreadable", "err", err)
		}
		return nil, 0
	}
	c, err := decodeCached(b)
	if err != nil {
		i.log.Warn("key cache does not decode; ignoring it", "err", err)
		return nil, 0
	}
	if !bytes.Equal(c.KeyID, keyID) {
		i.log.Info("key cache holds another state's key; ignoring it")
		return nil, 0
	}
	raw, err := i.cfg.Platform.Unseal(c.Sealed, i.cacheAAD(keyID, c.Floor))
	if err != nil {
		i.log.Info("key cache does not open on this machine and build", "err", err)
		return nil, 0
	}
	defer clear(raw)
	k, err := newStateKey(raw)
	if err != nil || !bytes.Equal(k.id, keyID) {
		i.log.Warn("key cache holds a key that is not the state's")
		return nil, 0
	}
	return k, c.Floor
}

func decodeCached(b []byte) (*cached, error) {
	var c cached
	if err := messages.Unmarshal(b, 4<<10, &c); err != nil {
		return nil, err
	}
	if c.V != 2 || len(c.KeyID) != messages.KeyIDSize || len(c.Sealed) == 0 {
		return nil, errors.New("key cache: wrong version or fields")
	}
	return &c, nil
}

// toCache seals the state key into the cache.
func (i *Issuer) toCache(k *stateKey, floor uint64) {
	if i.cfg.KeyCache == nil {
		return
	}
	sealed, err := i.cfg.Platform.Seal(k.raw, i.cacheAAD(k.id, floor))
	if err != nil {
		i.log.Warn("cannot seal the state key for the key cache; the next start asks a running issuer", "err", err)
		return
	}
	b, err := messages.Marshal(&cached{V: 2, KeyID: k.id, Floor: floor, Sealed: sealed})
	if err == nil {
		err = i.cfg.KeyCache.Store(b)
	}
	if err != nil {
		i.log.Warn("cannot write the key cache", "err", err)
	}
}

// obtained is how an issuer came by the state key.
type obtained struct {
	source keySource
	peer   []byte // the measurement of the issuer that handed it over
	floor  uint64 // the lowest policy version the state may have: none older was ever served
}

// obtainKey gives the store its state key: a new one for a new state (an
// empty bucket, or Init), else from the key cache, from a running issuer,
// or from recovery-key holders.
func (i *Issuer) obtainKey(ctx context.Context, empty bool) (obtained, error) {
	m, metaRev, err := i.store.loadMeta(ctx)
	switch {
	case err == nil && i.cfg.Init:
		// A working state's root changes only by a signed update: --init
		// would let whoever starts an issuer replace it, and split the
		// service between two roots while another replica serves.
		return obtained{}, fmt.Errorf("%w: --init refused: bucket %q holds a state (state key %x). Its root is rotated by a policy update that the administrators sign "+
			"(root_generation: one more than in force), which keeps the policy history and moves every replica, unit and user along; "+
			"to abandon the state instead (its key lost for good: no issuer and no recovery holders left), remove the bucket with an administrator's NATS credential first. Nothing was written",
			ErrNoStateKey, i.cfg.Bucket, m.KeyID)
	case errors.Is(err, errNotFound) && (empty || i.cfg.Init), err != nil && i.cfg.Init:
		if err := i.initState(ctx, metaRev); errors.Is(err, errRaced) && !i.cfg.Init {
			// Another issuer made the state first: obtain its key.
			return i.obtainKey(ctx, false)
		} else if err != nil {
			return obtained{}, err
		}
		return obtained{source: fromNew}, nil
	case errors.Is(err, errNotFound):
		return obtained{}, fmt.Errorf("%w: bucket %q holds records but no state key record: it was made by a cohort from before the state key, or damaged. "+
			"Start the issuer with --init to make a new state and a new root (every user must then trust again), or give it a fresh bucket", ErrNoStateKey, i.cfg.Bucket)
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return obtained{}, fmt.Errorf("%w: %w: JetStream does not serve bucket %q yet (its replicas may still be electing a leader). "+
			"Nothing was written: start the issuer again once it does", ErrNoStateKey, err, i.cfg.Bucket)
	case err != nil:
		return obtained{}, fmt.Errorf("%w: %w. Restore the bucket, or start with --init to make a new root", ErrNoStateKey, err)
	}
	if k, floor := i.fromCache(m.KeyID); k != nil {
		i.store.key = k
		i.log.Info("state key opened from the key cache", "key_id", hex.EncodeToString(m.KeyID))
		return obtained{source: fromCache, floor: floor}, nil
	}
	k, peer, floor, perr := i.askPeers(ctx, m.KeyID)
	if perr == nil {
		i.store.key = k
		i.log.Info("state key obtained from a running issuer", "key_id", hex.EncodeToString(m.KeyID), "from", hex.EncodeToString(peer))
		return obtained{source: fromPeer, peer: peer, floor: floor}, nil
	}
	if i.cfg.AwaitRecovery {
		i.log.Warn("no key cache opens and no running issuer gave the state key; waiting for recovery", "peer", perr)
		k, err := i.awaitRecovery(ctx, m.KeyID)
		if err != nil {
			return obtained{}, err
		}
		i.store.key = k
		return obtained{source: fromRecovery}, nil
	}
	return obtained{}, fmt.Errorf("%w: the state key (id %x) is not in this issuer's key cache for this machine and build, and %v. "+
		"Start this issuer while an issuer of a build the policy in force lists is running (an update can add this build, measurement %x, under issuers:), "+
		"or start it with --recover and restore the key with `cohort recover`; --init makes a new root instead, and every user must then trust again. Nothing was written",
		ErrNoStateKey, m.KeyID, perr, i.self)
}

// initState makes a new state key and writes the meta record over
// revision over, once the genesis policy passes checkGenesis.
func (i *Issuer) initState(ctx context.Context, over uint64) error {
	if err := i.checkGenesis(); err != nil {
		return err
	}
	raw := make([]byte, messages.StateKeySize)
	if _, err := io.ReadFull(i.cfg.Rand, raw); err != nil {
		return fmt.Errorf("issuer: draw state key: %w", err)
	}
	k, err := newStateKey(raw)
	clear(raw)
	if err != nil {
		return err
	}
	b, err := messages.Marshal(&meta{V: recordVersion, Format: stateFormat, KeyID: k.id, Created: i.cfg.Now().UnixNano()})
	if err != nil {
		return err
	}
	if _, err := i.store.write(ctx, metaKey, b, over); errors.Is(err, errExists) {
		return errRaced
	} else if err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	i.store.key, i.store.fresh = k, true
	i.log.Info("made a new state and state key", "key_id", hex.EncodeToString(k.id), "init", i.cfg.Init)
	return nil
}

// ErrGenesis: the genesis policy would make a state that cannot be kept.
// Nothing was written.
var ErrGenesis = errors.New("issuer: genesis policy refused")

// checkGenesis decides, before anything is written, whether the genesis
// policy may start a new state: it must list this issuer's build if it
// lists any (or no issuer could ever open the state), and name
// administrators and recovery holders unless Config.Ungoverned says to
// do without.
func (i *Issuer) checkGenesis() error {
	p := i.cfg.Policy
	if p == nil {
		return fmt.Errorf("%w: a new state needs a genesis policy (--policy)", ErrNoStateKey)
	}
	if len(p.issuers) > 0 && !p.AcceptsIssuer(i.self, i.self) {
		return fmt.Errorf("%w: it lists %d issuer builds under issuers:, not this one (measurement %x): no issuer could open the state it makes. "+
			"Add this build's measurement (cohort measure issuer) to issuers:. Nothing was written", ErrGenesis, len(p.issuers), i.self)
	}
	var missing []string
	if len(p.Administrators.Keys) == 0 {
		missing = append(missing, "administrators: (without them the policy never changes: the next release of the issuer or of a task needs a new root, and every user must trust again)")
	}
	if len(p.Recovery.Keys) == 0 {
		missing = append(missing, "recovery: (without them, losing every issuer's machine loses the root)")
	}
	if len(missing) == 0 {
		return nil
	}
	if !i.cfg.Ungoverned {
		return fmt.Errorf("%w: it names no %s. Generate keys with cohort policy keygen and list them, or start with --ungoverned to accept that. Nothing was written",
			ErrGenesis, strings.Join(missing, ", nor "))
	}
	i.log.Warn("genesis without governance, as --ungoverned allows", "missing", strings.Join(missing, "; "))
	return nil
}

// errRaced: another issuer made a new state at the same moment.
var errRaced = errors.New("issuer: another issuer made the state at the same time; start again")

// askPeers asks running issuers for the state key until one answers or
// PeerTimeout has passed: an issuer that made a new state a moment ago may
// not serve yet.
func (i *Issuer) askPeers(ctx context.Context, keyID []byte) (*stateKey, []byte, uint64, error) {
	end := time.Now().Add(i.cfg.PeerTimeout)
	for {
		k, peer, floor, err := i.askPeer(ctx, keyID, time.Until(end))
		if !errors.Is(err, errNoPeer) || time.Until(end) < 100*time.Millisecond {
			return k, peer, floor, err
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, 0, ctx.Err()
		case <-t.C:
		}
	}
}

// errNoPeer: no running issuer answered.
var errNoPeer = errors.New("no running issuer answered a request for it")

// askPeer asks a running issuer for the state key, with evidence that
// binds a fresh ephemeral HPKE key, and checks the answer's evidence. It
// returns the key, the measurement of the issuer that gave it and the
// version of the policy that issuer serves.
func (i *Issuer) askPeer(ctx context.Context, keyID []byte, timeout time.Duration) (*stateKey, []byte, uint64, error) {
	kem, err := hpke.NewKEM(messages.KEMMLKEM768X25519)
	if err != nil {
		return nil, nil, 0, err
	}
	priv, err := kem.GenerateKey()
	if err != nil {
		return nil, nil, 0, err
	}
	nonce := make([]byte, messages.NonceSize)
	if _, err := io.ReadFull(i.cfg.Rand, nonce); err != nil {
		return nil, nil, 0, err
	}
	body, err := messages.Marshal(&messages.StateKeyBody{V: messages.Version, KeyID: keyID, KEM: messages.KEMMLKEM768X25519,
		PublicKey: priv.PublicKey().Bytes(), Nonce: nonce, Time: i.cfg.Now().UnixNano()})
	if err != nil {
		return nil, nil, 0, err
	}
	ev, err := i.cfg.Platform.Attest(ctx, messages.StateKeyRequestBinding(body))
	if err != nil {
		return nil, nil, 0, fmt.Errorf("attest: %w", err)
	}
	req, err := messages.Marshal(&messages.StateKeyRequest{V: messages.Version, Body: body, Evidence: ev})
	if err != nil {
		return nil, nil, 0, err
	}
	data, err := service.Request(ctx, i.cfg.Conn, messages.SubjectPeerStateKey, req, max(timeout, 100*time.Millisecond))
	switch {
	case errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		return nil, nil, 0, errNoPeer
	case err != nil:
		return nil, nil, 0, fmt.Errorf("a running issuer refused it: %w", err)
	}
	var rep messages.StateKeyReply
	if err := messages.Decode(data, messages.MaxStateKeyReply, &rep); err != nil {
		return nil, nil, 0, fmt.Errorf("the answer does not decode: %w", err)
	}
	claims, err := i.cfg.Verifier.Verify(ctx, rep.Evidence)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("the answering issuer's evidence: %w", err)
	}
	if claims.ReportData != messages.StateKeyReplyBinding(rep.Body) {
		return nil, nil, 0, errors.New("the answering issuer's evidence does not bind its answer")
	}
	if refusal := i.peerClaims(claims); refusal != nil {
		return nil, nil, 0, fmt.Errorf("the answering issuer: %s", refusal.Reason)
	}
	var rb messages.StateKeyReplyBody
	if err := messages.Decode(rep.Body, messages.MaxStateKeyReplyBody, &rb); err != nil {
		return nil, nil, 0, fmt.Errorf("the answer's body does not decode: %w", err)
	}
	rh := messages.RequestHash(body)
	if !bytes.Equal(rb.RequestHash, rh[:]) || !bytes.Equal(rb.KeyID, keyID) {
		return nil, nil, 0, errors.New("the answer is for another request or another state")
	}
	raw, err := hpke.Open(priv, hpke.HKDFSHA256(), hpke.AES256GCM(), messages.StateKeyInfo(rh[:]), rb.Sealed)
	if err != nil {
		return nil, nil, 0, errors.New("the sealed state key does not open with this request's key")
	}
	defer clear(raw)
	k, err := newStateKey(raw)
	if err != nil || !bytes.Equal(k.id, keyID) {
		return nil, nil, 0, errors.New("the key handed over is not the state's")
	}
	return k, claims.UniqueID, rb.Policy, nil
}

// peerClaims decides whether evidence of another issuer is acceptable as
// evidence of an issuer at all; which builds may hold the key is the
// policy's to say (AcceptsIssuer).
func (i *Issuer) peerClaims(c enclave.Claims) *messages.Error {
	if c.Simulated && !i.cfg.Platform.Simulated() {
		return messages.Refusal(messages.CodeSimulated, "the peer's evidence is simulated and this issuer is not")
	}
	if c.Debug {
		return messages.Refusal(messages.CodeDebug, "the peer runs in a debug enclave, whose memory its host can read")
	}
	return nil
}

// grant answers another issuer's request for the state key: only an issuer
// whose evidence binds the request and whose build the policy in force
// accepts receives it, sealed to the request's ephemeral key.
func (i *Issuer) grant(ctx context.Context, data []byte) ([]byte, *messages.Error) {
	var measurement []byte
	reply, refusal := i.decideGrant(ctx, data, &measurement)
	ev := events.Event{Kind: events.StateKeyGranted, Measurement: hex.EncodeToString(measurement), Simulated: i.cfg.Platform.Simulated()}
	if refusal != nil {
		ev.Kind, ev.Code, ev.Reason = events.StateKeyRefused, string(refusal.Code), refusal.Reason
		i.log.Warn("state key refused", "code", refusal.Code, "reason", refusal.Reason, "measurement", ev.Measurement)
		i.event(ev)
	} else {
		i.log.Info("state key granted to another issuer", "measurement", ev.Measurement)
		i.lifecycle(ev)
	}
	return reply, refusal
}

func (i *Issuer) decideGrant(ctx context.Context, data []byte, measurement *[]byte) ([]byte, *messages.Error) {
	var req messages.StateKeyRequest
	if err := messages.Decode(data, messages.MaxStateKeyRequest, &req); err != nil {
		return nil, service.DecodeRefusal("state key request", err)
	}
	var body messages.StateKeyBody
	if err := messages.Decode(req.Body, messages.MaxStateKeyBody, &body); err != nil {
		return nil, service.DecodeRefusal("state key request body", err)
	}
	pub, refusal := i.fresh(body.KEM, body.PublicKey, body.Time)
	if refusal != nil {
		return nil, refusal
	}
	now := i.cfg.Now()
	claims, err := i.cfg.Verifier.Verify(ctx, req.Evidence)
	if err != nil && !errors.Is(err, enclave.ErrInvalidEvidence) && ctx.Err() != nil {
		return nil, messages.Refusal(messages.CodeInternal, "the issuer stopped while it verified the evidence")
	}
	if err != nil {
		return nil, messages.Refusal(messages.CodeEvidence, "%v", err)
	}
	*measurement = claims.UniqueID
	if claims.ReportData != messages.StateKeyRequestBinding(req.Body) {
		return nil, messages.Refusal(messages.CodeBinding, "the evidence's report data does not bind this request (its key and nonce)")
	}
	if refusal := i.peerClaims(claims); refusal != nil {
		return nil, refusal
	}
	v := i.view.Load()
	if !v.policy.AcceptsIssuer(claims.UniqueID, i.self) {
		return nil, messages.Refusal(messages.CodeIssuerNotAccepted,
			"issuer measurement %x is not listed under issuers in the policy in force (version %d): an update must list it first", claims.UniqueID, v.policy.Version)
	}
	if !bytes.Equal(body.KeyID, i.store.key.id) {
		return nil, messages.Refusal(messages.CodeStateKey, "the request asks for state key %x; this issuer holds %x (another bucket?)", body.KeyID, i.store.key.id)
	}
	switch i.replay.Check(body.Nonce, now) {
	case replay.Seen:
		return nil, messages.Refusal(messages.CodeReplay, "this request's nonce was used before")
	case replay.Full:
		return nil, messages.Refusal(messages.CodeOverloaded, "too many recent requests to track replays")
	}
	rh := messages.RequestHash(req.Body)
	sealed, err := hpke.Seal(pub, hpke.HKDFSHA256(), hpke.AES256GCM(), messages.StateKeyInfo(rh[:]), i.store.key.raw)
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "sealing the state key failed")
	}
	rb, err := messages.Marshal(&messages.StateKeyReplyBody{V: messages.Version, RequestHash: rh[:], KeyID: i.store.key.id, Sealed: sealed, Policy: v.policy.Version})
	if err != nil {
		return nil, messages.Refusal(messages.CodeInternal, "encoding the answer failed")
	}
	ev, err := i.cfg.Platform.Attest(ctx, messages.StateKeyReplyBinding(rb))
	if err != nil {
		i.log.Error("attest", "err", err)
		return nil, messages.Refusal(messages.CodeInternal, "the issuer could not produce evidence")
	}
	return service.Encode(&messages.StateKeyReply{V: messages.Version, Body: rb, Evidence: ev})
}

// event publishes an audit event, unless events are off.
func (i *Issuer) event(e events.Event) {
	if i.events != nil {
		i.events.Publish(e)
	}
}

// lifecycle publishes an event of the trust lifecycle (genesis, an update,
// a grant, a recovery share, a recovery, a stop), unless events are off:
// kept until the audit stream stores it, once (events.PublishDurable).
func (i *Issuer) lifecycle(e events.Event) {
	if i.events != nil {
		i.events.PublishDurable(e)
	}
}
