package access

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// MaxCredentials bounds a credentials file.
const MaxCredentials = 4 << 10

// grantLine is the header line that names a credential's grant.
const grantLine = "# cohort-grant: "

// ErrCredentials is wrapped by every error about a credentials file that
// does not parse.
var ErrCredentials = errors.New("access: bad credentials")

// Credential is one grant's nkey. Public is what the NATS server is told;
// the seed stays with the holder.
type Credential struct {
	Grant  Grant
	Public string // the user nkey, "U…"
	seed   []byte
}

// NewCredential makes a fresh nkey for grant from rnd (crypto/rand when nil).
func NewCredential(g Grant, rnd io.Reader) (*Credential, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	kp, err := nkeys.CreatePairWithRand(nkeys.PrefixByteUser, rnd)
	if err != nil {
		return nil, fmt.Errorf("access: new nkey: %w", err)
	}
	return fromPair(g, kp)
}

func fromPair(g Grant, kp nkeys.KeyPair) (*Credential, error) {
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCredentials, err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCredentials, err)
	}
	// A copy: the key pair's Wipe clears the slice Seed returns.
	return &Credential{Grant: g, Public: pub, seed: bytes.Clone(seed)}, nil
}

// Marshal gives the credentials file: a header that names the grant and how
// to use the file, and the decorated seed.
func (c *Credential) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# cohort NATS credentials for %s: an nkey seed. Keep this file secret.\n", c.Grant)
	b.WriteString("# Use it with 'cohort COMMAND --creds FILE' (or COHORT_CREDS=FILE), or 'nats --nkey FILE'.\n")
	fmt.Fprintf(&b, "%s%s\n", grantLine, c.Grant)
	fmt.Fprintf(&b, "# public key: %s\n", c.Public)
	b.WriteString("-----BEGIN USER NKEY SEED-----\n")
	b.Write(c.seed)
	b.WriteString("\n------END USER NKEY SEED------\n")
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

// String names the credential without its seed, so that printing one
// leaks nothing.
func (c *Credential) String() string { return c.Grant.String() + " " + c.Public }

// GoString is String, for %#v.
func (c *Credential) GoString() string { return c.String() }

// ParseCredential reads a credentials file's contents.
func ParseCredential(data []byte) (*Credential, error) {
	if len(data) > MaxCredentials {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrCredentials, len(data), MaxCredentials)
	}
	var g Grant
	found := false
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), strings.TrimSpace(grantLine))
		if !ok {
			continue
		}
		if found {
			return nil, fmt.Errorf("%w: two grant lines", ErrCredentials)
		}
		found = true
		role, cluster, _ := strings.Cut(strings.TrimSpace(rest), "/")
		g = Grant{Role: Role(role), Cluster: cluster}
	}
	if !found {
		return nil, fmt.Errorf("%w: no %q line", ErrCredentials, strings.TrimSpace(grantLine))
	}
	if err := g.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCredentials, err)
	}
	kp, err := nkeys.ParseDecoratedUserNKey(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCredentials, err)
	}
	defer kp.Wipe()
	if _, err := kp.Seed(); err != nil { // a public key alone is no credential
		return nil, fmt.Errorf("%w: no user nkey seed", ErrCredentials)
	}
	return fromPair(g, kp)
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

// User is the server's side of the credential: the public key and the
// grant's permissions.
func (c *Credential) User() (*server.NkeyUser, error) {
	p, err := c.Grant.Permissions()
	if err != nil {
		return nil, err
	}
	return &server.NkeyUser{Nkey: c.Public, Permissions: p}, nil
}

// Users gives the server's side of several credentials.
func Users(creds ...*Credential) ([]*server.NkeyUser, error) {
	users := make([]*server.NkeyUser, 0, len(creds))
	for _, c := range creds {
		u, err := c.User()
		if err != nil {
			return nil, err
		}
		users = append(users, u)
	}
	return users, nil
}

// Options are the nats.go options that connect as the credential: the nkey,
// whose seed signs the server's nonce, and the grant's inbox prefix.
func (c *Credential) Options() []nats.Option {
	kp, err := nkeys.FromSeed(c.seed)
	if err != nil { // cannot happen: the seed was checked when c was made
		return []nats.Option{func(*nats.Options) error { return fmt.Errorf("%w: %v", ErrCredentials, err) }}
	}
	return []nats.Option{nats.Nkey(c.Public, kp.Sign), nats.CustomInboxPrefix(c.Grant.InboxPrefix())}
}

// ConnectOptions are the options for a cohort command's connection: the
// credentials in credsFile, if given, and TLS verified against the CA
// certificates in caFile, if given.
func ConnectOptions(credsFile, caFile string) ([]nats.Option, error) {
	var opts []nats.Option
	if credsFile != "" {
		c, err := LoadCredential(credsFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, c.Options()...)
	}
	if caFile != "" {
		if _, err := os.Stat(caFile); err != nil {
			return nil, fmt.Errorf("access: TLS CA: %w", err)
		}
		opts = append(opts, nats.RootCAs(caFile))
	}
	return opts, nil
}
