package dev

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/client"
	"github.com/cohort-dev/cohort/enclave/sim"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
)

func printStack(w io.Writer, dir string, s *Stack) {
	m := hex.EncodeToString(s.IssuerMeasurement)
	url := s.NATS.ClientURL()
	fmt.Fprintf(w, `cohort dev: running on SIMULATED attestation (not for production)
  data      %s
  NATS      %s (embedded, JetStream)
  issuer    measurement %s
            root CA sha256 %s
            policy %s (sha256 %s)
`, dir, url, m, sha256Hex(s.Issuer.Root().Raw), s.PolicyPath, s.PolicyHash)
	for _, u := range s.Units {
		p := u.Pair()
		fmt.Fprintf(w, "  unit      https://%s/  task %s, certificate sha256 %s\n", u.Addr(), p.Task, sha256Hex(p.Leaf.Raw))
	}
	first := s.Units[0].Addr().Port
	user := filepath.Join(s.CredsDir, access.Grant{Role: access.User, Name: DemoUser}.FileName())
	op := filepath.Join(s.CredsDir, access.Grant{Role: access.Operator}.FileName())
	fmt.Fprintf(w, `  manager   cluster %q: %d units joined, heartbeat every %v
  NATS credentials in %s: one for each identity (issuer, manager, operator,
            each unit, users %s); the server admits no other client and holds each
            to its account and subjects. JetStream fsyncs every write.

Every unit presents the same certificate. Check it from another terminal, as user %s:
  cohort trust --nats %s --creds %s --issuer-measurement %s --out root.pem
  curl --cacert root.pem https://localhost:%d/
  openssl s_client -connect localhost:%d -CAfile root.pem -verify_return_error </dev/null
  cohort call --nats %s --creds %s --cluster %s --trust root.pem hello      (one handshake, any unit answers)
Another user: cohort user add NAME --data %s (admitted at once), then --creds %s
Watch it, as an operator (or export COHORT_NATS and COHORT_CREDS once):
  cohort status --nats %s --creds %s
  cohort events --nats %s --creds %s --follow
(cohort is 'go run ./cmd/cohort' from the repository, or a binary built from it: use the same
one throughout, since each build measures differently.)
`, DemoCluster, len(s.Units), s.Manager.Status().Interval, s.CredsDir, strings.Join(s.Deployment.Users, ", "), DemoUser,
		url, user, m, first, first, url, user, DemoCluster, dir, filepath.Join(s.CredsDir, "user-NAME.creds"), url, op, url, op)
	if s.NatsContext != "" {
		fmt.Fprintf(w, "With natscli (go install github.com/nats-io/natscli/nats@v0.5.0), as the operator: context %s in %s\n", s.NatsContext, s.NatsContextPath)
		for _, c := range []string{"micro ls", "micro stats cohort-issuer", "stream ls", "kv ls", "stream view cohort_events"} {
			fmt.Fprintf(w, "  nats --context %s %s\n", s.NatsContext, c)
		}
	} else {
		fmt.Fprintf(w, "With natscli, as the operator: nats -s %s --nkey %s --inbox-prefix _INBOX.operator micro ls\n", url, op)
	}
	if len(s.Tasks) > 0 {
		fmt.Fprintln(w, "Your own tasks:")
		printTasks(w, s, s.Tasks)
		fmt.Fprintf(w, "  Call it: cohort call --nats %s --creds %s --cluster NAME --trust %s TEXT\n", url, user, filepath.Join(dir, "root.pem"))
		fmt.Fprintf(w, "  After a rebuild: cohort dev accept --data %s   (dev signs the policy update; same root)\n", dir)
	}
	fmt.Fprintln(w, "Ctrl-C stops.")
}

