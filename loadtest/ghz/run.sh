#!/usr/bin/env bash
# Runs one ghz config of this folder against a taskqueue cluster, through its load balancer:
#   TASKQUEUE_TOKEN=... loadtest/ghz/run.sh ping-and-assign [more ghz flags, e.g. --duration 5m]
# The configs use server reflection (no proto files). Settings:
#   TASKQUEUE_SERVER  host:port of the load balancer [127.0.0.1:50051]
#   TASKQUEUE_TOKEN   the worker token (or a session token of `taskqueue login`) [required]
#   REPLICAS          replicas behind the load balancer [3]; ghz opens 2 connections per replica
#                     (CONNECTIONS overrides) so that per-connection balancing still spreads the load.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${1:?usage: run.sh register-workers|ping-and-assign|submit|list [ghz flags]}
shift
config="$here/$name.json"
[ -f "$config" ] || { echo "no config $config" >&2; exit 1; }
command -v ghz >/dev/null 2>&1 || { echo "ghz is not installed: https://ghz.sh/docs/install" >&2; exit 1; }
token=${TASKQUEUE_TOKEN:?set TASKQUEUE_TOKEN to the worker token or a session token}
server=${TASKQUEUE_SERVER:-127.0.0.1:50051}
server=${server#http://}
replicas=${REPLICAS:-3}
connections=${CONNECTIONS:-$((2 * replicas))}
if [ "$connections" -lt $((2 * replicas)) ]; then
  echo "warning: $connections connections for $replicas replicas; use at least $((2 * replicas))" >&2
fi
resolved=$(mktemp)
trap 'rm -f "$resolved"' EXIT
sed -e "s|@TOKEN@|$token|g" \
    -e "s|\"host\": \"[^\"]*\"|\"host\": \"$server\"|" \
    -e "s|\"connections\": [0-9]*|\"connections\": $connections|" \
    "$config" > "$resolved"
ghz --config "$resolved" "$@"
