package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/adminkey"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
)

const policyUsage = "policy keygen --out FILE | policy pubkey --key FILE [--name NAME] [--as administrator|recovery] | policy sign --key FILE --policy FILE [--out SIG] | policy apply --policy FILE SIG... | policy show"

// cmdPolicy is the administrators' side of signed policy updates.
func cmdPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: %s", errUsage, policyUsage)
	}
	switch args[0] {
	case "keygen":
		return cmdPolicyKeygen(args[1:], stdout, stderr)
	case "pubkey":
		return cmdPolicyPubkey(args[1:], stdout, stderr)
	case "sign":
		return cmdPolicySign(args[1:], stdout, stderr)
	case "apply":
		return cmdPolicyApply(ctx, args[1:], stdout, stderr)
	case "show":
		return cmdPolicyShow(ctx, args[1:], stdout, stderr)
	}
	return fmt.Errorf("%w: %s", errUsage, policyUsage)
}

func cmdPolicyKeygen(args []string, stdout, stderr io.Writer) error {
	fs := flags("policy keygen", stderr)
	out := fs.String("out", "", "where to write the new key (mode 0600; never overwritten)")
	name := fs.String("name", "", "the holder's name, for the lines to paste into a policy")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "out"); err != nil {
		return err
	}
	k, err := adminkey.Generate(rand.Reader)
	if err != nil {
		return err
	}
	if err := k.Save(*out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "key written to %s; keep it offline. Its public halves, for a policy ('cohort policy pubkey --key %s' prints them again):\n", *out, *out)
	printPublicLines(stdout, k, *name)
	return nil
}

// printPublicLines prints a key's public halves as a policy's lines.
func printPublicLines(w io.Writer, k *adminkey.Key, name string) {
	if name == "" {
		name = "NAME"
	}
	fmt.Fprintf(w, "administrators:   # signs policy updates\n  keys:\n    - {name: %s, key: %x}\n"+
		"recovery:         # holds a share of the state key\n  keys:\n    - {name: %s, key: %x}\n",
		name, k.AdminPublic(), name, k.RecoveryPublic())
}

// cmdPolicyPubkey prints the public halves of a key made by keygen: the
// policy's lines, or with --as one entry, {name: NAME, key: HEX}, for a
// script to put in a policy.
func cmdPolicyPubkey(args []string, stdout, stderr io.Writer) error {
	fs := flags("policy pubkey", stderr)
	keyPath := fs.String("key", "", "the key file ('cohort policy keygen')")
	name := fs.String("name", "", "the holder's name in the lines printed")
	as := fs.String("as", "", "print one entry, {name: NAME, key: HEX}: the key as an administrator, or as a recovery holder")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "key"); err != nil {
		return err
	}
	k, err := adminkey.Load(*keyPath)
	if err != nil {
		return err
	}
	n := *name
	if n == "" {
		n = "NAME"
	}
	switch *as {
	case "":
		printPublicLines(stdout, k, *name)
	case "administrator":
		fmt.Fprintf(stdout, "{name: %s, key: %x}\n", n, k.AdminPublic())
	case "recovery":
		fmt.Fprintf(stdout, "{name: %s, key: %x}\n", n, k.RecoveryPublic())
	default:
		return fmt.Errorf("%w: --as %q: want administrator or recovery", errUsage, *as)
	}
	return nil
}

