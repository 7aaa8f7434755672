-- The whole write side of PingAndTakeNewTasks (design.md §3) as one server-side function, so that
-- every ping — idle or assigning — costs one round trip: `tq_ping` pipelined with the read of the
-- tasks the worker holds (db/dispatch.rs). It used to take up to seven (a read, a probe of the
-- queue, BEGIN, lock and re-read, touch, claim, read, COMMIT). Postgres CPU is what bounds
-- dispatch, so these functions also keep the statements they run few: no set-returning functions
-- (their rows would be materialised by one more statement each), the claim's cursor moved in the
-- claiming statement.
--
-- Free capacity of a worker, in tasks of weight 1 — the rule of domain::dispatch::free_capacity,
-- which a test compares with this function on random inputs: floor(concurrency + prefetch −
-- held weight + 0.01), 0 when below 1 or not a number.
-- (plpgsql, not a SQL function: called from plpgsql, a SQL function is parsed and planned again
-- on every call; a plpgsql one is compiled once per session.)
CREATE FUNCTION tq_free_capacity(p_concurrency integer, p_prefetch integer, p_held double precision)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    room double precision := GREATEST(p_concurrency, 0)::double precision
                             + GREATEST(p_prefetch, 0)::double precision - p_held + 0.01;
BEGIN
    -- (In Postgres NaN equals NaN and sorts above every number.)
    IF room = 'NaN'::double precision OR room = 'Infinity'::double precision OR room < 1 THEN
        RETURN 0;
    END IF;
    RETURN LEAST(floor(room), 2147483647)::integer;
END;
$$;

