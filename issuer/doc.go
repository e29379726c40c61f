// Package issuer is cohort's certificate issuer: the trusted service, running
// in an enclave, that turns attested evidence into certificates, and keeps
// one root through every change of its policy, its builds and its machines.
//
// It serves its endpoints as a service of package service, which nats
// micro's tools discover (see package messages for the subjects and types),
// on a connection that may publish only replies; its state and its events
// go over another (package access):
//
//   - evidence: the issuer's own evidence, whose report data binds its root
//     certificate, the hash and version of the policy in force and the
//     caller's nonce. Users and units check it against the issuer
//     measurement they pin before they trust the root. Every account may
//     ask, and each answer costs an attestation: the endpoint has a pool
//     of its own and each requester a rate (evidence.go).
//   - certify: a unit's request for its task's certificate pair. The issuer
//     checks the request's shape, its time and nonce (no replays), the
//     evidence, that the evidence binds the whole request (the unit's
//     ephemeral public key and nonce included), and the policy; then answers
//     with the chain and the task's private key HPKE-sealed to the request's
//     ephemeral key, the report signed by the root key. A request may name
//     the unit's cluster (its key is added to the sealed secrets) and groups
//     of its task (each group's certificate and key are added). A refusal
//     of a request whose body decoded is signed by the root key too.
//   - state-key: another issuer's request for the state key (below).
//   - policy-apply and policy-show: signed policy updates, and the policy in
//     force with its history.
//   - recover-hello and recover-share, only while an issuer waits for
//     recovery: the holders of recovery keys hand it their shares.
//
// The state. Everything the issuer keeps (the root key, the task, group and
// cluster keys, the policy in force and its history) is encrypted under one
// random state key in a JetStream key-value bucket. Each record is written
// over the revision it replaces, as JetStream's expected last subject
// sequence, and its ciphertext binds that revision, its name and the bucket.
// An issuer keeps the state key sealed to its platform only as a local cache
// (KeyCache): a real enclave's seal key depends on the build and the CPU.
// An issuer whose cache does not open asks a running issuer for the key with
// evidence that binds a fresh ephemeral key; the running issuer hands it
// over only to a build the policy in force lists (Policy.Issuers), and the
// newcomer checks the running issuer's evidence and build in turn. The key
// is also split among the policy's recovery keys (package shamir), which
// can restore it into a fresh issuer waiting with Config.AwaitRecovery.
//
// Guarantees:
//   - A root is made only on an empty bucket, or with Config.Init, and only
//     from a genesis policy checked before anything is written (ErrGenesis):
//     one that lists issuer builds lists this one, and one without
//     administrators or recovery holders is taken only with
//     Config.Ungoverned. An issuer that can obtain the state key in none of
//     the ways above refuses to start with ErrNoStateKey, says what to do,
//     and writes nothing.
//   - Recovery restores the state key only into a build the policy in force
//     lists: any other stops with ErrRemoved (Config.RecoverUnlisted, for
//     development, lets it serve until an update lists it).
//   - Every replica of a task receives the same key and certificate, made
//     once and kept; every replica of the issuer, whatever its machine or
//     build, serves the same root and the same task certificates. Concurrent
//     issuers agree through compare-and-set.
//   - Every unit of every task of a group receives the group's one key and
//     certificate, made when a policy that declares the group comes into
//     force, never on request.
//   - The policy changes only by an update that k distinct administrators
//     of the policy in force signed, with a higher version, that validates
//     (Policy.VerifyUpdate). An update is one write: each replica adopts it
//     whole, every request reads one policy, and an issuer killed while it
//     applies one leaves each replica with either the old policy or the
//     new. Certificates whose content changed are reissued, with the same
//     keys. A replica that an update removes from Policy.Issuers stops.
//   - A refusal is a typed messages.Error naming the reason; it changes no
//     state and hands out nothing, and, for policy updates, state-key
//     requests and recovery shares, is an event.
//   - Every event of the trust lifecycle (genesis, each update applied, each
//     state-key grant, each recovery share taken, a recovery, a stop because
//     the policy dropped this build) is kept until the audit stream stores
//     it, once, even when no manager has made the stream yet
//     (events.Publisher.PublishDurable): it is lost only if the issuer
//     process ends first.
//   - Secrets leave the issuer only sealed: under the state key (records),
//     to this platform (the key cache), to an attested issuer's ephemeral
//     key (the state key), to recovery holders' keys (shares), or to the
//     requesting unit's attested ephemeral key (reports). They are never
//     logged.
//   - The certify path takes no global lock: requests run on a bounded worker
//     pool and read the policy in force through one atomic pointer; a full
//     queue answers "overloaded" at once.
package issuer
