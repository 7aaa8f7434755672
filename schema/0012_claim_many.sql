-- A set-based claim for a whole batch of pings (docs/architecture.md#group-commit).
--
-- tq_ping_batch (schema/0009_ping_batch.sql) claimed ping by ping: one tq_claim_batch call per
-- claiming ping (a cursor read and a claiming UPDATE, whose statement trigger publishes the
-- WebSocket events, each), twice when a ping wanted more than one task. Here every claiming ping
-- of a step is served by ONE walk of the shards: per shard visited, one statement picks as many
-- tasks as the pings want together and hands them out.
--
-- tq_claim_many(step, pings, workers, wants, shards, first_shard, lock_ns, rescan) assigns to the
-- worker of each ping (workers[k], 1-based k) up to wants[k] pending tasks of `step`, and returns
-- per claimed task the ping (k) it went to and how long it waited. It keeps every guarantee of
-- tq_claim_batch (shard try-locks, FOR UPDATE SKIP LOCKED, the re-check of status 'P', the
-- (step, shard) cursors and their rescans, FIFO per shard) and the fairness of the per-ping claim:
-- the tasks, oldest first, go to "slots" ordered by round, then ping — every ping's first task,
-- then every ping's second, … — so when the queue holds fewer tasks than the batch wants, every
-- ping gets one before any gets two. The caller holds the advisory locks of all these workers and
-- computed `wants` under them (capacity holds: a worker twice in a batch has its second want
-- computed net of the first).
CREATE FUNCTION tq_claim_many(
    p_step        integer,
    p_pings       integer[],
    p_workers     integer[],
    p_wants       integer[],
    p_shards      integer,
    p_first_shard integer,
    p_lock_ns     integer,
    p_rescan      interval,
    OUT claim_pings integer[],
    OUT waits       double precision[]
)
LANGUAGE plpgsql AS $$
DECLARE
    v_key     integer := COALESCE(p_step, 0);
    v_slots   integer[] := '{}'; -- per slot, the position (in p_pings) of the ping it is for
    v_total   integer := 0;
    v_cap     integer;
    v_active  integer[] := '{}';
    v_next    integer[];
    k         integer;
    r         integer;
    v_used    integer := 0; -- slots handed out (or passed over) so far
    v_shard   integer;
    v_cursor  integer;
    v_rescan  timestamptz;
    v_rescan_due boolean;
    v_pos     integer[];
    v_waits   double precision[];
    v_top     integer;
    i         integer;
BEGIN
    claim_pings := '{}';
    waits := '{}';
    -- The slots, round after round over the pings that still want one; at most 4,096 in one call
    -- or one per ping when the batch is larger (every ping's first slot is always in), the rest
    -- at the worker's next ping. Built in plpgsql: linear in the slots.
    FOR k IN 1 .. COALESCE(cardinality(p_wants), 0) LOOP
        IF p_wants[k] > 0 THEN
            v_active := v_active || k;
        END IF;
    END LOOP;
    v_cap := GREATEST(4096, cardinality(v_active));
    r := 1;
    WHILE cardinality(v_active) > 0 AND v_total < v_cap LOOP
        v_next := '{}';
        FOREACH k IN ARRAY v_active LOOP
            EXIT WHEN v_total >= v_cap;
            v_slots := v_slots || k;
            v_total := v_total + 1;
            IF p_wants[k] > r THEN
                v_next := v_next || k;
            END IF;
        END LOOP;
        v_active := v_next;
        r := r + 1;
    END LOOP;
    IF v_total = 0 THEN
        RETURN;
    END IF;
    FOR i IN 0 .. p_shards - 1 LOOP
        EXIT WHEN v_used >= v_total;
        v_shard := (p_first_shard + i) % p_shards;
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(p_lock_ns, ((v_key::bigint * 1031 + v_shard) % 2147483647)::integer);

        SELECT c.next_task_id, c.rescan_after INTO v_cursor, v_rescan
          FROM assign_cursor c WHERE c.step_key = v_key AND c.shard = v_shard;
        IF NOT FOUND THEN
            v_cursor := 0;
            v_rescan := now() + p_rescan;
            INSERT INTO assign_cursor (step_key, shard, next_task_id, rescan_after)
            VALUES (v_key, v_shard, 0, v_rescan) ON CONFLICT DO NOTHING;
        END IF;

        v_rescan_due := v_cursor > 0 AND v_rescan <= now();
        -- The n-th task picked (oldest first) goes to slot v_used + n.
        WITH picked AS (
            SELECT t.task_id FROM task t
             WHERE t.status = 'P' AND t.shard = v_shard
               AND t.task_id >= CASE WHEN v_rescan_due THEN 0 ELSE v_cursor END
               AND COALESCE(t.step_id, 0) = v_key
             ORDER BY t.task_id
             LIMIT v_total - v_used
               FOR UPDATE SKIP LOCKED
        ), numbered AS (
            SELECT x.task_id, v_slots[v_used + x.n] AS k, x.n
              FROM (SELECT p.task_id, (row_number() OVER (ORDER BY p.task_id))::integer AS n
                      FROM picked p) x
        ), upd AS (
            UPDATE task t
               SET status = 'A', worker_id = p_workers[n.k], assigned_at = now(), modified_at = now()
              FROM numbered n WHERE t.task_id = n.task_id AND t.status = 'P'
            RETURNING t.task_id, n.k, n.n,
                      EXTRACT(EPOCH FROM now() - COALESCE(t.pending_since, t.created_at))::double precision AS w
        ), cur AS (
            UPDATE assign_cursor c
               SET next_task_id = GREATEST(c.next_task_id, COALESCE(m.top + 1, 0)),
                   rescan_after = CASE WHEN v_rescan_due THEN now() + p_rescan ELSE c.rescan_after END
              FROM (SELECT max(upd.task_id) AS top FROM upd) m
             WHERE c.step_key = v_key AND c.shard = v_shard AND (m.top IS NOT NULL OR v_rescan_due)
        )
        SELECT array_agg(p_pings[upd.k] ORDER BY upd.n), array_agg(upd.w ORDER BY upd.n), max(upd.n)
          INTO v_pos, v_waits, v_top FROM upd;
        IF v_pos IS NOT NULL THEN
            -- (A picked row the UPDATE did not take leaves its slot unused: fewer tasks, never more.)
            v_used := v_used + v_top;
            claim_pings := claim_pings || v_pos;
            waits := waits || v_waits;
        END IF;
    END LOOP;
END;
$$;

-- tq_ping_batch as in schema/0009_ping_batch.sql (same arguments, same answer), its claims made by
-- tq_claim_many: first every ping's writes and its want, in arrival order (a worker in the batch
-- twice: its later ping's want is net of what its earlier pings of the batch want), then one
-- tq_claim_many per step, over that step's claiming pings in arrival order.
CREATE OR REPLACE FUNCTION tq_ping_batch(
    p_workers         integer[],
    p_stats           bytea[],
    p_touch_after     interval,
    p_shards          integer,
    p_first_shards    integer[],
    p_worker_lock_ns  integer,
    p_shard_lock_ns   integer,
    p_rescan          interval,
    OUT statuses      text[],
    OUT concurrencies integer[],
    OUT back_froms    text[],
    OUT claim_pings   integer[],
    OUT waits         double precision[]
)
LANGUAGE plpgsql AS $$
DECLARE
    n          integer := COALESCE(cardinality(p_workers), 0);
    v_worker   integer;
    v_status   text;
    v_conc     integer;
    v_prefetch integer;
    v_step     integer;
    v_ping_at  timestamptz;
    v_stats_at timestamptz;
    v_held     double precision;
    v_back     text;
    v_touch    boolean;
    v_want     integer;
    v_wanted   integer[];  -- per ping, what it wants (0: nothing)
    v_steps    integer[];  -- per ping, its worker's step key
    v_step_keys integer[] := '{}';
    v_key      integer;
    v_pings    integer[];
    v_claimed  integer[];
    v_waits    double precision[];
    v_twice    boolean;
    i          integer;
    j          integer;
BEGIN
    statuses := '{}'; concurrencies := '{}'; back_froms := '{}'; claim_pings := '{}'; waits := '{}';
    IF n = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(p_worker_lock_ns, s.w)
       FROM (SELECT DISTINCT u.w FROM unnest(p_workers) u(w) ORDER BY u.w) s;
    v_twice := n > (SELECT count(DISTINCT u.w) FROM unnest(p_workers) u(w));
    v_wanted := array_fill(0, ARRAY[n]);
    v_steps := array_fill(NULL::integer, ARRAY[n]);

    FOR i IN 1 .. n LOOP
        v_worker := p_workers[i];
        SELECT w.status, w.concurrency, w.prefetch, w.step_id, w.last_ping_at, s.updated_at,
               COALESCE((SELECT sum(t.weight) FROM task t
                          WHERE t.worker_id = w.worker_id AND t.status IN ('A', 'C', 'D', 'O', 'R')), 0)
          INTO v_status, v_conc, v_prefetch, v_step, v_ping_at, v_stats_at, v_held
          FROM worker w LEFT JOIN worker_stats s ON s.worker_id = w.worker_id
         WHERE w.worker_id = v_worker;
        IF NOT FOUND THEN
            statuses[i] := NULL; concurrencies[i] := NULL; back_froms[i] := NULL;
            CONTINUE;
        END IF;
        -- What this worker's earlier pings of the batch will claim (weight 1 each).
        IF v_twice THEN
            FOR j IN 1 .. i - 1 LOOP
                IF p_workers[j] = v_worker THEN
                    v_held := v_held + v_wanted[j];
                END IF;
            END LOOP;
        END IF;
        v_back := CASE v_status WHEN 'O' THEN 'R' WHEN 'Q' THEN 'P' WHEN 'L' THEN 'F' END;
        v_touch := v_ping_at IS NULL OR clock_timestamp() - v_ping_at >= p_touch_after;
        v_want := CASE WHEN COALESCE(v_back, v_status) = 'R'
                       THEN tq_free_capacity(v_conc, v_prefetch, v_held) ELSE 0 END;

        IF v_back IS NOT NULL OR v_touch THEN
            UPDATE worker w SET status = COALESCE(v_back, w.status),
                                offline_since = CASE WHEN v_back IS NULL THEN w.offline_since END,
                                last_ping_at = now()
             WHERE w.worker_id = v_worker;
        END IF;
        IF p_stats[i] IS NOT NULL AND (v_touch OR v_stats_at IS NULL) THEN
            INSERT INTO worker_stats (worker_id, stats, updated_at) VALUES (v_worker, p_stats[i], now())
            ON CONFLICT (worker_id) DO UPDATE SET stats = EXCLUDED.stats, updated_at = EXCLUDED.updated_at;
        END IF;
        IF v_want > 0 THEN
            v_wanted[i] := v_want;
            v_steps[i] := COALESCE(v_step, 0);
            IF NOT (COALESCE(v_step, 0) = ANY (v_step_keys)) THEN
                v_step_keys := v_step_keys || COALESCE(v_step, 0);
            END IF;
        END IF;
        statuses[i] := COALESCE(v_back, v_status);
        concurrencies[i] := v_conc;
        back_froms[i] := CASE WHEN v_back IS NOT NULL THEN v_status END;
    END LOOP;

    FOREACH v_key IN ARRAY v_step_keys LOOP
        v_pings := ARRAY(SELECT k FROM generate_subscripts(p_workers, 1) k
                          WHERE v_steps[k] = v_key ORDER BY k);
        SELECT c.claim_pings, c.waits INTO v_claimed, v_waits
          FROM tq_claim_many(v_key, v_pings,
                             ARRAY(SELECT p_workers[k] FROM unnest(v_pings) WITH ORDINALITY u(k, o) ORDER BY o),
                             ARRAY(SELECT v_wanted[k] FROM unnest(v_pings) WITH ORDINALITY u(k, o) ORDER BY o),
                             p_shards, p_first_shards[v_pings[1]], p_shard_lock_ns, p_rescan) c;
        claim_pings := claim_pings || v_claimed;
        waits := waits || v_waits;
    END LOOP;
END;
$$;
