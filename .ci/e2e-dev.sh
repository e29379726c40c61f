#!/usr/bin/env bash
# End-to-end check of `cohort dev` with the tools a user has: three units
# present the byte-identical leaf, `openssl verify` accepts it against the
# root that `cohort trust` wrote, curl succeeds on each unit, and `cohort
# trust` refuses an issuer that does not match the pinned measurement.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
dev_pid=
extra_pids=()
cleanup() {
	for p in "${extra_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
		kill -INT "$dev_pid" 2>/dev/null || true
		wait "$dev_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 .ci/ports.py any; }
# Three consecutive free ports for the units' HTTPS.
https_ports() {
	for _ in $(seq 50); do
		local base=$((20000 + RANDOM % 30000)) ok=1
		python3 .ci/ports.py free $base $((base + 1)) $((base + 2)) 2>/dev/null || ok=0
		[ "$ok" = 1 ] && { echo "$base"; return; }
	done
	echo "no three free ports" >&2
	return 1
}

# natscli, for the commands dev prints (v0.5.0: the version the module proxy serves that builds).
export GOBIN="$work/bin" PATH="$work/bin:$PATH"
go install github.com/nats-io/natscli/nats@v0.5.0

# The README's walkthrough, from a fresh clone, exactly as written and in
# order (on the default ports it names), with dev's natscli context in a
# folder of its own.
python3 .ci/ports.py free 4222 8443 8444 8445 ||
	{ echo "FAIL: the README's walkthrough uses ports 4222 and 8443-8445"; exit 1; }
git clone -q . "$work/clone"
XDG_CONFIG_HOME="$work/config" python3 .ci/readme.py walkthrough "$work/clone" | tee "$work/walkthrough.out"
grep -q 'heard: hello' "$work/walkthrough.out" || { echo "FAIL: the walkthrough's call was not answered"; exit 1; }
grep -q 'cohort-manager' "$work/walkthrough.out" || { echo "FAIL: nats micro ls did not list cohort-manager"; exit 1; }
grep -q 'Subject: cohort.v1.events.unit.joined' "$work/walkthrough.out" || { echo "FAIL: nats stream view showed no join"; exit 1; }
rm -rf "$work/clone"

go build -o "$work/cohort" ./cmd/cohort
cohort="$work/cohort"
nats_port=$(free_port)
https_base=$(https_ports)
nats_url="nats://127.0.0.1:$nats_port"

"$cohort" dev --data "$work/data" --units 3 --nats-port "$nats_port" --https-base "$https_base" >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!
for _ in $(seq 600); do
	grep -q 'Ctrl-C stops' "$work/dev.out" 2>/dev/null && break
	kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.out" "$work/dev.err"; echo "FAIL: cohort dev exited"; exit 1; }
	sleep 0.1
done
grep -q 'Ctrl-C stops' "$work/dev.out" || { cat "$work/dev.out" "$work/dev.err"; echo "FAIL: cohort dev not ready in 60 s"; exit 1; }
cat "$work/dev.out"

creds="$work/data/creds"
user=(--creds "$creds/user-alice.creds")
operator=(--creds "$creds/operator.creds")

# The NATS server admits only cohort's credentials, each to its role's subjects.
if "$cohort" status --nats "$nats_url" 2>"$work/nocreds.err"; then echo "FAIL: a client without credentials was served"; exit 1; fi
grep -q 'Authorization Violation' "$work/nocreds.err" || { cat "$work/nocreds.err"; exit 1; }
if "$cohort" status --nats "$nats_url" "${user[@]}" >"$work/userstatus.out" 2>"$work/userstatus.err"; then echo "FAIL: status with a user's credential exited 0"; exit 1; fi
grep -q "may not publish: it is the operator's" "$work/userstatus.err" ||
	{ cat "$work/userstatus.out" "$work/userstatus.err"; echo "FAIL: a user read the manager's status"; exit 1; }
# The user's credential on the raw subject: the server refuses it.
nats --server "$nats_url" --nkey "$creds/user-alice.creds" --inbox-prefix _INBOX.user.alice req cohort.v1.manager.status '' --timeout 1s >"$work/userreq.out" 2>&1 || true
grep -q 'Permissions Violation for Publish to "cohort.v1.manager.status"' "$work/userreq.out" && ! grep -q '"clusters"' "$work/userreq.out" ||
	{ cat "$work/userreq.out"; echo "FAIL: the server did not refuse the user the status subject"; exit 1; }
echo "ok: refused without credentials ($(cat "$work/nocreds.err")); a user may not ask for status ($(cat "$work/userstatus.err"))"

measurement=$("$cohort" measure issuer)
"$cohort" trust --nats "$nats_url" "${user[@]}" --issuer-measurement "$measurement" --out "$work/root.pem"

for i in 0 1 2; do
	port=$((https_base + i))
	openssl s_client -connect "127.0.0.1:$port" -servername localhost </dev/null 2>/dev/null |
		openssl x509 -outform DER >"$work/leaf$i.der"
	openssl x509 -inform DER -in "$work/leaf$i.der" -out "$work/leaf$i.pem"
	cmp "$work/leaf0.der" "$work/leaf$i.der" || { echo "FAIL: unit $i presents another certificate"; exit 1; }
	openssl verify -CAfile "$work/root.pem" "$work/leaf$i.pem"
	curl --fail --silent --show-error --cacert "$work/root.pem" "https://localhost:$port/"
done
echo "ok: three units present the byte-identical leaf (sha256 $(sha256sum <"$work/leaf0.der" | cut -c1-64)); openssl verify and curl accept it"

# The cluster channel: one handshake with any unit of cluster dev, a call answered.
answer=$("$cohort" call --nats "$nats_url" "${user[@]}" --cluster dev --trust "$work/root.pem" hello 2>"$work/call.err")
case "$answer" in
*"of task demo heard: hello") echo "ok: cohort call answered: $answer ($(cat "$work/call.err"))" ;;
*) cat "$work/call.err"; echo "FAIL: cohort call answered '$answer'"; exit 1 ;;
esac

