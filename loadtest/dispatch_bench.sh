#!/usr/bin/env bash
# Ping-and-assign against the raw limit of the same PostgreSQL, in one run:
#   1. raw limit: pgbench claiming 1 task per transaction (UPDATE … FOR UPDATE SKIP LOCKED LIMIT 1)
#      at the same concurrency as the simulated fleet, over a standing queue of $TASKS tasks; then
#      pgbench calling our claim alone (tq_claim_batch: shard lock, cursor, worker, queue wait) —
#      what the guarantees cost in Postgres before any gRPC;
#   2. assigning pings: $WORKERS workers (concurrency 1) draining $TASKS tasks through $REPLICAS
#      replicas, each task = one assigning ping + one status update;
#   3. idle pings (a full worker: one read, no write) and idle pings with free capacity and an empty
#      queue (the claim walks the shards and finds nothing);
#   4. a bare tonic unary RPC (grpc.health.v1 Check on a server with nothing else) at equal concurrency;
#   5. the full lifecycle: $LIFE_WORKERS workers of concurrency 4 draining $TASKS standing tasks,
#      each task = a ping and C, O, R, U, S (a worker pings again as soon as a slot frees);
#   6. the peer, on the same PostgreSQL (its own database; PEER=0 skips it): graphile-worker (npm,
#      loadtest/graphile/), $PEER_JOBS no-op jobs at 16 concurrent, its defaults and its batching;
#   7. latency at a fixed offered rate: ~2,000 pings/s from $RATE_WORKERS workers pinging every 200 ms,
#      each running 2 tasks of 5 s at a time through the full status chain (C, R, S) from a standing
#      queue — a busy fleet (real tasks run for minutes), ~160 tasks/s and ~500 status updates/s on
#      top of the pings; first pings spread over 200 ms, the first 5 s (registrations, first
#      claims) left out of the figures; then the same load through haproxy (deploy/local's front).
# Phases 2, 3, 4 and 5 also measure CPU: of the replica processes (or the bare tonic server), of the
# whole PostgreSQL cluster (the postmaster and all its children: backends, walwriter, …; see
# loadtest/cpu.py) and of the load tool, per ping / task / RPC. It ends with a table: each measure,
# ours, the limit or peer of the same run, the ratio; and one JSON line (`BENCH_JSON {…}`).
# Everything runs on this machine (loopback only). Figures vary with the machine: compare ratios.
# Usage: loadtest/dispatch_bench.sh   (env: WORKERS, TASKS, REPLICAS, SECONDS_PER_PHASE, RATE_WORKERS,
#        LIFE_WORKERS, PEER=0|1, PEER_JOBS, PEER_POOL_SIZE, PROFILE=1 (perf, CPU by process kind and
#        pg_stat_statements of the idle, lifecycle and rate phases; PostgreSQL's log kept as
#        $PROFILE_DIR/pg.log), PROFILE_SECONDS, PROFILE_DIR, PERF_FREQ (Hz, default 499), PERF_CG
#        (perf call graphs: fp, the default, or dwarf: Rust frames resolved), PG_OPTIONS (more server flags, e.g.
#        "-c auto_explain.log_min_duration=1ms" with auto_explain preloaded), REPLICA_ARGS (more
#        `taskqueue serve` flags for every replica), BENCH_SQL (SQL run once on the migrated database,
#        for experiments),
#        RATE_JITTER (spread of the latency phases' task run times, default 0.5: 2.5–7.5 s),
#        PHASES=all or a comma-separated list of raw, claim_fn, assign, idle, raw_idle (after idle),
#        idle_empty, bare, life, peer, rate, rate_lb — e.g. PHASES=rate,rate_lb for the latency alone)
# The latency phases write a per-second timeline (pings, p99, max, status updates, their p99) to
# $PROFILE_DIR/rate-timeline.txt and rate_lb-timeline.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-32}
TASKS=${TASKS:-100000}
REPLICAS=${REPLICAS:-3}
PHASE=${SECONDS_PER_PHASE:-60}
RATE_WORKERS=${RATE_WORKERS:-400}
LIFE_WORKERS=${LIFE_WORKERS:-200}
PEER=${PEER:-1}
PEER_JOBS=${PEER_JOBS:-20000}
PROFILE=${PROFILE:-0}
PROFILE_DIR=${PROFILE_DIR:-target/bench-profile}
RATE_JITTER=${RATE_JITTER:-0.5}
PHASES=${PHASES:-all}
want() { [ "$PHASES" = all ] || [[ ",$PHASES," == *",$1,"* ]]; }
TOKEN=bench-worker-token

