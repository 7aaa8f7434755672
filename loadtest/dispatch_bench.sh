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
#   5. latency at a fixed offered rate: ~2,000 pings/s from $RATE_WORKERS workers pinging every 200 ms,
#      each running 2 tasks of 5 s at a time through the full status chain (C, R, S) from a standing
#      queue — a busy fleet (real tasks run for minutes), ~160 tasks/s and ~500 status updates/s on
#      top of the pings; first pings spread over 200 ms, the first 5 s (registrations, first
#      claims) left out of the figures.
# Everything runs on this machine (loopback only). Figures vary with the machine: compare ratios.
# Usage: loadtest/dispatch_bench.sh            (env: WORKERS, TASKS, REPLICAS, SECONDS_PER_PHASE)
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-32}
TASKS=${TASKS:-100000}
REPLICAS=${REPLICAS:-3}
PHASE=${SECONDS_PER_PHASE:-60}
RATE_WORKERS=${RATE_WORKERS:-400}
TOKEN=bench-worker-token

./scripts/setup.sh
cargo build --release --quiet --bin taskqueue --bin fleet-sim
BIN=target/release

work=$(mktemp -d /tmp/taskqueue-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
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
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg" -k "$work/pg" -p "$pgport" -c listen_addresses=127.0.0.1 \
  -c max_connections=400 -c shared_buffers=512MB -c synchronous_commit=off >"$work/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$pgbin/pg_isready" -h 127.0.0.1 -p "$pgport" -q && break; sleep 0.1; done
"$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres taskqueue
DB="postgresql://postgres@127.0.0.1:$pgport/taskqueue"
psql_() { "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d taskqueue -qAt "$@"; }
"$BIN/taskqueue" migrate --database-url "$DB" >/dev/null

# --- replicas ----------------------------------------------------------------------------------
targets=()
for i in $(seq "$REPLICAS"); do
  port=$(free_port)
  TASKQUEUE_LOG=warn "$BIN/taskqueue" serve --database-url "$DB" --listen "127.0.0.1:$port" --metrics-listen off \
    --worker-token "$TOKEN" --admin-password bench --data-dir "$work/r$i" --db-pool-size 24 >"$work/r$i.log" 2>&1 &
  pids+=($!)
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
raw=$("$pgbin/pgbench" -h 127.0.0.1 -p "$pgport" -U postgres -n -M prepared -c "$WORKERS" -j 2 -t "$((TASKS / WORKERS))" \
      -f "$work/claim.sql" taskqueue 2>&1 | awk '/^tps/ {print $3; exit}')
echo "raw claims/s: $raw"

echo "== our claim alone: pgbench calling tq_claim_batch (1 task per call), $WORKERS clients, same queue"
reset_tasks; load_tasks "$TASKS"
psql_ -c "INSERT INTO worker (worker_name, status) SELECT 'claim-' || g, 'R' FROM generate_series(1, $WORKERS) g" >/dev/null
read -r wlo whi < <(psql_ -F ' ' -c "SELECT min(worker_id), max(worker_id) FROM worker")
cat >"$work/claim_fn.sql" <<'SQL'
\set w random(:wlo, :whi)
\set s random(0, 15)
SELECT claimed, waits FROM tq_claim_batch(:w, NULL, 1, 16, :s, 1953562628, interval '1 second');
SQL
claim_fn=$("$pgbin/pgbench" -h 127.0.0.1 -p "$pgport" -U postgres -n -M prepared -c "$WORKERS" -j 2 -t "$((TASKS / WORKERS))" \
      -D wlo="$wlo" -D whi="$whi" -f "$work/claim_fn.sql" taskqueue 2>&1 | awk '/^tps/ {print $3; exit}')
echo "tq_claim_batch calls/s: $claim_fn"

echo "== assigning pings: $WORKERS workers (concurrency 1), $REPLICAS replicas, draining $TASKS standing tasks"
reset_tasks; load_tasks "$TASKS"
assign=$(sim --workers "$WORKERS" --concurrency 1 --lifecycle minimal --ping-interval 0s --stop-after-assigned "$TASKS" \
             --duration 600s --prefix a)
echo "$assign"
assigned_per_s=$(json "$assign" 'round(assigning_pings_per_s)')

echo "== idle pings of full workers ($WORKERS workers each holding 1 task, ${PHASE}s)"
reset_tasks; load_tasks "$WORKERS"
idle_full=$(sim --workers "$WORKERS" --concurrency 1 --lifecycle none --ping-interval 0s --duration "$((PHASE / 2))s" --prefix f)
echo "$idle_full"

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
raw_idle=$("$pgbin/pgbench" -h 127.0.0.1 -p "$pgport" -U postgres -n -M prepared -c "$WORKERS" -j 2 -T "$((PHASE / 2))" \
      -D lo="$lo" -D hi="$hi" -f "$work/idle.sql" taskqueue 2>&1 | awk '/^tps/ {print $3; exit}')
echo "raw idle-ping reads/s: $raw_idle"

echo "== idle pings with free capacity and an empty queue (${PHASE}s)"
reset_tasks
idle_empty=$(sim --workers "$WORKERS" --concurrency 4 --lifecycle none --ping-interval 0s --duration "$((PHASE / 2))s" --prefix e)
echo "$idle_empty"

echo "== bare tonic unary RPC: health Check on a server with nothing else, $WORKERS loops"
bport=$(free_port)
"$BIN/fleet-sim" --bare-server "127.0.0.1:$bport" >"$work/bare.log" 2>&1 &
pids+=($!)
sleep 1
bare=$("$BIN/fleet-sim" --mode health --targets "127.0.0.1:$bport" --workers "$WORKERS" --connections "$REPLICAS" \
       --duration "$((PHASE / 2))s" --json)
echo "$bare"

echo "== latency at ~2,000 pings/s: $RATE_WORKERS workers pinging every 200 ms, 2 tasks of 5 s each at a time"
reset_tasks
rate=$(sim --workers "$RATE_WORKERS" --concurrency 2 --lifecycle full --ping-interval 200ms --task-duration 5s \
           --tasks "$((RATE_WORKERS * 2 * (PHASE / 5 + 4)))" --preload --submitters 8 --warmup 5s --duration "$((PHASE + 5))s" --prefix r)
echo "$rate"

echo
echo "== summary (same machine, same PostgreSQL)"
python3 - "$raw" "$raw_idle" "$claim_fn" "$assign" "$idle_full" "$idle_empty" "$bare" "$rate" <<'PY'
import json, sys
raw = float(sys.argv[1]); raw_idle = float(sys.argv[2]); claim_fn = float(sys.argv[3])
a, f, e, b, r = (json.loads(x) for x in sys.argv[4:])
bare = b["calls_per_s"]
print(f"assigning pings/s      {a['assigning_pings_per_s']:8.0f}   = {a['assigning_pings_per_s']/raw:.2f} x raw single-claim rate ({raw:.0f}/s)")
print(f"  our claim alone (pgbench of tq_claim_batch) {claim_fn:.0f}/s = {claim_fn/raw:.2f} x raw; pings reach {a['assigning_pings_per_s']/claim_fn:.2f} x it")
print(f"  tasks assigned/s     {a['tasks_assigned_per_s']:8.0f};  ping p50 {a['ping_ms']['p50']:.2f} ms, p99 {a['ping_ms']['p99']:.2f} ms")
print(f"idle pings/s (full)    {f['pings_per_s']:8.0f}   = {f['pings_per_s']/bare:.2f} x bare tonic unary ({bare:.0f}/s); p99 {f['ping_ms']['p99']:.2f} ms")
print(f"                                = {f['pings_per_s']/raw_idle:.2f} x pgbench of its own two reads ({raw_idle:.0f}/s)")
print(f"idle pings/s (empty q) {e['pings_per_s']:8.0f}   = {e['pings_per_s']/bare:.2f} x bare tonic unary; p99 {e['ping_ms']['p99']:.2f} ms")
print(f"offered ~2000 pings/s: {r['pings_per_s']:.0f} pings/s, p50 {r['ping_ms']['p50']:.2f} ms, p99 {r['ping_ms']['p99']:.2f} ms, "
      f"queue wait p50 {r['queue_wait_ms']['p50']:.0f} ms p99 {r['queue_wait_ms']['p99']:.0f} ms")
PY