# A TLS session begun on one unit resumes on another: the units of cluster
# dev derive their session-ticket keys from the cluster key. A request is sent
# so that s_client stays until the TLS 1.3 ticket has arrived.
printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' |
	openssl s_client -connect "127.0.0.1:$https_base" -servername localhost -CAfile "$work/root.pem" \
		-sess_out "$work/tls.sess" >"$work/sess1.txt" 2>&1
printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' |
	openssl s_client -connect "127.0.0.1:$((https_base + 1))" -servername localhost -CAfile "$work/root.pem" \
		-sess_in "$work/tls.sess" >"$work/sess2.txt" 2>&1
grep -q '^Reused, TLSv1.3' "$work/sess2.txt" || { grep -E 'New|Reused' "$work/sess1.txt" "$work/sess2.txt"; echo "FAIL: the session did not resume on another unit"; exit 1; }
echo "ok: openssl -sess_out on unit 1, -sess_in on unit 2: $(grep -m1 '^Reused' "$work/sess2.txt")"

# The client and server usages are both present on the task certificate.
openssl x509 -in "$work/leaf0.pem" -noout -ext extendedKeyUsage,subjectAltName

# Lint the root and the leaf with zlint's RFC and community lints. cohort's PKI
# is private: the CA/Browser Forum lints for publicly trusted web certificates
# refuse what it needs on purpose (localhost, 127.0.0.1, a URI SAN).
openssl x509 -in "$work/root.pem" -out "$work/root.lint.pem"
for cert in root.lint.pem leaf0.pem; do
	go run github.com/zmap/zlint/v3/cmd/zlint@v3.7.3 -includeSources RFC3279,RFC5280,RFC5480,RFC5891,RFC8813,Community \
		"$work/$cert" >"$work/$cert.zlint.json"
	python3 - "$work/$cert.zlint.json" "$cert" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
bad = {k: v for k, v in results.items() if v.get("result") in ("warn", "error", "fatal")}
passed = sum(1 for v in results.values() if v.get("result") == "pass")
if bad:
    print("FAIL: zlint on", sys.argv[2], bad)
    sys.exit(1)
print(f"ok: zlint {sys.argv[2]}: {passed} lints pass, no warning or error")
PY
done

# An issuer that does not match the pinned measurement is refused.
wrong=$("$cohort" measure unit --task demo)
if "$cohort" trust --nats "$nats_url" "${user[@]}" --issuer-measurement "$wrong" --out "$work/wrong.pem" 2>"$work/wrong.err"; then
	echo "FAIL: cohort trust accepted an issuer with another measurement"
	exit 1
fi
grep -q 'does not match the pinned measurement' "$work/wrong.err" || { cat "$work/wrong.err"; exit 1; }
[ ! -e "$work/wrong.pem" ] || { echo "FAIL: a refused trust wrote a root"; exit 1; }
echo "ok: cohort trust refuses a wrong pin: $(cat "$work/wrong.err")"

