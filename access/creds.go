package access

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// MaxCredentials bounds a credentials file.
const MaxCredentials = 4 << 10

// Header lines of a credentials file.
const (
	grantLine = "# cohort-grant: "
	keyLine   = "# cohort-key: "
	seedBegin = "-----BEGIN USER NKEY SEED-----"
	seedEnd   = "------END USER NKEY SEED------"
)

// ErrCredentials is wrapped by every error about a credentials file that
// does not parse.
var ErrCredentials = errors.New("access: bad credentials")

// Credential is one grant's nkeys, one for each of Grant.Keys. The NATS
// server is told the public keys; the seeds stay with the holder.
type Credential struct {
	Grant Grant
	keys  map[Key]nkey
}

type nkey struct {
	public string // the user nkey, "U…"
	seed   []byte
}

// NewCredential makes fresh nkeys for grant from rnd (crypto/rand when nil).
func NewCredential(g Grant, rnd io.Reader) (*Credential, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	c := &Credential{Grant: g, keys: map[Key]nkey{}}
	for _, k := range g.Keys() {
		kp, err := nkeys.CreatePairWithRand(nkeys.PrefixByteUser, rnd)
		if err != nil {
			return nil, fmt.Errorf("access: new nkey: %w", err)
		}
		if c.keys[k], err = fromPair(kp); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func fromPair(kp nkeys.KeyPair) (nkey, error) {
	pub, err := kp.PublicKey()
	if err != nil {
		return nkey{}, fmt.Errorf("%w: %v", ErrCredentials, err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return nkey{}, fmt.Errorf("%w: %v", ErrCredentials, err)
	}
	// A copy: the key pair's Wipe clears the slice Seed returns.
	return nkey{public: pub, seed: bytes.Clone(seed)}, nil
}

// Public is the public nkey of one of the credential's keys, "" if it has
// none such.
func (c *Credential) Public(k Key) string { return c.keys[k].public }

// Marshal gives the credentials file: a header that names the grant and how
// to use the file, then each key, named, and its decorated seed. The State
// key comes first: it is the one `nats --nkey FILE` takes.
func (c *Credential) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# cohort NATS credentials for %s: nkey seeds. Keep this file secret.\n", c.Grant)
	b.WriteString("# Use it with 'cohort COMMAND --creds FILE' (or COHORT_CREDS=FILE); 'nats --nkey FILE' takes the first key.\n")
	fmt.Fprintf(&b, "%s%s\n", grantLine, c.Grant)
	for _, k := range c.Grant.Keys() {
		key := c.keys[k]
		fmt.Fprintf(&b, "%s%s %s\n", keyLine, k, key.public)
		fmt.Fprintf(&b, "%s\n%s\n%s\n", seedBegin, key.seed, seedEnd)
	}
	return b.Bytes()
}

// WriteFile writes the credentials file, readable by its owner only (a
// file that was there before is made so too).
func (c *Credential) WriteFile(path string) error {
	if err := os.WriteFile(path, c.Marshal(), 0o600); err != nil {
		return fmt.Errorf("access: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("access: %w", err)
	}
	return nil
}

// String names the credential without its seeds, so that printing one
// leaks nothing.
func (c *Credential) String() string {
	s := c.Grant.String()
	for _, k := range c.Grant.Keys() {
		s += " " + string(k) + "=" + c.keys[k].public
	}
	return s
}

// GoString is String, for %#v.
func (c *Credential) GoString() string { return c.String() }

// ParseCredential reads a credentials file's contents.
func ParseCredential(data []byte) (*Credential, error) {
	if len(data) > MaxCredentials {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrCredentials, len(data), MaxCredentials)
	}
	var grant *Grant
	type section struct {
		key    Key
		public string
		body   strings.Builder
	}
	var sections []*section
	for line := range strings.Lines(string(data)) {
		trimmed := strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(trimmed, strings.TrimSpace(grantLine)); ok {
			if grant != nil {
				return nil, fmt.Errorf("%w: two grant lines", ErrCredentials)
			}
			g, err := ParseGrant(strings.TrimSpace(rest))
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrCredentials, err)
			}
			grant = &g
			continue
		}
		if rest, ok := strings.CutPrefix(trimmed, strings.TrimSpace(keyLine)); ok {
			k, pub, _ := strings.Cut(strings.TrimSpace(rest), " ")
			sections = append(sections, &section{key: Key(k), public: strings.TrimSpace(pub)})
			continue
		}
		if len(sections) > 0 {
			sections[len(sections)-1].body.WriteString(line)
		}
	}
	if grant == nil {
		return nil, fmt.Errorf("%w: no %q line", ErrCredentials, strings.TrimSpace(grantLine))
	}
	c := &Credential{Grant: *grant, keys: map[Key]nkey{}}
	for _, s := range sections {
		if !slices.Contains(grant.Keys(), s.key) {
			return nil, fmt.Errorf("%w: %s holds no %q key", ErrCredentials, grant, s.key)
		}
		if _, dup := c.keys[s.key]; dup {
			return nil, fmt.Errorf("%w: two %s keys", ErrCredentials, s.key)
		}
		kp, err := nkeys.ParseDecoratedUserNKey([]byte(s.body.String()))
		if err != nil {
			return nil, fmt.Errorf("%w: %s key: %v", ErrCredentials, s.key, err)
		}
		if _, err := kp.Seed(); err != nil { // a public key alone is no credential
			kp.Wipe()
			return nil, fmt.Errorf("%w: %s key: no user nkey seed", ErrCredentials, s.key)
		}
		key, err := fromPair(kp)
		kp.Wipe()
		if err != nil {
			return nil, err
		}
		if key.public != s.public {
			return nil, fmt.Errorf("%w: the %s key's seed is not that of public key %q", ErrCredentials, s.key, s.public)
		}
		c.keys[s.key] = key
	}
	for _, k := range grant.Keys() {
		if _, ok := c.keys[k]; !ok {
			return nil, fmt.Errorf("%w: no %s key for %s", ErrCredentials, k, grant)
		}
	}
	return c, nil
}

