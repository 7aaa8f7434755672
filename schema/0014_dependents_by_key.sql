-- The dependents of a round's successes are reached by primary key only, whatever the statistics.
-- Under the batch loop's generic plan, `t.task_id = ANY (ids) AND t.status = 'W' AND NOT t.hidden`
-- let PostgreSQL AND a bitmap of `task_pkey` with one of `task_status_idx` (partial on NOT hidden)
-- when the statistics predate a burst of waiting tasks (a table analyzed before the workflow was
-- submitted: equality then estimates 0.5 % of the rows): the bitmap read every W task, 20,000 of
-- them for one dependent, ~5 ms a batch. Written `(t.status = 'W' AND NOT t.hidden) IS TRUE`, the
-- test is no index condition (and proves no partial index's predicate), so it stays a filter on the
-- rows found by key; in a WHERE clause it means the same (NULL counts as false there anyway), and a
-- row lock still re-checks it on the row's latest version. db::tasks and db::dependencies write
-- their statements on waiting tasks the same way. tests/it/status_batch.rs holds the plans to it.
--
-- tq_status_batch as in schema/0013_activity_clock.sql, with those two statements so written.
CREATE OR REPLACE FUNCTION tq_status_batch(
    p_tasks     integer[],
    p_rounds    integer[],
    p_statuses  text[],
    p_columns   text[],
    p_seconds   integer[],
    p_starts    boolean[],
    p_releases  boolean[],
    p_pending   boolean[],
    p_activity  boolean[],
    p_promote   boolean[],
    OUT outcomes text[]
)
LANGUAGE plpgsql AS $$
DECLARE
    n          integer := COALESCE(cardinality(p_tasks), 0);
    v_rounds   integer;
    r          integer;
    v_pos      integer[];
    v_codes    text[];
    v_workers  integer[];
    v_requeued integer[];
    v_succeeded integer[];
    v_waiting  integer[];
    i          integer;
BEGIN
    outcomes := array_fill('N'::text, ARRAY[n]);
    IF n = 0 THEN
        RETURN;
    END IF;
    PERFORM 1 FROM task t WHERE t.task_id = ANY (p_tasks) ORDER BY t.task_id FOR UPDATE;
    SELECT max(x) INTO v_rounds FROM unnest(p_rounds) x;

    FOR r IN 1 .. COALESCE(v_rounds, 0) LOOP
        WITH req AS (
            SELECT u.pos, u.task_id, u.status, u.col, u.secs, u.starts, u.releases, u.pending,
                   u.activity, u.promote, t.status AS cur, t.hidden, t.worker_id
              FROM unnest(p_tasks, p_rounds, p_statuses, p_columns, p_seconds, p_starts,
                          p_releases, p_pending, p_activity, p_promote)
                   WITH ORDINALITY AS u(task_id, round, status, col, secs, starts, releases,
                                        pending, activity, promote, pos)
              LEFT JOIN task t ON t.task_id = u.task_id
             WHERE u.round = r
        ), upd AS (
            UPDATE task t
               SET status = q.status,
                   modified_at = now(),
                   run_started_at = CASE WHEN q.starts THEN now() ELSE t.run_started_at END,
                   download_duration = CASE WHEN q.col = 'download' THEN q.secs ELSE t.download_duration END,
                   run_duration = CASE WHEN q.col = 'run' THEN q.secs ELSE t.run_duration END,
                   upload_duration = CASE WHEN q.col = 'upload' THEN q.secs ELSE t.upload_duration END,
                   worker_id = CASE WHEN q.releases THEN NULL ELSE t.worker_id END,
                   pending_since = CASE WHEN q.pending THEN now() ELSE t.pending_since END
              FROM req q
             WHERE t.task_id = q.task_id AND NOT q.hidden AND q.cur <> q.status
        )
        SELECT array_agg(q.pos::integer),
               array_agg(CASE WHEN q.cur IS NULL THEN 'N' WHEN q.hidden THEN 'H'
                              WHEN q.cur = q.status THEN 'S' ELSE 'U' END),
               array_agg(DISTINCT q.worker_id) FILTER (WHERE q.activity AND q.worker_id IS NOT NULL
                                                         AND NOT q.hidden AND q.cur <> q.status),
               array_agg(q.task_id) FILTER (WHERE q.pending AND NOT q.hidden AND q.cur <> q.status),
               array_agg(q.task_id) FILTER (WHERE q.promote AND NOT q.hidden AND q.cur <> q.status)
          INTO v_pos, v_codes, v_workers, v_requeued, v_succeeded
          FROM req q;

        FOR i IN 1 .. COALESCE(cardinality(v_pos), 0) LOOP
            outcomes[v_pos[i]] := v_codes[i];
        END LOOP;

        -- The workers that accepted or finished a task: their idle clock restarts, unless it
        -- did less than a second ago (then the row is neither locked nor written).
        IF v_workers IS NOT NULL THEN
            PERFORM 1 FROM worker w
             WHERE w.worker_id = ANY (v_workers)
               AND (w.last_activity_at IS NULL OR w.last_activity_at < now() - interval '1 second')
             ORDER BY w.worker_id FOR NO KEY UPDATE;
            UPDATE worker w SET last_activity_at = now()
             WHERE w.worker_id = ANY (v_workers)
               AND (w.last_activity_at IS NULL OR w.last_activity_at < now() - interval '1 second');
        END IF;

        -- Tasks back in the queue: the claim cursors of their (step, shard) go back to them.
        IF v_requeued IS NOT NULL THEN
            UPDATE assign_cursor c SET next_task_id = x.id
              FROM (SELECT COALESCE(t.step_id, 0) AS k, t.shard AS s, min(t.task_id) AS id
                      FROM task t WHERE t.task_id = ANY (v_requeued) GROUP BY 1, 2) x
             WHERE c.step_key = x.k AND c.shard = x.s AND c.next_task_id > x.id;
        END IF;

        -- W → P for the dependents of this round's successes whose prerequisites all succeeded:
        -- locked first, then checked with a fresh snapshot (see db::tasks::promote_dependents).
        IF v_succeeded IS NOT NULL THEN
            -- (The dependents' ids first, then their rows by primary key only: the status test is
            -- a filter, kept out of index conditions by IS TRUE. See the head of this file.)
            v_waiting := ARRAY(
                SELECT t.task_id FROM task t
                 WHERE t.task_id = ANY (ARRAY(SELECT d.dependent_task_id FROM task_dependencies d
                                               WHERE d.prerequisite_task_id = ANY (v_succeeded)))
                   AND (t.status = 'W' AND NOT t.hidden) IS TRUE
                 ORDER BY t.task_id
                   FOR UPDATE OF t);
            IF cardinality(v_waiting) > 0 THEN
                WITH promoted AS (
                    UPDATE task t SET status = 'P', pending_since = now(), modified_at = now()
                     WHERE t.task_id = ANY (v_waiting) AND (t.status = 'W' AND NOT t.hidden) IS TRUE
                       AND NOT EXISTS (SELECT 1 FROM task_dependencies d
                                         JOIN task p ON p.task_id = d.prerequisite_task_id
                                        WHERE d.dependent_task_id = t.task_id AND p.status <> 'S')
                    RETURNING t.task_id, t.step_id, t.shard
                )
                UPDATE assign_cursor c SET next_task_id = x.id
                  FROM (SELECT COALESCE(p.step_id, 0) AS k, p.shard AS s, min(p.task_id) AS id
                          FROM promoted p GROUP BY 1, 2) x
                 WHERE c.step_key = x.k AND c.shard = x.s AND c.next_task_id > x.id;
            END IF;
        END IF;
    END LOOP;
END;
$$;
