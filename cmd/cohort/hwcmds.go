package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cohort-dev/cohort/attest"
	"github.com/cohort-dev/cohort/collateral"
	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
)

// cmdCollateral manages the issuer's collateral cache.
func cmdCollateral(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "import" && args[0] != "list") {
		return fmt.Errorf("%w: collateral import --dir DIR FILE... | collateral list --dir DIR", errUsage)
	}
	fs := flags("collateral "+args[0], stderr)
	dir := fs.String("dir", os.Getenv("COHORT_COLLATERAL"), "the collateral cache, a folder the issuer reads (its --collateral; env COHORT_COLLATERAL)")
	at := fs.String("at", "", "list: judge expiry at this time (RFC 3339); default now")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := required(fs, "dir"); err != nil {
		return err
	}
	d, err := collateral.Open(*dir)
	if err != nil {
		return err
	}
	now := time.Now()
	if *at != "" {
		if now, err = time.Parse(time.RFC3339, *at); err != nil {
			return fmt.Errorf("%w: --at %q: %v", errUsage, *at, err)
		}
	}
	switch args[0] {
	case "import":
		if fs.NArg() == 0 {
			return fmt.Errorf("%w: collateral import: name the files to import: PCS collateral (dcap-qvl's JSON) or VCEK/VLEK certificates (DER or PEM)", errUsage)
		}
		for _, name := range fs.Args() {
			b, err := os.ReadFile(name)
			if err != nil {
				return err
			}
			e, err := d.Import(b)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			fmt.Fprintf(stdout, "imported %s: %s %s, %s\n", name, e.Kind, e.ID, expiry(e, now))
		}
		return nil
	default:
		if fs.NArg() != 0 {
			return fmt.Errorf("%w: collateral list takes no arguments", errUsage)
		}
		entries, errs := d.List()
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KIND\tPLATFORM\tID\tISSUED\tEXPIRES\tFILE")
		for _, e := range entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Kind, e.Platform, e.ID, e.Issued.UTC().Format(time.DateOnly), expiry(e, now), e.File)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, err := range errs {
			fmt.Fprintf(stderr, "cohort collateral list: %v\n", err)
		}
		if len(errs) > 0 {
			return fmt.Errorf("%d files of the cache could not be read", len(errs))
		}
		return nil
	}
}

// expiry says when collateral expires, or that it has.
func expiry(e collateral.Entry, now time.Time) string {
	if !now.Before(e.Expires) {
		return fmt.Sprintf("EXPIRED %s (verification fails closed)", e.Expires.UTC().Format(time.RFC3339))
	}
	left := e.Expires.Sub(now)
	if left >= 48*time.Hour {
		return fmt.Sprintf("until %s (%d days left)", e.Expires.UTC().Format(time.RFC3339), int(left/(24*time.Hour)))
	}
	return fmt.Sprintf("until %s (%s left)", e.Expires.UTC().Format(time.RFC3339), left.Round(time.Minute))
}

// cmdEvidence prints what evidence says, once it verifies.
func cmdEvidence(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "inspect" {
		return fmt.Errorf("%w: evidence inspect [--collateral DIR] [--endorsement FILE] [--at TIME] [--json] FILE", errUsage)
	}
	fs := flags("evidence inspect", stderr)
	dir := fs.String("collateral", os.Getenv("COHORT_COLLATERAL"), "the collateral cache to verify with (env COHORT_COLLATERAL); see 'cohort collateral'")
	endorsement := fs.String("endorsement", "", "SEV-SNP: the VCEK or VLEK certificate (DER or PEM) of a bare report, when the cache has none")
	at := fs.String("at", "", "verify at this time (RFC 3339), as the collateral's dates judge it; default now")
	asJSON := fs.Bool("json", false, "print the claims as JSON")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: evidence inspect takes one file: a TDX or SGX quote, an SEV-SNP report, an EGo remote report, or evidence as cohort sends it", errUsage)
	}
	raw, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var endorse []byte
	if *endorsement != "" {
		if endorse, err = os.ReadFile(*endorsement); err != nil {
			return err
		}
		if p, _ := pem.Decode(endorse); p != nil {
			endorse = p.Bytes
		}
	}
	now := time.Now()
	if *at != "" {
		if now, err = time.Parse(time.RFC3339, *at); err != nil {
			return fmt.Errorf("%w: --at %q: %v", errUsage, *at, err)
		}
	}
	platform, ev, err := recognize(raw, endorse)
	if err != nil {
		return err
	}
	v, err := verifierAt(*dir, func() time.Time { return now })
	if err != nil {
		return err
	}
	c, err := v.Verify(ctx, ev)
	if err != nil {
		return fmt.Errorf("%s evidence does not verify at %s: %w", platform, now.UTC().Format(time.RFC3339), err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(c)
	}
	printClaims(stdout, c, now)
	return nil
}

