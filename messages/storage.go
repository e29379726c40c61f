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

// SubjectReaderCreate is where an operator's request to create a consumer
// on the audit stream reaches the manager: the operator's account imports it
// as $JS.<manager>.API.CONSUMER.CREATE.cohort_events.>, so natscli's stream
// view asks it as it asks the JetStream API, and the manager forwards only a
// reader's request, one that pulls (events.VetReader). Requests end with the
// consumer's name and filter, as the API's subjects do. The subject lies
// outside the manager's prefix so that no cluster's import of that prefix
// can reach it.
const SubjectReaderCreate = "cohort.v1.view.consumer.create." + EventsStream