// LoadCredential reads a credentials file.
func LoadCredential(path string) (*Credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxCredentials+1))
	if err != nil {
		return nil, fmt.Errorf("access: %s: %w", path, err)
	}
	c, err := ParseCredential(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// LoadOrCreate reads the credentials file at path if there is one, and
// checks that it is for grant; otherwise it makes a credential and writes it
// there.
func LoadOrCreate(path string, g Grant) (*Credential, error) {
	c, err := LoadCredential(path)
	if errors.Is(err, os.ErrNotExist) {
		if c, err = NewCredential(g, nil); err != nil {
			return nil, err
		}
		return c, c.WriteFile(path)
	}
	if err != nil {
		return nil, err
	}
	if c.Grant != g {
		return nil, fmt.Errorf("access: %s holds a credential for %s, not %s", path, c.Grant, g)
	}
	return c, nil
}

// LoadOrCreateAll reads or makes the credential of every grant of d in dir,
// named by Grant.FileName.
func LoadOrCreateAll(dir string, d Deployment) (map[Grant]*Credential, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("access: credentials folder: %w", err)
	}
	creds := map[Grant]*Credential{}
	for _, g := range d.Grants() {
		c, err := LoadOrCreate(filepath.Join(dir, g.FileName()), g)
		if err != nil {
			return nil, err
		}
		creds[g] = c
	}
	return creds, nil
}

// Options are the nats.go options that connect as one of the credential's
// keys: the nkey, whose seed signs the server's nonce, and, for the State
// key, the grant's inbox prefix.
func (c *Credential) Options(k Key) []nats.Option {
	key, ok := c.keys[k]
	if !ok {
		return []nats.Option{func(*nats.Options) error { return fmt.Errorf("%w: %s holds no %s key", ErrCredentials, c.Grant, k) }}
	}
	kp, err := nkeys.FromSeed(key.seed)
	if err != nil { // cannot happen: the seed was checked when c was made
		return []nats.Option{func(*nats.Options) error { return fmt.Errorf("%w: %v", ErrCredentials, err) }}
	}
	prefix := c.Grant.InboxPrefix()
	if k == Serve {
		prefix += ".serve" // a serving connection asks nothing: no inbox of its own is granted
	}
	return []nats.Option{nats.Nkey(key.public, kp.Sign), nats.CustomInboxPrefix(prefix)}
}
