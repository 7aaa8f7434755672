#!/usr/bin/env bash
# Starts a real local cluster on loopback, from Debian packages (installed on demand):
# PostgreSQL, etcd, three `taskqueue serve` replicas, haproxy as the gRPC load balancer (HTTP/2 to
# the replicas, per-request balancing, health-checked) and as the web front (TLS with a generated
# certificate, HTTP/2 and HTTP/1.1 by ALPN, to the replicas' web listeners) and Prometheus scraping
# every replica with deploy/monitoring/alerts.yml loaded. Stop it with deploy/local/down.sh.
#
#   deploy/local/up.sh                   # then: source "$LOCAL_CLUSTER_DIR/env" (printed at the end)
#
# Settings (environment):
#   LOCAL_CLUSTER_DIR        state, logs and pid files [/tmp/taskqueue-local]
#   LOCAL_CLUSTER_BASE_PORT  ports are base+N [15000]: load balancer +50, replicas +51..+53,
#                              web front (https) +60, replicas' web listeners +61..+63,
#                              their metrics +91..+93, Prometheus +90, PostgreSQL +432,
#                              etcd +379 (peer +380), haproxy stats +404
#   LOCAL_CLUSTER_BIN              the taskqueue binary [target/release/taskqueue, built if missing]
#   LOCAL_CLUSTER_UI_DIR           a built scitq UI to serve (README "Web UI") [none]
#   TASKQUEUE_WORKER_TOKEN, TASKQUEUE_ADMIN_PASSWORD   [generated once, kept in the state folder]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dir=${LOCAL_CLUSTER_DIR:-/tmp/taskqueue-local}
base=${LOCAL_CLUSTER_BASE_PORT:-15000}
lb_port=$((base + 50))
web_port=$((base + 60))
prom_port=$((base + 90))
pg_port=$((base + 432))
etcd_port=$((base + 379))
etcd_peer=$((base + 380))
stats_port=$((base + 404))
replicas=(1 2 3)

log() { echo "local: $*" >&2; }
trap 'log "failed: what started is still running; stop it with deploy/local/down.sh"' ERR

# --- packages -------------------------------------------------------------------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
missing=()
[ -n "$pg_bin" ] || missing+=(postgresql)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { log "please install as root: apt-get install -y ${missing[*]}"; exit 1; }
    as_root=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if command -v systemctl >/dev/null 2>&1; then
    # We run our own instances on our own ports; the packages' services are not wanted.
    for s in prometheus haproxy etcd postgresql; do
      "${as_root[@]}" systemctl disable --now "$s" >/dev/null 2>&1 || true
    done
  fi
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)

# --- binary ---------------------------------------------------------------------------------------
bin=${LOCAL_CLUSTER_BIN:-$repo/target/release/taskqueue}
if [ ! -x "$bin" ]; then
  log "building $bin"
  (cd "$repo" && cargo build --release --quiet --bin taskqueue)
fi

if [ -f "$dir/pids/replica-1.pid" ] && kill -0 "$(cat "$dir/pids/replica-1.pid")" 2>/dev/null; then
  log "already running (state in $dir); stop it with deploy/local/down.sh"
  exit 1
fi
mkdir -p "$dir"/{logs,pids}
chmod 755 "$dir"

# Secrets shared by the replicas: generated once, kept for the next start.
secret() {
  local file=$dir/$1
  [ -s "$file" ] || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$file")
  cat "$file"
}
worker_token=${TASKQUEUE_WORKER_TOKEN:-$(secret worker-token)}
admin_password=${TASKQUEUE_ADMIN_PASSWORD:-$(secret admin-password)}