func cmdPolicySign(args []string, stdout, stderr io.Writer) error {
	fs := flags("policy sign", stderr)
	keyPath := fs.String("key", "", "the administrator's key file ('cohort policy keygen')")
	policyPath := fs.String("policy", "", "the proposed policy file, YAML")
	out := fs.String("out", "", "where to write the signature; default POLICY.<key prefix>.sig")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required(fs, "key", "policy"); err != nil {
		return err
	}
	k, err := adminkey.Load(*keyPath)
	if err != nil {
		return err
	}
	doc, err := os.ReadFile(*policyPath)
	if err != nil {
		return err
	}
	p, err := issuer.ParsePolicy(doc)
	if err != nil {
		return fmt.Errorf("refusing to sign a policy that does not validate: %w", err)
	}
	sig := k.Sign(doc)
	path := *out
	if path == "" {
		path = fmt.Sprintf("%s.%x.sig", *policyPath, sig.Key[:4])
	}
	if err := os.WriteFile(path, adminkey.MarshalSignature(doc, sig), 0o644); err != nil {
		return err
	}
	h := p.Hash()
	fmt.Fprintf(stdout, "signed policy version %d (sha256 %x) as administrator key %x\nsignature written to %s\n", p.Version, h, sig.Key, path)
	return nil
}

func cmdPolicyApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("policy apply", stderr)
	nf := addNATSFlags(fs, stderr)
	policyPath := fs.String("policy", "", "the policy file the signatures are over")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the issuer")
	if err := fs.Parse(args); err != nil {
		return usageErr(err)
	}
	if err := required(fs, "policy"); err != nil {
		return err
	}
	doc, err := os.ReadFile(*policyPath)
	if err != nil {
		return err
	}
	var sigs []messages.PolicySignature
	h := sha256.Sum256(doc)
	for _, path := range fs.Args() {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sig, over, err := adminkey.ParseSignature(b)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if over != h {
			return fmt.Errorf("%s is a signature over policy sha256 %x, not over %s (sha256 %x)", path, over, *policyPath, h)
		}
		sigs = append(sigs, sig)
	}
	if err := nf.mayPublish("policy apply", messages.SubjectPolicyApply); err != nil {
		return err
	}
	nc, err := nf.connect("cohort policy apply", access.State, false, *timeout)
	if err != nil {
		return err
	}
	defer nc.Close()
	a, err := issuerclient.ApplyPolicy(ctx, nc, doc, sigs, *timeout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "policy version %d (sha256 %x) in force, signed by %s\n", a.Version, a.Hash, strings.Join(a.Signers, ", "))
	for _, r := range a.Reissued {
		fmt.Fprintf(stdout, "  made anew: %s\n", r)
	}
	return nil
}

func cmdPolicyShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("policy show", stderr)
	nf := addNATSFlags(fs, stderr)
	pin := fs.String("issuer-measurement", os.Getenv("COHORT_ISSUER_MEASUREMENT"), "optional: check the issuer's evidence against this measurement, and that it binds the policy shown")
	allowSim := fs.Bool("allow-simulated", true, "accept an issuer on simulated attestation")
	doc := fs.Bool("document", false, "print only the policy document in force, as it was signed: the start of the next update (edit, raise version:, sign)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the issuer")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := nf.mayPublish("policy show", messages.SubjectPolicyShow); err != nil {
		return err
	}
	nc, err := nf.connect("cohort policy show", access.State, false, *timeout)
	if err != nil {
		return err
	}
	defer nc.Close()
	r, err := issuerclient.ShowPolicy(ctx, nc, *timeout)
	if err != nil {
		return err
	}
	verified := "not checked against the issuer's evidence (give --issuer-measurement)"
	if *pin != "" {
		m, err := measurement(*pin)
		if err != nil {
			return err
		}
		trust, err := issuerclient.VerifyIssuer(ctx, issuerclient.Config{Conn: nc, Verifier: clientVerifier(), IssuerMeasurement: m, AllowSimulated: *allowSim, Timeout: *timeout})
		if err != nil {
			return err
		}
		if hex.EncodeToString(trust.PolicyHash) != hex.EncodeToString(r.Hash) || trust.PolicyVersion != r.Version {
			return fmt.Errorf("the issuer attests to policy version %d sha256 %x, but showed version %d sha256 %x", trust.PolicyVersion, trust.PolicyHash, r.Version, r.Hash)
		}
		verified = "the issuer's evidence binds it"
	}
	p, err := issuer.ParsePolicy(r.Document)
	if err != nil {
		return fmt.Errorf("the policy in force does not parse here: %w", err)
	}
	if *doc {
		_, err := stdout.Write(r.Document)
		return err
	}
	fmt.Fprintf(stdout, "policy version %d, sha256 %x (%s)\n", r.Version, r.Hash, verified)
	fmt.Fprintf(stdout, "root generation %d (an update that raises root_generation rotates the root)\n", p.RootGeneration)
	if len(p.Issuers) == 0 {
		fmt.Fprintln(stdout, "issuers: only the build that runs")
	} else {
		fmt.Fprintf(stdout, "issuers: %s\n", strings.Join(p.Issuers, ", "))
	}
	fmt.Fprintf(stdout, "administrators: %d of %d (%s)\n", p.Administrators.Threshold, len(p.Administrators.Keys), names(p.Administrators))
	fmt.Fprintf(stdout, "recovery: %d of %d (%s)\n", p.Recovery.Threshold, len(p.Recovery.Keys), names(p.Recovery))
	fmt.Fprintln(stdout, "history:")
	for _, h := range r.History {
		who := "genesis"
		if len(h.Signers) > 0 {
			who = "signed by " + strings.Join(h.Signers, ", ")
		}
		fmt.Fprintf(stdout, "  version %d  sha256 %x  %s  %s\n", h.Version, h.Hash, time.Unix(0, h.Applied).UTC().Format(time.RFC3339), who)
	}
	return nil
}

