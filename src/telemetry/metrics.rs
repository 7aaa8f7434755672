//! Every metric the crate exports: names as consts, their help text, explicit histogram buckets (so
//! replicas' histograms can be summed in Prometheus), and the process-wide recorder. Labels are
//! bounded: no task, worker or user ids.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// gRPC server metrics, named as go-grpc-prometheus names them so existing dashboards work.
pub const GRPC_STARTED: &str = "grpc_server_started_total";
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";

// Database.
pub const DB_TX_SECONDS: &str = "taskqueue_db_transaction_duration_seconds";
pub const DB_TX_RETRIES: &str = "taskqueue_db_transaction_retries_total";
pub const DB_TX_ERRORS: &str = "taskqueue_db_transaction_errors_total";
pub const DB_POOL_CONNECTIONS: &str = "taskqueue_db_pool_connections";
pub const DB_POOL_MAX: &str = "taskqueue_db_pool_max_connections";
pub const DB_POOL_WAITING: &str = "taskqueue_db_pool_waiting";
pub const DB_QUERIES_ABANDONED: &str = "taskqueue_db_queries_abandoned_total";

// Dispatch (ping-and-assign).
pub const PING_SECONDS: &str = "taskqueue_ping_duration_seconds";
pub const TASKS_PER_PING: &str = "taskqueue_tasks_per_ping";
pub const TASKS_ASSIGNED: &str = "taskqueue_tasks_assigned_total";
pub const TASK_QUEUE_WAIT_SECONDS: &str = "taskqueue_task_queue_wait_seconds";
pub const TASK_STATUS_UPDATES: &str = "taskqueue_task_status_updates_total";
pub const TASKS_SUBMITTED: &str = "taskqueue_tasks_submitted_total";
pub const TASK_RETRIES: &str = "taskqueue_task_retries_total";

// Group commit (db::batch): label `kind` is a batcher's name (a closed set: ping, …).
pub const BATCH_SIZE: &str = "taskqueue_batch_size";
pub const BATCH_WAIT_SECONDS: &str = "taskqueue_batch_wait_seconds";
pub const BATCH_ROWS_PER_STATEMENT: &str = "taskqueue_batch_rows_per_statement";
pub const BATCH_REFUSED: &str = "taskqueue_batch_refused_total";

// Task logs and worker events.
pub const LOG_RECEIVED_BYTES: &str = "taskqueue_log_received_bytes_total";
pub const LOG_RECEIVED_LINES: &str = "taskqueue_log_received_lines_total";
pub const LOG_BATCHES_WRITTEN: &str = "taskqueue_log_batches_written_total";
pub const LOG_DROPPED_BYTES: &str = "taskqueue_log_dropped_bytes_total";
pub const LOG_STREAMS_ACTIVE: &str = "taskqueue_log_streams_active";
pub const LOG_STREAMS_REFUSED: &str = "taskqueue_log_streams_refused_total";
pub const LOG_FOLLOW_LAG_SECONDS: &str = "taskqueue_log_follow_lag_seconds";
pub const WORKER_EVENTS_INSERTED: &str = "taskqueue_worker_events_inserted_total";
pub const NOTIFY_LISTENING: &str = "taskqueue_notify_listening";
pub const NOTIFY_RECONNECTS: &str = "taskqueue_notify_reconnects_total";
// WebSocket /ws (web::ws).
pub const WS_SOCKETS: &str = "taskqueue_ws_sockets";
pub const WS_EVENTS: &str = "taskqueue_ws_events_total";
pub const WS_MESSAGES_SENT: &str = "taskqueue_ws_messages_sent_total";
pub const WS_CLOSED: &str = "taskqueue_ws_closed_total";
pub const WS_REFUSED: &str = "taskqueue_ws_refused_total";
// Fleet: provider jobs, workers, recruiters.
pub const JOBS_FINISHED: &str = "taskqueue_jobs_total";
pub const JOB_DURATION_SECONDS: &str = "taskqueue_job_duration_seconds";
pub const JOBS_OPEN: &str = "taskqueue_jobs_open";
pub const WORKERS: &str = "taskqueue_workers";
pub const TASKS: &str = "taskqueue_tasks";
pub const WORKERS_IDLE_ELIGIBLE: &str = "taskqueue_workers_idle_eligible";
pub const RECRUITER_DEPLOYMENTS: &str = "taskqueue_recruiter_deployments_total";
pub const RECRUITER_RECYCLES: &str = "taskqueue_recruiter_recycles_total";
// Templates.
pub const TEMPLATE_RUNS: &str = "taskqueue_template_runs_total";
pub const TEMPLATE_RUN_SECONDS: &str = "taskqueue_template_run_duration_seconds";

