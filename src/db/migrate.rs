//! Forward-only schema migrations, embedded in the binary, applied at start under an advisory lock
//! (several replicas starting at once: exactly one applies, the others wait and find nothing to do).
//! Each applied migration is recorded with a checksum; an edited migration is refused.

use sha2::{Digest as _, Sha256};

use super::locks::NS_MIGRATE;
use super::{Db, pg_error};
use crate::error::{Error, Result};

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Add new files as `schema/NNNN_name.sql` and list them here.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../schema/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "dispatch",
        sql: include_str!("../../schema/0002_dispatch.sql"),
    },
    Migration {
        version: 3,
        name: "leadership",
        sql: include_str!("../../schema/0003_leadership.sql"),
    },
    Migration {
        version: 4,
        name: "ping",
        sql: include_str!("../../schema/0004_ping.sql"),
    },
    Migration {
        version: 5,
        name: "roles",
        sql: include_str!("../../schema/0005_roles.sql"),
    },
    Migration {
        version: 6,
        name: "sandbox",
        sql: include_str!("../../schema/0006_sandbox.sql"),
    },
    Migration {
        version: 7,
        name: "web",
        sql: include_str!("../../schema/0007_web.sql"),
    },
    Migration {
        version: 8,
        name: "ws",
        sql: include_str!("../../schema/0008_ws.sql"),
    },
    Migration {
        version: 9,
        name: "ping_batch",
        sql: include_str!("../../schema/0009_ping_batch.sql"),
    },
    Migration {
        version: 10,
        name: "status_batch",
        sql: include_str!("../../schema/0010_status_batch.sql"),
    },
    Migration {
        version: 11,
        name: "cluster_settings",
        sql: include_str!("../../schema/0011_cluster_settings.sql"),
    },
    Migration {
        version: 12,
        name: "claim_many",
        sql: include_str!("../../schema/0012_claim_many.sql"),
    },
    Migration {
        version: 13,
        name: "activity_clock",
        sql: include_str!("../../schema/0013_activity_clock.sql"),
    },
    Migration {
        version: 14,
        name: "dependents_by_key",
        sql: include_str!("../../schema/0014_dependents_by_key.sql"),
    },
    Migration {
        version: 15,
        name: "watch",
        sql: include_str!("../../schema/0015_watch.sql"),
    },
];

/// What one call to `migrate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Versions this call applied (empty when the schema was already current).
    pub applied: Vec<i32>,
    /// The schema version after the call.
    pub current: i32,
}

const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS taskqueue_migration (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies every migration not yet recorded. Safe to call from many replicas at once.
pub async fn migrate(db: &Db) -> Result<Report> {
    let mut client = db.client().await?;
    // Waiting for another replica's migrations, or a migration that rewrites a big table, may take
    // longer than a request's statement timeout: none for this session while it migrates.
    client.batch_execute("SET statement_timeout = 0").await?;
    // A session lock: held across the per-migration transactions below.
    client
        .execute("SELECT pg_advisory_lock($1, 0)", &[&NS_MIGRATE])
        .await?;
    let result = apply_all(&mut client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1, 0)", &[&NS_MIGRATE])
        .await;
    if let Err(e) = unlock {
        tracing::warn!(error = %e, "could not release the migration lock; it goes with the connection");
    }
    if client
        .batch_execute("RESET statement_timeout")
        .await
        .is_err()
    {
        // Never hand a session without its timeout back to the pool.
        drop(super::Client::take(client));
    }
    result
}

async fn apply_all(client: &mut super::Client) -> Result<Report> {
    client.batch_execute(CREATE_LEDGER).await?;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM taskqueue_migration ORDER BY version",
            &[],
        )
        .await?;
    let mut report = Report::default();
    for row in &rows {
        let (version, name, sum): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        match MIGRATIONS.iter().find(|m| m.version == version) {
            Some(m) if checksum(m.sql) != sum => {
                return Err(Error::failed_precondition(format!(
                    "migration {version} ({name}) was changed after it was applied; migrations are forward-only"
                )));
            }
            Some(_) => {}
            None => tracing::warn!(
                version,
                name,
                "the database has a migration this binary does not know (a newer replica applied it)"
            ),
        }
        report.current = report.current.max(version);
    }
    for m in MIGRATIONS {
        if rows.iter().any(|r| r.get::<_, i32>(0) == m.version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await.map_err(|e| {
            let err = pg_error(e);
            Error::internal(format!(
                "migration {} ({}) failed: {}",
                m.version, m.name, err.message
            ))
        })?;
        tx.execute(
            "INSERT INTO taskqueue_migration (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        report.applied.push(m.version);
        report.current = report.current.max(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions strictly increase from 1. (Branches reserve numbers: 0006 may land before 0005.)
    #[test]
    fn versions_increase() {
        assert_eq!(MIGRATIONS[0].version, 1);
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "{}", pair[1].name);
        }
    }
}
