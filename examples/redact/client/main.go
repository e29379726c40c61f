// Command client is what a user of the redact task runs: it opens a session
// with the task's cluster and sends it the text of its arguments, which
// comes back redacted. It trusts nothing but the issuer's root: the unit
// that answers proves, with the task's certificate, that it runs the code
// the policy accepts.
//
//	go run ./examples/redact/client --creds dev-data/creds/user-alice.creds --root dev-data/root.pem 'mail alice@example.com'
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/cohort-dev/cohort/client"
)

func main() {
	url := flag.String("nats", "nats://127.0.0.1:4222", "NATS server URLs")
	creds := flag.String("creds", "dev-data/creds/user-alice.creds", "the user's NATS credentials")
	root := flag.String("root", "dev-data/root.pem", "the issuer's root certificate")
	cluster := flag.String("cluster", "redact", "the cluster that runs the task")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: client [flags] TEXT...")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *url, *creds, *root, *cluster, strings.Join(flag.Args(), " ")); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, url, creds, root, cluster, text string) error {
	roots, err := client.LoadRoots(root)
	if err != nil {
		return err
	}
	nc, err := client.Connect(url, creds)
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := client.Dial(ctx, client.Config{Conn: nc, Cluster: cluster, Task: "redact", Roots: roots})
	if err != nil {
		return err
	}
	defer s.Close(ctx)
	a, err := s.Call(ctx, []byte(text))
	if err != nil {
		return err
	}
	fmt.Println(string(a.Data))
	return nil
}