./scripts/setup.sh
cargo build --release --quiet --bin taskqueue --bin fleet-sim
BIN=${BIN:-target/release}

work=$(mktemp -d /tmp/taskqueue-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$PROFILE" = 1 ] && [ -e "$work/pg.log" ]; then mkdir -p "$PROFILE_DIR" && cp "$work/pg.log" "$PROFILE_DIR/pg.log"; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A free port below the kernel's ephemeral range (outgoing connections cannot take it meanwhile).
free_port() { python3 -c '
import random, socket
while True:
    p = random.randint(10000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()'; }

# --- PostgreSQL (TCP on loopback, shared by both sides of every comparison) ---------------------
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); mkdir -p "$work/pg" && chown postgres "$work/pg"; fi
pgport=$(free_port)
# PROFILE=1: pg_stat_statements says which statements PostgreSQL's CPU goes to (idle and lifecycle phases).
pg_profile=()
if [ "$PROFILE" = 1 ]; then pg_profile=(-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all); fi
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg" -k "$work/pg" -p "$pgport" -c listen_addresses=127.0.0.1 \
  -c max_connections=400 -c shared_buffers=512MB -c synchronous_commit=off "${pg_profile[@]}" ${PG_OPTIONS:-} >"$work/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$pgbin/pg_isready" -h 127.0.0.1 -p "$pgport" -q && break; sleep 0.1; done
"$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres taskqueue
pgpid=$(head -1 "$work/pg/postmaster.pid")  # the postmaster: its children are the whole cluster
DB="postgresql://postgres@127.0.0.1:$pgport/taskqueue"
psql_() { "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d taskqueue -qAt "$@"; }
"$BIN/taskqueue" migrate --database-url "$DB" >/dev/null
# BENCH_SQL: SQL run once on the migrated database, for experiments (e.g. a trigger disabled).
if [ -n "${BENCH_SQL:-}" ]; then psql_ -c "$BENCH_SQL"; fi

# --- replicas ----------------------------------------------------------------------------------
targets=()
rpids=()
mports=()
for i in $(seq "$REPLICAS"); do
  port=$(free_port)
  mport=$(free_port)
  mports+=("$mport")
  TASKQUEUE_LOG=warn "$BIN/taskqueue" serve --database-url "$DB" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
    --worker-token "$TOKEN" --admin-password bench --data-dir "$work/r$i" --db-pool-size 24 ${REPLICA_ARGS:-} >"$work/r$i.log" 2>&1 &
  pids+=($!)
  rpids+=($!)
  targets+=("127.0.0.1:$port")
done
TARGETS=$(IFS=,; echo "${targets[*]}")
sleep 3
sim() { "$BIN/fleet-sim" --targets "$TARGETS" --token "$TOKEN" --json "$@"; }
# (psql runs one -c string as one transaction, and VACUUM cannot run inside one: separate -c.)
reset_tasks() { psql_ -c "TRUNCATE task CASCADE; TRUNCATE assign_cursor; DELETE FROM worker;" -c "VACUUM ANALYZE task" >/dev/null; }
load_tasks() { # $1 = how many standing pending tasks, inserted directly
  psql_ -c "INSERT INTO task (task_id, shard, command, container, status, pending_since)
            SELECT g, g % 16, 'bench', 'none', 'P', now() FROM generate_series(1, $1) g;
            SELECT setval('task_task_id_seq', $1);" -c "VACUUM ANALYZE task" >/dev/null
}
json() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, d))" "$1" "$2"; }
# CPU seconds of a phase: cpu_begin PID… (the servers: replicas or the bare server) before it,
# cpu_end after it prints {"servers": s, "postgres": s} — the servers' and the whole cluster's.
cpu_begin() { cpu_pids=("$@"); cpu_s0=$(python3 loadtest/cpu.py "${cpu_pids[@]}"); cpu_p0=$(python3 loadtest/cpu.py --tree "$pgpid"); }
cpu_end() {
  local s1 p1
  s1=$(python3 loadtest/cpu.py "${cpu_pids[@]}"); p1=$(python3 loadtest/cpu.py --tree "$pgpid")
  python3 -c "import sys; print('{\"servers\": %.2f, \"postgres\": %.2f}' % (float(sys.argv[1]) - float(sys.argv[2]), float(sys.argv[3]) - float(sys.argv[4])))" \
    "$s1" "$cpu_s0" "$p1" "$cpu_p0"
}
# PROFILE=1, around a phase: profile_start NAME … profile_stop NAME writes to $PROFILE_DIR
# NAME-replica.top.txt (perf of one replica), NAME-pg.top.txt (perf of the whole PostgreSQL
# cluster: its processes as they are at the start, pooled backends included), NAME-pg-kinds.json
# (the cluster's CPU by process kind: client backends, autovacuum, walwriter, …) and
# NAME-pg-statements.txt (pg_stat_statements: by total execution time, nested statements of
# plpgsql functions included). perf runs from 2 s in for $PROFILE_SECONDS (a sixth of a phase).
# Profiled phases: idle, life and rate (the direct latency phase).
profile_start() {
  [ "$PROFILE" = 1 ] || return 0
  mkdir -p "$PROFILE_DIR"
  local secs=${PROFILE_SECONDS:-$((PHASE / 6 + 1))} children
  (sleep 2; perf record --call-graph "${PERF_CG:-fp}" -F "${PERF_FREQ:-499}" -p "${rpids[0]}" -o "$PROFILE_DIR/$1-replica.perf.data" -- sleep "$secs" \
     >"$PROFILE_DIR/$1-perf-record.log" 2>&1) &
  perf_job=$!
  children=$(pgrep -d, -P "$pgpid" || true)
  (sleep 2; perf record -g -F 499 -p "$pgpid,$children" -o "$PROFILE_DIR/$1-pg.perf.data" -- sleep "$secs" \
     >"$PROFILE_DIR/$1-perf-record-pg.log" 2>&1) &
  perf_pg_job=$!
  psql_ -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
  kinds0=$(python3 loadtest/cpu.py --by-kind "$pgpid")
}
profile_stop() {
  [ "$PROFILE" = 1 ] || return 0
  local kinds1 d=$PROFILE_DIR
  kinds1=$(python3 loadtest/cpu.py --by-kind "$pgpid")
  python3 -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(json.dumps({k: round(b.get(k,0)-a.get(k,0),2) for k in sorted(set(a)|set(b))}))' \
    "$kinds0" "$kinds1" >"$d/$1-pg-kinds.json"
  echo "PostgreSQL CPU of the phase by process kind (s): $(cat "$d/$1-pg-kinds.json")"
  wait "$perf_job" "$perf_pg_job" || true
  perf report -i "$d/$1-replica.perf.data" --stdio --no-children --percent-limit 1 -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -40 >"$d/$1-replica.top.txt" || true
  perf report -i "$d/$1-pg.perf.data" --stdio --children --percent-limit 3 -g none --sort sym 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -60 >"$d/$1-pg.top.txt" || true
  echo "profiles: $d/$1-replica.top.txt, $d/$1-pg.top.txt (with children: planner vs executor); perf.data beside them"
  head -20 "$d/$1-replica.top.txt"; head -30 "$d/$1-pg.top.txt"
  psql_ -F ' | ' -c "SELECT round(total_exec_time)::bigint AS ms, calls, rows,
                            round((total_exec_time / greatest(calls, 1) * 1000)::numeric, 1) AS us_per_call,
                            left(regexp_replace(query, '\s+', ' ', 'g'), 140)
                       FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15" \
    >"$d/$1-pg-statements.txt" || true
  echo "PostgreSQL statements of the phase (ms | calls | rows | µs/call | query): $d/$1-pg-statements.txt"
  cat "$d/$1-pg-statements.txt"
}
results="$work/results"
mkdir -p "$results"
save() { printf '%s\n' "$2" >"$results/$1.json"; }  # save NAME JSON: for the summary

if want raw; then
echo "== raw limit: pgbench, 1 claim per transaction, $WORKERS clients, draining $TASKS standing tasks"
reset_tasks; load_tasks "$TASKS"
# One claim per transaction from a random shard, so the claim walks the pending index (step, shard,
# task_id) like ours does; without the shard the planner sorts every pending task per claim.
cat >"$work/claim.sql" <<'SQL'
\set s random(0, 15)
UPDATE task SET status = 'A', assigned_at = now()
 WHERE task_id = (SELECT task_id FROM task WHERE status = 'P' AND COALESCE(step_id, 0) = 0 AND shard = :s
                   ORDER BY task_id LIMIT 1 FOR UPDATE SKIP LOCKED);
SQL
cpu_begin "${rpids[@]}"
raw=$("$pgbin/pgbench" -h 127.0.0.1 -p "$pgport" -U postgres -n -M prepared -c "$WORKERS" -j 2 -t "$((TASKS / WORKERS))" \
      -f "$work/claim.sql" taskqueue 2>&1 | awk '/^tps/ {print $3; exit}')
cpu_raw=$(cpu_end)
echo "raw claims/s: $raw; cpu $cpu_raw"
save raw "{\"claims_per_s\": $raw, \"claims\": $(( (TASKS / WORKERS) * WORKERS )), \"cpu_s\": $cpu_raw}"
fi

if want claim_fn; then
echo "== our claim alone: pgbench calling tq_claim_batch (1 task per call), $WORKERS clients, same queue"
reset_tasks; load_tasks "$TASKS"
psql_ -c "INSERT INTO worker (worker_name, status) SELECT 'claim-' || g, 'R' FROM generate_series(1, $WORKERS) g" >/dev/null
read -r wlo whi < <(psql_ -F ' ' -c "SELECT min(worker_id), max(worker_id) FROM worker")
cat >"$work/claim_fn.sql" <<'SQL'
\set w random(:wlo, :whi)
\set s random(0, 15)
SELECT claimed, waits FROM tq_claim_batch(:w, NULL, 1, 16, :s, 1953562628, interval '1 second');
SQL
cpu_begin "${rpids[@]}"
claim_fn=$("$pgbin/pgbench" -h 127.0.0.1 -p "$pgport" -U postgres -n -M prepared -c "$WORKERS" -j 2 -t "$((TASKS / WORKERS))" \
      -D wlo="$wlo" -D whi="$whi" -f "$work/claim_fn.sql" taskqueue 2>&1 | awk '/^tps/ {print $3; exit}')
cpu_claim_fn=$(cpu_end)
echo "tq_claim_batch calls/s: $claim_fn; cpu $cpu_claim_fn"
save claim_fn "{\"calls_per_s\": $claim_fn, \"calls\": $(( (TASKS / WORKERS) * WORKERS )), \"cpu_s\": $cpu_claim_fn}"
fi

if want assign; then
echo "== assigning pings: $WORKERS workers (concurrency 1), $REPLICAS replicas, draining $TASKS standing tasks"
reset_tasks; load_tasks "$TASKS"
cpu_begin "${rpids[@]}"
assign=$(sim --workers "$WORKERS" --concurrency 1 --lifecycle minimal --ping-interval 0s --stop-after-assigned "$TASKS" \
             --duration 600s --prefix a)
cpu_assign=$(cpu_end)
echo "$assign"; echo "cpu $cpu_assign"
save assign "$assign"; save cpu_assign "$cpu_assign"
assigned_per_s=$(json "$assign" 'round(assigning_pings_per_s)')
fi

if want idle; then
echo "== idle pings of full workers ($WORKERS workers each holding 1 task, ${PHASE}s)"
reset_tasks; load_tasks "$WORKERS"
profile_start "idle"
cpu_begin "${rpids[@]}"
idle_full=$(sim --workers "$WORKERS" --concurrency 1 --lifecycle none --ping-interval 0s --duration "$((PHASE / 2))s" --prefix f)
cpu_idle_full=$(cpu_end)
profile_stop "idle"
echo "$idle_full"; echo "cpu $cpu_idle_full"
save idle_full "$idle_full"; save cpu_idle_full "$cpu_idle_full"
fi

if want raw_idle; then
echo "== raw limit of an idle ping: pgbench running its two reads (worker snapshot, held tasks) per transaction, $WORKERS clients"
read -r lo hi < <(psql_ -F ' ' -c "SELECT min(worker_id), max(worker_id) FROM worker")
cat >"$work/idle.sql" <<'SQL'
\set id random(:lo, :hi)
SELECT w.status, w.concurrency, w.prefetch, w.step_id,
       EXTRACT(EPOCH FROM clock_timestamp() - w.last_ping_at)::double precision AS ping_age,
       EXTRACT(EPOCH FROM clock_timestamp() - s.updated_at)::double precision AS stats_age,
       COALESCE((SELECT sum(t.weight) FROM task t
                  WHERE t.worker_id = w.worker_id AND t.status IN ('A', 'C', 'D', 'O', 'R')), 0)::double precision AS held
  FROM worker w LEFT JOIN worker_stats s ON s.worker_id = w.worker_id WHERE w.worker_id = :id;
SELECT t.* FROM task t LEFT JOIN step s ON s.step_id = t.step_id
 WHERE t.worker_id = :id AND t.status IN ('A', 'C', 'D', 'R', 'U', 'V') ORDER BY t.task_id;
SQL
cpu_begin "${rpids[@]}"
raw_idle=$("$pgbin/pgbench" -h 127.0.0.1 -p "$pgport" -U postgres -n -M prepared -c "$WORKERS" -j 2 -T "$((PHASE / 2))" \
      -D lo="$lo" -D hi="$hi" -f "$work/idle.sql" taskqueue 2>&1 | awk '/^tps/ {print $3; exit}')
cpu_raw_idle=$(cpu_end)
echo "raw idle-ping reads/s: $raw_idle; cpu $cpu_raw_idle"
save raw_idle "{\"per_s\": $raw_idle, \"seconds\": $((PHASE / 2)), \"cpu_s\": $cpu_raw_idle}"
fi

if want idle_empty; then
echo "== idle pings with free capacity and an empty queue (${PHASE}s)"
reset_tasks
cpu_begin "${rpids[@]}"
idle_empty=$(sim --workers "$WORKERS" --concurrency 4 --lifecycle none --ping-interval 0s --duration "$((PHASE / 2))s" --prefix e)
cpu_idle_empty=$(cpu_end)
echo "$idle_empty"; echo "cpu $cpu_idle_empty"
save idle_empty "$idle_empty"; save cpu_idle_empty "$cpu_idle_empty"
fi

if want bare; then
echo "== bare tonic unary RPC: health Check on a server with nothing else, $WORKERS loops"
bport=$(free_port)
"$BIN/fleet-sim" --bare-server "127.0.0.1:$bport" >"$work/bare.log" 2>&1 &
bare_pid=$!
pids+=($!)
sleep 1
cpu_begin "$bare_pid"
bare=$("$BIN/fleet-sim" --mode health --targets "127.0.0.1:$bport" --workers "$WORKERS" --connections "$REPLICAS" \
       --duration "$((PHASE / 2))s" --json)
cpu_bare=$(cpu_end)
echo "$bare"; echo "cpu $cpu_bare"
save bare "$bare"; save cpu_bare "$cpu_bare"
kill "$bare_pid" 2>/dev/null || true
fi

if want life; then
echo "== full lifecycle: $LIFE_WORKERS workers × 4, draining $TASKS standing tasks, each: a ping, C, O, R, U, S"
reset_tasks; load_tasks "$TASKS"
cpu_begin "${rpids[@]}"
batch_sizes() { # requests per batch so far, per kind, summed over the replicas: {"ping": [sum, count], …}
  python3 -c '
import json, re, sys, urllib.request
t = {}
text = "".join(urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=10).read().decode() for p in sys.argv[1:])
for line in text.splitlines():
    m = re.match(r"taskqueue_batch_size_(sum|count)\{kind=\"(\w+)\"\} (\S+)", line)
    if m:
        t.setdefault(m[2], [0, 0])[m[1] == "count"] += float(m[3])
print(json.dumps(t))' "${mports[@]}"
}
sizes0=$(batch_sizes)
profile_start "life"
life=$(sim --workers "$LIFE_WORKERS" --concurrency 4 --lifecycle nominal --ping-interval 1s --ping-on-finish \
           --stop-after-finished "$TASKS" --duration 600s --prefix l)
