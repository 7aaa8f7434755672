-- Task events are built and notified only while somebody watches (`db::watch`). Without a web
-- socket or a log follower on any replica, every status change still built a JSON body for the UI
-- and every finished task sent a wake-up, each notification read by every replica's LISTEN
-- session: in the lifecycle benchmark (no browser, no follower) that was ~190 µs of PostgreSQL CPU
-- and ~70 µs of replica CPU per task, a fifth of the whole.
--
-- A replica with at least one web socket holds a row (its id, 'tq_ws') here; one with at least
-- one log follower, (its id, 'task_log'). It renews the row while it has them (`until` a minute
-- ahead, renewed every 15 s) and lets it lapse afterwards; a replica that dies leaves a row that
-- lapses by itself. After making a row live, the replica waits until every transaction that was
-- running at that moment has ended before it lets the socket or follower read anything
-- (`db::watch::Watch::enter`): a change whose trigger found no live row is then already
-- committed, and the first read shows it. Later changes see the row and publish. Nothing a
-- watcher could see is lost.
--
-- Only the hot publishers are gated: the task insert and update triggers of schema/0008_ws.sql
-- and the task-end wake-up of the log followers (schema/0001_init.sql); db::logs sends its
-- log-batch wake-ups under the same test. Other events (workers,
-- workflows, sessions: `session/revoked` closes sessions on every replica) are rare and stay
-- as they were.
CREATE TABLE tq_watch (
    replica  text NOT NULL,
    channel  text NOT NULL CHECK (channel IN ('tq_ws', 'task_log')),
    until    timestamptz NOT NULL,
    PRIMARY KEY (replica, channel)
);

-- Does anybody watch `p_channel` now?
CREATE FUNCTION tq_watched(p_channel text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM tq_watch w WHERE w.channel = p_channel AND w.until > now())
$$;

CREATE OR REPLACE FUNCTION tq_ws_task_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    events text;
BEGIN
    IF current_setting('taskqueue.ws_events', true) = 'off' OR NOT tq_watched('tq_ws') THEN
        RETURN NULL;
    END IF;
    SELECT json_agg(e.body ORDER BY e.task_id, e.k)::text INTO events FROM (
        WITH added AS MATERIALIZED (
            SELECT n.*, (SELECT s.workflow_id FROM step s WHERE s.step_id = n.step_id) AS wf
              FROM new_rows n
        )
        SELECT a.task_id, 1 AS k, json_build_object(
                   'type', 'task', 'action', 'created', 'id', a.task_id, 'audience', 'owner',
                   'owner', a.owner_id, 'payload', json_build_object(
                       'taskId', a.task_id, 'command', a.command, 'stepId', a.step_id,
                       'output', a.output, 'status', a.status, 'taskName', a.task_name)) AS body
          FROM added a
        UNION ALL
        SELECT a.task_id, 2, json_build_object(
                   'type', 'task', 'action', 'status', 'id', a.task_id, 'audience', 'owner',
                   'owner', a.owner_id, 'payload', json_build_object(
                       'taskId', a.task_id, 'workerId', a.worker_id, 'oldStatus', NULL,
                       'status', a.status, 'parentTaskId', a.previous_task_id))
          FROM added a WHERE a.previous_task_id IS NOT NULL
        UNION ALL
        SELECT a.task_id, 3, json_build_object(
                   'type', 'step-stats', 'action', 'delta', 'id', a.wf,
                   'audience', 'owner', 'owner', a.owner_id, 'payload', json_build_object(
                       'workflowId', a.wf, 'stepId', a.step_id, 'taskId', a.task_id,
                       'oldStatus', NULL, 'newStatus', a.status, 'incrementTotal', true,
                       'retried', a.previous_task_id IS NOT NULL))
          FROM added a WHERE a.wf IS NOT NULL
        ) e;
    IF events IS NOT NULL THEN
        PERFORM pg_notify('tq_ws', tq_ws_notice(events));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tq_ws_task_update() RETURNS trigger LANGUAGE plpgsql
SET enable_nestloop = off AS $$
DECLARE
    events text;
BEGIN
    IF current_setting('taskqueue.ws_events', true) = 'off' OR NOT tq_watched('tq_ws') THEN
        RETURN NULL;
    END IF;
    SELECT json_agg(e.body ORDER BY e.task_id, e.k)::text INTO events FROM (
        WITH changed AS MATERIALIZED (
            SELECT n.task_id, n.owner_id, n.step_id, n.status, o.status AS old_status,
                   COALESCE(n.worker_id, o.worker_id) AS worker_id,
                   CASE n.status
                       WHEN 'O' THEN n.download_duration
                       WHEN 'U' THEN n.run_duration
                       WHEN 'V' THEN n.run_duration
                       WHEN 'S' THEN n.upload_duration
                       WHEN 'F' THEN n.upload_duration END AS duration,
                   CASE WHEN n.status = 'R'
                        THEN EXTRACT(EPOCH FROM n.run_started_at)::bigint END AS run_started,
                   (SELECT s.workflow_id FROM step s WHERE s.step_id = n.step_id) AS wf
              FROM new_rows n JOIN old_rows o ON o.task_id = n.task_id
             WHERE n.status IS DISTINCT FROM o.status
        )
        SELECT c.task_id, 1 AS k, json_build_object(
                   'type', 'task', 'action', 'status', 'id', c.task_id, 'audience', 'owner',
                   'owner', c.owner_id, 'payload', json_build_object(
                       'taskId', c.task_id, 'workerId', c.worker_id,
                       'oldStatus', c.old_status, 'status', c.status)) AS body
          FROM changed c
        UNION ALL
        SELECT c.task_id, 2, json_build_object(
                   'type', 'step-stats', 'action', 'delta', 'id', c.wf,
                   'audience', 'owner', 'owner', c.owner_id, 'payload', json_strip_nulls(json_build_object(
                       'workflowId', c.wf, 'stepId', c.step_id, 'taskId', c.task_id,
                       'oldStatus', c.old_status, 'newStatus', c.status,
                       'duration', c.duration, 'runStartedEpoch', c.run_started)))
          FROM changed c WHERE c.wf IS NOT NULL
        ) e;
    IF events IS NOT NULL THEN
        PERFORM pg_notify('tq_ws', tq_ws_notice(events));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION task_log_wake_followers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF tq_watched('task_log') THEN
        PERFORM pg_notify('task_log', NEW.task_id::text);
    END IF;
    RETURN NULL;
END
$$;
