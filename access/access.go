// Package access owns who may do what on cohort's NATS bus: the identities
// (the issuer, the manager, each unit of each cluster, each user, the
// operator), the NATS accounts that keep their state apart, the subjects each
// credential may publish to and subscribe to, and the credentials that
// prove an identity to the NATS server.
//
// The threat it answers (THREATS.md): every credential is held by someone
// hostile, who uses every permission it has. A NATS permission names the
// subject a client publishes to, not the reply subject it names, and every
// responder, cohort's services and the NATS server's own JetStream API
// alike, answers to whatever reply subject a request names. So within one
// NATS account, any credential that may send any request can have a
// responder write into any stream of that account. The defence is
// structural:
//
//   - State lives in accounts of its own, each holding only the credentials
//     that may write all of it: the issuer's state (account issuer), the
//     membership and the audit stream (manager), and each cluster's session
//     records and call claims (cluster-<id>, its units). Users and the
//     operator have accounts without JetStream. Requests cross accounts
//     through service imports, whose replies the server maps back into the
//     requester's own account: no request reaches a subject of another
//     account as its reply.
//   - A service answers on a connection whose credential may publish only
//     such mapped replies (_R_.>) and subscribe only to its service's
//     subjects; it writes state over a second connection whose credential
//     serves nothing. A credentials file of the issuer, the manager or a
//     unit holds both keys (Key State and Key Serve).
//   - Identities are in the subjects: a unit may publish to the manager only
//     under its own cluster and unit id, a user to a cluster only under its
//     own name, so that services learn from the server, not from the
//     request, who asks; every identity receives only in its own inbox.
//   - No running role may update, purge or delete a stream, or delete a
//     message: JetStream keeps what it was created with.
//
// Credentials are NATS nkeys (Ed25519): the server knows the public keys,
// each with its account and permissions; the client proves the seed by
// signing the server's nonce. Permissions name cohort's default stream and
// bucket names; a deployment that renames them must extend them.
package access

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cohort-dev/cohort/messages"
)

// Role is what a credential is for.
type Role string

// The roles.
const (
	Issuer   Role = "issuer"
	Manager  Role = "manager"
	Unit     Role = "unit" // one credential per unit, of one cluster
	User     Role = "user" // one credential per user
	Operator Role = "operator"
)

// Roles lists the roles in a stable order.
var Roles = []Role{Issuer, Manager, Unit, User, Operator}

// Grant is one identity: the role and, for a unit, its cluster and unit
// id, for a user, its name.
type Grant struct {
	Role    Role
	Cluster string // units only
	Name    string // a unit's id, a user's name
}

// Validate checks that the grant names a known role, with a valid cluster
// and unit id for a unit, a valid name for a user, and nothing else.
func (g Grant) Validate() error {
	switch g.Role {
	case Unit:
		if !messages.ValidTaskName(g.Cluster) {
			return fmt.Errorf("access: a unit credential needs a valid cluster id, not %q", g.Cluster)
		}
		if !messages.ValidUnitID(g.Name) {
			return fmt.Errorf("access: a unit credential needs a valid unit id (letters, digits, '-' and '_'), not %q", g.Name)
		}
	case User:
		if !messages.ValidUserName(g.Name) {
			return fmt.Errorf("access: a user credential needs a valid name (lower-case letters, digits and inner '-'), not %q", g.Name)
		}
		if g.Cluster != "" {
			return fmt.Errorf("access: role %s takes no cluster", g.Role)
		}
	case Issuer, Manager, Operator:
		if g.Cluster != "" || g.Name != "" {
			return fmt.Errorf("access: role %s takes no cluster and no name", g.Role)
		}
	default:
		return fmt.Errorf("access: unknown role %q", g.Role)
	}
	return nil
}

// String names the grant as credentials files and logs do: "issuer",
// "unit/dev/dev-1", "user/alice".
func (g Grant) String() string {
	switch g.Role {
	case Unit:
		return string(g.Role) + "/" + g.Cluster + "/" + g.Name
	case User:
		return string(g.Role) + "/" + g.Name
	}
	return string(g.Role)
}

// ParseGrant reads a grant as String writes it.
func ParseGrant(s string) (Grant, error) {
	parts := strings.Split(s, "/")
	g := Grant{Role: Role(parts[0])}
	switch {
	case g.Role == Unit && len(parts) == 3:
		g.Cluster, g.Name = parts[1], parts[2]
	case g.Role == User && len(parts) == 2:
		g.Name = parts[1]
	case len(parts) != 1:
		return Grant{}, fmt.Errorf("access: grant %q: want issuer, manager, operator, unit/CLUSTER/ID or user/NAME", s)
	}
	if err := g.Validate(); err != nil {
		return Grant{}, err
	}
	return g, nil
}

// FileName is the name of the grant's credentials file: issuer.creds,
// unit-dev-dev-1.creds, user-alice.creds.
func (g Grant) FileName() string {
	switch g.Role {
	case Unit:
		return "unit-" + g.Cluster + "-" + g.Name + ".creds"
	case User:
		return "user-" + g.Name + ".creds"
	}
	return string(g.Role) + ".creds"
}

