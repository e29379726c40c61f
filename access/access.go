// Package access owns who may do what on cohort's NATS bus: the roles
// (issuer, manager, unit, user, operator), the subjects each may publish to
// and subscribe to, and the credentials that prove a role to the NATS server.
//
// A credential is a NATS nkey (an Ed25519 key pair): the server knows only
// the public key and the permissions that go with it; the client proves the
// seed by signing the server's nonce. The seed is written to a credentials
// file, decorated as NATS tools expect, so `nats --nkey FILE` reads it too; a
// header line names the role, from which Options derives the connection's
// reply-inbox prefix.
//
// Guarantees, enforced by the NATS server, not by cohort's processes:
//   - a unit publishes only to its own cluster's subjects and to the
//     issuer's and manager's request subjects, and reads only its own
//     cluster's session records and call claims;
//   - a user publishes only to the clusters' handshake, call and close
//     subjects and to the issuer's evidence subject;
//   - only the manager writes membership and session records, only the
//     issuer its own state; each role touches only its own streams;
//   - every role receives replies only under its own inbox prefix, so no
//     credential can read the replies sent to another role, and answers
//     only into the inboxes of the roles that may ask it (a request cannot
//     name a stream's subject as its reply and have it written there);
//   - a client without a credential is refused.
//
// Permissions name cohort's default stream and bucket names; a deployment
// that renames them must extend them.
package access

import (
	"fmt"
	"slices"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/cohort-dev/cohort/events"
	"github.com/cohort-dev/cohort/issuer"
	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
)

// Role is what a credential is for.
type Role string

// The roles.
const (
	Issuer   Role = "issuer"
	Manager  Role = "manager"
	Unit     Role = "unit" // one credential per cluster
	User     Role = "user"
	Operator Role = "operator"
)

// Roles lists the roles in a stable order.
var Roles = []Role{Issuer, Manager, Unit, User, Operator}

// Grant is one role's credential scope: the role and, for a unit, its
// cluster.
type Grant struct {
	Role    Role
	Cluster string // units only
}

// Validate checks that the grant names a known role, and a valid cluster
// for a unit and only for a unit.
func (g Grant) Validate() error {
	if !slices.Contains(Roles, g.Role) {
		return fmt.Errorf("access: unknown role %q", g.Role)
	}
	if g.Role == Unit && !messages.ValidTaskName(g.Cluster) {
		return fmt.Errorf("access: a unit credential needs a valid cluster id, not %q", g.Cluster)
	}
	if g.Role != Unit && g.Cluster != "" {
		return fmt.Errorf("access: role %s takes no cluster", g.Role)
	}
	return nil
}

// String names the grant as credentials files and logs do: "unit/dev",
// "issuer".
func (g Grant) String() string {
	if g.Role == Unit {
		return string(g.Role) + "/" + g.Cluster
	}
	return string(g.Role)
}

// FileName is the name of the grant's credentials file: issuer.creds,
// unit-dev.creds.
func (g Grant) FileName() string {
	if g.Role == Unit {
		return "unit-" + g.Cluster + ".creds"
	}
	return string(g.Role) + ".creds"
}

// Grants lists the grants of a deployment: one for each role, the units'
// once for each of clusters.
func Grants(clusters ...string) []Grant {
	gs := []Grant{{Role: Issuer}, {Role: Manager}, {Role: User}, {Role: Operator}}
	for _, c := range clusters {
		gs = append(gs, Grant{Role: Unit, Cluster: c})
	}
	return gs
}

// InboxPrefix is the prefix of the grant's reply subjects; it is the only
// inbox the grant may subscribe to.
func (g Grant) InboxPrefix() string {
	if g.Role == Unit {
		return "_INBOX.unit." + g.Cluster
	}
	return "_INBOX." + string(g.Role)
}

// Stream and bucket names the permissions cover.
const (
	sessionsStream = messages.SessionsStream
	callsStream    = "KV_" + messages.CallsBucket
	callsKV        = "$KV." + messages.CallsBucket + "."
	membersStream  = "KV_" + manager.DefaultBucket
	membersKV      = "$KV." + manager.DefaultBucket + "."
	issuerStream   = "KV_" + issuer.DefaultBucket
	issuerKV       = "$KV." + issuer.DefaultBucket + "."
	eventsStream   = events.StreamName
)

