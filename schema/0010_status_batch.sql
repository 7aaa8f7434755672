-- Group commit of status updates: every UpdateTaskStatus of a batch in ONE call, set-based.
-- The replica decides in Rust what each update does (domain::tasks::status_change: the duration
-- column, whether the task starts running, goes back to the queue, leaves its worker, restarts
-- the worker's idle clock, promotes its dependents) and sends those decisions as arrays; this
-- function applies them. F is not sent here: a failure may clone the task for a retry, and that
-- path (db::tasks::apply_status) runs after this call in its own transaction.
--
-- tq_status_batch(tasks, rounds, statuses, columns, seconds, starts, releases, pending, activity,
-- promote) → outcomes, one letter per request, in order:
--   'U' updated, 'S' same status (nothing changed), 'N' no such task, 'H' hidden (read-only).
--
-- The same task may come more than once in a batch: the replica numbers its requests 1, 2, … in
-- arrival order (`rounds`), and round k is applied, set-based, after round k−1, so each sees what
-- the one before wrote. Within a round every task comes once; its updates go first, then the
-- promotion of the dependents of the tasks that succeeded in it. The whole call is one serial
-- order of its requests (they were all in flight together, so any order is one a caller could
-- have seen): per round, the updates, then the successes' promotions.
--
-- Locks: every task of the batch first, in id order, held to the end of the call's transaction
-- (two batches, or a batch and a single update, never wait on each other in a cycle); then per
-- round the workers whose idle clock restarts, in id order; then the waiting dependents, in id
-- order, as db::tasks::promote_dependents does.
CREATE FUNCTION tq_status_batch(
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

        -- The workers that accepted or finished a task: their idle clock restarts.
        IF v_workers IS NOT NULL THEN
            PERFORM 1 FROM worker w WHERE w.worker_id = ANY (v_workers)
              ORDER BY w.worker_id FOR NO KEY UPDATE;
            UPDATE worker w SET last_activity_at = now() WHERE w.worker_id = ANY (v_workers);
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
            v_waiting := ARRAY(
                SELECT t.task_id FROM task_dependencies d JOIN task t ON t.task_id = d.dependent_task_id
                 WHERE d.prerequisite_task_id = ANY (v_succeeded) AND t.status = 'W'
                 ORDER BY t.task_id
                   FOR UPDATE OF t);
            IF cardinality(v_waiting) > 0 THEN
                WITH promoted AS (
                    UPDATE task t SET status = 'P', pending_since = now(), modified_at = now()
                     WHERE t.task_id = ANY (v_waiting) AND t.status = 'W' AND NOT t.hidden
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
