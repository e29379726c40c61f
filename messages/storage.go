package messages

// Names of the JetStream streams and buckets cohort keeps, besides each
// cluster's (SessionsStream, CallsStream). With NATS accounts (package
// access) each lives in the account of the role that writes it.
const (
	IssuerStateBucket   = "cohort_issuer_state" // the issuer's sealed state (account issuer)
	MembersBucket       = "cohort_members"      // cluster membership (account manager)
	EventsStream        = "cohort_events"       // the audit stream (account manager)
	SubjectEventsPrefix = "cohort.v1.events."
)
