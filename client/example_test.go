package client_test

import (
	"context"
	"fmt"
	"log"

	"github.com/cohort-dev/cohort/client"
)

// A user's program: trust the issuer's root, connect with the user's
// credentials, open a session with the cluster, and call it. Any unit of
// the cluster may answer each call.
func ExampleDial() {
	roots, err := client.LoadRoots("root.pem")
	if err != nil {
		log.Fatal(err)
	}
	nc, err := client.Connect("nats://127.0.0.1:4222", "dev-data/creds/user-alice.creds")
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	ctx := context.Background()
	s, err := client.Dial(ctx, client.Config{Conn: nc, Cluster: "redact", Task: "redact", Roots: roots})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)
	a, err := s.Call(ctx, []byte("mail alice@example.com"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("unit %s answered %s\n", a.Unit, a.Data)
}
