//! What every hostile request must leave behind: the database as it was (row counts and checksums of
//! every table), a server that still answers, and a process whose memory stayed bounded.
//!
//! `Guard::new` logs the admin in first (so its session row exists before the snapshot), then
//! snapshots. `refused` asserts a request failed with the exact code and a bounded message, and counts
//! it; `assert_unchanged` compares the database with the snapshot and checks liveness and RSS.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::{Code, Status};

use crate::common::{Replica, postgres};

/// Tables that change on their own (the leader's heartbeat).
const ALWAYS_IGNORED: &[&str] = &["cluster_leader"];
/// Columns any authenticated call or ping rewrites (`table.column`): not compared.
const VOLATILE: &[&str] = &[
    "scitq_user_session.last_used",
    "worker.last_ping_at",
    "worker_stats.updated_at",
    "worker_stats.stats",
];
/// How much the process may grow over the guard's life (the replica runs in this process).
pub const RSS_BOUND: u64 = 256 << 20;
/// Longest acceptable error message: a fixed text plus at most 200 bytes of echoed input.
pub const MAX_MESSAGE: usize = 600;

/// Hostile requests checked by this process (printed by `report`).
pub static HOSTILE: AtomicUsize = AtomicUsize::new(0);

pub struct Guard {
    db: tokio_postgres::Client,
    replica_url: String,
    ignored: Vec<String>,
    before: BTreeMap<String, (i64, String)>,
    rss_before: u64,
}

impl Guard {
    /// Snapshots `replica`'s database.
    pub async fn new(replica: &Replica) -> Guard {
        Guard::ignoring(replica, &[]).await
    }

    /// As `new`, not comparing `tables` (for hostile requests whose refusal legitimately touches a
    /// table, such as a worker's last ping time).
    pub async fn ignoring(replica: &Replica, tables: &[&str]) -> Guard {
        let _ = replica.admin().await;
        let db = postgres().await.connect(replica.database_url()).await;
        let mut guard = Guard {
            db,
            replica_url: replica.url(),
            ignored: ALWAYS_IGNORED
                .iter()
                .chain(tables)
                .map(|t| t.to_string())
                .collect(),
            before: BTreeMap::new(),
            rss_before: rss(),
        };
        guard.before = guard.snapshot().await;
        guard
    }

    /// Takes a new snapshot (after legitimate setup requests made under the guard).
    pub async fn rebase(&mut self) {
        self.before = self.snapshot().await;
    }

    async fn snapshot(&self) -> BTreeMap<String, (i64, String)> {
        let tables = self
            .db
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for row in tables {
            let table: String = row.get(0);
            if self.ignored.contains(&table) {
                continue;
            }
            let columns: Vec<String> = self
                .db
                .query(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                    &[&table],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .filter(|c| !VOLATILE.contains(&format!("{table}.{c}").as_str()))
                .map(|c| format!("\"{c}\""))
                .collect();
            let sql = format!(
                "SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) \
                 FROM (SELECT ROW({}) AS r FROM \"{table}\") t",
                columns.join(", ")
            );
            let r = self.db.query_one(&sql, &[]).await.unwrap();
            out.insert(table, (r.get(0), r.get(1)));
        }
        out
    }

    /// Asserts the database is as snapshotted, the server answers, and RSS stayed bounded.
    pub async fn assert_unchanged(&self, what: &str) {
        let after = self.snapshot().await;
        let changed: Vec<String> = self
            .before
            .iter()
            .filter(|(t, v)| after.get(*t) != Some(v))
            .map(|(t, (n, _))| {
                let now = after.get(t).map(|(m, _)| *m).unwrap_or(-1);
                format!("{t} ({n} rows → {now})")
            })
            .chain(
                after
                    .keys()
                    .filter(|t| !self.before.contains_key(*t))
                    .map(|t| format!("{t} (new table)")),
            )
            .collect();
        assert!(
            changed.is_empty(),
            "{what}: the database changed: {}",
            changed.join(", ")
        );
        self.assert_alive(what).await;
    }

    /// Asserts the server serves and this process' RSS grew less than `RSS_BOUND`.
    pub async fn assert_alive(&self, what: &str) {
        let channel = taskqueue::client::Target::new(self.replica_url.clone())
            .channel()
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "taskqueue.TaskQueue".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: the server stopped answering: {e}"))
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{what}: the server no longer serves"
        );
        let grown = rss().saturating_sub(self.rss_before);
        assert!(grown < RSS_BOUND, "{what}: RSS grew by {} MiB", grown >> 20);
    }
}

/// Asserts `result` failed with `code`, with a short message free of Postgres DETAIL text; counts it.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, what: &str) -> Status {
    if std::env::var_os("ADVERSARIAL_PROBE").is_some() {
        // Survey mode: print every mismatch instead of stopping at the first.
        match &result {
            Ok(_) => eprintln!("PROBE {what}: expected {code:?}, got a success"),
            Err(s) if s.code() != code => eprintln!(
                "PROBE {what}: expected {code:?}, got {:?}: {}",
                s.code(),
                s.message()
            ),
            Err(_) => {}
        }
        return result.err().unwrap_or_else(|| Status::ok(""));
    }
    let status = match result {
        Ok(v) => panic!("{what}: expected {code:?}, got a success: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "{what}: expected {code:?}, got {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(
        status.message().len() <= MAX_MESSAGE,
        "{what}: a {}-byte error message",
        status.message().len()
    );
    assert!(
        !status.message().contains("DETAIL"),
        "{what}: the message carries Postgres DETAIL text: {}",
        status.message()
    );
    let n = HOSTILE.fetch_add(1, Ordering::Relaxed) + 1;
    eprintln!("hostile #{n}: {what} → {code:?}");
    status
}

/// This process' resident set size in bytes.
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb << 10)
        .unwrap_or(0)
}
