-- The claim of ping-and-assign (design.md §3), as one server-side function so that a ping that walks
-- several shards costs one round trip.
--
-- tq_claim(worker, step, want, shards, first_shard, lock_ns, rescan) assigns up to `want` pending
-- tasks of `step` (NULL = step-less tasks) to `worker` and returns them with how long each waited.
-- Guarantees, given that the caller holds the worker's advisory lock:
--  * a task is assigned to one worker only: a shard is claimed under pg_try_advisory_xact_lock (one
--    claimer per shard at a time, across all replicas; a busy shard is skipped, not waited for), and
--    rows are taken FOR UPDATE SKIP LOCKED inside as a second line of defence; the UPDATE re-checks
--    status = 'P';
--  * oldest first within a shard; claimers start at different shards and move on when one is busy or
--    empty, so many workers do not convoy on the head of one queue;
--  * the cost of a pick does not grow with what was claimed before: each (step, shard) keeps a cursor
--    past the tasks it claimed (index entries of claimed rows stay until vacuum), and a rescan from the
--    start, at most once per `rescan` per shard, finds tasks that became P again with an old id or
--    whose insert committed after a claim had passed their id.
CREATE FUNCTION tq_claim(
    p_worker      integer,
    p_step        integer,
    p_want        integer,
    p_shards      integer,
    p_first_shard integer,
    p_lock_ns     integer,
    p_rescan      interval
) RETURNS TABLE (task_id integer, waited double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_key     integer := COALESCE(p_step, 0);
    v_got     integer := 0;
    v_shard   integer;
    v_cursor  integer;
    v_rescan  timestamptz;
    v_ids     integer[];
    v_waits   double precision[];
    v_max     integer;
    v_n       integer;
    i         integer;
BEGIN
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

        -- Rescan below the cursor first when due: old-id tasks keep their place in the FIFO.
        IF v_cursor > 0 AND v_rescan <= now() THEN
            WITH picked AS (
                SELECT t.task_id FROM task t
                 WHERE t.status = 'P' AND t.shard = v_shard AND t.task_id < v_cursor
                   AND COALESCE(t.step_id, 0) = v_key
                 ORDER BY t.task_id
                 LIMIT p_want - v_got
                   FOR UPDATE SKIP LOCKED
            ), upd AS (
                UPDATE task t
                   SET status = 'A', worker_id = p_worker, assigned_at = now(), modified_at = now()
                  FROM picked WHERE t.task_id = picked.task_id AND t.status = 'P'
                RETURNING t.task_id, EXTRACT(EPOCH FROM now() - COALESCE(t.pending_since, t.created_at))::double precision AS w
            )
            SELECT array_agg(upd.task_id), array_agg(upd.w) INTO v_ids, v_waits FROM upd;
            v_n := COALESCE(array_length(v_ids, 1), 0);
            IF v_n > 0 THEN
                v_got := v_got + v_n;
                RETURN QUERY SELECT * FROM unnest(v_ids, v_waits);
            END IF;
            UPDATE assign_cursor c SET rescan_after = now() + p_rescan
             WHERE c.step_key = v_key AND c.shard = v_shard;
        END IF;

        CONTINUE WHEN v_got >= p_want;
        WITH picked AS (
            SELECT t.task_id FROM task t
             WHERE t.status = 'P' AND t.shard = v_shard AND t.task_id >= v_cursor
               AND COALESCE(t.step_id, 0) = v_key
             ORDER BY t.task_id
             LIMIT p_want - v_got
               FOR UPDATE SKIP LOCKED
        ), upd AS (
            UPDATE task t
               SET status = 'A', worker_id = p_worker, assigned_at = now(), modified_at = now()
              FROM picked WHERE t.task_id = picked.task_id AND t.status = 'P'
            RETURNING t.task_id, EXTRACT(EPOCH FROM now() - COALESCE(t.pending_since, t.created_at))::double precision AS w
        )
        SELECT array_agg(upd.task_id), array_agg(upd.w), max(upd.task_id) INTO v_ids, v_waits, v_max FROM upd;
        v_n := COALESCE(array_length(v_ids, 1), 0);
        IF v_n > 0 THEN
            v_got := v_got + v_n;
            UPDATE assign_cursor c SET next_task_id = GREATEST(c.next_task_id, v_max + 1)
             WHERE c.step_key = v_key AND c.shard = v_shard;
            RETURN QUERY SELECT * FROM unnest(v_ids, v_waits);
        END IF;
    END LOOP;
END;
$$;
