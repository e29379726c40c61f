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
	"github.com/cohort-dev/cohort/unit"
)

// natsFlags are the flags, common to every command that connects, that say
// where the NATS servers are and how to prove who we are to them. Each
// defaults to an environment variable.
type natsFlags struct {
	url, creds, ca *string
	stderr         io.Writer // where the server's asynchronous refusals are reported
}

func addNATSFlags(fs *flag.FlagSet, stderr io.Writer) *natsFlags {
	return &natsFlags{
		stderr: stderr,
		url:    fs.String("nats", os.Getenv("COHORT_NATS"), "NATS server URLs, comma-separated (env COHORT_NATS)"),
		creds:  fs.String("creds", os.Getenv("COHORT_CREDS"), "NATS credentials file, as 'cohort dev' or 'cohort deploy' writes it (env COHORT_CREDS)"),
		ca:     fs.String("tls-ca", os.Getenv("COHORT_TLS_CA"), "CA certificates, PEM, that verify the NATS servers' TLS (env COHORT_TLS_CA)"),
	}
}

// connect connects as name. Long-running roles pass service: true, and
// then reconnect without end, failing over between the servers quickly.
func (n *natsFlags) connect(name string, service bool, timeout time.Duration) (*nats.Conn, error) {
	if *n.url == "" {
		return nil, fmt.Errorf("%w: --nats is required (or COHORT_NATS)", errUsage)
	}
	opts, err := access.ConnectOptions(*n.creds, *n.ca)
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("connect to %s: %w", *n.url, err)
	}
	return nc, nil
}

// connectService connects a long-running role. While no server is up yet
// (the role started before them, as in a deployment coming up) it keeps
// trying until ctx is done, rather than exit and be restarted.
func (n *natsFlags) connectService(ctx context.Context, name string) (*nats.Conn, error) {
	for failures := 0; ; failures++ {
		nc, err := n.connect(name, true, 2*time.Second)
		if err == nil || !errors.Is(err, nats.ErrNoServers) {
			return nc, err
		}
		wait := unit.Backoff(failures, 100*time.Millisecond, 2*time.Second)
		fmt.Fprintf(n.stderr, "%s: no NATS server answers yet (%v); again in %v\n", name, err, wait)
		if !pauseFor(ctx, wait) {
			return nil, ctx.Err()
		}
	}
}
