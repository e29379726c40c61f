#!/usr/bin/env bash
# Builds what docker-compose.yml runs, with nothing pulled:
#   deploy/out/bin/   static binaries: cohort, the measured build (-tags enclave:
#                     the roles without the tools), and nats-server
#   deploy/out/cohort the tools build of cohort, for the host: deploy, user add,
#                     faults (it runs in no container)
#   deploy/out/etc/   the deployment's configuration ('cohort deploy'): NATS
#                     server configurations, TLS CA and certificates, the
#                     credentials of each role, the issuer's policy
#   deploy/out/cohort.env  what every cohort container is told
#   image cohort:local     FROM scratch, the two binaries
# The configuration is kept across builds while the binary's measurement is
# unchanged; a new build of cohort measures differently (simulated
# attestation hashes the binary), so its policy, and the deployment's state,
# start afresh: run 'docker-compose down -v' before 'up'.
set -euo pipefail
cd "$(dirname "$0")/.."
out=deploy/out
mkdir -p "$out/bin"

export CGO_ENABLED=0
go build -trimpath -ldflags='-s -w' -tags enclave -o "$out/bin/cohort" ./cmd/cohort
go build -trimpath -ldflags='-s -w' -o "$out/cohort" ./cmd/cohort
go build -trimpath -ldflags='-s -w' -o "$out/bin/nats-server" github.com/nats-io/nats-server/v2

measurement=$("$out/bin/cohort" measure issuer)
if [ ! -f "$out/etc/measurement" ] || [ "$(cat "$out/etc/measurement")" != "$measurement" ]; then
	if [ -d "$out/etc" ]; then
		echo "build: cohort's measurement changed: new policy and credentials; run 'docker-compose down -v' to drop the old state" >&2
	fi
	rm -rf "$out/etc"
	"$out/cohort" deploy --out "$out/etc" --servers nats-1,nats-2,nats-3 --exe "$out/bin/cohort"
	echo "$measurement" >"$out/etc/measurement"
fi
cat >"$out/cohort.env" <<ENV
COHORT_NATS=tls://nats-1:4222,tls://nats-2:4222,tls://nats-3:4222
COHORT_TLS_CA=/etc/cohort/tls/ca.pem
COHORT_ISSUER_MEASUREMENT=$measurement
ENV
docker build -q -t cohort:local -f deploy/Dockerfile "$out/bin" >/dev/null
echo "build: image cohort:local ($(du -ch "$out/bin/cohort" "$out/bin/nats-server" | tail -1 | cut -f1) of binaries); issuer measurement $measurement"
