//! Cost of one pass of the leader loops on a busy database (a private PostgreSQL): the dependency
//! sweep with many tasks waiting on a running prerequisite (nothing to promote: the steady state it
//! pays every `--dependency-sweep-interval`), and the watchdog over many live workers. Run with
//! `cargo bench --bench leader_loops`; under `cargo test` it runs once on a small database.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use scoped_futures::ScopedFutureExt as _;
use taskqueue::config::Config;
use taskqueue::db::dependencies::Scope;
use taskqueue::db::embedded::{EmbeddedPostgres, Options};
use taskqueue::db::{Db, Op};
use taskqueue::loops::{LeaderContext, dependencies, watchdog};

async fn setup(waiting: i32, workers: i32) -> (EmbeddedPostgres, LeaderContext) {
    let dir = std::env::temp_dir().join(format!("taskqueue-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = Options::new(dir.join("pg"));
    options.durable = false;
    let pg = EmbeddedPostgres::start(options)
        .await
        .expect("start PostgreSQL");
    pg.ensure_database("bench").await.unwrap();
    let url = pg.url("bench");
    let db = Db::connect(&url, 4).unwrap();
    taskqueue::db::migrate::migrate(&db).await.unwrap();
    db.tx(Op::Leader, |tx| {
        async move {
            taskqueue::db::leader::take_office(tx, 1, "bench").await?;
            for sql in [
                "INSERT INTO task (command, container, status) VALUES ('prerequisite', 'alpine', 'R')",
                "INSERT INTO task (command, container, status)
                 SELECT 'waiting', 'alpine', 'W' FROM generate_series(1, $1::integer)",
                "INSERT INTO task_dependencies (dependent_task_id, prerequisite_task_id)
                 SELECT task_id, 1 FROM task WHERE status = 'W'",
                // History: settled long ago.
                "INSERT INTO task (command, container, status, modified_at)
                 SELECT 'done', 'alpine', 'S', now() - interval '1 hour'
                   FROM generate_series(1, $1::integer * 5)",
                // Recent throughput: settled within the incremental window, nobody waits on them.
                "INSERT INTO task (command, container, status)
                 SELECT 'just done', 'alpine', 'S' FROM generate_series(1, $1::integer / 100)",
            ] {
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    if sql.contains("$1") { vec![&waiting] } else { vec![] };
                tx.execute(sql, &params).await.map_err(taskqueue::db::pg_error)?;
            }
            tx.execute(
                "INSERT INTO worker (worker_name, status, last_ping_at, last_activity_at)
                 SELECT 'w' || i, 'R', now(), now() FROM generate_series(1, $1::integer) i",
                &[&workers],
            )
            .await
            .map_err(taskqueue::db::pg_error)?;
            Ok(())
        }
        .scope_boxed()
    })
    .await
    .unwrap();
    db.run(Op::Leader, |c| {
        async move {
            c.batch_execute("VACUUM ANALYZE")
                .await
                .map_err(taskqueue::db::pg_error)
        }
        .scope_boxed()
    })
    .await
    .unwrap();
    // Workers stay live and busy-enough for the whole run: the pass finds nothing to change.
    let mut config = Config::for_database(url);
    config.offline_timeout = std::time::Duration::from_secs(86_400);
    config.idle_timeout = std::time::Duration::from_secs(86_400);
    let ctx = LeaderContext {
        db,
        config: Arc::new(config),
        declared_providers: Arc::default(),
        epoch: 1,
    };
    (pg, ctx)
}

fn leader_loops(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let full = std::env::args().any(|a| a == "--bench");
    let (waiting, workers) = if full { (100_000, 5_000) } else { (500, 50) };
    let (pg, ctx) = rt.block_on(setup(waiting, workers));
    let mut group = c.benchmark_group("leader_loops");
    group.sample_size(20);
    group.bench_function(
        format!("dependency_sweep_full_pass/{waiting}_waiting"),
        |b| {
            b.to_async(&rt).iter(|| async {
                let report = dependencies::run_once(&ctx).await.unwrap();
                assert!(report.promoted.is_empty());
            })
        },
    );
    let since = chrono::Utc::now() - chrono::Duration::seconds(30);
    group.bench_function(
        format!("dependency_sweep_incremental_pass/{waiting}_waiting"),
        |b| {
            b.to_async(&rt).iter(|| async {
                let (report, _) = dependencies::run_pass(&ctx, Scope::SettledSince(since))
                    .await
                    .unwrap();
                assert!(report.promoted.is_empty());
            })
        },
    );
    group.bench_function(format!("watchdog_pass/{workers}_live_workers"), |b| {
        b.to_async(&rt).iter(|| async {
            let report = watchdog::run_once(&ctx).await.unwrap();
            assert!(report.went_offline.is_empty());
        })
    });
    group.finish();
    rt.block_on(pg.stop());
}

criterion_group!(benches, leader_loops);
criterion_main!(benches);