// The web listener.
pub const WEB_REQUESTS: &str = "taskqueue_web_requests_total";

// Caches (moka).
pub const CACHE_REQUESTS: &str = "taskqueue_cache_requests_total";

// Leadership and leader-only loops (label `loop` is a registered loop name: a closed set).
pub const LEADER: &str = "taskqueue_leader";
pub const LEADER_EPOCH: &str = "taskqueue_leader_epoch";
pub const LEADER_TRANSITIONS: &str = "taskqueue_leader_transitions_total";
pub const LEADER_LOOP_SECONDS: &str = "taskqueue_leader_loop_duration_seconds";
pub const LEADER_LOOP_ERRORS: &str = "taskqueue_leader_loop_errors_total";
pub const WATCHDOG_TRANSITIONS: &str = "taskqueue_watchdog_transitions_total";
pub const WATCHDOG_DELETIONS: &str = "taskqueue_watchdog_deletions_total";
pub const DEPENDENCY_PROMOTED: &str = "taskqueue_dependency_promoted_total";
pub const DEPENDENCY_FAILED: &str = "taskqueue_dependency_failed_total";

// Process.
pub const BUILD_INFO: &str = "taskqueue_build_info";
pub const DRAINING: &str = "taskqueue_draining";

// Hardening: panics caught in handlers, logins refused by the login gate.
pub const GRPC_PANICS: &str = "taskqueue_grpc_panics_total";
pub const LOGINS_REFUSED: &str = "taskqueue_logins_refused_total";

/// Latency buckets (seconds) for RPCs, transactions and pings: 0.5 ms … 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Queue-wait buckets (seconds): 10 ms … 1 day; bioinformatics tasks may wait hours for a worker.
pub const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];
/// Provider job buckets (seconds): a local process starts in milliseconds, a cloud VM in minutes;
/// the job timeout is 10 minutes.
pub const JOB_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
];
/// Count buckets (tasks per ping).
pub const COUNT_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Batch size buckets (requests per batch, rows per statement): 1 … 1024 (the cap is 256 by default).
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Batch wait buckets (seconds): 50 µs … 1 s; a request waits at most one batch in flight.
pub const BATCH_WAIT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Histograms and their buckets; any histogram not listed here gets `LATENCY_BUCKETS`.
const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (TASK_QUEUE_WAIT_SECONDS, QUEUE_WAIT_BUCKETS),
    (TASKS_PER_PING, COUNT_BUCKETS),
    (LOG_FOLLOW_LAG_SECONDS, LATENCY_BUCKETS),
    (JOB_DURATION_SECONDS, JOB_BUCKETS),
    (TEMPLATE_RUN_SECONDS, JOB_BUCKETS),
    (BATCH_SIZE, BATCH_BUCKETS),
    (BATCH_ROWS_PER_STATEMENT, BATCH_BUCKETS),
    (BATCH_WAIT_SECONDS, BATCH_WAIT_BUCKETS),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle) and