// Keys lists the keys a grant's credential holds: the services (issuer,
// manager, units) hold a State and a Serve key; users and the operator only
// a State key.
func (g Grant) Keys() []Key {
	switch g.Role {
	case Issuer, Manager, Unit:
		return []Key{State, Serve}
	}
	return []Key{State}
}

// Key says which of a credential's connections a key is for.
type Key string

// The keys.
const (
	// State is the connection that writes state and asks other services:
	// JetStream, requests, the audit stream. It serves nothing.
	State Key = "state"
	// Serve is the connection a service answers on: it subscribes to the
	// service's subjects and may publish only replies.
	Serve Key = "serve"
)

// InboxPrefix is the prefix of the reply subjects of a grant's State
// connection; it is the only inbox the grant may subscribe to.
func (g Grant) InboxPrefix() string {
	switch g.Role {
	case Unit:
		return "_INBOX.unit." + g.Cluster + "." + g.Name
	case User:
		return "_INBOX.user." + g.Name
	}
	return "_INBOX." + string(g.Role)
}

// Account is the NATS account the grant's credentials belong to.
func (g Grant) Account() string {
	switch g.Role {
	case Unit:
		return ClusterAccount(g.Cluster)
	case User:
		return "user-" + g.Name
	}
	return string(g.Role)
}

// ClusterAccount is the NATS account of a cluster: its units, its session
// records and its call claims.
func ClusterAccount(cluster string) string { return "cluster-" + cluster }

// Deployment is who a deployment admits: its clusters, each with its units'
// ids, and its users. The issuer, the manager and the operator are always
// there.
type Deployment struct {
	Clusters []Cluster `json:"clusters"`
	Users    []string  `json:"users"`
}

// Cluster is one cluster and the ids of its units.
type Cluster struct {
	ID    string   `json:"id"`
	Units []string `json:"units"`
}

// Validate checks every name, and that none is given twice.
func (d Deployment) Validate() error {
	seen := map[string]bool{}
	for _, c := range d.Clusters {
		if !messages.ValidTaskName(c.ID) || seen["c/"+c.ID] {
			return fmt.Errorf("access: cluster id %q is not valid or named twice", c.ID)
		}
		seen["c/"+c.ID] = true
		for _, u := range c.Units {
			if !messages.ValidUnitID(u) || seen["u/"+c.ID+"/"+u] {
				return fmt.Errorf("access: unit id %q of cluster %s is not valid or named twice", u, c.ID)
			}
			seen["u/"+c.ID+"/"+u] = true
		}
	}
	for _, u := range d.Users {
		if !messages.ValidUserName(u) || seen["user/"+u] {
			return fmt.Errorf("access: user name %q is not valid or named twice", u)
		}
		seen["user/"+u] = true
	}
	return nil
}

// Grants lists the deployment's grants in a stable order: the issuer, the
// manager, the operator, the units of each cluster, the users.
func (d Deployment) Grants() []Grant {
	gs := []Grant{{Role: Issuer}, {Role: Manager}, {Role: Operator}}
	for _, c := range d.Clusters {
		for _, u := range c.Units {
			gs = append(gs, Grant{Role: Unit, Cluster: c.ID, Name: u})
		}
	}
	for _, u := range d.Users {
		gs = append(gs, Grant{Role: User, Name: u})
	}
	return gs
}

// ClusterIDs lists the deployment's cluster ids.
func (d Deployment) ClusterIDs() []string {
	ids := make([]string, 0, len(d.Clusters))
	for _, c := range d.Clusters {
		ids = append(ids, c.ID)
	}
	return ids
}

// Stream and bucket names the permissions cover.
const (
	issuerBucket  = messages.IssuerStateBucket
	issuerStream  = "KV_" + messages.IssuerStateBucket
	membersBucket = messages.MembersBucket
	membersStream = "KV_" + messages.MembersBucket
	eventsStream  = messages.EventsStream
)

// readerCreate is the consumer create of the audit stream as the operator
// asks it: imported from the manager's vetting endpoint, not the API's.
var readerCreate = APIPrefix(ManagerAccount) + ".CONSUMER.CREATE." + eventsStream

// ownStream is what the creator and writer of a stream may do with it
// through the JetStream API: create it (never update, purge or delete it),
// inspect it, read it directly and run its own consumers on it.
func ownStream(name string) []string {
	return []string{
		"$JS.API.INFO", // the account's: nats.go asks before it makes a bucket
		"$JS.API.STREAM.CREATE." + name,
		"$JS.API.STREAM.INFO." + name,
		"$JS.API.STREAM.MSG.GET." + name,
		"$JS.API.DIRECT.GET." + name,
		"$JS.API.DIRECT.GET." + name + ".>",
		"$JS.API.CONSUMER.CREATE." + name,
		"$JS.API.CONSUMER.CREATE." + name + ".>",
		"$JS.API.CONSUMER.INFO." + name + ".*",
		"$JS.API.CONSUMER.DELETE." + name + ".*",
		"$JS.API.CONSUMER.MSG.NEXT." + name + ".*",
		"$JS.ACK." + name + ".>",
		"$JS.FC." + name + ".>",
	}
}