// Demo is `cohort demo`: it starts a stack on free ports in a fresh folder and
// walks through the replica-certificate capability, printing each step. It
// returns an error if any step does not behave as described.
func Demo(ctx context.Context, out io.Writer) error {
	dir, err := os.MkdirTemp("", "cohort-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	step := func(n int, format string, args ...any) {
		fmt.Fprintf(out, "\n%d. "+format+"\n", append([]any{n}, args...)...)
	}
	fmt.Fprintln(out, "cohort demo: one identity for every replica (SIMULATED attestation)")
	cfg := Config{DataDir: dir, Units: 3, NATSPort: -1, HTTPSBase: -1, Out: io.Discard}
	if err := cfg.fill(); err != nil {
		return err
	}
	return start(ctx, cfg, func(ctx context.Context, s *Stack) error {
		step(1, "An embedded NATS server with JetStream runs at %s.", s.NATS.ClientURL())
		step(2, "The issuer runs in a (simulated) enclave measured %x.\n   It made a root CA and one key pair and certificate for task %q, sealed them, and keeps them in JetStream.",
			s.IssuerMeasurement, DemoTask)

		nc, err := s.Connect(access.Grant{Role: access.User, Name: DemoUser}, access.State)
		if err != nil {
			return err
		}
		defer nc.Close()
		trust, err := issuerclient.VerifyIssuer(ctx, issuerclient.Config{
			Conn: nc, Verifier: sim.Verifier(), IssuerMeasurement: s.IssuerMeasurement, AllowSimulated: true,
		})
		if err != nil {
			return err
		}
		step(3, "A user pins that measurement and checks the issuer's evidence (fresh nonce, binding the root and policy):\n   root CA sha256 %s, policy sha256 %x.",
			sha256Hex(trust.Root.Raw), trust.PolicyHash)

		step(4, "Three units of task %q attested to the issuer; each received the pair, sealed to its own ephemeral key:", DemoTask)
		roots := x509.NewCertPool()
		roots.AddCert(trust.Root)
		var leaves [][]byte
		for _, u := range s.Units {
			leaf, body, err := get(ctx, roots, fmt.Sprintf("https://localhost:%d/", u.Addr().Port))
			if err != nil {
				return err
			}
			leaves = append(leaves, leaf)
			fmt.Fprintf(out, "   https://localhost:%d/ presents certificate sha256 %s and answers %q\n", u.Addr().Port, sha256Hex(leaf), bytes.TrimSpace(body))
		}
		for _, l := range leaves[1:] {
			if !bytes.Equal(l, leaves[0]) {
				return errors.New("demo: the units present different certificates")
			}
		}
		fmt.Fprintln(out, "   All three present the byte-identical certificate, and it verifies against the root.")

		rogue, err := sim.New(sim.Config{Identity: sim.UnitIdentity("rogue")})
		if err != nil {
			return err
		}
		unc, err := s.Connect(access.Grant{Role: access.Unit, Cluster: DemoCluster, Name: UnitID(0)}, access.State)
		if err != nil {
			return err
		}
		defer unc.Close()
		c, err := issuerclient.NewCertifier(issuerclient.CertifierConfig{
			Client: issuerclient.Config{Conn: unc}, Trust: trust, Attester: rogue,
		})
		if err != nil {
			return err
		}
		_, err = c.Certify(ctx, DemoTask)
		if !errors.Is(err, messages.ErrMeasurement) {
			return fmt.Errorf("demo: a rogue unit was not refused: %v", err)
		}
		step(5, "Code the policy does not accept asks for the task's key and is refused:\n   %v", err)

		inc, isc, err := s.ConnectBoth(access.Grant{Role: access.Issuer})
		if err != nil {
			return err
		}
		defer inc.Close()
		defer isc.Close()
		again, stopAgain, err := secondIssuer(ctx, dir, s, inc, isc)
		if err != nil {
			return err
		}
		defer stopAgain()
		before, _ := s.Issuer.TaskCertificate(DemoTask)
		after, _ := again.TaskCertificate(DemoTask)
		if !bytes.Equal(again.Root().Raw, s.Issuer.Root().Raw) || !bytes.Equal(after.Raw, before.Raw) {
			return errors.New("demo: an issuer on another machine has other keys")
		}
		step(6, "A second issuer, on another (simulated) machine whose seal key cannot open the first one's key cache,\n   obtained the state key from the first by mutual attestation, and serves the same state:\n   the same root (sha256 %s) and the same task certificate (serial %x).",
			sha256Hex(again.Root().Raw), after.SerialNumber)
		return demoChannel(ctx, out, s, roots, nc, step)
	})
}

