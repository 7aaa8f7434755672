-- taskqueue schema, version 1.
--
-- The tables of the original scitq server (behavior.md §2) as adapted by design.md §2: every piece of
-- state another replica may need lives here (liveness timestamps, worker stats, recruiter timers, task
-- logs, template scripts, leadership epoch). Single-letter status columns carry CHECK constraints so a
-- letter outside the documented alphabet can never be stored.

-- ---------------------------------------------------------------------------------------------
-- Workflows and steps
-- ---------------------------------------------------------------------------------------------
CREATE TABLE workflow (
    workflow_id      serial PRIMARY KEY,
    workflow_name    text NOT NULL,
    run_strategy     char(1) NOT NULL DEFAULT 'B' CHECK (run_strategy IN ('B', 'T', 'D', 'Z')),
    maximum_workers  integer CHECK (maximum_workers IS NULL OR maximum_workers >= 0),
    status           char(1) NOT NULL DEFAULT 'P' CHECK (status IN ('P', 'R', 'S', 'F')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- The name the original's constraint had: clients match the error text.
    CONSTRAINT workflow_workflow_name_key UNIQUE (workflow_name)
);

CREATE TABLE step (
    step_id      serial PRIMARY KEY,
    step_name    text NOT NULL,
    workflow_id  integer NOT NULL REFERENCES workflow (workflow_id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT step_step_name_workflow_id_key UNIQUE (step_name, workflow_id)
);
CREATE INDEX step_workflow_id_idx ON step (workflow_id);

-- ---------------------------------------------------------------------------------------------
-- Catalog: providers, regions, flavors
-- ---------------------------------------------------------------------------------------------
CREATE TABLE provider (
    provider_id    serial PRIMARY KEY,
    provider_name  text NOT NULL,
    config_name    text NOT NULL,
    UNIQUE (provider_name, config_name)
);

CREATE TABLE region (
    region_id    serial PRIMARY KEY,
    provider_id  integer NOT NULL REFERENCES provider (provider_id) ON DELETE CASCADE,
    region_name  text NOT NULL,
    is_default   boolean NOT NULL DEFAULT false,
    UNIQUE (provider_id, region_name)
);

CREATE TABLE flavor (
    flavor_id        serial PRIMARY KEY,
    provider_id      integer NOT NULL REFERENCES provider (provider_id) ON DELETE CASCADE,
    flavor_name      text NOT NULL,
    cpu              integer NOT NULL CHECK (cpu >= 0),
    mem              double precision NOT NULL CHECK (mem >= 0),
    disk             double precision NOT NULL CHECK (disk >= 0),
    bandwidth        integer DEFAULT 0,
    gpu              text DEFAULT '',
    gpumem           integer DEFAULT 0,
    has_gpu          boolean NOT NULL DEFAULT false,
    has_quick_disks  boolean NOT NULL DEFAULT false,
    -- When the provider's catalogue last listed this flavor (flavor refresh); NULL = never listed.
    seen_at          timestamptz,
    UNIQUE (provider_id, flavor_name)
);

CREATE TABLE flavor_region (
    flavor_id  integer NOT NULL REFERENCES flavor (flavor_id) ON DELETE CASCADE,
    region_id  integer NOT NULL REFERENCES region (region_id) ON DELETE CASCADE,
    eviction   double precision NOT NULL DEFAULT 0,
    cost       double precision NOT NULL DEFAULT 0,
    available  boolean NOT NULL DEFAULT true,
    PRIMARY KEY (flavor_id, region_id)
);
CREATE INDEX flavor_region_region_id_idx ON flavor_region (region_id);

-- ---------------------------------------------------------------------------------------------
-- Workers
-- ---------------------------------------------------------------------------------------------
CREATE TABLE worker (
    worker_id         serial PRIMARY KEY,
    worker_name       text NOT NULL UNIQUE,
    step_id           integer REFERENCES step (step_id) ON DELETE SET NULL,
    concurrency       integer NOT NULL DEFAULT 1 CHECK (concurrency >= 0),
    prefetch          integer NOT NULL DEFAULT 0 CHECK (prefetch >= 0),
    status            char(1) NOT NULL DEFAULT 'I'
                      CHECK (status IN ('I', 'R', 'P', 'F', 'O', 'Q', 'L', 'D')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- Liveness (design.md §2): written by a ping only when older than a third of the offline
    -- timeout, so idle pings cost no write. NULL = never pinged or registered.
    last_ping_at      timestamptz,
    -- Last time the worker started or finished a task: the watchdog's idle clock.
    last_activity_at  timestamptz,
    -- When the watchdog moved the worker to an offline status (O, Q, L).
    offline_since     timestamptz,
    flavor_id         integer REFERENCES flavor (flavor_id) ON DELETE SET NULL,
    region_id         integer REFERENCES region (region_id) ON DELETE SET NULL,
    is_permanent      boolean NOT NULL DEFAULT false,
    hostname          text,
    ipv4              inet,
    ipv6              inet,
    recyclable_scope  char(1) NOT NULL DEFAULT 'W' CHECK (recyclable_scope IN ('G', 'W', 'T', 'N'))
);
CREATE INDEX worker_step_id_idx ON worker (step_id);
CREATE INDEX worker_flavor_id_idx ON worker (flavor_id);
CREATE INDEX worker_region_id_idx ON worker (region_id);

-- Latest stats a worker sent with its pings (protobuf-encoded WorkerStats). UNLOGGED: losing them
-- in a database crash costs nothing, and they are rewritten every few seconds.
CREATE UNLOGGED TABLE worker_stats (
    worker_id   integer PRIMARY KEY REFERENCES worker (worker_id) ON DELETE CASCADE,
    stats       bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Tasks
-- ---------------------------------------------------------------------------------------------
CREATE TABLE task (
    task_id               serial PRIMARY KEY,
    step_id               integer REFERENCES step (step_id) ON DELETE CASCADE,
    task_name             text,
    command               text NOT NULL,
    shell                 text,
    container             text NOT NULL,
    -- A plain string, as the wire carries it (the original's text[] rejected '--gpus all').
    container_options     text,
    status                char(1) NOT NULL DEFAULT 'P'
                          CHECK (status IN ('I', 'W', 'P', 'A', 'C', 'D', 'O', 'R', 'U', 'V', 'S', 'F', 'X', 'Z')),
    worker_id             integer REFERENCES worker (worker_id) ON DELETE SET NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    modified_at           timestamptz NOT NULL DEFAULT now(),
    previous_task_id      integer REFERENCES task (task_id) ON DELETE SET NULL,
    input                 text[] NOT NULL DEFAULT '{}',
    resource              text[] NOT NULL DEFAULT '{}',
    output                text,
    retry                 integer CHECK (retry IS NULL OR retry >= 0),
    is_final              boolean,
    uses_cache            boolean,
    download_timeout      double precision,
    running_timeout       double precision,
    upload_timeout        double precision,
    retry_count           integer NOT NULL DEFAULT 0,
    hidden                boolean NOT NULL DEFAULT false,
    download_duration     integer NOT NULL DEFAULT 0,
    run_duration          integer NOT NULL DEFAULT 0,
    upload_duration       integer NOT NULL DEFAULT 0,
    run_started_at        timestamptz,
    weight                double precision NOT NULL DEFAULT 1.0 CHECK (weight > 0),
    -- Pending-queue shard (task_id % assign_shards at insert): claimers of different shards never
    -- contend (design.md §3).
    shard                 smallint NOT NULL DEFAULT 0 CHECK (shard >= 0),
    -- When the task last became P: queue wait = assignment time - pending_since.
    pending_since         timestamptz,
    -- When the task was last assigned (P -> A).
    assigned_at           timestamptz,
    input_hash            uuid
);
-- The claim: oldest pending task of a step's shard, one index probe (design.md §3). Step-less
-- tasks are keyed 0 (step ids start at 1).
CREATE INDEX task_pending_idx ON task ((COALESCE(step_id, 0)), shard, task_id) WHERE status = 'P';
-- A ping reads the tasks its worker holds.
CREATE INDEX task_worker_active_idx ON task (worker_id)
    WHERE status IN ('A', 'C', 'D', 'O', 'R', 'U', 'V');
-- Worker deletion (FK SET NULL) and ListTasks by worker.
CREATE INDEX task_worker_id_idx ON task (worker_id);
-- Step statistics, ListTasks by step, step deletion.
CREATE INDEX task_step_status_idx ON task (step_id, status);
CREATE INDEX task_previous_task_id_idx ON task (previous_task_id);
CREATE INDEX task_status_idx ON task (status) WHERE NOT hidden;
-- The claim walks past index entries of tasks claimed before; vacuum them away early.
ALTER TABLE task SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 2000,
                      autovacuum_analyze_scale_factor = 0.05);

CREATE TABLE task_dependencies (
    dependent_task_id     integer NOT NULL REFERENCES task (task_id) ON DELETE CASCADE,
    prerequisite_task_id  integer NOT NULL REFERENCES task (task_id) ON DELETE CASCADE,
    PRIMARY KEY (dependent_task_id, prerequisite_task_id),
    CHECK (dependent_task_id <> prerequisite_task_id)
);
CREATE INDEX task_dependencies_prerequisite_idx ON task_dependencies (prerequisite_task_id);

-- Where each (step, shard) claim starts scanning: entries below it belong to tasks claimed before
-- (design.md §3). A hint only: a periodic rescan from 0 finds tasks that returned to P with old
-- ids. UNLOGGED: after a crash it is empty and claims start from 0, which is correct.
CREATE UNLOGGED TABLE assign_cursor (
    step_key      integer NOT NULL,   -- step_id, or 0 for step-less tasks
    shard         smallint NOT NULL,
    next_task_id  integer NOT NULL DEFAULT 0,
    rescan_after  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (step_key, shard)
);

-- Task output, stored in batches (design.md §6). seq orders the batches of one (task, stream) and is
-- assigned under a per-task lock held to commit, so followers never miss a batch.
CREATE TABLE task_log (
    task_id     integer NOT NULL REFERENCES task (task_id) ON DELETE CASCADE,
    stream      char(1) NOT NULL CHECK (stream IN ('O', 'E')),
    seq         integer NOT NULL,
    line_count  integer NOT NULL CHECK (line_count >= 0),
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, stream, seq)
);

-- ---------------------------------------------------------------------------------------------
-- Recruiters and provider jobs
-- ---------------------------------------------------------------------------------------------
CREATE TABLE recruiter (
    step_id             integer NOT NULL REFERENCES step (step_id) ON DELETE CASCADE,
    rank                integer NOT NULL DEFAULT 1,
    timeout             integer NOT NULL DEFAULT 0 CHECK (timeout >= 0),
    protofilter         text NOT NULL,
    worker_concurrency  integer,
    worker_prefetch     integer,
    maximum_workers     integer,
    rounds              integer NOT NULL DEFAULT 1 CHECK (rounds > 0),
    cpu_per_task        integer,
    memory_per_task     double precision,
    disk_per_task       double precision,
    prefetch_percent    integer,
    concurrency_min     integer,
    concurrency_max     integer,
    -- Timers (design.md §2): when the recruiter was first seen active, and its last deployment.
    active_since        timestamptz,
    last_deploy_at      timestamptz,
    -- Set when the recruiter cannot run (e.g. its protofilter does not parse); NULL = enabled.
    disabled_reason     text,
    PRIMARY KEY (step_id, rank)
);

CREATE TABLE job (
    job_id       serial PRIMARY KEY,
    worker_id    integer REFERENCES worker (worker_id) ON DELETE SET NULL,
    -- Provider operations are idempotent by worker name, which outlives the worker row.
    worker_name  text,
    action       char(1) NOT NULL DEFAULT 'C' CHECK (action IN ('C', 'D', 'R', 'U')),
    flavor_id    integer REFERENCES flavor (flavor_id) ON DELETE SET NULL,
    region_id    integer REFERENCES region (region_id) ON DELETE SET NULL,
    retry        integer NOT NULL DEFAULT 0,
    status       char(1) NOT NULL DEFAULT 'P' CHECK (status IN ('P', 'R', 'S', 'F', 'X')),
    log          text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    modified_at  timestamptz NOT NULL DEFAULT now(),
    progression  smallint NOT NULL DEFAULT 0 CHECK (progression <= 100),
    -- A running job belongs to its runner until this instant; after it, any leader may take it over.
    lease_until  timestamptz,
    claimed_by   text
);
CREATE INDEX job_open_idx ON job (job_id) WHERE status IN ('P', 'R');
CREATE INDEX job_worker_id_idx ON job (worker_id);

-- ---------------------------------------------------------------------------------------------
-- Users and sessions
-- ---------------------------------------------------------------------------------------------
CREATE TABLE scitq_user (
    user_id     serial PRIMARY KEY,
    username    text NOT NULL UNIQUE CHECK (username <> ''),
    -- PHC string: argon2id for passwords set here, bcrypt accepted for a configured admin hash.
    password    text NOT NULL,
    email       text,
    is_admin    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Sessions: only the SHA-256 of the token is stored, so a database dump grants no access.
CREATE TABLE scitq_user_session (
    token_sha256  bytea PRIMARY KEY CHECK (length(token_sha256) = 32),
    user_id       integer NOT NULL REFERENCES scitq_user (user_id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    last_used     timestamptz
);
CREATE INDEX scitq_user_session_user_id_idx ON scitq_user_session (user_id);
CREATE INDEX scitq_user_session_expires_at_idx ON scitq_user_session (expires_at);

-- ---------------------------------------------------------------------------------------------
-- Templates
-- ---------------------------------------------------------------------------------------------
CREATE TABLE workflow_template (
    workflow_template_id  serial PRIMARY KEY,
    name                  text NOT NULL,
    version               text NOT NULL,
    description           text NOT NULL DEFAULT '',
    -- The script itself: any replica can run any template (written to a temp file while it runs).
    script                bytea NOT NULL,
    params_schema         jsonb NOT NULL,
    uploaded_at           timestamptz NOT NULL DEFAULT now(),
    uploaded_by           integer REFERENCES scitq_user (user_id) ON DELETE SET NULL,
    UNIQUE (name, version)
);

CREATE TABLE template_run (
    template_run_id       serial PRIMARY KEY,
    workflow_template_id  integer NOT NULL REFERENCES workflow_template (workflow_template_id) ON DELETE CASCADE,
    param_values          jsonb NOT NULL,
    workflow_id           integer REFERENCES workflow (workflow_id) ON DELETE SET NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    status                char(1) NOT NULL DEFAULT 'P' CHECK (status IN ('P', 'S', 'F')),
    run_by                integer REFERENCES scitq_user (user_id) ON DELETE SET NULL,
    error_message         text
);
CREATE INDEX template_run_template_idx ON template_run (workflow_template_id);

-- ---------------------------------------------------------------------------------------------
-- Worker events
-- ---------------------------------------------------------------------------------------------
CREATE TABLE worker_event (
    event_id      bigserial PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Nullable: events may precede registration, and outlive the worker.
    worker_id     integer REFERENCES worker (worker_id) ON DELETE SET NULL,
    worker_name   text NOT NULL DEFAULT '',
    level         char(1) NOT NULL DEFAULT 'I' CHECK (level IN ('D', 'I', 'W', 'E')),
    event_class   text NOT NULL,
    message       text NOT NULL,
    details_json  jsonb
);
CREATE INDEX worker_event_created_at_idx ON worker_event (created_at DESC);
CREATE INDEX worker_event_worker_id_idx ON worker_event (worker_id);
CREATE INDEX worker_event_level_idx ON worker_event (level);
CREATE INDEX worker_event_class_idx ON worker_event (event_class);

-- ---------------------------------------------------------------------------------------------
-- Cluster
-- ---------------------------------------------------------------------------------------------
-- The current leadership term (design.md §4). Every leader-only mutation first checks, in its own
-- transaction, that the epoch here is still its own: a deposed leader's write is refused by SQL.
CREATE TABLE cluster_leader (
    id         integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch      bigint NOT NULL,
    holder     text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now()
);

-- Epochs of the Postgres-lock leadership mode.
CREATE SEQUENCE cluster_epoch_seq;
