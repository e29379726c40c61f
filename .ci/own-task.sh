#!/usr/bin/env bash
# The README's "Your own task" section, from a fresh clone, as written: the
# example task built as its own binary, hosted by cohort dev, called with
# cohort call and with the example's client, rebuilt with another answer,
# accepted with one command, and called again with the old root.pem.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 .ci/ports.py free 4222 8443 8444 8445 ||
	{ echo "own-task: the README's commands use ports 4222 and 8443-8445"; exit 1; }
git clone -q . "$work/cohort"
XDG_CONFIG_HOME="$work/config" python3 .ci/readme.py own-task "$work/cohort"
cmp "$work/cohort/root.pem" "$work/cohort/dev-data/root.pem" && echo "ok: the root after the update is the root.pem of before"
