#!/usr/bin/env bash
# Has the NATS servers of docker-compose.yml take their configuration again,
# after 'cohort user add NAME --out deploy/out/etc' rewrote it.
#
# Each server gets SIGHUP twice: nats-server v2.15.2 subscribes the imports
# of an account a reload added only on the next reload. The signal goes to
# the server's process from the host, not through 'docker kill -s HUP':
# Docker counts any 'docker kill' as a manual stop, after which the restart
# policy no longer restarts the container when it dies.
set -euo pipefail
cd "$(dirname "$0")/.."
compose=(${COMPOSE:-docker-compose})
for round in 1 2; do
	for s in nats-1 nats-2 nats-3; do
		pid=$(docker inspect -f '{{.State.Pid}}' "$("${compose[@]}" ps -q "$s")")
		kill -HUP "$pid"
	done
	[ "$round" = 1 ] && sleep 1 # the first reload done before the second (a reload takes milliseconds)
done
echo "reload: nats-1, nats-2 and nats-3 took their configuration (twice)"