// The subjects of the issuer's events on the audit stream.
var issuerEvents = []string{"cohort.v1.events.certificate.>", "cohort.v1.events.policy.>", "cohort.v1.events.issuer.>"}

// Subjects says what one key of a grant may publish to and subscribe to.
func (g Grant) Subjects(k Key) (pub, sub []string, err error) {
	if err := g.Validate(); err != nil {
		return nil, nil, err
	}
	if !slices.Contains(g.Keys(), k) {
		return nil, nil, fmt.Errorf("access: %s holds no %s key", g, k)
	}
	if k == Serve {
		// Replies only, through the server's mapping back into the
		// requester's account: every requester is in another account.
		pub = []string{"_R_.>"}
		switch g.Role {
		case Issuer:
			sub = []string{messages.SubjectEvidence, messages.SubjectCertify, messages.SubjectPeerStateKey,
				messages.SubjectPolicyApply, messages.SubjectPolicyShow, messages.SubjectRecoverPrefix + ">", "$SRV.>"}
			// An issuer asking another for the state key is in the
			// issuer's own account: its answer goes to the issuer's
			// inbox, the only one besides the mapped replies.
			pub = append(pub, Grant{Role: Issuer}.InboxPrefix()+".>")
		case Manager:
			sub = []string{messages.SubjectManagerPrefix + ">", messages.SubjectReaderCreate + ".>", "$SRV.>"}
		case Unit:
			for _, verb := range []string{messages.VerbHandshake, messages.VerbCall, messages.VerbClose} {
				sub = append(sub, messages.ClusterFilter(g.Cluster, verb))
			}
		}
		return pub, sub, nil
	}
	sub = []string{g.InboxPrefix() + ".>"}
	switch g.Role {
	case Issuer:
		pub = append(ownStream(issuerStream), "$KV."+issuerBucket+".>", messages.SubjectPeerStateKey)
		pub = append(pub, issuerEvents...)
	case Manager:
		pub = append(ownStream(membersStream), "$KV."+membersBucket+".>")
		pub = append(pub, ownStream(eventsStream)...)
		pub = append(pub, messages.SubjectEventsPrefix+">", messages.SubjectSessionsPrefix+"*.*", messages.SubjectEvidence)
	case Unit:
		c := g.Cluster
		pub = []string{messages.SubjectCertify, messages.SubjectEvidence, messages.SubjectManagerPrefix + "*." + c + "." + g.Name}
		pub = append(pub, ownStream(messages.SessionsStream(c))...)
		for _, name := range messages.CallsStreams(c) {
			pub = append(pub, ownStream(name)...)
		}
		pub = append(pub, messages.ClaimsOfCluster(c))
	case User:
		for _, verb := range []string{messages.VerbHandshake, messages.VerbCall, messages.VerbClose} {
			pub = append(pub, messages.ClusterSubject("*", verb, g.Name))
		}
		pub = append(pub, messages.SubjectEvidence)
	case Operator:
		pub = []string{messages.SubjectStatus, messages.SubjectEvidence, messages.SubjectPolicyApply, messages.SubjectPolicyShow,
			messages.SubjectRecoverPrefix + ">", "$SRV.>", "$JS.*.API.STREAM.INFO.*",
			APIPrefix(ManagerAccount) + ".STREAM.LIST", APIPrefix(ManagerAccount) + ".STREAM.NAMES",
			APIPrefix(ManagerAccount) + ".DIRECT.GET." + eventsStream, APIPrefix(ManagerAccount) + ".DIRECT.GET." + eventsStream + ".>",
			// natscli's stream view of the audit stream: a pull consumer
			// the manager vets (events.VetReader), read, acknowledged and
			// deleted.
			readerCreate + ".>",
			APIPrefix(ManagerAccount) + ".CONSUMER.MSG.NEXT." + eventsStream + ".*",
			APIPrefix(ManagerAccount) + ".CONSUMER.INFO." + eventsStream + ".*",
			APIPrefix(ManagerAccount) + ".CONSUMER.DELETE." + eventsStream + ".*",
			"$JS.ACK." + eventsStream + ".>"}
	}
	return pub, sub, nil
}

// MayPublish reports whether key k of the grant may publish to subject, as
// the server's permissions decide it: a client checks before it asks, and
// refuses at once what the server would only drop.
func (g Grant) MayPublish(k Key, subject string) bool {
	pub, _, err := g.Subjects(k)
	if err != nil {
		return false
	}
	for _, p := range pub {
		if Matches(p, subject) {
			return true
		}
	}
	return false
}

// Matches reports whether subject, a literal subject, matches the NATS
// pattern (tokens, '*' for one, '>' for one or more at the end).
func Matches(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		switch {
		case tok == ">":
			return len(s) > i
		case i >= len(s):
			return false
		case tok != "*" && tok != s[i]:
			return false
		}
	}
	return len(p) == len(s)
}
