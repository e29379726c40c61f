// Package sim is a simulated enclave platform with real cryptography, for
// development and tests. It is the one simulation cohort sanctions, and it
// says so everywhere: its evidence has the format "cohort-simulated-v1", its
// claims are marked Simulated, and whoever accepts them logs and labels the
// result as simulated.
//
// What it simulates and how:
//   - The measurement is derived from the code actually running: a SHA-256 of
//     the executable file of this process, together with the identity the
//     process runs as (the issuer, or a unit of a named task). Two processes of
//     the same build and identity measure the same; another build or another
//     task measures differently. No flag or configuration can choose it.
//   - Evidence is signed by a simulated platform key, Ed25519 from a published
//     seed. Anyone can forge simulated evidence: it proves nothing about the
//     code that produced it, and an issuer accepts it only when its policy says
//     so.
//   - Sealing uses AES-256-GCM under a key derived from a simulated CPU secret
//     (the SealSecret the caller supplies, kept in a file by the commands) and
//     the measurement, like SGX's MRENCLAVE seal policy: another build cannot
//     open what this build sealed.
package sim

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/cohort-dev/cohort/codec"
	"github.com/cohort-dev/cohort/enclave"
)

// Format is the evidence format this backend produces and accepts.
const Format = "cohort-simulated-v1"

// BackendName is the name of this backend in claims, logs and replies.
const BackendName = "sim"

// SealSecretSize is the size of the simulated CPU seal secret.
const SealSecretSize = 32

// platformSeed is public on purpose: the simulated platform key guards
// nothing, and every verifier must be able to derive its public half.
const platformSeed = "cohort simulated platform key v1 (public; NOT SECURE)"

var (
	platformKey = ed25519.NewKeyFromSeed(sha256Sum([]byte(platformSeed)))
	platformPub = platformKey.Public().(ed25519.PublicKey)
	// signerID stands in for MRSIGNER: every simulated enclave has the same one.
	signerID = sha256Sum([]byte("cohort simulated signer v1"))
)

const (
	productID       = 1
	securityVersion = 1
	maxEvidence     = 1024
	evidenceLabel   = "cohort-simulated-v1 evidence\x00"
	sealMagic       = "CSS1"
)

// IssuerIdentity is the identity the issuer runs as.
const IssuerIdentity = "issuer"

// UnitIdentity is the identity a unit of task runs as.
func UnitIdentity(task string) string { return "unit/" + task }

// Config configures a simulated platform.
type Config struct {
	// Identity is what this process runs as: IssuerIdentity or UnitIdentity(task).
	Identity string
	// Build stands for another build of the same executable: when set, it
	// is mixed into the measurement, so that one test process can run build
	// 1 and build 2 of an issuer or a task side by side. It chooses no
	// measurement that anyone could not claim anyway: simulated evidence is
	// signed with a published key. Empty for every command.
	Build string
	// SealSecret is the simulated CPU's seal secret, SealSecretSize bytes.
	// Without it the platform attests and verifies but refuses to seal.
	SealSecret []byte
}

// Platform is a simulated enclave platform. It is safe for concurrent use.
type Platform struct {
	measurement []byte
	seal        cipher.AEAD // nil without a seal secret
}

var _ enclave.Platform = (*Platform)(nil)

// New returns a simulated platform running as cfg.Identity, measured from this
// process's executable.
func New(cfg Config) (*Platform, error) {
	m, err := MeasureBuild(cfg.Identity, cfg.Build)
	if err != nil {
		return nil, err
	}
	p := &Platform{measurement: m}
	if cfg.SealSecret != nil {
		if len(cfg.SealSecret) != SealSecretSize {
			return nil, fmt.Errorf("sim: seal secret is %d bytes, want %d", len(cfg.SealSecret), SealSecretSize)
		}
		key, err := hkdf.Key(sha256.New, cfg.SealSecret, nil, "cohort sim seal v1\x00"+string(m), 32)
		if err != nil {
			return nil, fmt.Errorf("sim: derive seal key: %w", err)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("sim: seal cipher: %w", err)
		}
		if p.seal, err = cipher.NewGCMWithRandomNonce(block); err != nil {
			return nil, fmt.Errorf("sim: seal cipher: %w", err)
		}
	}
	return p, nil
}

// Verifier returns a verifier of simulated evidence, for processes that only
// check others (a user's `cohort trust`).
func Verifier() enclave.Verifier { return verifier{} }

// Measure returns this build's simulated measurement for identity.
func Measure(identity string) ([]byte, error) { return MeasureBuild(identity, "") }

// MeasureBuild is Measure for a platform of Config.Build build.
func MeasureBuild(identity, build string) ([]byte, error) {
	if identity == "" || len(identity) > 128 || len(build) > 64 {
		return nil, errors.New("sim: identity must be 1 to 128 bytes, build at most 64")
	}
	exe, err := executableHash()
	if err != nil {
		return nil, err
	}
	return measure(exe, identity, build), nil
}

// MeasureFile returns the simulated measurement that the executable at path
// has when it runs as identity: what Measure returns inside that program. It
// lets a policy accept another program's units (a developer's own task)
// without running it.
func MeasureFile(path, identity string) ([]byte, error) {
	if identity == "" || len(identity) > 128 {
		return nil, errors.New("sim: identity must be 1 to 128 bytes")
	}
	exe, err := hashFile(path)
	if err != nil {
		return nil, err
	}
	return measure(exe, identity, ""), nil
}

