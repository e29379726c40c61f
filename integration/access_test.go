package integration

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/access"
	"github.com/cohort-dev/cohort/embednats"
)

// accessServer starts a server that admits only the given grants, and
// returns their credentials.
func accessServer(t *testing.T, grants ...access.Grant) (*embednats.Server, map[access.Grant]*access.Credential) {
	t.Helper()
	creds := map[access.Grant]*access.Credential{}
	var all []*access.Credential
	for _, g := range grants {
		c, err := access.NewCredential(g, nil)
		if err != nil {
			t.Fatal(err)
		}
		creds[g] = c
		all = append(all, c)
	}
	users, err := access.Users(all...)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := embednats.Start(embednats.Config{StoreDir: t.TempDir(), Users: users})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv, creds
}

var (
	gIssuer   = access.Grant{Role: access.Issuer}
	gManager  = access.Grant{Role: access.Manager}
	gUnitA    = access.Grant{Role: access.Unit, Cluster: "alpha"}
	gUnitB    = access.Grant{Role: access.Unit, Cluster: "beta"}
	gUser     = access.Grant{Role: access.User}
	gOperator = access.Grant{Role: access.Operator}
)

// TestAccessRefusesClientsWithoutCredentials: no credential, or a credential
// the server was not given, is refused at connect.
func TestAccessRefusesClientsWithoutCredentials(t *testing.T) {
	srv, _ := accessServer(t, gUser)
	if nc, err := srv.Connect(); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("connect without credentials: %v, want an authorization violation", err)
	}
	stranger, err := access.NewCredential(gUser, nil)
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := srv.Connect(stranger.Options()...); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("connect with an unknown nkey: %v, want an authorization violation", err)
	}
}

// An op is one publish or subscribe a role tries.
type op struct {
	sub     bool
	subject string
}

func (o op) String() string {
	if o.sub {
		return "subscribe " + o.subject
	}
	return "publish " + o.subject
}

// try runs o on a fresh connection as grant and returns the server's
// refusal, or nil when the server took it.
func try(t *testing.T, srv *embednats.Server, c *access.Credential, o op) error {
	t.Helper()
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}) // read through LastError
	nc, err := srv.Connect(append(c.Options(), quiet)...)
	if err != nil {
		t.Fatalf("%s connects: %v", c.Grant, err)
	}
	defer nc.Close()
	if o.sub {
		if _, err := nc.SubscribeSync(o.subject); err != nil {
			t.Fatal(err)
		}
	} else if err := nc.Publish(o.subject, []byte("x")); err != nil {
		t.Fatal(err)
	}
	// The server answers a refused operation before the flush's PONG.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return nc.LastError()
}

