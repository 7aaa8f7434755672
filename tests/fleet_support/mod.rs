//! Helpers of the fleet tests (catalog, jobs, recruiters): replicas whose configuration declares
//! providers, leader contexts for calling leader loops directly, fake providers on private clouds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use scoped_futures::ScopedFutureExt as _;
use taskqueue::config::{Config, Providers as ProvidersConfig};
use taskqueue::db::{Db, Op};
use taskqueue::loops::LeaderContext;
use taskqueue::providers::{Environment, Providers};

use super::common::{self, Replica, WORKER_TOKEN};

static CLOUD: AtomicU32 = AtomicU32::new(0);

/// A cloud id no other test of this process uses.
pub fn unique_cloud(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        CLOUD.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn providers(yaml: &str) -> ProvidersConfig {
    serde_yaml::from_str(yaml).expect("providers yaml")
}

/// A leader context on `config`'s database, its epoch recorded as the current term.
pub async fn leader(config: &Config, epoch: i64) -> LeaderContext {
    let db = Db::connect(config.database_url.as_deref().unwrap(), 8).unwrap();
    let taken = db
        .tx(Op::Leader, |tx| {
            async move { taskqueue::db::leader::take_office(tx, epoch, "test").await }.scope_boxed()
        })
        .await
        .unwrap();
    assert!(taken, "epoch {epoch} is not newer than the recorded one");
    LeaderContext {
        db,
        config: Arc::new(config.clone()),
        declared_providers: Arc::new(taskqueue::server::declared_providers(config)),
        epoch,
    }
}

/// A fresh database, a replica configured with `providers_yaml`, and the catalog synchronised by
/// a leader context of epoch 1.
pub async fn fleet_replica(providers_yaml: &str) -> (Replica, LeaderContext) {
    fleet_replica_with(providers_yaml, |_| {}).await
}

pub async fn fleet_replica_with(
    providers_yaml: &str,
    tweak: impl FnOnce(&mut Config),
) -> (Replica, LeaderContext) {
    let url = common::postgres().await.fresh_db().await;
    let mut config = common::test_config(&url);
    config.providers = providers(providers_yaml);
    // As a configuration file does: a `local` section offers the (opt-in) local provider.
    config.local_provider = config.providers.contains_key("local");
    // The tests drive the leader's loops themselves, with their own term.
    config.leader_eligible = false;
    tweak(&mut config);
    let replica = common::spawn_replica(config.clone()).await;
    let ctx = leader(&config, 1).await;
    taskqueue::loops::catalog::take_office(&ctx).await.unwrap();
    (replica, ctx)
}

/// The providers a replica's leader would run.
pub fn providers_of(replica: &Replica) -> Providers {
    let env = Environment::for_replica(&replica.config, replica.addr, WORKER_TOKEN);
    Providers::from_config(&replica.config, &env).unwrap()
}

/// A direct database connection for assertions.
pub async fn sql(replica: &Replica) -> tokio_postgres::Client {
    common::postgres()
        .await
        .connect(replica.database_url())
        .await
}

/// Counts rows of `table` (a test constant, never input).
pub async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}
