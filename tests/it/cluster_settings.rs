//! `--assign-shards` is the cluster's, not a replica's: the first replica to start stores its value
//! in the database (`cluster_setting`); a replica started later with another value refuses to
//! start and says which values disagree and what to do; one with the same value starts.

use crate::common;

use std::time::Duration;

use common::{ChildReplica, postgres, spawn_replica, test_config, wait_until};
use taskqueue::server::{self, Listeners};

/// The stored value of the cluster setting `name`, if any.
async fn stored(url: &str, name: &str) -> Option<String> {
    let client = postgres().await.connect(url).await;
    client
        .query_opt(
            "SELECT value FROM cluster_setting WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

#[tokio::test]
async fn every_replica_must_use_the_assign_shards_of_the_first() {
    let url = postgres().await.fresh_db().await;
    assert_eq!(stored(&url, "assign_shards").await, None);

    // The first replica fixes the value (not the default: its own).
    let mut first_config = test_config(&url);
    first_config.assign_shards = 4;
    let first = spawn_replica(first_config.clone()).await;
    assert_eq!(stored(&url, "assign_shards").await.as_deref(), Some("4"));

    // The same value starts.
    let second = spawn_replica(first_config).await;

    // Another value (here the default, 16) is refused before the replica serves.
    let other = test_config(&url);
    assert_eq!(other.assign_shards, 16);
    let listeners = Listeners::bind(&other).await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        server::run(other, listeners, std::future::pending()),
    )
    .await
    .expect("a replica that disagrees stops at once");
    let err = format!(
        "{:#}",
        result.expect_err("a replica that disagrees must not start")
    );
    assert!(
        err.contains(
            "--assign-shards 16 disagrees with 4 stored in the database: every replica must use \
             the same value; start this replica with --assign-shards 4"
        ),
        "{err}"
    );
    assert_eq!(stored(&url, "assign_shards").await.as_deref(), Some("4"));

    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

#[tokio::test]
async fn the_binary_refuses_a_flag_that_disagrees_and_says_what_to_do() {
    let url = postgres().await.fresh_db().await;
    let mut first = ChildReplica::spawn("first", &url, &[]);
    first.wait_serving().await;
    let mut second = ChildReplica::spawn("second", &url, &["--assign-shards".into(), "8".into()]);
    wait_until(
        Duration::from_secs(60),
        "the second replica refuses",
        || {
            let log = second.log_text();
            async move { log.contains("disagrees") }
        },
    )
    .await;
    let log = second.log_text();
    assert!(
        log.contains(
            "taskqueue: --assign-shards 8 disagrees with 16 stored in the database: every replica \
             must use the same value; start this replica with --assign-shards 16"
        ),
        "{log}"
    );
    assert_eq!(second.terminate(Duration::from_secs(10)).await, Some(1));
    assert_eq!(first.terminate(Duration::from_secs(10)).await, Some(0));
}