# Waits until "$@" succeeds, for at most $timeout seconds.
wait_for() {
  local what=$1 timeout=$2
  shift 2
  for _ in $(seq $((timeout * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out waiting for $what (logs in $dir/logs); stop the rest with deploy/local/down.sh"
  exit 1
}

# Starts a background process detached from this shell, its pid in pids/<name>.pid.
start() {
  local name=$1
  shift
  setsid "$@" >>"$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/pids/$name.pid"
}

# --- PostgreSQL -----------------------------------------------------------------------------------
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  # PostgreSQL refuses to run as root.
  as_pg=(runuser -u postgres --)
fi
pg_data=$dir/postgres
if [ ! -f "$pg_data/PG_VERSION" ]; then
  log "initdb $pg_data"
  mkdir -p "$pg_data"
  [ ${#as_pg[@]} -eq 0 ] || chown postgres: "$pg_data" "$dir/logs"
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust -E UTF8 >/dev/null
fi
[ ${#as_pg[@]} -eq 0 ] || { touch "$dir/logs/postgres.log"; chown postgres: "$dir/logs/postgres.log"; }
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$dir/logs/postgres.log" -w -t 60 start \
  -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_data -c max_connections=200" >/dev/null
database_url="postgres://postgres@127.0.0.1:$pg_port/taskqueue"
"$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'taskqueue'" \
  | grep -q 1 || "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres taskqueue
log "postgresql on 127.0.0.1:$pg_port"

# --- etcd -----------------------------------------------------------------------------------------
start etcd etcd --name local --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "local=http://127.0.0.1:$etcd_peer"
wait_for etcd 30 env ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$etcd_port" endpoint health
log "etcd on 127.0.0.1:$etcd_port"

# --- replicas -------------------------------------------------------------------------------------
export TASKQUEUE_DATABASE_URL=$database_url
"$bin" migrate >>"$dir/logs/migrate.log" 2>&1
for i in "${replicas[@]}"; do
  mkdir -p "$dir/replica-$i"
  start "replica-$i" env \
    TASKQUEUE_LISTEN="127.0.0.1:$((base + 50 + i))" \
    TASKQUEUE_METRICS_LISTEN="127.0.0.1:$((base + 90 + i))" \
    TASKQUEUE_HTTPS_PORT="$((base + 60 + i))" \
    TASKQUEUE_SERVER_FQDN=localhost \
    ${LOCAL_CLUSTER_UI_DIR:+TASKQUEUE_UI_DIR="$LOCAL_CLUSTER_UI_DIR"} \
    TASKQUEUE_DATABASE_URL="$database_url" \
    TASKQUEUE_ETCD_ENDPOINTS="http://127.0.0.1:$etcd_port" \
    TASKQUEUE_WORKER_TOKEN="$worker_token" \
    TASKQUEUE_ADMIN_PASSWORD="$admin_password" \
    TASKQUEUE_DATA_DIR="$dir/replica-$i" \
    TASKQUEUE_REPLICA_NAME="replica-$i" \
    TASKQUEUE_DB_POOL_SIZE="${TASKQUEUE_DB_POOL_SIZE:-30}" \
    "$bin" serve
done
for i in "${replicas[@]}"; do
  wait_for "replica-$i" 60 curl -sf "http://127.0.0.1:$((base + 90 + i))/metrics"
done
log "replicas on 127.0.0.1:$((base + 51))..$((base + 53)), metrics on :$((base + 91))..$((base + 93))"

# --- load balancer --------------------------------------------------------------------------------
servers=""
web_servers=""
targets=""
for i in "${replicas[@]}"; do
  servers+="  server replica-$i 127.0.0.1:$((base + 50 + i)) proto h2 check inter 1s fall 2 rise 1"$'\n'
  web_servers+="  server web-$i 127.0.0.1:$((base + 60 + i)) proto h2 check inter 1s fall 2 rise 1"$'\n'
  targets+="${targets:+, }\"127.0.0.1:$((base + 90 + i))\""
done
# The web front's certificate (browsers need TLS for HTTP/2): generated once, for localhost.
if [ ! -s "$dir/web.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/web-key.pem" -out "$dir/web-cert.pem" >/dev/null 2>&1
  cat "$dir/web-cert.pem" "$dir/web-key.pem" > "$dir/web.pem"
  chmod 600 "$dir/web.pem" "$dir/web-key.pem"
fi
cat > "$dir/haproxy.cfg" <<CFG
# Generated by deploy/local/up.sh. gRPC in (h2c) and out (h2c); every RPC (HTTP/2 stream) is
# balanced on its own. A replica is checked every second and taken out after 2 failed checks: a
# draining replica stops accepting connections, a dead one refuses them. An RPC is retried on
# another replica only when its connection failed, never after it may have reached a replica.
global
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  retries 2
  option redispatch
  retry-on conn-failure
frontend grpc
  bind 127.0.0.1:$lb_port proto h2
  default_backend replicas
backend replicas
  balance roundrobin
$servers
# The web surface (UI files, gRPC-Web, REST, /ws): TLS here, HTTP/2 (h2c) to the replicas. HTTP/2
# to the browser matters: the UI opens two log streams per running task it shows.
frontend web
  bind 127.0.0.1:$web_port ssl crt $dir/web.pem alpn h2,http/1.1
  default_backend web
backend web
  balance roundrobin
$web_servers
frontend stats
  bind 127.0.0.1:$stats_port
  stats enable
  stats uri /
  stats refresh 2s
CFG
"$haproxy_bin" -c -q -f "$dir/haproxy.cfg"
start haproxy "$haproxy_bin" -db -f "$dir/haproxy.cfg"
wait_for haproxy 20 curl -sf "http://127.0.0.1:$stats_port/"
log "load balancer (haproxy) on 127.0.0.1:$lb_port, web on https://localhost:$web_port/ (certificate $dir/web-cert.pem), stats on http://127.0.0.1:$stats_port/"

# --- Prometheus -----------------------------------------------------------------------------------
cat > "$dir/prometheus.yml" <<CFG
# Generated by deploy/local/up.sh.
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files:
  - $repo/deploy/monitoring/alerts.yml
scrape_configs:
  - job_name: taskqueue
    static_configs:
      - targets: [$targets]
CFG
promtool check config "$dir/prometheus.yml" >/dev/null
start prometheus prometheus --config.file "$dir/prometheus.yml" --storage.tsdb.path "$dir/prometheus" \
  --web.listen-address "127.0.0.1:$prom_port"
wait_for prometheus 30 curl -sf "http://127.0.0.1:$prom_port/-/ready"
log "prometheus on http://127.0.0.1:$prom_port/"

cat > "$dir/env" <<ENV
# source this file to talk to the local cluster through its load balancer
export TASKQUEUE_SERVER=http://127.0.0.1:$lb_port
export TASKQUEUE_TOKEN=$worker_token
export LOCAL_CLUSTER_ADMIN_PASSWORD=$admin_password
export LOCAL_CLUSTER_REPLICAS=127.0.0.1:$((base + 51)),127.0.0.1:$((base + 52)),127.0.0.1:$((base + 53))
export LOCAL_CLUSTER_METRICS=127.0.0.1:$((base + 91)),127.0.0.1:$((base + 92)),127.0.0.1:$((base + 93))
export LOCAL_CLUSTER_PROMETHEUS=http://127.0.0.1:$prom_port
export LOCAL_CLUSTER_WEB=https://localhost:$web_port
export LOCAL_CLUSTER_WEB_CERT=$dir/web-cert.pem
export LOCAL_CLUSTER_DATABASE_URL=$database_url
ENV
log "up. source $dir/env (TASKQUEUE_SERVER, TASKQUEUE_TOKEN); admin password in $dir/admin-password"
