#!/usr/bin/env bash
# Stops the local cluster of deploy/local/up.sh: Prometheus, the load balancer, the replicas
# (SIGTERM: graceful shutdown), etcd, PostgreSQL. Data stays in the state folder for the next
# `up.sh`; `down.sh --purge` deletes it.
#   LOCAL_CLUSTER_DIR  state folder [/tmp/taskqueue-local]
set -euo pipefail
dir=${LOCAL_CLUSTER_DIR:-/tmp/taskqueue-local}
purge=false
[ "${1:-}" = "--purge" ] && purge=true
log() { echo "local: $*" >&2; }

# Stops the process of pids/<name>.pid: SIGTERM, then SIGKILL after $2 seconds.
stop() {
  local name=$1 grace=$2 file=$dir/pids/$1.pid pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((grace * 10))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in ${grace}s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name"
  fi
  rm -f "$file"
}

[ -d "$dir" ] || { log "nothing to stop ($dir does not exist)"; exit 0; }
stop prometheus 10
stop haproxy 5
for i in 1 2 3; do stop "replica-$i" 20; done
stop etcd 10
if [ -f "$dir/postgres/postmaster.pid" ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  as_pg=()
  [ "$(id -u)" -ne 0 ] || as_pg=(runuser -u postgres --)
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/postgres" -m fast -w stop >/dev/null && log "stopped postgresql"
fi
if $purge; then
  rm -rf "$dir"
  log "deleted $dir"
fi
