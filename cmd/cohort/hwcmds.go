package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/cohort-dev/cohort/collateral"
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