// recognize tells what a file of evidence is, and puts it in the envelope
// the verifier reads.
func recognize(b, endorsement []byte) (string, []byte, error) {
	if p, _, err := attest.Unwrap(b); err == nil {
		return p, b, nil
	}
	le16 := func(off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
	le32 := func(off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
	var platform string
	switch {
	case len(b) == snp.ReportSize:
		e, err := snp.Evidence{Report: b, Endorsement: endorsement}.Marshal()
		if err != nil {
			return "", nil, err
		}
		platform, b = enclave.PlatformSNP, e
	case func() bool { _, err := snp.ParseEvidence(b); return err == nil }():
		platform = enclave.PlatformSNP
	case len(b) >= 48 && (le16(0) == 4 || le16(0) == 5) && le32(4) == 0x81:
		platform = enclave.PlatformTDX
	case len(b) >= 48 && le16(0) == 3 && le16(2) == 2:
		platform = enclave.PlatformSGX // a quote v3 with an ECDSA P-256 attestation key
	case len(b) >= 16 && le32(0) == 1 && le32(4) == 2:
		platform = enclave.PlatformSGX // an Open Enclave (EGo) remote report
	default:
		return enclave.PlatformSim, b, nil
	}
	if endorsement != nil && platform != enclave.PlatformSNP {
		return "", nil, fmt.Errorf("%w: --endorsement is for SEV-SNP reports, and this is %s evidence", errUsage, platform)
	}
	w, err := attest.Wrap(platform, b)
	return platform, w, err
}

// printClaims prints claims for an operator, with the lines a policy takes.
func printClaims(w io.Writer, c enclave.Claims, now time.Time) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
	if c.Simulated {
		row("verified", "SIMULATED evidence, signed with a published key: anyone can forge it")
	} else {
		row("verified", fmt.Sprintf("at %s against the vendor's real roots", now.UTC().Format(time.RFC3339)))
	}
	row("platform", c.Backend)
	row("measurement", hex.EncodeToString(c.UniqueID))
	if c.SignerID != nil {
		row("signer", hex.EncodeToString(c.SignerID))
		row("product id, security version", fmt.Sprintf("%d, %d", c.ProductID, c.SecurityVersion))
	}
	row("debug", c.Debug)
	row("TCB status", c.TCBStatus)
	if len(c.Advisories) > 0 {
		row("advisories", strings.Join(c.Advisories, ", "))
	}
	row("report data", hex.EncodeToString(c.ReportData[:]))
	if s := c.SNP; s != nil {
		row("report version, VMPL", fmt.Sprintf("%d, %d", s.ReportVersion, s.VMPL))
		row("signed by", s.Signer+" of "+s.ProductLine)
		row("guest policy", fmt.Sprintf("%#x", s.GuestPolicy))
		row("reported TCB", fmt.Sprintf("boot loader %d, TEE %d, SNP %d, microcode %d, FMC %d", s.ReportedTCB.BootLoader, s.ReportedTCB.TEE, s.ReportedTCB.SNP, s.ReportedTCB.Microcode, s.ReportedTCB.FMC))
		row("provisional firmware, SMT", fmt.Sprintf("%t, %t", s.Provisional, s.SMT))
		row("host data", hex.EncodeToString(s.HostData))
	}
	if t := c.TDX; t != nil {
		row("quote version", t.QuoteVersion)
		row("TEE_TCB_SVN", hex.EncodeToString(t.TEETCBSVN))
		row("MRSEAM", hex.EncodeToString(t.MRSEAM))
		for i, r := range t.RTMRs {
			row(fmt.Sprintf("RTMR%d", i), hex.EncodeToString(r))
		}
		row("MRCONFIGID", hex.EncodeToString(t.MRConfigID))
		row("FMSPC", hex.EncodeToString(t.FMSPC))
	}
	if s := c.SGX; s != nil {
		row("quote version", s.QuoteVersion)
		row("CPUSVN, PCESVN, QESVN", fmt.Sprintf("%x, %d, %d", s.CPUSVN, s.PCESVN, s.QESVN))
		row("FMSPC", hex.EncodeToString(s.FMSPC))
	}
	for _, u := range c.Collateral {
		when := ""
		if !u.NextUpdate.IsZero() {
			when = " until " + u.NextUpdate.UTC().Format(time.RFC3339)
		}
		row("collateral", u.Kind+" "+u.ID+when)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nIn a policy, a task that accepts this code:\n    platform: %s\n    measurements: [%x]\n", c.Backend, c.UniqueID)
	if c.TCBStatus != enclave.TCBUpToDate && !c.Simulated {
		fmt.Fprintf(w, "    tcb_statuses: [%s]   # only if this status is acceptable: the default accepts UpToDate alone\n", c.TCBStatus)
	}
}
