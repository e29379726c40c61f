// Package messages defines cohort's wire protocol: the NATS subjects, the
// message types that travel on them, their size limits and the error codes a
// service answers with.
//
// Every message is a msgpack map (github.com/vmihailenco/msgpack/v5, pinned at
// v5.3.6) that carries the protocol version in field "v". Decoding is strict
// and the same for every type:
//
//   - the payload is refused before it is parsed when it exceeds the type's
//     size cap;
//   - a structural pre-scan refuses any length header that claims more bytes
//     or elements than remain in the payload, any array or map of more than
//     maxItems entries, and any nesting deeper than maxDepth, so that no
//     header can make the decoder allocate much beyond the payload's size;
//   - the payload decodes into a concrete struct only; an unknown field, a
//     trailing byte or a wrong type is an error;
//   - the payload must be the canonical encoding of what it decodes to, the
//     bytes Marshal makes of it: fields in declaration order, each once,
//     minimal headers, numbers within their field's range. Every message has
//     one encoding, and no number is silently wrapped;
//   - the version must be Version, and every variable-length field is checked
//     against its cap by the type's Validate method.
//
// A decode error never changes anything: callers decode first and act after.
//
// # Versions
//
// Version is bumped whenever a message gains, loses or changes a field, and
// every bump is recorded here:
//
//   - 1: the replica-certificate protocol: issuer evidence and certify.
//   - 2: a certify request may name the unit's cluster, and the sealed
//     secrets then carry that cluster's key and epoch; the manager's
//     membership messages (join, heartbeat, leave).
//   - 3: a certify request may name groups (CertifyBody.Groups); the report
//     then carries each group's certificate (ReportBody.Groups) and the
//     sealed secrets each group's key (Secrets.Groups); GroupProof, which
//     group members exchange inside mutual TLS to prove their task.
//   - 4: subjects carry who asks: a unit's requests to the manager end with
//     its cluster and unit id (ManagerSubject), a user's with its name
//     (ClusterSubject), and each cluster's session records and call claims
//     live in streams of its own (SessionsStream, CallsStream); a session's
//     id is derived from the user's hello (so a hello sent again is a
//     replay); SessionKeys names the session's user; CallClaim carries its
//     state, the revision it was written over and a MAC under the cluster's
//     claim key.
//   - 5: the trust lifecycle: the issuer's evidence binds the version of the
//     policy in force as well as its hash (EvidenceBinding, and
//     EvidenceReply.PolicyVersion); issuer replicas pass the state key by
//     mutual attestation (StateKeyRequest, StateKeyReply); signed policy
//     updates (PolicyApply, PolicyApplied, PolicyShowRequest,
//     PolicyShowReply); recovery into a fresh issuer (RecoverHello,
//     RecoverReply, RecoverOffer, RecoverShare, RecoverAck); the issuer's
//     refusal of a certify request carries its root's signature
//     (Error.Proof, RefusalDigest).
//   - 6: hardware platforms: evidence of Intel SGX, AMD SEV-SNP and Intel TDX
//     travels in an envelope that names its platform (package attest);
//     measurements are 32 or 48 bytes (JoinRequest.Measurement, and the
//     identity extension of certificates); refusals platform_not_accepted,
//     tcb_status_not_accepted, tcb_too_low and collateral_unavailable.
//   - 7: root rotation: the issuer's evidence carries the vouchers of its
//     root (EvidenceReply.Vouchers: each earlier root's certificate of the
//     next one's key), by which a holder of an earlier root moves to the
//     current one; refusals root_rotating (the issuer replicas switch roots
//     and answer under neither for a moment) and state_unconfirmed (a
//     replica that could not confirm the policy in force answers no one).
package messages
