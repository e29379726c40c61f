package access

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cohort-dev/cohort/messages"
)

// The accounts of a deployment, besides each cluster's (ClusterAccount)
// and each user's (Grant.Account).
const (
	IssuerAccount   = "issuer"
	ManagerAccount  = "manager"
	OperatorAccount = "operator"
)

// service is one exported service: its subject, who may import it, and
// whether one request may have several replies.
type service struct {
	subject  string
	accounts []string
	stream   bool
}

type account struct {
	name      string
	jetstream bool
	users     []any
	exports   []service
	imports   []any
}

func importOf(from, subject string) any {
	return map[string]any{"service": map[string]any{"account": from, "subject": subject}}
}

// sharedImportOf imports a service whose exporter learns who sent each
// request: the server stamps it (Nats-Request-Info) with the sender's
// account, user and kind, replacing any stamp the sender wrote. Every
// account imports the issuer's evidence so: the issuer bounds each
// requester's rate by that stamp (service.SenderOf), which no sender can
// forge.
func sharedImportOf(from, subject string) any {
	return map[string]any{"service": map[string]any{"account": from, "subject": subject}, "share": true}
}

// APIPrefix is the prefix under which the operator's account reaches the
// JetStream API of account: "$JS.<account>.API", as nats.go's
// jetstream.WithAPIPrefix and natscli's --js-api-prefix take it. The
// operator's account, which has no JetStream, must not import it under
// "$JS.API": the server answers that there itself ("JetStream not enabled
// for account"), and the first answer wins.
func APIPrefix(account string) string { return "$JS." + account + ".API" }

// importAPI imports a JetStream API subject of account under its prefix.
func importAPI(from, apiSubject string) any {
	return map[string]any{
		"service": map[string]any{"account": from, "subject": apiSubject},
		"to":      APIPrefix(from) + strings.TrimPrefix(apiSubject, "$JS.API"),
	}
}

