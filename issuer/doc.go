// Package issuer is cohort's certificate issuer: the trusted service, running
// in an enclave, that turns attested evidence into certificates.
//
// It serves two NATS endpoints as a service of package service, which nats
// micro's tools discover (see package messages for the subjects and types),
// on a connection that may publish only replies; its state and its events
// go over another (package access):
//
//   - evidence: the issuer's own evidence, whose report data binds its root
//     certificate, the hash of its policy and the caller's nonce. Users and
//     units check it against the issuer measurement they pin before they
//     trust the root.
//   - certify: a unit's request for its task's certificate pair. The issuer
//     checks the request's shape, its time and nonce (no replays), the
//     evidence, that the evidence binds the whole request (the unit's
//     ephemeral public key and nonce included), and the policy; then answers
//     with the chain and the task's private key HPKE-sealed to the request's
//     ephemeral key, the report signed by the root key. A request may name
//     the unit's cluster (its key is added to the sealed secrets) and groups
//     of its task (each group's certificate and key are added).
//
// Guarantees:
//   - Every replica of a task receives the same key and certificate, created
//     once and kept, sealed, in JetStream key-value; a restarted issuer, or a
//     second one on the same bucket, gives back the same root and the same
//     task certificates. Concurrent issuers agree through compare-and-set.
//   - Likewise every unit of every task of a group receives the group's one
//     key and certificate, made when the issuer first loads a policy that
//     declares the group, never on request. The certificate names the group
//     and its member tasks and allows TLS client and server authentication.
//   - A request naming a group its task is not a member of, or one the
//     policy does not declare, is refused whole, with the group named.
//   - A refusal is a typed messages.Error naming the reason; it changes no
//     state and hands out nothing.
//   - Secrets leave the issuer only sealed: to the enclave (state) or to the
//     requesting unit's attested ephemeral key (reports). They are never
//     logged.
//   - The certify path takes no global lock: requests run on a bounded worker
//     pool; a full queue answers "overloaded" at once.
package issuer