# The operators' view: status lists the three units with their HTTPS addresses.
"$cohort" status --nats "$nats_url" "${operator[@]}" --json >"$work/status.json"
python3 - "$work/status.json" "$https_base" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
base = int(sys.argv[2])
units = [u for c in s["manager"]["clusters"] if c["id"] == "dev" for u in c["units"]]
addrs = sorted(u["https"] for u in units)
want = sorted(f"127.0.0.1:{base + i}" for i in range(3))
assert addrs == want, f"status lists {addrs}, want {want}"
assert all(u["state"] == "active" and u["task"] == "demo" for u in units), units
assert s["issuer"]["backend"] == "sim", s["issuer"]
print(f"ok: cohort status --json lists the three units of cluster dev at {', '.join(addrs)}")
PY
COHORT_CREDS="$creds/operator.creds" "$cohort" status --nats "$nats_url"
[ "$("$cohort" events --nats "$nats_url" "${operator[@]}" | grep -c 'unit.joined')" -ge 3 ] || { echo "FAIL: cohort events shows fewer than three joins"; exit 1; }
echo "ok: cohort events shows the joins"

# The standard nats CLI, as the operator, sees the services and the streams.
nats=(go run github.com/nats-io/natscli/nats@v0.5.0 -s "$nats_url" --nkey "$creds/operator.creds" --inbox-prefix _INBOX.operator)
"${nats[@]}" micro ls >"$work/micro.txt"
"${nats[@]}" micro info cohort-issuer >"$work/issuer-info.txt"
# The operator may ask each stream's information (it may not list the
# accounts' streams, which 'nats stream info' does first): one request each.
# The operator's account reaches each account's stream information under
# that account's API prefix, $JS.<account>.API.
for s in manager/cohort_events manager/KV_cohort_members issuer/KV_cohort_issuer_state cluster-dev/cohort_sessions_dev cluster-dev/cohort_calls_dev_0; do
	"${nats[@]}" req --raw "\$JS.${s%%/*}.API.STREAM.INFO.${s#*/}" '' >"$work/stream.json" 2>&1 &&
		python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["config"]["name"]==sys.argv[2] else 1)' "$work/stream.json" "${s#*/}" ||
		{ cat "$work/stream.json"; echo "FAIL: natscli cannot show stream $s"; exit 1; }
done
grep -q cohort-manager "$work/micro.txt" || { cat "$work/micro.txt"; echo "FAIL: nats micro ls does not list cohort-manager"; exit 1; }
grep -q cohort-issuer "$work/issuer-info.txt" || { cat "$work/issuer-info.txt"; echo "FAIL: nats micro info cohort-issuer"; exit 1; }
echo "ok: nats micro ls lists cohort-manager, micro info shows cohort-issuer, nats req shows the five streams' information"

# A refused certify, as natscli's micro stats counts it: a copy of the binary
# one byte longer measures differently, so the issuer refuses its unit.
cp "$cohort" "$work/rogue" && printf x >>"$work/rogue"
"$work/rogue" unit --nats "$nats_url" --creds "$creds/unit-dev-demo-1.creds" --task demo --https 127.0.0.1:0 \
	--issuer-measurement "$measurement" >"$work/rogue.out" 2>&1 && { cat "$work/rogue.out"; echo "FAIL: a rogue unit was certified"; exit 1; }
grep -q measurement_not_accepted "$work/rogue.out" || { cat "$work/rogue.out"; echo "FAIL: the rogue unit's refusal"; exit 1; }
"${nats[@]}" micro stats cohort-issuer --json >"$work/stats.json"
python3 - "$work/stats.json" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
st = st if isinstance(st, list) else [st]
eps = [e for s in st for e in s["endpoints"] if e["name"] == "certify"]
errors = sum(e["num_errors"] for e in eps)
reqs = sum(e["num_requests"] for e in eps)
nanos = sum(e["processing_time"] for e in eps)
assert errors >= 1, f"micro stats counts {errors} certify errors"
avg = nanos / reqs / 1e3
assert avg >= 50, f"certify's average processing time is {avg:.1f} µs: not where the work is done"
print(f"ok: nats micro stats cohort-issuer: certify {reqs} requests, {errors} errors, average {avg:.0f} µs, last error {[e['last_error'] for e in eps if e['last_error']][:1]}")
PY

# natscli's stream view, as the operator: it pages the audit stream (on a
# terminal) through a consumer the manager vets, and deletes it after; a
# consumer that pushes, as an attacker would make it, is refused.
opnats=(nats -s "$nats_url" --nkey "$creds/operator.creds" --inbox-prefix _INBOX.operator --js-api-prefix '$JS.manager.API')
python3 .ci/terminal.py "$(printf '%q ' "${opnats[@]}") stream view cohort_events" >"$work/view.out" 2>&1 ||
	{ cat "$work/view.out"; echo "FAIL: nats stream view cohort_events"; exit 1; }
