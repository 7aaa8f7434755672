//! Fixtures for tests of the leader loops: a database where the test holds office, rows with
//! timestamps in the past, and readers of what the loops changed.

use std::sync::Arc;

use scoped_futures::ScopedFutureExt as _;
use taskqueue::config::Config;
use taskqueue::db::{Db, Op};
use taskqueue::loops::LeaderContext;

use super::{postgres, test_config};

/// A database where this test holds office with epoch 1, and a direct connection to it.
pub struct Fixture {
    pub url: String,
    pub pg: tokio_postgres::Client,
    pub ctx: LeaderContext,
}

pub async fn take_office(db: &Db, epoch: i64, holder: &str) -> bool {
    db.tx(Op::Leader, |tx| {
        async move { taskqueue::db::leader::take_office(tx, epoch, holder).await }.scope_boxed()
    })
    .await
    .unwrap()
}

/// The original's clocks (docs/architecture.md#background-loops): offline 30 s, idle 300 s,
/// new-worker idle 900 s, lost 300 s, download grace 600 s.
pub fn original_clocks(url: &str) -> Config {
    use taskqueue::config::defaults;
    let mut c = test_config(url);
    c.offline_timeout = defaults::OFFLINE_TIMEOUT;
    c.idle_timeout = defaults::IDLE_TIMEOUT;
    c.new_worker_idle_timeout = defaults::NEW_WORKER_IDLE_TIMEOUT;
    c.lost_timeout = defaults::LOST_TIMEOUT;
    c.task_download_timeout = defaults::TASK_DOWNLOAD_TIMEOUT;
    c
}

pub async fn fixture() -> Fixture {
    let url = postgres().await.fresh_db().await;
    fixture_on(&url, original_clocks(&url)).await
}

pub async fn fixture_on(url: &str, config: Config) -> Fixture {
    let db = Db::connect(url, 4).unwrap();
    assert!(take_office(&db, 1, "test-leader").await);
    Fixture {
        url: url.to_string(),
        pg: postgres().await.connect(url).await,
        ctx: LeaderContext {
            db,
            declared_providers: Arc::new(taskqueue::server::declared_providers(&config)),
            config: Arc::new(config),
            epoch: 1,
        },
    }
}

impl Fixture {
    /// Another replica takes office with epoch 2: this fixture's term is over.
    pub async fn depose(&self) {
        let other = Db::connect(&self.url, 2).unwrap();
        assert!(take_office(&other, 2, "successor").await);
    }

    /// (provider_id, region_id) of a new provider `name.test` with region `r`.
    pub async fn provider(&self, name: &str) -> i32 {
        let p: i32 = self
            .pg
            .query_one(
                "INSERT INTO provider (provider_name, config_name) VALUES ($1, 'test') RETURNING provider_id",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        self.pg
            .query_one(
                "INSERT INTO region (provider_id, region_name) VALUES ($1, 'r') RETURNING region_id",
                &[&p],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn worker(&self, w: W) -> i32 {
        self.pg
            .query_one(
                "INSERT INTO worker (worker_name, status, created_at, last_ping_at, last_activity_at,
                                     offline_since, is_permanent, region_id)
                 VALUES ($1, $2, now() - make_interval(secs => $3::float8),
                         now() - make_interval(secs => $4::float8),
                         now() - make_interval(secs => $5::float8),
                         now() - make_interval(secs => $6::float8), $7, $8)
                 RETURNING worker_id",
                &[
                    &w.name,
                    &w.status,
                    &w.created,
                    &w.ping,
                    &w.activity,
                    &w.offline,
                    &w.permanent,
                    &w.region,
                ],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn task(&self, status: &str, worker: Option<i32>, retry: Option<i32>) -> i32 {
        self.pg
            .query_one(
                "INSERT INTO task (command, container, status, worker_id, retry)
                 VALUES ('true', 'alpine', $1, $2, $3) RETURNING task_id",
                &[&status, &worker, &retry],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn depends(&self, dependent: i32, prerequisite: i32) {
        self.pg
            .execute(
                "INSERT INTO task_dependencies (dependent_task_id, prerequisite_task_id) VALUES ($1, $2)",
                &[&dependent, &prerequisite],
            )
            .await
            .unwrap();
    }

    pub async fn worker_status(&self, id: i32) -> Option<String> {
        self.pg
            .query_opt("SELECT status FROM worker WHERE worker_id = $1", &[&id])
            .await
            .unwrap()
            .map(|r| r.get(0))
    }

    pub async fn task_row(&self, id: i32) -> (String, bool, Option<i32>) {
        let r = self
            .pg
            .query_one(
                "SELECT status, hidden, retry FROM task WHERE task_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    }

    pub async fn stderr_of(&self, id: i32) -> String {
        self.pg
            .query_one(
                "SELECT COALESCE(string_agg(body, '' ORDER BY seq), '') FROM task_log
                  WHERE task_id = $1 AND stream = 'E'",
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Everything the loops may change, to show a refused pass changed nothing.
    pub async fn snapshot(&self) -> String {
        self.pg
            .query_one(
                "SELECT (SELECT COALESCE(string_agg(worker_id || w.status || COALESCE(offline_since::text, ''), ',' ORDER BY worker_id), '') FROM worker w)
                     || '|' || (SELECT COALESCE(string_agg(task_id || t.status || hidden::text || COALESCE(pending_since::text, ''), ',' ORDER BY task_id), '') FROM task t)
                     || '|' || (SELECT count(*) FROM task_log)::text",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

/// A worker row; times are seconds ago (`None` = NULL).
#[derive(Clone)]
pub struct W {
    pub name: &'static str,
    pub status: &'static str,
    pub created: f64,
    pub ping: Option<f64>,
    pub activity: Option<f64>,
    pub offline: Option<f64>,
    pub permanent: bool,
    pub region: Option<i32>,
}

pub fn w(name: &'static str, status: &'static str) -> W {
    W {
        name,
        status,
        created: 10_000.0,
        ping: Some(1.0),
        activity: Some(1.0),
        offline: None,
        permanent: false,
        region: None,
    }
}
