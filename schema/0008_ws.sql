-- WebSocket events (behavior.md Appendix A), published by the database itself: triggers on the
-- tables whose changes the UI shows send one NOTIFY on channel 'tq_ws' per event, inside the
-- transaction that made the change (NOTIFY is delivered at commit: a rolled-back change sends
-- nothing), whichever code path or replica made it. Every replica LISTENs and forwards to its
-- own sockets (src/web/ws.rs).
--
-- Notification body: JSON {type, action, id, audience, owner, payload}. `audience` says who may
-- receive it: 'all' (any logged-in user), 'owner' (the user `owner` and admins; no owner: admins
-- only), 'admin', or 'internal' (never forwarded: e.g. session/revoked closes sockets). Bodies
-- over 7,900 bytes (NOTIFY's limit is 8,000) are stored in ws_event and only {"ref": event_id} is
-- notified; readers fetch the body. Rows are pruned by the replicas after WS_EVENT_KEEP.
--
-- Kill switch: `SET taskqueue.ws_events = 'off'` (per session, role or database) publishes
-- nothing. Bulk cascades (a workflow's steps and tasks deleted with it) publish only the event of
-- the row deleted by the statement itself (pg_trigger_depth() > 1 inside a cascade).

-- UNLOGGED: bodies live for seconds; losing them in a crash loses events that were never going
-- to be replayed anyway, and writing them costs no WAL.
CREATE UNLOGGED TABLE ws_event (
    event_id    bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    body        text NOT NULL
);
CREATE INDEX ws_event_created_at_idx ON ws_event (created_at);

-- Stores a body too large for NOTIFY; returns its id.
CREATE FUNCTION tq_ws_store(body text) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO ws_event (body) VALUES (body) RETURNING event_id
$$;

-- What is notified for a body: itself, or a reference to its stored copy.
CREATE FUNCTION tq_ws_notice(body text) RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN octet_length(body) <= 7900 THEN body
                ELSE json_build_object('ref', tq_ws_store(body))::text END
$$;

CREATE FUNCTION tq_ws_publish(kind text, action text, object_id bigint, audience text,
                              owner_id integer, payload json)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('taskqueue.ws_events', true) = 'off' THEN
        RETURN;
    END IF;
    PERFORM pg_notify('tq_ws', tq_ws_notice(json_build_object(
        'type', kind, 'action', action, 'id', object_id, 'audience', audience,
        'owner', owner_id, 'payload', payload)::text));
END
$$;

-- Tasks: created, status changes (each with the step's statistics delta), deleted. Inserts and
-- updates are statement-level over the transition tables: a claim of many tasks in one
-- statement runs the function once, set-based, and sends ONE notification holding the JSON
-- array of its events (stored by reference when over 7,900 bytes). Why one: NOTIFY's queue is
-- cached in 8 pages (64 kB); a burst of thousands of notifications overflows it and every
-- notifying commit (log followers' wake-ups too) then waits on its disk pages.
CREATE FUNCTION tq_ws_task_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    events text;
BEGIN
    IF current_setting('taskqueue.ws_events', true) = 'off' THEN
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

-- The transition tables have no index: their join must be hashed, never a nested loop (which
-- is quadratic in the rows of the statement), hence enable_nestloop off inside the function.
-- The step's workflow is a scalar subquery (one index probe per changed row), not a join.
CREATE FUNCTION tq_ws_task_update() RETURNS trigger LANGUAGE plpgsql
SET enable_nestloop = off AS $$
DECLARE
    events text;
BEGIN
    IF current_setting('taskqueue.ws_events', true) = 'off' THEN
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

CREATE FUNCTION tq_ws_task_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() > 1 THEN
        RETURN NULL;
    END IF;
    PERFORM tq_ws_publish('task', 'deleted', OLD.task_id, 'owner', OLD.owner_id,
        json_build_object('taskId', OLD.task_id, 'workerId', OLD.worker_id, 'status', OLD.status));
    RETURN NULL;
END
$$;

CREATE TRIGGER task_ws_insert AFTER INSERT ON task
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tq_ws_task_insert();
CREATE TRIGGER task_ws_update AFTER UPDATE ON task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tq_ws_task_update();
CREATE TRIGGER task_ws_delete AFTER DELETE ON task
    FOR EACH ROW EXECUTE FUNCTION tq_ws_task_delete();

-- Workers: every logged-in user sees the fleet (ListWorkers is open to all); the envelope's id
-- is the worker id (the UI matches on it).
CREATE FUNCTION tq_ws_worker() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sname text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tq_ws_publish('worker', 'deleted', OLD.worker_id, 'all', NULL,
            json_build_object('workerId', OLD.worker_id));
        RETURN NULL;
    END IF;
    IF NEW.step_id IS NOT NULL THEN
        SELECT step_name INTO sname FROM step WHERE step_id = NEW.step_id;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM tq_ws_publish('worker', 'created', NEW.worker_id, 'all', NULL,
            json_build_object('worker', json_build_object(
                'workerId', NEW.worker_id, 'name', NEW.worker_name, 'stepName', sname,
                'stepId', NEW.step_id, 'concurrency', NEW.concurrency,
                'prefetch', NEW.prefetch, 'status', NEW.status), 'job', NULL));
        RETURN NULL;
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM tq_ws_publish('worker', 'status', NEW.worker_id, 'all', NULL,
            json_build_object('workerId', NEW.worker_id, 'status', NEW.status));
    END IF;
    IF (NEW.worker_name, NEW.step_id, NEW.concurrency, NEW.prefetch)
       IS DISTINCT FROM (OLD.worker_name, OLD.step_id, OLD.concurrency, OLD.prefetch) THEN
        PERFORM tq_ws_publish('worker', 'updated', NEW.worker_id, 'all', NULL,
            json_build_object('workerId', NEW.worker_id, 'name', NEW.worker_name,
                               'stepId', NEW.step_id, 'stepName', sname,
                               'concurrency', NEW.concurrency, 'prefetch', NEW.prefetch));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER worker_ws_insert AFTER INSERT ON worker
    FOR EACH ROW EXECUTE FUNCTION tq_ws_worker();
CREATE TRIGGER worker_ws_update AFTER UPDATE OF status, worker_name, step_id, concurrency, prefetch
    ON worker FOR EACH ROW
    WHEN ((NEW.status, NEW.worker_name, NEW.step_id, NEW.concurrency, NEW.prefetch)
          IS DISTINCT FROM (OLD.status, OLD.worker_name, OLD.step_id, OLD.concurrency, OLD.prefetch))
    EXECUTE FUNCTION tq_ws_worker();
CREATE TRIGGER worker_ws_delete AFTER DELETE ON worker
    FOR EACH ROW EXECUTE FUNCTION tq_ws_worker();

-- Workflows and steps: their owner's (a step belongs to its workflow's owner). A step's events
-- carry the workflow id as the envelope's id.
CREATE FUNCTION tq_ws_workflow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tq_ws_publish('workflow', 'deleted', OLD.workflow_id, 'owner', OLD.owner_id,
            json_build_object('workflowId', OLD.workflow_id));
    ELSE
        PERFORM tq_ws_publish('workflow', 'created', NEW.workflow_id, 'owner', NEW.owner_id,
            json_build_object('workflowId', NEW.workflow_id, 'name', NEW.workflow_name));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER workflow_ws AFTER INSERT OR DELETE ON workflow
    FOR EACH ROW EXECUTE FUNCTION tq_ws_workflow();

CREATE FUNCTION tq_ws_step() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wname text;
    owner integer;
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF pg_trigger_depth() > 1 THEN
            RETURN NULL;
        END IF;
        SELECT owner_id INTO owner FROM workflow WHERE workflow_id = OLD.workflow_id;
        PERFORM tq_ws_publish('step', 'deleted', OLD.workflow_id, 'owner', owner,
            json_build_object('stepId', OLD.step_id));
    ELSE
        SELECT workflow_name, owner_id INTO wname, owner FROM workflow
         WHERE workflow_id = NEW.workflow_id;
        PERFORM tq_ws_publish('step', 'created', NEW.workflow_id, 'owner', owner,
            json_build_object('stepId', NEW.step_id, 'name', NEW.step_name,
                               'workflowId', NEW.workflow_id, 'workflowName', wname));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER step_ws AFTER INSERT OR DELETE ON step
    FOR EACH ROW EXECUTE FUNCTION tq_ws_step();

-- Provider jobs (ListJobs is open to every logged-in user). A deletion job also announces
-- worker/deletionScheduled (id = the worker). Runner bookkeeping (leases, attempts, log lines)
-- publishes nothing: only status and progression changes do.
CREATE FUNCTION tq_ws_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tq_ws_publish('job', 'deleted', OLD.job_id, 'all', NULL,
            json_build_object('jobId', OLD.job_id));
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM tq_ws_publish('job', 'created', NEW.job_id, 'all', NULL,
            json_build_object('jobId', NEW.job_id, 'action', NEW.action, 'status', NEW.status,
                               'workerId', NEW.worker_id, 'modifiedAt', NEW.modified_at));
        IF NEW.action = 'D' AND NEW.worker_id IS NOT NULL THEN
            PERFORM tq_ws_publish('worker', 'deletionScheduled', NEW.worker_id, 'all', NULL,
                json_build_object('workerId', NEW.worker_id, 'jobId', NEW.job_id));
        END IF;
    ELSE
        PERFORM tq_ws_publish('job', 'updated', NEW.job_id, 'all', NULL,
            json_build_object('jobId', NEW.job_id, 'status', NEW.status,
                               'progression', NEW.progression, 'modifiedAt', NEW.modified_at));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER job_ws_insert_delete AFTER INSERT OR DELETE ON job
    FOR EACH ROW EXECUTE FUNCTION tq_ws_job();
CREATE TRIGGER job_ws_update AFTER UPDATE OF status, progression ON job
    FOR EACH ROW WHEN ((NEW.status, NEW.progression) IS DISTINCT FROM (OLD.status, OLD.progression))
    EXECUTE FUNCTION tq_ws_job();

-- Templates (ListTemplates is open to every logged-in user).
CREATE FUNCTION tq_ws_template() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tq_ws_publish('template', 'uploaded', NEW.workflow_template_id, 'all', NULL,
        json_build_object('workflowTemplateId', NEW.workflow_template_id, 'name', NEW.name,
                           'version', NEW.version, 'description', NEW.description,
                           'paramJson', NEW.params_schema::text,
                           'uploadedAt', NEW.uploaded_at));
    RETURN NULL;
END
$$;
CREATE TRIGGER template_ws AFTER INSERT ON workflow_template
    FOR EACH ROW EXECUTE FUNCTION tq_ws_template();

-- Users: admins only (e-mail addresses are theirs and the user's own to read). Never the hash.
CREATE FUNCTION tq_ws_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM tq_ws_publish('user', 'deleted', OLD.user_id, 'admin', NULL,
            json_build_object('userId', OLD.user_id));
    ELSE
        PERFORM tq_ws_publish('user',
            CASE TG_OP WHEN 'INSERT' THEN 'created' ELSE 'updated' END, NEW.user_id, 'admin', NULL,
            json_build_object('userId', NEW.user_id, 'username', NEW.username,
                               'email', NEW.email, 'isAdmin', NEW.is_admin));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER user_ws_insert_delete AFTER INSERT OR DELETE ON scitq_user
    FOR EACH ROW EXECUTE FUNCTION tq_ws_user();
CREATE TRIGGER user_ws_update AFTER UPDATE OF username, email, is_admin ON scitq_user
    FOR EACH ROW WHEN ((NEW.username, NEW.email, NEW.is_admin)
                       IS DISTINCT FROM (OLD.username, OLD.email, OLD.is_admin))
    EXECUTE FUNCTION tq_ws_user();

-- Sessions: a revoked session (Logout, user deletion, expiry sweep) closes its sockets on every
-- replica at once. Internal: never forwarded to a browser.
CREATE FUNCTION tq_ws_session() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tq_ws_publish('session', 'revoked', 0, 'internal', OLD.user_id,
        json_build_object('tokenSha256', encode(OLD.token_sha256, 'hex')));
    RETURN NULL;
END
$$;
CREATE TRIGGER session_ws_delete AFTER DELETE ON scitq_user_session
    FOR EACH ROW EXECUTE FUNCTION tq_ws_session();