grep -q 'Subject: cohort.v1.events.unit.joined' "$work/view.out" || { cat "$work/view.out"; echo "FAIL: stream view shows no join"; exit 1; }
"${opnats[@]}" stream info cohort_events --json >"$work/events-info.json"
python3 -c 'import json,sys; n=json.load(open(sys.argv[1]))["state"].get("consumer_count", 0); sys.exit(0 if n == 0 else f"the stream keeps {n} consumers after stream view")' "$work/events-info.json"
if "${opnats[@]}" consumer add cohort_events evil --target '$KV.cohort_members.x' --defaults >"$work/push.out" 2>&1; then
	cat "$work/push.out"; echo "FAIL: the operator made a consumer that pushes"; exit 1
fi
grep -q 'deliver_subject is set' "$work/push.out" || { cat "$work/push.out"; echo "FAIL: the pushed consumer's refusal"; exit 1; }
echo "ok: nats stream view cohort_events pages the joins ($(grep -c '^\[' "$work/view.out") events on its first page) and leaves no consumer; nats consumer add --target is refused: $(grep -o 'deliver_subject is set' "$work/push.out")"

# Another user, as the README shows it: the running dev admits dave; users
# are apart (bob may not read alice's inbox).
"$cohort" user add dave --data "$work/data" >"$work/dave.txt"
for _ in $(seq 50); do
	"$cohort" call --nats "$nats_url" --creds "$creds/user-dave.creds" --cluster dev --trust "$work/root.pem" hello >"$work/dave.out" 2>"$work/dave.err" && break
	sleep 0.2
done
grep -q 'heard: hello' "$work/dave.out" || { cat "$work/dave.txt" "$work/dave.err"; echo "FAIL: dave was not served"; exit 1; }
bobnats=(go run github.com/nats-io/natscli/nats@v0.5.0 -s "$nats_url" --nkey "$creds/user-bob.creds" --inbox-prefix _INBOX.user.bob)
if "${bobnats[@]}" sub '_INBOX.user.alice.>' --count 1 --timeout 2s >"$work/bobsub.txt" 2>&1; then
	echo "FAIL: bob subscribed to alice's inbox"; cat "$work/bobsub.txt"; exit 1
fi
grep -qi 'permissions violation' "$work/bobsub.txt" || { cat "$work/bobsub.txt"; echo "FAIL: bob's subscription not refused by the server"; exit 1; }
echo "ok: cohort user add dave: dave served at once; bob refused alice's inbox by the server"

# A second manager and a second issuer as processes of their own, on the same
# NATS and state, with their metrics.
mport=$(free_port); iport=$(free_port)
"$cohort" manager --nats "$nats_url" --creds "$creds/manager.creds" --root "$work/root.pem" --metrics "127.0.0.1:$mport" 2>"$work/manager.err" &
extra_pids+=($!)
# The second issuer runs on another (simulated) machine: its own data folder,
# so its seal key opens no key cache; it obtains the state key from dev's
# issuer by mutual attestation.
"$cohort" issuer --nats "$nats_url" --creds "$creds/issuer.creds" --data "$work/machine2" --metrics "127.0.0.1:$iport" 2>"$work/issuer.err" &
extra_pids+=($!)
# Scrapes go to a file before grep reads them: `curl | grep -q` under
# pipefail fails whenever grep stops reading before curl stops writing.
scrape() { curl -sf "http://127.0.0.1:$1/metrics" >"$work/metrics-$1.txt" 2>/dev/null && grep -q "$2" "$work/metrics-$1.txt"; }
for _ in $(seq 300); do scrape "$mport" 'cohort_manager_members{state="active"} 3' && break; sleep 0.1; done
scrape "$mport" 'cohort_manager_members{state="active"} 3' ||
	{ cat "$work/manager.err"; echo "FAIL: the second manager does not count three active members"; exit 1; }
for _ in $(seq 300); do scrape "$iport" '^cohort_issuer_certify_seconds_count' && break; sleep 0.1; done
scrape "$iport" '^cohort_issuer_certify_seconds_count' ||
	{ cat "$work/issuer.err"; echo "FAIL: the second issuer serves no metrics"; exit 1; }
for port in "$mport" "$iport"; do
	curl -sf "http://127.0.0.1:$port/healthz" >"$work/healthz.txt" || { cat "$work/healthz.txt"; echo "FAIL: /healthz on :$port"; exit 1; }
