#!/usr/bin/env bash
# The README's whole lifecycle, as separate processes, from a fresh clone, as
# written: a governed genesis, an update (one signature refused, two
# accepted), a new release of the issuer that takes the state key and
# replaces the old, the loss of every issuer machine and the recovery by two
# holders, and a rotation of the root that a user's root.pem follows. The
# script provides what the README assumes: nats-server on the path (built
# from the module cohort pins) and ./cohort2, the next release (the same
# source with one line changed, so another measurement).
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
sed -i 's/^const usage = `cohort: /const usage = `cohort (release 2): /' "$work/release2/cmd/cohort/main.go"
grep -q '^const usage = `cohort (release 2): ' "$work/release2/cmd/cohort/main.go" || { echo "lifecycle: the line to change is gone"; exit 1; }
(cd "$work/release2" && go build -o "$work/cohort/cohort2" ./cmd/cohort)
PATH="$work/bin:$PATH" XDG_CONFIG_HOME="$work/config" python3 .ci/readme.py lifecycle "$work/cohort"
echo "ok: lifecycle: genesis, update, new release, recovery and rotation, as the README writes them"
