package client

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/issuerclient"
)

// LoadRoots reads the issuer's root certificate, PEM (the root.pem that
// `cohort trust` or `cohort dev` writes), into a pool for Config.Roots.
// The root outlives every issuer build and policy update: a user keeps it.
func LoadRoots(path string) (*x509.CertPool, error) {
	root, err := issuerclient.LoadRoot(path)
	if err != nil {
		return nil, fmt.Errorf("client: the issuer's root: %w", err)
	}
	if !root.IsCA {
		return nil, fmt.Errorf("client: the issuer's root: %s holds a certificate that is no CA (%s): give the root.pem 'cohort trust' writes", path, root.Subject)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return pool, nil
}

// ErrNotUser is Connect's refusal of a credential of another role than a
// user's.
var ErrNotUser = errors.New("client: not a user's credential")

// Connect connects to the NATS servers at url (comma-separated) as the user
// whose credentials file creds names (user-NAME.creds, as `cohort dev` or
// `cohort deploy` writes it), with the inbox prefix that credential may
// receive replies on. opts come after cohort's own: a name, a timeout, TLS
// roots (nats.RootCAs) and the like.
func Connect(url, creds string, opts ...nats.Option) (*nats.Conn, error) {
	c, err := access.LoadCredential(creds)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if c.Grant.Role != access.User {
		return nil, fmt.Errorf("%w: %s holds the credential of %s: give a user-NAME.creds", ErrNotUser, creds, c.Grant)
	}
	all := append(c.Options(access.State), nats.Name("cohort user "+c.Grant.Name))
	nc, err := nats.Connect(url, append(all, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("client: connect to %s as user %s: %w", url, c.Grant.Name, err)
	}
	return nc, nil
}

// userInboxPrefix is where a user's credential lets it receive replies.
const userInboxPrefix = "_INBOX.user."

// inboxUser is the user whose inbox prefix nc replies under, if any.
func inboxUser(nc *nats.Conn) string {
	rest, ok := strings.CutPrefix(nc.NewInbox(), userInboxPrefix)
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, ".")
	return name
}

// inboxHint explains a handshake that heard nothing on a connection whose
// replies come where user's credential may not receive them, which NATS
// reports to the connection's error handler alone: the request just times
// out. It is empty when the prefix is the user's.
func inboxHint(nc *nats.Conn, user string) string {
	if inboxUser(nc) == user {
		return ""
	}
	inbox := nc.NewInbox()
	hint := fmt.Sprintf("the connection receives replies under %s…, where the credential of user %s may not subscribe (it may under %s%s.): connect with client.Connect, or give nats.CustomInboxPrefix(%q)",
		inbox[:strings.LastIndexByte(inbox, '.')+1], user, userInboxPrefix, user, userInboxPrefix+user)
	if err := nc.LastError(); err != nil {
		hint += "; the server said: " + err.Error()
	}
	return hint
}
