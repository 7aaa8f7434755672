//! The one PostgreSQL of a test process: started on first use (a child process tied to this
//! process, so it outlives any one test's runtime and dies with the binary), with a migrated
//! template database; each test gets a fresh database cloned from it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use taskqueue::db::embedded::{EmbeddedPostgres, Options};
use tokio::sync::OnceCell;

use super::dirs::{set_mode, sweep_stale_dirs, test_base};

const TEMPLATE_DB: &str = "tq_template";

/// The shared PostgreSQL of this test process.
pub struct TestPostgres {
    pub pg: EmbeddedPostgres,
}

static PG: OnceCell<TestPostgres> = OnceCell::const_new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The process' PostgreSQL, started (with a migrated template database) on first use.
pub async fn postgres() -> &'static TestPostgres {
    PG.get_or_init(|| async {
        init_tracing();
        sweep_stale_dirs();
        let dir = test_base();
        // Only the cluster's own folder: `tempdir()` folders of this process (an etcd started
        // before the first database) live beside it.
        let _ = std::fs::remove_dir_all(dir.join("pg"));
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        let mut options = Options::new(dir.join("pg"));
        options.durable = false;
        options.max_connections = 500;
        let pg = EmbeddedPostgres::start(options)
            .await
            .expect("start test PostgreSQL");
        pg.ensure_database(TEMPLATE_DB)
            .await
            .expect("create template database");
        let db = taskqueue::db::Db::connect(&pg.url(TEMPLATE_DB), 2).unwrap();
        taskqueue::db::migrate::migrate(&db)
            .await
            .expect("migrate template");
        db.close();
        drop(db);
        TestPostgres { pg }
    })
    .await
}

pub fn init_tracing() {
    taskqueue::telemetry::init_tracing(taskqueue::telemetry::LogFormat::Text, "warn");
}

impl TestPostgres {
    /// A new database cloned from the migrated template; returns its connection string.
    pub async fn fresh_db(&self) -> String {
        let name = self.create_db(Some(TEMPLATE_DB)).await;
        self.pg.url(&name)
    }

    /// A new empty database (nothing migrated).
    pub async fn empty_db(&self) -> String {
        let name = self.create_db(None).await;
        self.pg.url(&name)
    }

    async fn create_db(&self, template: Option<&str>) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        let (client, conn) = self
            .pg
            .config("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        // The template may still be in use for a moment after the migration pool closed.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.batch_execute(&sql).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && e.to_string().contains("being accessed") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("create database: {e}"),
            }
        }
        drop(client);
        let _ = task.await;
        name
    }

    /// A direct connection to a database, for assertions on stored rows.
    pub async fn connect(&self, url: &str) -> tokio_postgres::Client {
        let (client, conn) = url
            .parse::<tokio_postgres::Config>()
            .unwrap()
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}