cpu_life=$(cpu_end)
profile_stop "life"
echo "$life"; echo "cpu $cpu_life"
echo "requests per batch in the lifecycle phase (batches): $(python3 -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(", ".join(f"{k} {(v[0] - a.get(k, [0, 0])[0]) / max(1, v[1] - a.get(k, [0, 0])[1]):.1f} ({v[1] - a.get(k, [0, 0])[1]:.0f})" for k, v in sorted(b.items())))' "$sizes0" "$(batch_sizes)")"
save life "$life"; save cpu_life "$cpu_life"
fi

if [ "$PEER" = 1 ] && want peer; then
  echo "== peer: graphile-worker on the same PostgreSQL (database graphile), $PEER_JOBS no-op jobs, 16 concurrent"
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node/npm missing (apt-get install nodejs npm): set PEER=0 to skip the peer" >&2; exit 1
  fi
  # npm ci (the committed lock file, from the npm registry) unless node_modules is newer than it.
  installed=loadtest/graphile/node_modules/.package-lock.json
  if [ ! -e "$installed" ] || [ loadtest/graphile/package-lock.json -nt "$installed" ]; then
    (cd loadtest/graphile && npm ci --no-audit --no-fund --loglevel=error)
  fi
  "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres graphile
  for mode in default batched; do
    peer=$(cd loadtest/graphile && DATABASE_URL="postgresql://postgres@127.0.0.1:$pgport/graphile" PG_PID="$pgpid" \
           JOBS="$PEER_JOBS" CONCURRENCY=16 POOL_SIZE="${PEER_POOL_SIZE:-}" node bench.js "$mode")
    echo "$peer"
    save "peer_$mode" "$peer"
  done