func names(q issuer.Quorum) string {
	var n []string
	for _, k := range q.Keys {
		n = append(n, k.Name)
	}
	if len(n) == 0 {
		return "none"
	}
	return strings.Join(n, ", ")
}

// keyFiles is a repeatable --key flag.
type keyFiles []string

func (k *keyFiles) String() string     { return strings.Join(*k, ",") }
func (k *keyFiles) Set(v string) error { *k = append(*k, v); return nil }

func cmdRecover(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("recover", stderr)
	nf := addNATSFlags(fs, stderr)
	var keys keyFiles
	fs.Var(&keys, "key", "a recovery holder's key file; repeat for several holders")
	pin := fs.String("issuer-measurement", os.Getenv("COHORT_ISSUER_MEASUREMENT"), "the measurement of the waiting issuer to restore the key into, hex")
	rootPath := fs.String("root", "", "the root certificate of the state to restore, PEM (root.pem): shares go only to a state that root's key signed")
	allowSim := fs.Bool("allow-simulated", true, "accept an issuer on simulated attestation (this build verifies no other kind)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the issuer")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(keys) == 0 {
		return fmt.Errorf("%w: give --key at least once", errUsage)
	}
	if err := required(fs, "issuer-measurement", "root"); err != nil {
		return err
	}
	m, err := measurement(*pin)
	if err != nil {
		return err
	}
	root, err := issuerclient.LoadRoot(*rootPath)
	if err != nil {
		return err
	}
	if err := nf.mayPublish("recover", messages.SubjectRecoverHello); err != nil {
		return err
	}
	nc, err := nf.connect("cohort recover", access.State, false, *timeout)
	if err != nil {
		return err
	}
	defer nc.Close()
	for _, path := range keys {
		k, err := adminkey.Load(path)
		if err != nil {
			return err
		}
		ack, err := issuerclient.Recover(ctx, issuerclient.RecoverConfig{Conn: nc, Verifier: clientVerifier(), IssuerMeasurement: m, AllowSimulated: *allowSim, Key: k, Root: root, Timeout: *timeout})
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if ack.Done {
			fmt.Fprintf(stdout, "%s: share accepted; the state key is restored and the issuer starts\n", path)
			return nil
		}
		fmt.Fprintf(stdout, "%s: share accepted: %d of the %d needed\n", path, ack.Have, ack.Need)
	}
	return nil
}

// usageErr marks a flag parse error as a usage error.
func usageErr(err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %v", errUsage, err)
}
