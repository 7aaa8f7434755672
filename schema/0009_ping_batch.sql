-- Group commit of pings (design.md §3.1): the write side of every ping of a batch in ONE call.
-- The replica first reads the snapshots of all the batch's workers in one statement and answers
-- the idle pings from it (db/dispatch.rs); the others come here, in arrival order (the same worker
-- may come twice: its pings are processed in order, the second sees what the first wrote).
--
-- tq_ping_batch(workers, stats, touch_after, shards, first_shards, worker_lock_ns, shard_lock_ns,
-- rescan) does for each ping exactly what tq_ping (schema/0004_ping.sql) does, with:
--  * the advisory locks of all the batch's workers taken first, each once, in id order: two
--    batches (or a batch and a single ping) never wait on each other in a cycle; they are held to
--    the end of the call's transaction, so no other ping of these workers runs meanwhile;
--  * claims in two passes so they spread fairly across the batch: first up to one task per ping,
--    then the rest of each ping's free capacity (read again when a worker is in the batch twice, so
--    capacity holds); a step found empty (a claim got less than it asked for: every shard was
--    empty or busy) is not tried again in this call; tq_claim_batch keeps FIFO per shard and the
--    shard try-locks and cursors of §3;
--  * one row back (no set-returning function: one statement less): per ping its status (NULL:
--    unknown worker), concurrency and the status it came back from; per claimed task the ping
--    (1-based position) that claimed it and how long it waited.
CREATE FUNCTION tq_ping_batch(
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
    v_ask      integer;
    v_got      integer;
    v_claimed  integer[];
    v_waits    double precision[];
    v_left     integer[];
    v_steps    integer[];
    v_dry      integer[] := '{}';
    v_twice    boolean;
    i          integer;
BEGIN
    statuses := '{}'; concurrencies := '{}'; back_froms := '{}'; claim_pings := '{}'; waits := '{}';
    IF n = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(p_worker_lock_ns, s.w)
       FROM (SELECT DISTINCT u.w FROM unnest(p_workers) u(w) ORDER BY u.w) s;
    v_twice := n > (SELECT count(DISTINCT u.w) FROM unnest(p_workers) u(w));
    v_left := array_fill(0, ARRAY[n]);
    v_steps := array_fill(NULL::integer, ARRAY[n]);

    -- Pass 1: each ping as tq_ping, claiming at most one task.
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
        IF v_want > 0 AND NOT (COALESCE(v_step, 0) = ANY (v_dry)) THEN
            SELECT c.claimed, c.waits INTO v_claimed, v_waits
              FROM tq_claim_batch(v_worker, v_step, 1, p_shards, p_first_shards[i], p_shard_lock_ns, p_rescan) c;
            v_got := cardinality(v_claimed);
            IF v_got > 0 THEN
                claim_pings := claim_pings || array_fill(i, ARRAY[v_got]);
                waits := waits || v_waits;
                v_left[i] := v_want - v_got;
                v_steps[i] := v_step;
            ELSE
                v_dry := v_dry || COALESCE(v_step, 0);
            END IF;
        END IF;
        statuses[i] := COALESCE(v_back, v_status);
        concurrencies[i] := v_conc;
        back_froms[i] := CASE WHEN v_back IS NOT NULL THEN v_status END;
    END LOOP;

    -- Pass 2: the rest of each ping's capacity, in the same order.
    FOR i IN 1 .. n LOOP
        CONTINUE WHEN v_left[i] <= 0 OR COALESCE(v_steps[i], 0) = ANY (v_dry);
        v_worker := p_workers[i];
        v_ask := v_left[i];
        IF v_twice THEN
            -- Another ping of the batch may have claimed for this worker since: read it again.
            SELECT tq_free_capacity(w.concurrency, w.prefetch,
                       COALESCE((SELECT sum(t.weight) FROM task t
                                  WHERE t.worker_id = w.worker_id AND t.status IN ('A', 'C', 'D', 'O', 'R')), 0))
              INTO v_ask FROM worker w WHERE w.worker_id = v_worker;
            v_ask := LEAST(v_ask, v_left[i]);
            CONTINUE WHEN v_ask <= 0;
        END IF;
        SELECT c.claimed, c.waits INTO v_claimed, v_waits
          FROM tq_claim_batch(v_worker, v_steps[i], v_ask, p_shards, p_first_shards[i], p_shard_lock_ns, p_rescan) c;
        v_got := cardinality(v_claimed);
        IF v_got > 0 THEN
            claim_pings := claim_pings || array_fill(i, ARRAY[v_got]);
            waits := waits || v_waits;
        END IF;
        IF v_got < v_ask THEN
            v_dry := v_dry || COALESCE(v_steps[i], 0);
        END IF;
    END LOOP;
END;
$$;