fi

if want rate; then
echo "== latency at ~2,000 pings/s: $RATE_WORKERS workers pinging every 200 ms, 2 tasks of 5 s (± ${RATE_JITTER}×) each at a time"
mkdir -p "$PROFILE_DIR"
reset_tasks
srv0=$(python3 loadtest/server_latency.py snap "${mports[@]}")
profile_start "rate"
rate=$(sim --workers "$RATE_WORKERS" --concurrency 2 --lifecycle full --ping-interval 200ms --task-duration 5s \
           --task-duration-jitter "$RATE_JITTER" \
           --tasks "$((RATE_WORKERS * 2 * (PHASE / 5 + 4)))" --preload --submitters 8 --warmup 5s --duration "$((PHASE + 5))s" --prefix r \
           --timeline 2>"$PROFILE_DIR/rate-timeline.txt")
profile_stop "rate"
srv1=$(python3 loadtest/server_latency.py snap "${mports[@]}")
echo "$rate"
echo "server side (bucket bounds): $(python3 loadtest/server_latency.py diff "$srv0" "$srv1")"
save rate "$rate"
fi

if want rate_lb; then
# The same offered load through a load balancer, as deploy/local runs it: haproxy, h2c in and out,
# every RPC (HTTP/2 stream) balanced on its own over the replicas.
echo "== the same, through haproxy (deploy/local's gRPC front) in front of the $REPLICAS replicas"
haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)
lb_port=$(free_port)
{
  printf 'global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n'
  printf '  timeout server 1h\n  retries 2\n  option redispatch\n  retry-on conn-failure\n'
  printf 'frontend grpc\n  bind 127.0.0.1:%s proto h2\n  default_backend replicas\n' "$lb_port"
  printf 'backend replicas\n  balance roundrobin\n'
  for i in "${!targets[@]}"; do printf '  server r%s %s proto h2\n' "$i" "${targets[$i]}"; done
} >"$work/haproxy.cfg"
"$haproxy_bin" -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$lb_port") 2>/dev/null && break; sleep 0.1; done
reset_tasks
srv0=$(python3 loadtest/server_latency.py snap "${mports[@]}")
rate_lb=$("$BIN/fleet-sim" --targets "127.0.0.1:$lb_port" --token "$TOKEN" --json \
           --workers "$RATE_WORKERS" --concurrency 2 --lifecycle full --ping-interval 200ms --task-duration 5s \
           --task-duration-jitter "$RATE_JITTER" \
           --tasks "$((RATE_WORKERS * 2 * (PHASE / 5 + 4)))" --preload --submitters 8 --warmup 5s --duration "$((PHASE + 5))s" --prefix l \
           --timeline 2>"$PROFILE_DIR/rate_lb-timeline.txt")
srv1=$(python3 loadtest/server_latency.py snap "${mports[@]}")
echo "$rate_lb"
echo "server side (bucket bounds): $(python3 loadtest/server_latency.py diff "$srv0" "$srv1")"
save rate_lb "$rate_lb"
fi

echo
echo "== summary (same machine, same PostgreSQL)"
python3 loadtest/bench_summary.py "$results"