// ownStream is what a role that creates and writes a stream may do with it
// through the JetStream API: create, update, inspect, read, and consume.
func ownStream(name string) []string {
	return []string{
		"$JS.FC." + name + ".>", // flow control of its consumers (a bucket's watcher)
		"$JS.ACK." + name + ".>",
		"$JS.API.STREAM.*." + name,          // CREATE, UPDATE, INFO, PURGE, DELETE
		"$JS.API.STREAM.MSG.*." + name,      // MSG.GET, MSG.DELETE
		"$JS.API.CONSUMER.*." + name,        // ordered and ephemeral consumers
		"$JS.API.CONSUMER.*." + name + ".>", // CREATE, INFO, DELETE by name
		"$JS.API.CONSUMER.MSG.NEXT." + name + ".>",
		"$JS.API.DIRECT.GET." + name,
		"$JS.API.DIRECT.GET." + name + ".>",
	}
}

// readStream is what a reader may do: inspect the stream and run its own
// consumers on it, filtered to filter (">" for all of it).
func readStream(name, filter string) []string {
	return []string{
		"$JS.API.STREAM.INFO." + name,
		"$JS.API.CONSUMER.CREATE." + name + ".*." + filter,
		"$JS.API.CONSUMER.INFO." + name + ".*",
		"$JS.API.CONSUMER.DELETE." + name + ".*",
		"$JS.API.CONSUMER.MSG.NEXT." + name + ".*",
	}
}

// Reply inboxes: a role that answers requests may publish to the inboxes of
// the roles that ask it, and nowhere else by way of a reply. NATS's own
// allow_responses is not used: it lets a responder publish to whatever
// reply subject a request names, a JetStream bucket's subject included.
const (
	userInbox     = "_INBOX.user.>"
	operatorInbox = "_INBOX.operator.>"
	managerInbox  = "_INBOX.manager.>"
	unitInboxes   = "_INBOX.unit.*.>"
)

// Permissions returns the subjects the grant may publish to and subscribe
// to.
func (g Grant) Permissions() (*server.Permissions, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	var pub, sub []string
	sub = append(sub, g.InboxPrefix()+".>")
	switch g.Role {
	case Issuer:
		pub = append(pub, ownStream(issuerStream)...)
		pub = append(pub, issuerKV+">")
		pub = append(pub, ownStream(eventsStream)...)
		pub = append(pub, events.SubjectAll, "$JS.API.INFO")
		pub = append(pub, unitInboxes, userInbox, operatorInbox, managerInbox) // certify, evidence, $SRV
		sub = append(sub, "cohort.v1.issuer.>", "$SRV.>")
	case Manager:
		for _, s := range []string{membersStream, sessionsStream, callsStream, eventsStream} {
			pub = append(pub, ownStream(s)...)
		}
		pub = append(pub,
			membersKV+">",
			messages.SubjectSessionsPrefix+">",
			events.SubjectAll,
			messages.SubjectEvidence,
			"$JS.API.INFO",
			unitInboxes, operatorInbox, // join, heartbeat, session; status, $SRV
		)
		sub = append(sub, "cohort.v1.manager.>", "$SRV.>")
	case Unit:
		c := g.Cluster
		pub = append(pub,
			messages.SubjectCertify, messages.SubjectEvidence,
			messages.SubjectJoin, messages.SubjectHeartbeat, messages.SubjectLeave, messages.SubjectSession,
		)
		pub = append(pub, readStream(sessionsStream, messages.SessionsOfCluster(c))...)
		pub = append(pub, "$JS.API.DIRECT.GET."+sessionsStream+"."+messages.SessionsOfCluster(c))
		pub = append(pub,
			"$JS.API.STREAM.INFO."+callsStream,
			"$JS.API.DIRECT.GET."+callsStream+"."+callsKV+c+".>",
			callsKV+c+".>",
			userInbox, // handshakes, calls and closes are the users'
		)
		sub = append(sub, messages.SubjectClusterPrefix+c+".>")
	case User:
		pub = append(pub,
			messages.HandshakeSubject("*"), messages.CallSubject("*"), messages.CloseSubject("*"),
			messages.SubjectEvidence,
		)
	case Operator:
		pub = append(pub, messages.SubjectStatus, messages.SubjectEvidence, "$SRV.>",
			"$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", "$JS.API.STREAM.INFO.*")
		pub = append(pub, readStream(eventsStream, events.SubjectAll)...)
	}
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: sub},
	}, nil
}
