#!/usr/bin/env bash
# The README's whole lifecycle, as separate processes, from a fresh clone, as
# written: a governed genesis, an update (one signature refused, two
# accepted), a new release of the issuer that takes the state key and
# replaces the old, the loss of every issuer machine and the recovery by two
# holders, and a rotation of the root that a user's root.pem follows. The
# script provides what the README assumes: nats-server on the path (built
# from the module cohort pins) and ./cohort2, the next release (the same
# source with one line changed, so another measurement). Then the README's
# separate-process genesis block, against a nats-server this script starts.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 .ci/ports.py free 4222 ||
	{ echo "lifecycle: the README's commands use port 4222"; exit 1; }
git clone -q . "$work/cohort"
mkdir -p "$work/bin" "$work/release2"
go build -o "$work/bin/nats-server" github.com/nats-io/nats-server/v2
(cd "$work/cohort" && go build -o cohort ./cmd/cohort)
git ls-files -z | xargs -0 cp --parents -t "$work/release2"
sed -i 's/^var usage = `cohort: /var usage = `cohort (release 2): /' "$work/release2/cmd/cohort/main.go"
grep -q '^var usage = `cohort (release 2): ' "$work/release2/cmd/cohort/main.go" || { echo "lifecycle: the line to change is gone"; exit 1; }
(cd "$work/release2" && go build -o "$work/cohort/cohort2" ./cmd/cohort)
PATH="$work/bin:$PATH" XDG_CONFIG_HOME="$work/config" python3 .ci/readme.py lifecycle "$work/cohort"
echo "ok: lifecycle: genesis, update, new release, recovery and rotation, as the README writes them"

# The separate-process genesis, a block that assumes a NATS server on 4222.
python3 .ci/ports.py free 4222 9443 || { echo "lifecycle: the separate-process block uses ports 4222 and 9443"; exit 1; }
git clone -q . "$work/separate"
(cd "$work/separate" && go build -o cohort ./cmd/cohort)
"$work/bin/nats-server" -js -sd "$work/separate-nats" >"$work/separate-nats.log" 2>&1 &
nats_pid=$!
trap 'kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q "Server is ready" "$work/separate-nats.log" && break; sleep 0.1; done
XDG_CONFIG_HOME="$work/config" python3 .ci/readme.py separate "$work/separate"
echo "ok: the separate-process genesis, as the README writes it"