// demoChannel walks through the cluster channel: one handshake, calls
// served by several units, the handshake's unit killed, calls carrying on.
func demoChannel(ctx context.Context, out io.Writer, s *Stack, roots *x509.CertPool, nc *nats.Conn, step func(int, string, ...any)) error {
	sess, err := client.Dial(ctx, client.Config{Conn: nc, User: DemoUser, Cluster: DemoCluster, Task: DemoTask, Roots: roots, CallTimeout: 500 * time.Millisecond, Retries: 10})
	if err != nil {
		return err
	}
	step(7, "The cluster channel: one handshake (ML-KEM-768 + X25519) with unit %s opened session %x.\n"+
		"   The unit sealed the session under the cluster key; the manager stored it in JetStream before the unit answered.", sess.Unit, sess.ID)
	served := map[string]int{}
	for i := range 30 {
		a, err := sess.Call(ctx, fmt.Appendf(nil, "call %d", i))
		if err != nil {
			return fmt.Errorf("demo: call %d: %w", i, err)
		}
		served[a.Unit]++
	}
	step(8, "30 calls through that one session, answered by %d units: %v", len(served), served)
	killed := -1
	for i, u := range s.Units {
		if u.Pair() != nil && UnitID(i) == sess.Unit {
			killed = i
		}
	}
	if killed < 0 {
		return fmt.Errorf("demo: the handshake's unit %s is not one of the stack's", sess.Unit)
	}
	s.KillUnit(killed)
	served = map[string]int{}
	for i := range 30 {
		a, err := sess.Call(ctx, fmt.Appendf(nil, "call %d after", i))
		if err != nil {
			return fmt.Errorf("demo: call %d after the kill: %w", i, err)
		}
		served[a.Unit]++
	}
	if served[sess.Unit] != 0 {
		return errors.New("demo: a killed unit answered")
	}
	step(9, "Unit %s, which did the handshake, is killed (its connection cut). 30 more calls, no new handshake,\n"+
		"   not one failed, answered by %v.", sess.Unit, served)
	if err := sess.Close(ctx); err != nil {
		return err
	}
	step(10, "The session is closed: the closing unit marked it closed for every call before it answered,\n"+
		"   and the sealed closed record reaches every unit's table through JetStream.")
	fmt.Fprintln(out, "\ncohort demo: done.")
	return nil
}

// get fetches url over TLS verified against roots and returns the served
// leaf and the body.
func get(ctx context.Context, roots *x509.CertPool, url string) ([]byte, []byte, error) {
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("demo: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return nil, nil, err
	}
	return resp.TLS.PeerCertificates[0].Raw, body, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// secondIssuer starts another issuer, on another simulated machine (its
// own seal secret and key cache, under dir), and returns it once it serves,
// with the function that stops it and waits until it has.
func secondIssuer(ctx context.Context, dir string, s *Stack, nc, serve *nats.Conn) (*issuer.Issuer, func(), error) {
	machine := filepath.Join(dir, "second-machine")
	secret, err := sim.LoadOrCreateSealSecret(filepath.Join(machine, sim.SealSecretFile))
	if err != nil {
		return nil, nil, err
	}
	p, err := sim.New(sim.Config{Identity: sim.IssuerIdentity, SealSecret: secret})
	if err != nil {
		return nil, nil, err
	}
	iss, err := issuer.New(issuer.Config{Ungoverned: true, Conn: nc, Serve: serve, Platform: p, KeyCache: issuer.FileKeyCache(filepath.Join(machine, issuer.KeyCacheFile))})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- iss.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t := time.NewTimer(readyTimeout)
	defer t.Stop()
	select {
	case <-iss.Ready():
		return iss, stop, nil
	case err := <-done:
		cancel()
		return nil, nil, fmt.Errorf("demo: second issuer: %w", err)
	case <-t.C:
		stop()
		return nil, nil, errors.New("demo: second issuer not ready in time")
	}
}