/// describes every metric. Several replicas in one process (tests) share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in HISTOGRAM_BUCKETS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_string()), buckets)
                    .expect("bucket lists are non-empty");
            }
            builder = builder
                .set_buckets(LATENCY_BUCKETS)
                .expect("bucket list is non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist if a test installed one first; ours is then unused.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(GRPC_STARTED, "RPCs started on the server");
    describe_counter!(
        WEB_REQUESTS,
        "Requests of the web listener, by kind (grpc-web, rest, ws, client, files) and HTTP status"
    );
    describe_counter!(
        TEMPLATE_RUNS,
        "Template runs finished, by outcome (succeeded, failed, timed_out)"
    );
    describe_histogram!(
        TEMPLATE_RUN_SECONDS,
        Unit::Seconds,
        "Duration of template script runs (RunTemplate), by outcome"
    );
    describe_counter!(
        GRPC_HANDLED,
        "RPCs completed on the server, by gRPC status code"
    );
    describe_histogram!(
        GRPC_HANDLING_SECONDS,
        Unit::Seconds,
        "Time to handle an RPC, until its last message"
    );
    describe_histogram!(
        DB_TX_SECONDS,
        Unit::Seconds,
        "Database transaction time, by operation"
    );
    describe_counter!(
        DB_TX_RETRIES,
        "Transactions run again after a serialization failure or deadlock"
    );
    describe_counter!(DB_TX_ERRORS, "Transactions that failed, by operation");
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Pooled database connections, by state (idle, in_use)"
    );
    describe_gauge!(DB_POOL_MAX, "Maximum size of the database pool");
    describe_counter!(
        DB_QUERIES_ABANDONED,
        "Queries whose request was dropped mid-query: cancelled, their connection discarded"
    );
    describe_counter!(
        GRPC_PANICS,
        "Handler panics caught and answered with INTERNAL (each one is a bug)"
    );
    describe_counter!(
        LOGINS_REFUSED,
        "Login/ChangePassword attempts refused before hashing, by reason (busy, backoff, too_long)"
    );
    describe_gauge!(
        DB_POOL_WAITING,
        "Requests waiting for a database connection"
    );
    describe_histogram!(
        PING_SECONDS,
        Unit::Seconds,
        "PingAndTakeNewTasks handling time"
    );
    describe_histogram!(TASKS_PER_PING, "Tasks newly assigned by one ping");
    describe_counter!(TASKS_ASSIGNED, "Tasks assigned to workers (P to A)");
    describe_histogram!(
        TASK_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time from a task becoming pending to its assignment"
    );
    describe_counter!(
        TASK_STATUS_UPDATES,
        "Task status updates applied, by new status"
    );
    describe_counter!(TASKS_SUBMITTED, "Tasks submitted");
    describe_histogram!(
        BATCH_SIZE,
        "Requests served by one batch (group commit), by kind"
    );
    describe_histogram!(
        BATCH_WAIT_SECONDS,
        Unit::Seconds,
        "Time a request waited in its batch queue before its batch started, by kind"
    );
    describe_histogram!(
        BATCH_ROWS_PER_STATEMENT,
        "Requests one statement of a batch served, by kind (its count is the statements run)"
    );
    describe_counter!(
        BATCH_REFUSED,
        "Requests refused UNAVAILABLE because their batch queue stayed full, by kind"
    );
    describe_counter!(TASK_RETRIES, "Tasks retried, by kind (automatic, manual)");
    describe_counter!(
        LOG_DROPPED_BYTES,
        Unit::Bytes,
        "Task log bytes dropped because their task reached --max-log-bytes-per-task"
    );
    describe_counter!(
        LOG_RECEIVED_BYTES,
        Unit::Bytes,
        "Task log bytes received by SendTaskLogs and stored (each line counts its newline)"
    );
    describe_counter!(
        LOG_RECEIVED_LINES,
        "Task log lines received by SendTaskLogs and stored"
    );
    describe_counter!(LOG_BATCHES_WRITTEN, "Task log batches written");
    describe_gauge!(
        LOG_STREAMS_ACTIVE,
        "Open log streams, by kind (send: SendTaskLogs, follow: StreamTaskLogs*)"
    );
    describe_counter!(
        LOG_STREAMS_REFUSED,
        "Follow streams refused because the replica already serves its maximum"
    );
    describe_histogram!(
        LOG_FOLLOW_LAG_SECONDS,
        Unit::Seconds,
        "Time from a log batch's commit to its last line being handed to a follower"
    );
    describe_counter!(WORKER_EVENTS_INSERTED, "Worker events stored, by level");
    describe_gauge!(
        NOTIFY_LISTENING,
        "1 while the replica's LISTEN session (log follow wake-ups) is up"
    );
    describe_counter!(
        NOTIFY_RECONNECTS,
        "Times the LISTEN session was lost and reconnected"
    );
    describe_gauge!(WS_SOCKETS, "WebSocket /ws connections open on this replica");
    describe_counter!(
        WS_EVENTS,
        "WebSocket events read from tq_ws, by how they came (inline, ref, lost, bad)"
    );
    describe_counter!(
        WS_MESSAGES_SENT,
        "Event messages queued to WebSocket clients of this replica"
    );
    describe_counter!(
        WS_CLOSED,
        "WebSocket connections closed by the server, by reason (slow, revoked, too_big, idle, draining, error)"
    );
    describe_counter!(
        WS_REFUSED,
        "WebSocket upgrades refused, by reason (unauthenticated, forbidden, replica_full, user_full)"
    );
    describe_counter!(
        JOBS_FINISHED,
        "Provider job attempts that ended, by action (C, D, R, U) and result (S, F, retry, lost)"
    );
    describe_histogram!(
        JOB_DURATION_SECONDS,
        Unit::Seconds,
        "Time of one provider job attempt, by action"
    );
    describe_gauge!(
        JOBS_OPEN,
        "Provider jobs pending or running, by action and status (set by the leader)"
    );
    describe_gauge!(
        WORKERS,
        "Workers by status and provider (set by the leader; query with max by (status, provider))"
    );
    describe_gauge!(
        TASKS,
        "Visible tasks not yet terminal, by status (set by the leader; query with the leader's series)"
    );
    describe_gauge!(
        WORKERS_IDLE_ELIGIBLE,
        "Running workers holding no task while tasks of their step are pending (set by the leader)"
    );
    describe_counter!(RECRUITER_DEPLOYMENTS, "Workers deployed by recruiters");
    describe_counter!(
        RECRUITER_RECYCLES,
        "Idle workers recycled by recruiters to another step"
    );
    describe_counter!(
        CACHE_REQUESTS,
        "Cache lookups, by cache and result (hit, miss)"
    );
    describe_gauge!(
        LEADER,
        "1 while this replica holds leadership and runs the leader loops, else 0"
    );
    describe_gauge!(
        LEADER_EPOCH,
        "Epoch of this replica's current leadership term (0 when not leader)"
    );
    describe_counter!(
        LEADER_TRANSITIONS,
        "Leadership changes of this replica, by new role (leader, follower)"
    );
    describe_histogram!(
        LEADER_LOOP_SECONDS,
        Unit::Seconds,
        "Time of one iteration of a leader loop, by loop"
    );
    describe_counter!(
        LEADER_LOOP_ERRORS,
        "Failed iterations of a leader loop, by loop"
    );
    describe_counter!(
        WATCHDOG_TRANSITIONS,
        "Workers the watchdog moved to an offline status, by new status (O, Q, L)"
    );
    describe_counter!(
        WATCHDOG_DELETIONS,
        "Workers due for deletion, by reason (idle, lost) and outcome (deleted, scheduled: a delete job)"
    );
    describe_counter!(
        DEPENDENCY_PROMOTED,
        "Waiting tasks made pending because all their prerequisites succeeded"
    );
    describe_counter!(
        DEPENDENCY_FAILED,
        "Waiting tasks failed because a prerequisite failed for good"
    );
    describe_gauge!(BUILD_INFO, "Build information (always 1)");
    describe_gauge!(DRAINING, "1 while the replica is shutting down");
}
