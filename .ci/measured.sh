#!/usr/bin/env bash
# The measured binary holds only what must be trusted. The issuer and the
# units run cmd/cohort built with -tags enclave (-tags ego for SGX, which
# implies it); a measurement policy pins that build, and the host picks its
# arguments, so it must not link what could forge or fake: test signers and
# every test helper of cohort's (a package under another, named ...test, as
# enclave/snp/snptest), go-sev-guest's and go-tdx-guest's testing packages,
# an embedded NATS server, the benchmarks, dev, deploy, faults, the examples.
#
#   .ci/measured.sh          check both measured builds, then check that the
#                            check fails on a tree that links a test signer
#   .ci/measured.sh --check  the check alone (what the self-test runs)
set -euo pipefail
cd "$(dirname "$0")/.."

deny='^github\.com/nats-io/nats-server/|(^|/)testing(/|$)|/fakekds$|^github\.com/cohort-dev/cohort/.+/[a-z]+test$|/testdata(/|$)|^net/http/httptest$|^github\.com/cohort-dev/cohort/(dev|bench|faults|deploy|examples|embednats|integration)(/|$)'

check() { # check TAGS: the deny list's packages that the build links, if any, fail it
	local deps found
	deps=$(go list -deps -tags "$1" ./cmd/cohort)
	found=$(grep -E "$deny" <<<"$deps" || true)
	if [ -n "$found" ]; then
		echo "FAIL: the measured binary (go build -tags $1 ./cmd/cohort) links what only tests and tools may:"
		sed 's/^/  /' <<<"$found"
		return 1
	fi
	echo "ok: the measured binary (-tags $1) links $(wc -l <<<"$deps") packages, none of the deny list"
}

check enclave
check ego
[ "${1:-}" = "--check" ] && exit 0

go vet -tags enclave ./cmd/cohort
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags enclave ./cmd/cohort
go test -count=1 -tags enclave -run TestMeasuredBuildHasNoTools ./cmd/cohort

# The check must catch a change that links a test signer into the measured
# build: make one, on a copy of this tree, and require the check to fail
# naming it.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/leaky"
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$work/leaky"
cat >"$work/leaky/cmd/cohort/leak.go" <<'GO'
//go:build enclave

package main

import _ "github.com/cohort-dev/cohort/enclave/snp/snptest" // a test signer, where it must never be
GO
if (cd "$work/leaky" && bash .ci/measured.sh --check) >"$work/leaky.out" 2>&1; then
	cat "$work/leaky.out"
	echo "FAIL: the check passed a measured build that links the SEV-SNP test signer"
	exit 1
fi
grep -q 'enclave/snp/snptest' "$work/leaky.out" || { cat "$work/leaky.out"; echo "FAIL: the check failed without naming the test signer"; exit 1; }
echo "ok: the check fails a measured build that links a test signer:"
sed 's/^/  | /' "$work/leaky.out"