// TestAccessHoldsEachRoleToItsSubjects: every role is refused by the NATS
// server outside its permissions, and allowed inside them.
func TestAccessHoldsEachRoleToItsSubjects(t *testing.T) {
	srv, creds := accessServer(t, gIssuer, gManager, gUnitA, gUnitB, gUser, gOperator)
	pub := func(s string) op { return op{subject: s} }
	sub := func(s string) op { return op{sub: true, subject: s} }
	cases := []struct {
		grant   access.Grant
		allowed []op
		refused []op
	}{{
		grant: gUnitA,
		allowed: []op{
			pub("cohort.v1.issuer.certify"), pub("cohort.v1.manager.join"), pub("cohort.v1.manager.session"),
			pub("$KV.cohort_calls.alpha.00ff.1"), sub("cohort.v1.cluster.alpha.call"), sub("_INBOX.unit.alpha.x"),
			pub("_INBOX.user.x"), // answers to users
		},
		refused: []op{
			pub("cohort.v1.sessions.alpha.00ff"),    // only the manager writes session records
			pub("$KV.cohort_members.alpha.u1"),      // … and membership
			pub("cohort.v1.cluster.beta.handshake"), // another cluster
			pub("$KV.cohort_calls.beta.00ff.1"),     // another cluster's claims
			pub("$JS.API.DIRECT.GET.cohort_sessions.cohort.v1.sessions.beta.00ff"),
			pub("$JS.API.STREAM.DELETE.cohort_sessions"), // streams are not the unit's
			pub("$KV.cohort_issuer_state.root"),          // nor the issuer's state
			pub("cohort.v1.events.unit.joined"),          // nor the audit stream
			sub("cohort.v1.cluster.beta.call"),           // serve another cluster
			sub("_INBOX.>"),                              // read others' replies
			sub("_INBOX.user.x"),
			pub("_INBOX.operator.x"), // a reply goes to users only
		},
	}, {
		grant: gUser,
		allowed: []op{
			pub("cohort.v1.cluster.alpha.handshake"), pub("cohort.v1.cluster.beta.call"), pub("cohort.v1.cluster.alpha.close"),
			pub("cohort.v1.issuer.evidence"), sub("_INBOX.user.x"),
		},
		refused: []op{
			pub("cohort.v1.issuer.certify"), pub("cohort.v1.manager.session"), pub("cohort.v1.manager.join"),
			pub("cohort.v1.manager.status"), pub("cohort.v1.sessions.alpha.00ff"),
			pub("$JS.API.STREAM.INFO.cohort_sessions"), pub("$KV.cohort_calls.alpha.00ff.1"),
			pub("_INBOX.unit.alpha.x"),          // answer a unit's request
			sub("cohort.v1.cluster.alpha.call"), // pose as a unit
			sub("_INBOX.unit.alpha.>"),
		},
	}, {
		grant: gOperator,
		allowed: []op{
			pub("cohort.v1.manager.status"), pub("cohort.v1.issuer.evidence"), pub("$SRV.PING"),
			pub("$JS.API.STREAM.INFO.cohort_events"), sub("_INBOX.operator.x"),
		},
		refused: []op{
			pub("$JS.API.STREAM.DELETE.cohort_events"), pub("$JS.API.STREAM.PURGE.cohort_sessions"),
			pub("cohort.v1.events.unit.joined"), pub("$KV.cohort_members.alpha.u1"),
			pub("cohort.v1.cluster.alpha.handshake"), pub("cohort.v1.issuer.certify"),
			sub("cohort.v1.manager.>"),
		},
	}, {
		grant: gManager,
		allowed: []op{
			pub("cohort.v1.sessions.alpha.00ff"), pub("$KV.cohort_members.alpha.u1"), pub("cohort.v1.events.unit.joined"),
			pub("$JS.API.STREAM.CREATE.cohort_sessions"), sub("cohort.v1.manager.join"), sub("_INBOX.manager.x"),
		},
		refused: []op{
			pub("$KV.cohort_issuer_state.root"), pub("$JS.API.STREAM.DELETE.KV_cohort_issuer_state"),
			pub("cohort.v1.issuer.certify"), pub("cohort.v1.cluster.alpha.call"),
			sub("cohort.v1.cluster.alpha.call"), sub("cohort.v1.issuer.>"),
		},
	}, {
		grant: gIssuer,
		allowed: []op{
			pub("$KV.cohort_issuer_state.root"), pub("$JS.API.STREAM.CREATE.KV_cohort_issuer_state"),
			pub("cohort.v1.events.certificate.issued"), sub("cohort.v1.issuer.certify"),
			pub("_INBOX.user.x"), pub("_INBOX.unit.alpha.x"), pub("_INBOX.operator.x"), pub("_INBOX.manager.x"),
		},
		refused: []op{
			pub("cohort.v1.sessions.alpha.00ff"), pub("$KV.cohort_members.alpha.u1"),
			pub("$JS.API.STREAM.DELETE.cohort_sessions"), pub("cohort.v1.manager.session"),
			// A request naming a bucket's subject as its reply gets no
			// answer written there: replies are publishes like any other.
			pub("$KV.cohort_calls.alpha.00ff.closed"),
			sub("cohort.v1.manager.>"), sub("cohort.v1.cluster.alpha.handshake"),
		},
	}}
	for _, tc := range cases {
		c := creds[tc.grant]
		for _, o := range tc.allowed {
			if err := try(t, srv, c, o); err != nil {
				t.Errorf("%s: %s refused: %v", tc.grant, o, err)
			}
		}
		for _, o := range tc.refused {
			err := try(t, srv, c, o)
			if err == nil || !strings.Contains(err.Error(), "Permissions Violation") || !strings.Contains(err.Error(), `"`+o.subject+`"`) {
				t.Errorf("%s: %s: %v, want the server's permissions violation naming the subject", tc.grant, o, err)
			}
		}
	}
}