-- tq_claim_batch: tq_claim (schema/0002_dispatch.sql) with the same guarantees, returning arrays
-- (OUT parameters, not a set), claiming from each shard in one statement (a due rescan is the same
-- scan started at the shard's first task) that also moves the shard's cursor.
-- tq_claim stays for replicas of the previous release during a rolling upgrade.
CREATE FUNCTION tq_claim_batch(
    p_worker      integer,
    p_step        integer,
    p_want        integer,
    p_shards      integer,
    p_first_shard integer,
    p_lock_ns     integer,
    p_rescan      interval,
    OUT claimed   integer[],
    OUT waits     double precision[]
)
LANGUAGE plpgsql AS $$
DECLARE
    v_key     integer := COALESCE(p_step, 0);
    v_got     integer := 0;
    v_shard   integer;
    v_cursor  integer;
    v_rescan  timestamptz;
    v_rescan_due boolean;
    v_ids     integer[];
    v_waits   double precision[];
    i         integer;
BEGIN
    claimed := '{}';
    waits := '{}';
    IF p_want <= 0 THEN
        RETURN;
    END IF;
    FOR i IN 0 .. p_shards - 1 LOOP
        EXIT WHEN v_got >= p_want;
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

        -- From the cursor; from the start of the shard when a rescan is due, so that old-id tasks
        -- keep their place in the FIFO. (One bound, so the index scan starts there.)
        v_rescan_due := v_cursor > 0 AND v_rescan <= now();
        WITH picked AS (
            SELECT t.task_id FROM task t
             WHERE t.status = 'P' AND t.shard = v_shard
               AND t.task_id >= CASE WHEN v_rescan_due THEN 0 ELSE v_cursor END
               AND COALESCE(t.step_id, 0) = v_key
             ORDER BY t.task_id
             LIMIT p_want - v_got
               FOR UPDATE SKIP LOCKED
        ), upd AS (
            UPDATE task t
               SET status = 'A', worker_id = p_worker, assigned_at = now(), modified_at = now()
              FROM picked WHERE t.task_id = picked.task_id AND t.status = 'P'
            RETURNING t.task_id, EXTRACT(EPOCH FROM now() - COALESCE(t.pending_since, t.created_at))::double precision AS w
        ), cur AS (
            -- Past what this statement claims, and the next rescan a period away once one ran.
            UPDATE assign_cursor c
               SET next_task_id = GREATEST(c.next_task_id, COALESCE(m.top + 1, 0)),
                   rescan_after = CASE WHEN v_rescan_due THEN now() + p_rescan ELSE c.rescan_after END
              FROM (SELECT max(upd.task_id) AS top FROM upd) m
             WHERE c.step_key = v_key AND c.shard = v_shard AND (m.top IS NOT NULL OR v_rescan_due)
        )
        SELECT array_agg(upd.task_id), array_agg(upd.w) INTO v_ids, v_waits FROM upd;
        IF v_ids IS NOT NULL THEN
            v_got := v_got + cardinality(v_ids);
            claimed := claimed || v_ids;
            waits := waits || v_waits;
        END IF;
    END LOOP;
END;
$$;

-- tq_ping(worker, stats, touch_after, shards, first_shard, worker_lock_ns, shard_lock_ns, rescan)
-- answers the worker's status and concurrency and what it claimed (status NULL: unknown
-- worker). The replica calls it after a read showed something to do (db/dispatch.rs); it decides
-- again here, on what it reads itself, because the worker may have changed in between.
--  * It takes the worker's advisory lock first — two pings of one worker never claim side by
--    side, so capacity holds — and reads the worker under it (each statement of a plpgsql function
--    sees what committed before it started, so the read sees the other ping's claim).
--  * `last_ping_at` is rewritten when older than `touch_after` (or NULL); stats, when given, ride on
--    that write (or are stored when none are); an offline worker comes back (O→R, Q→P, L→F).
--  * Only a worker that is (or comes back to) R claims, up to its free capacity.
CREATE FUNCTION tq_ping(
    p_worker          integer,
    p_stats           bytea,
    p_touch_after     interval,
    p_shards          integer,
    p_first_shard     integer,
    p_worker_lock_ns  integer,
    p_shard_lock_ns   integer,
    p_rescan          interval,
    OUT status        text,
    OUT concurrency   integer,
    OUT back_from     text,
    OUT claimed       integer[],
    OUT waits         double precision[]
)
LANGUAGE plpgsql AS $$
DECLARE
    v_status   text;
    v_prefetch integer;
    v_step     integer;
    v_ping_at  timestamptz;
    v_stats_at timestamptz;
    v_held     double precision;
    v_back     text;
    v_touch    boolean;
    v_store    boolean;
    v_want     integer;
BEGIN
    PERFORM pg_advisory_xact_lock(p_worker_lock_ns, p_worker);
    SELECT w.status, w.concurrency, w.prefetch, w.step_id, w.last_ping_at, s.updated_at,
           COALESCE((SELECT sum(t.weight) FROM task t
                      WHERE t.worker_id = w.worker_id AND t.status IN ('A', 'C', 'D', 'O', 'R')), 0)
      INTO v_status, concurrency, v_prefetch, v_step, v_ping_at, v_stats_at, v_held
      FROM worker w LEFT JOIN worker_stats s ON s.worker_id = w.worker_id
     WHERE w.worker_id = p_worker;
    IF NOT FOUND THEN
        RETURN; -- status NULL
    END IF;
    v_back := CASE v_status WHEN 'O' THEN 'R' WHEN 'Q' THEN 'P' WHEN 'L' THEN 'F' END;
    v_touch := v_ping_at IS NULL OR clock_timestamp() - v_ping_at >= p_touch_after;
    v_store := p_stats IS NOT NULL AND (v_touch OR v_stats_at IS NULL);
    v_want := CASE WHEN COALESCE(v_back, v_status) = 'R'
                   THEN tq_free_capacity(concurrency, v_prefetch, v_held) ELSE 0 END;

    IF v_back IS NOT NULL OR v_touch THEN
        UPDATE worker w SET status = COALESCE(v_back, w.status),
                            offline_since = CASE WHEN v_back IS NULL THEN w.offline_since END,
                            last_ping_at = now()
         WHERE w.worker_id = p_worker;
    END IF;
    IF v_store THEN
        INSERT INTO worker_stats (worker_id, stats, updated_at) VALUES (p_worker, p_stats, now())
        ON CONFLICT (worker_id) DO UPDATE SET stats = EXCLUDED.stats, updated_at = EXCLUDED.updated_at;
    END IF;
    IF v_want > 0 THEN
        SELECT c.claimed, c.waits INTO claimed, waits
          FROM tq_claim_batch(p_worker, v_step, v_want, p_shards, p_first_shard, p_shard_lock_ns, p_rescan) c;
    END IF;
    status := COALESCE(v_back, v_status);
    back_from := CASE WHEN v_back IS NOT NULL THEN v_status END;
END;
$$;