func measure(exe []byte, identity, build string) []byte {
	h := sha256.New()
	h.Write([]byte("cohort simulated measurement v1\x00"))
	h.Write(exe)
	h.Write([]byte{0})
	h.Write([]byte(identity))
	if build != "" {
		h.Write([]byte("\x00build\x00" + build))
	}
	return h.Sum(nil)
}

var exeHash = sync.OnceValues(func() ([]byte, error) {
	path, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("sim: find own executable: %w", err)
	}
	return hashFile(path)
})

func hashFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sim: read executable: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("sim: %s is not an executable file", path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("sim: hash executable %s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// executableHash hashes this process's executable once; the file a process
// runs does not change under it.
func executableHash() ([]byte, error) { return exeHash() }

// Name implements enclave.Platform.
func (p *Platform) Name() string { return BackendName }

// Simulated implements enclave.Platform: always true.
func (p *Platform) Simulated() bool { return true }

// Measurement returns this platform's measurement.
func (p *Platform) Measurement() []byte { return append([]byte(nil), p.measurement...) }

// Attest implements enclave.Attester. Nothing in it blocks: it checks ctx
// before it signs.
func (p *Platform) Attest(ctx context.Context, reportData [enclave.ReportDataSize]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sim: attest: %w", err)
	}
	body, err := codec.Marshal(&evidenceBody{
		V:               1,
		Format:          Format,
		UniqueID:        p.measurement,
		SignerID:        signerID,
		ProductID:       productID,
		SecurityVersion: securityVersion,
		ReportData:      reportData[:],
	})
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(platformKey, append([]byte(evidenceLabel), body...))
	return codec.Marshal(&evidence{Body: body, Signature: sig})
}

// Verify implements enclave.Verifier for simulated evidence.
func (p *Platform) Verify(ctx context.Context, ev []byte) (enclave.Claims, error) {
	return verifier{}.Verify(ctx, ev)
}

type verifier struct{}

// Verify checks ctx, then the evidence: nothing in it blocks.
func (verifier) Verify(ctx context.Context, ev []byte) (enclave.Claims, error) {
	if err := ctx.Err(); err != nil {
		return enclave.Claims{}, fmt.Errorf("sim: verify: %w", err)
	}
	var e evidence
	if err := codec.Unmarshal(ev, maxEvidence, &e); err != nil {
		return enclave.Claims{}, fmt.Errorf("%w: simulated evidence: %v", enclave.ErrInvalidEvidence, err)
	}
	if len(e.Signature) != ed25519.SignatureSize ||
		!ed25519.Verify(platformPub, append([]byte(evidenceLabel), e.Body...), e.Signature) {
		return enclave.Claims{}, fmt.Errorf("%w: simulated platform signature does not verify", enclave.ErrInvalidEvidence)
	}
	var b evidenceBody
	if err := codec.Unmarshal(e.Body, maxEvidence, &b); err != nil {
		return enclave.Claims{}, fmt.Errorf("%w: simulated evidence body: %v", enclave.ErrInvalidEvidence, err)
	}
	if b.V != 1 || b.Format != Format || len(b.UniqueID) != sha256.Size ||
		len(b.SignerID) != sha256.Size || len(b.ReportData) != enclave.ReportDataSize {
		return enclave.Claims{}, fmt.Errorf("%w: simulated evidence body has the wrong shape", enclave.ErrInvalidEvidence)
	}
	c := enclave.Claims{
		Backend:         BackendName,
		Simulated:       true,
		UniqueID:        b.UniqueID,
		SignerID:        b.SignerID,
		ProductID:       b.ProductID,
		SecurityVersion: b.SecurityVersion,
		Debug:           b.Debug,
		TCBStatus:       enclave.TCBSimulated,
	}
	copy(c.ReportData[:], b.ReportData)
	return c, nil
}

// Seal implements enclave.Sealer.
func (p *Platform) Seal(plaintext, additionalData []byte) ([]byte, error) {
	if p.seal == nil {
		return nil, fmt.Errorf("%w: the simulated platform was given no seal secret", enclave.ErrNoSealKey)
	}
	return p.seal.Seal([]byte(sealMagic), nil, plaintext, additionalData), nil
}

// Unseal implements enclave.Sealer.
func (p *Platform) Unseal(sealed, additionalData []byte) ([]byte, error) {
	if p.seal == nil {
		return nil, fmt.Errorf("%w: the simulated platform was given no seal secret", enclave.ErrNoSealKey)
	}
	if len(sealed) < len(sealMagic) || string(sealed[:len(sealMagic)]) != sealMagic {
		return nil, fmt.Errorf("%w: not sealed by the simulated platform", enclave.ErrUnseal)
	}
	pt, err := p.seal.Open(nil, nil, sealed[len(sealMagic):], additionalData)
	if err != nil {
		return nil, fmt.Errorf("%w: sealed by another build or seal secret, or altered", enclave.ErrUnseal)
	}
	return pt, nil
}

// MeasurementHex is Measure in hex, for commands and logs.
func MeasurementHex(identity string) (string, error) {
	m, err := Measure(identity)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(m), nil
}

type evidence struct {
	Body      []byte `msgpack:"body"`
	Signature []byte `msgpack:"signature"`
}

type evidenceBody struct {
	V               uint16 `msgpack:"v"`
	Format          string `msgpack:"format"`
	UniqueID        []byte `msgpack:"unique_id"`
	SignerID        []byte `msgpack:"signer_id"`
	ProductID       uint16 `msgpack:"product_id"`
	SecurityVersion uint16 `msgpack:"security_version"`
	Debug           bool   `msgpack:"debug"`
	ReportData      []byte `msgpack:"report_data"`
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}