// Accounts is the "accounts" block of a NATS server configuration that
// admits exactly the credentials of deployment d, each held to its
// permissions in its account, with the services each account exports and
// imports. creds must hold a credential for every grant of d.
//
// The block is JSON data (NATS reads JSON as configuration): a deployment
// writes it into each server's configuration, an embedded server loads it.
func Accounts(d Deployment, creds map[Grant]*Credential) (map[string]any, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	clusters := d.ClusterIDs()
	clusterAccounts := make([]string, 0, len(clusters))
	for _, c := range clusters {
		clusterAccounts = append(clusterAccounts, ClusterAccount(c))
	}
	userAccounts := make([]string, 0, len(d.Users))
	for _, u := range d.Users {
		userAccounts = append(userAccounts, Grant{Role: User, Name: u}.Account())
	}
	everyone := slices.Concat(clusterAccounts, userAccounts, []string{ManagerAccount, OperatorAccount})
	op := []string{OperatorAccount}

	iss := &account{name: IssuerAccount, jetstream: true,
		exports: []service{
			{subject: messages.SubjectEvidence, accounts: everyone},
			{subject: messages.SubjectCertify, accounts: clusterAccounts},
			{subject: messages.SubjectPolicyApply, accounts: op},
			{subject: messages.SubjectPolicyShow, accounts: op},
			{subject: messages.SubjectRecoverPrefix + ">", accounts: op},
			{subject: "$SRV.>", accounts: op, stream: true},
			{subject: "$JS.API.STREAM.INFO." + issuerStream, accounts: op},
		},
	}
	for _, e := range issuerEvents {
		iss.imports = append(iss.imports, importOf(ManagerAccount, e))
	}
	mgr := &account{name: ManagerAccount, jetstream: true,
		exports: []service{
			{subject: messages.SubjectStatus, accounts: op},
			{subject: messages.SubjectManagerPrefix + "*.*.*", accounts: clusterAccounts},
			{subject: "$SRV.>", accounts: op, stream: true},
			{subject: "$JS.API.STREAM.INFO." + eventsStream, accounts: op},
			{subject: "$JS.API.STREAM.INFO." + membersStream, accounts: op},
			{subject: "$JS.API.STREAM.LIST", accounts: op}, // read-only: natscli's stream ls and kv ls
			{subject: "$JS.API.STREAM.NAMES", accounts: op},
			{subject: "$JS.API.DIRECT.GET." + eventsStream, accounts: op, stream: true},
			{subject: "$JS.API.DIRECT.GET." + eventsStream + ".>", accounts: op, stream: true},
			// natscli's stream view: a pull consumer the manager vets and
			// creates (messages.SubjectReaderCreate), its pulls, acks,
			// information and deletion.
			{subject: messages.SubjectReaderCreate + ".>", accounts: op},
			{subject: "$JS.API.CONSUMER.MSG.NEXT." + eventsStream + ".*", accounts: op, stream: true},
			{subject: "$JS.API.CONSUMER.INFO." + eventsStream + ".*", accounts: op},
			{subject: "$JS.API.CONSUMER.DELETE." + eventsStream + ".*", accounts: op},
			{subject: "$JS.ACK." + eventsStream + ".>", accounts: op},
		},
		imports: []any{sharedImportOf(IssuerAccount, messages.SubjectEvidence)},
	}
	for _, e := range issuerEvents {
		mgr.exports = append(mgr.exports, service{subject: e, accounts: []string{IssuerAccount}})
	}
	operator := &account{name: OperatorAccount, imports: []any{
		importOf(IssuerAccount, messages.SubjectPolicyApply), importOf(IssuerAccount, messages.SubjectPolicyShow),
		importOf(IssuerAccount, messages.SubjectRecoverPrefix+">"),
		importOf(ManagerAccount, messages.SubjectStatus),
		sharedImportOf(IssuerAccount, messages.SubjectEvidence),
		importOf(ManagerAccount, "$SRV.PING"), importOf(ManagerAccount, "$SRV.INFO"), importOf(ManagerAccount, "$SRV.STATS"),
		importOf(ManagerAccount, "$SRV.*."+messages.ManagerService), importOf(ManagerAccount, "$SRV.*."+messages.ManagerService+".*"),
		importOf(IssuerAccount, "$SRV.*."+messages.IssuerService), importOf(IssuerAccount, "$SRV.*."+messages.IssuerService+".*"),
		importAPI(ManagerAccount, "$JS.API.STREAM.INFO."+eventsStream), importAPI(ManagerAccount, "$JS.API.STREAM.INFO."+membersStream),
		importAPI(ManagerAccount, "$JS.API.STREAM.LIST"), importAPI(ManagerAccount, "$JS.API.STREAM.NAMES"),
		importAPI(ManagerAccount, "$JS.API.DIRECT.GET."+eventsStream), importAPI(ManagerAccount, "$JS.API.DIRECT.GET."+eventsStream+".>"),
		map[string]any{ // the consumer create natscli asks is the manager's vetting endpoint
			"service": map[string]any{"account": ManagerAccount, "subject": messages.SubjectReaderCreate + ".>"},
			"to":      readerCreate + ".>",
		},
		importAPI(ManagerAccount, "$JS.API.CONSUMER.MSG.NEXT."+eventsStream+".*"),
		importAPI(ManagerAccount, "$JS.API.CONSUMER.INFO."+eventsStream+".*"),
		importAPI(ManagerAccount, "$JS.API.CONSUMER.DELETE."+eventsStream+".*"),
		importOf(ManagerAccount, "$JS.ACK."+eventsStream+".>"),
		importAPI(IssuerAccount, "$JS.API.STREAM.INFO."+issuerStream),
	}}
	accounts := []*account{iss, mgr, operator}
	byName := map[string]*account{IssuerAccount: iss, ManagerAccount: mgr, OperatorAccount: operator}
	for _, c := range clusters {
		a := &account{name: ClusterAccount(c), jetstream: true,
			exports: []service{
				{subject: messages.SubjectClusterPrefix + c + ".>", accounts: userAccounts},
				{subject: messages.SessionsOfCluster(c), accounts: []string{ManagerAccount}},
				{subject: "$JS.API.STREAM.INFO." + messages.SessionsStream(c), accounts: op},
			},
			imports: []any{
				importOf(IssuerAccount, messages.SubjectCertify),
				sharedImportOf(IssuerAccount, messages.SubjectEvidence),
				// A cluster reaches the manager only as itself, and
				// the server stamps each request with its sender, so
				// that the manager takes none the server itself made.
				sharedImportOf(ManagerAccount, messages.SubjectManagerPrefix+"*."+c+".*"),
			},
		}
		mgr.imports = append(mgr.imports, importOf(a.name, messages.SessionsOfCluster(c)))
		operator.imports = append(operator.imports, importAPI(a.name, "$JS.API.STREAM.INFO."+messages.SessionsStream(c)))
		for _, name := range messages.CallsStreams(c) {
			a.exports = append(a.exports, service{subject: "$JS.API.STREAM.INFO." + name, accounts: op})
			operator.imports = append(operator.imports, importAPI(a.name, "$JS.API.STREAM.INFO."+name))
		}
		accounts = append(accounts, a)
		byName[a.name] = a
	}
	for _, u := range d.Users {
		a := &account{name: Grant{Role: User, Name: u}.Account(), imports: []any{sharedImportOf(IssuerAccount, messages.SubjectEvidence)}}
		for _, c := range clusters {
			// A user reaches a cluster only under its own name.
			a.imports = append(a.imports, importOf(ClusterAccount(c), messages.SubjectClusterPrefix+c+".*."+u))
		}
		accounts = append(accounts, a)
		byName[a.name] = a
	}
	for _, g := range d.Grants() {
		c, ok := creds[g]
		if !ok {
			return nil, fmt.Errorf("access: no credential for %s", g)
		}
		for _, k := range g.Keys() {
			pub, sub, err := g.Subjects(k)
			if err != nil {
				return nil, err
			}
			nkey := c.Public(k)
			if nkey == "" {
				return nil, fmt.Errorf("access: the credential of %s has no %s key", g, k)
			}
			byName[g.Account()].users = append(byName[g.Account()].users, map[string]any{
				"nkey": nkey,
				"permissions": map[string]any{
					"publish":   map[string]any{"allow": pub},
					"subscribe": map[string]any{"allow": sub},
				},
			})
		}
	}
	out := map[string]any{}
	for _, a := range accounts {
		m := map[string]any{}
		if a.jetstream {
			m["jetstream"] = "enabled"
		}
		if len(a.users) > 0 {
			m["users"] = a.users
		}
		var exports []any
		for _, e := range a.exports {
			if len(e.accounts) == 0 {
				continue // nobody may import it: an export without accounts would be public
			}
			ex := map[string]any{"service": e.subject, "accounts": e.accounts}
			if e.stream {
				ex["response_type"] = "stream"
			}
			exports = append(exports, ex)
		}
		if len(exports) > 0 {
			m["exports"] = exports
		}
		if len(a.imports) > 0 {
			m["imports"] = a.imports
		}
		out[a.name] = m
	}
	return out, nil
}
