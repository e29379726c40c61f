package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/backoff"
)

// natsFlags are the flags, common to every command that connects, that say
// where the NATS servers are and how to prove who we are to them. Each
// defaults to an environment variable.
type natsFlags struct {
	url, creds, ca *string
	stderr         io.Writer // where the server's asynchronous refusals are reported
	cred           *access.Credential
}

func addNATSFlags(fs *flag.FlagSet, stderr io.Writer) *natsFlags {
	return &natsFlags{
		stderr: stderr,
		url:    fs.String("nats", env("COHORT_NATS", "nats://127.0.0.1:4222"), "NATS server URLs, comma-separated (env COHORT_NATS; default cohort dev's)"),
		creds:  fs.String("creds", os.Getenv("COHORT_CREDS"), "NATS credentials file, as 'cohort dev' or 'cohort deploy' writes it (env COHORT_CREDS)"),
		ca:     fs.String("tls-ca", os.Getenv("COHORT_TLS_CA"), "CA certificates, PEM, that verify the NATS servers' TLS (env COHORT_TLS_CA)"),
	}
}

// credential is the credential --creds names, nil without one. With role
// set, a credential for another role is refused.
func (n *natsFlags) credential(role access.Role) (*access.Credential, error) {
	if *n.creds == "" {
		return nil, nil
	}
	if n.cred == nil {
		c, err := access.LoadCredential(*n.creds)
		if err != nil {
			return nil, err
		}
		n.cred = c
	}
	if role != "" && n.cred.Grant.Role != role {
		return nil, fmt.Errorf("%w: --creds %s holds the credential of %s, not the %s's: %s", errUsage, *n.creds, n.cred.Grant, role, credsHint(role))
	}
	return n.cred, nil
}

// mayPublish refuses at once a credential that may not publish subject,
// which command asks, naming the permission it lacks: the server would
// only drop the request, and leave the command to time out without a
// reason. Without --creds (a server without authorization) it passes.
func (n *natsFlags) mayPublish(command, subject string) error {
	c, err := n.credential("")
	if err != nil || c == nil || c.Grant.MayPublish(access.State, subject) {
		return err
	}
	hint := ""
	if (access.Grant{Role: access.Operator}).MayPublish(access.State, subject) {
		hint = ": it is the operator's (cohort dev writes DATA/creds/operator.creds)"
	}
	return fmt.Errorf("%w: %s asks %s, which --creds %s (%s's) may not publish%s",
		errUsage, command, subject, *n.creds, c.Grant, hint)
}

// connect connects as key k of the credential. Long-running roles pass
// service: true, and then reconnect without end, failing over between the
// servers quickly.
func (n *natsFlags) connect(name string, k access.Key, service bool, timeout time.Duration) (*nats.Conn, error) {
	if *n.url == "" {
		return nil, fmt.Errorf("%w: --nats is required (or COHORT_NATS)", errUsage)
	}
	c, err := n.credential("")
	if err != nil {
		return nil, err
	}
	var opts []nats.Option
	if c != nil {
		opts = append(opts, c.Options(k)...)
	}
	if *n.ca != "" {
		if _, err := os.Stat(*n.ca); err != nil {
			return nil, fmt.Errorf("TLS CA: %w", err)
		}
		opts = append(opts, nats.RootCAs(*n.ca))
	}
	opts = append(opts, nats.Name(name), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		// A permissions violation comes this way: say so, rather than
		// leave the command to time out without a reason.
		fmt.Fprintf(n.stderr, "%s: NATS: %v\n", name, err)
	}))
	if timeout > 0 {
		opts = append(opts, nats.Timeout(timeout))
	}
	if service {
		opts = append(opts, nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond), nats.ReconnectJitter(100*time.Millisecond, 100*time.Millisecond))
	}
	nc, err := nats.Connect(*n.url, opts...)
	if err != nil {
		if c == nil && errors.Is(err, nats.ErrAuthorization) {
			return nil, fmt.Errorf("connect to %s: %w: the server admits only cohort's credentials: give --creds FILE (or COHORT_CREDS); cohort dev writes one for each identity in DATA/creds/", *n.url, err)
		}
		return nil, fmt.Errorf("connect to %s: %w", *n.url, err)
	}
	return nc, nil
}

// connectService connects a long-running role's two connections: the one
// that writes state and asks (State) and the one it answers on (Serve).
// While no server is up yet (the role started before them, as in a
// deployment coming up) it keeps trying until ctx is done, rather than exit
// and be restarted.
func (n *natsFlags) connectService(ctx context.Context, name string, role access.Role) (state, serve *nats.Conn, err error) {
	if _, err := n.credential(role); err != nil {
		return nil, nil, err
	}
	for _, k := range []access.Key{access.State, access.Serve} {
		for failures := 0; ; failures++ {
			nc, err := n.connect(name+" ("+string(k)+")", k, true, 2*time.Second)
			if err == nil {
				if k == access.State {
					state = nc
				} else {
					serve = nc
				}
				break
			}
			if !errors.Is(err, nats.ErrNoServers) {
				if state != nil {
					state.Close()
				}
				return nil, nil, err
			}
			wait := backoff.Policy{Min: 100 * time.Millisecond, Max: 2 * time.Second}.Delay(failures)
			fmt.Fprintf(n.stderr, "%s: no NATS server answers yet (%v); again in %v\n", name, err, wait)
			if !backoff.Wait(ctx, wait) {
				if state != nil {
					state.Close()
				}
				return nil, nil, ctx.Err()
			}
		}
	}
	return state, serve, nil
}

// user is the user name a client command speaks as: the credential's, or,
// without one (a NATS server without authorization), flagUser.
func (n *natsFlags) user(flagUser string) (string, error) {
	c, err := n.credential(access.User)
	if err != nil {
		return "", err
	}
	switch {
	case c == nil && flagUser == "":
		return "guest", nil
	case c == nil:
		return flagUser, nil
	case flagUser != "" && flagUser != c.Grant.Name:
		return "", fmt.Errorf("%w: --user %s, but --creds is user %s's", errUsage, flagUser, c.Grant.Name)
	}
	return c.Grant.Name, nil
}

// env is the environment variable name, or def when it is unset or empty.
func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// credsHint says where a role's credential is.
func credsHint(role access.Role) string {
	switch role {
	case access.Unit:
		return "each unit has one of its own (cohort dev writes DATA/creds/unit-CLUSTER-ID.creds)"
	case access.User:
		return "each user has one of their own (cohort dev writes DATA/creds/user-NAME.creds)"
	}
	return fmt.Sprintf("cohort dev writes DATA/creds/%s.creds", role)
}