done
echo "ok: a second manager process sees the three members (metrics on :$mport); a second issuer process, on another machine, obtained the state key (metrics on :$iport)"
"$cohort" trust --nats "$nats_url" "${user[@]}" --issuer-measurement "$measurement" --out "$work/root2.pem" 2>/dev/null >/dev/null
cmp "$work/root.pem" "$work/root2.pem" || { echo "FAIL: the two issuers serve different roots"; exit 1; }
for p in "${extra_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
extra_pids=()

kill -INT "$dev_pid"
wait "$dev_pid"
dev_pid=
echo "ok: cohort dev stopped cleanly on Ctrl-C"

# The development loop: change one line of cohort, rebuild, start dev on the
# same data folder. The rebuild is another issuer build and another unit
# measurement; dev restores the state key with its development recovery key
# and signs the update that accepts the new build: the same root, and the
# root.pem from before verifies the new units.
src="$work/src"
mkdir -p "$src"
git ls-files -z | xargs -0 cp --parents -t "$src"
sed -i 's/^var usage = `cohort: /var usage = `cohort (rebuilt): /' "$src/cmd/cohort/main.go"
grep -q '^var usage = `cohort (rebuilt): ' "$src/cmd/cohort/main.go" || { echo "FAIL: the line to change is gone"; exit 1; }
(cd "$src" && go build -o "$work/cohort2" ./cmd/cohort)
measurement2=$("$work/cohort2" measure issuer)
[ "$measurement2" != "$measurement" ] || { echo "FAIL: the rebuild measures the same"; exit 1; }
"$work/cohort2" dev --data "$work/data" --units 3 --nats-port "$nats_port" --https-base "$https_base" >"$work/dev2.out" 2>"$work/dev2.err" &
dev_pid=$!
for _ in $(seq 600); do
	grep -q 'Ctrl-C stops' "$work/dev2.out" 2>/dev/null && break
	kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev2.out" "$work/dev2.err"; echo "FAIL: the rebuilt cohort dev exited"; exit 1; }
	sleep 0.1
done
grep -q 'Ctrl-C stops' "$work/dev2.out" || { cat "$work/dev2.out" "$work/dev2.err"; echo "FAIL: the rebuilt cohort dev not ready in 60 s"; exit 1; }
grep -q 'restored the state key' "$work/dev2.out" && grep -q 'policy version 2 accepts this build' "$work/dev2.out" ||
	{ cat "$work/dev2.out"; echo "FAIL: the rebuilt dev did not restore the key and accept its build"; exit 1; }
"$work/cohort2" trust --nats "$nats_url" "${user[@]}" --issuer-measurement "$measurement2" --out "$work/root3.pem" >"$work/trust3.out"
cmp "$work/root.pem" "$work/root3.pem" || { echo "FAIL: the rebuilt dev serves another root"; exit 1; }
grep -q 'policy version 2' "$work/trust3.out" || { cat "$work/trust3.out"; echo "FAIL: cohort trust does not print the policy version"; exit 1; }
for i in 0 1 2; do
	port=$((https_base + i))
	openssl s_client -connect "127.0.0.1:$port" -servername localhost </dev/null 2>/dev/null | openssl x509 -out "$work/new$i.pem"
	openssl verify -CAfile "$work/root.pem" "$work/new$i.pem" >/dev/null
	curl --fail --silent --show-error --cacert "$work/root.pem" "https://localhost:$port/" >/dev/null
done
answer=$("$work/cohort2" call --nats "$nats_url" "${user[@]}" --cluster dev --trust "$work/root.pem" again 2>/dev/null)
case "$answer" in *"heard: again") ;; *) echo "FAIL: a call after the rebuild answered '$answer'"; exit 1 ;; esac
"$work/cohort2" policy show --nats "$nats_url" "${operator[@]}" --issuer-measurement "$measurement2" >"$work/show.txt"
grep -q '^policy version 2' "$work/show.txt" && grep -q 'version 1 .* genesis' "$work/show.txt" && grep -q 'version 2 .* signed by dev' "$work/show.txt" ||
	{ cat "$work/show.txt"; echo "FAIL: cohort policy show"; exit 1; }
echo "ok: one line changed, rebuilt (issuer ${measurement:0:12}… → ${measurement2:0:12}…): the same root; the old root.pem verifies the new units (openssl, curl) and a call; cohort policy show lists versions 1 and 2"
kill -INT "$dev_pid"
wait "$dev_pid"
dev_pid=
echo "e2e: 16 passed, 0 failed"
