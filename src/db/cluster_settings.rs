//! Settings every replica of a cluster must share (`cluster_setting`): the first replica to start
//! stores its value, every later one reads the stored value back to compare with its own.

use scoped_futures::ScopedFutureExt as _;

use super::{Db, Op};
use crate::error::Result;

/// The shard count of the pending-task queue (`--assign-shards`).
pub const ASSIGN_SHARDS: &str = "assign_shards";

const INSERT_IF_ABSENT: &str = "
    INSERT INTO cluster_setting (name, value) VALUES ($1, $2)
    ON CONFLICT (name) DO NOTHING";

/// The stored value of `name`; stores `value` first when there is none. Whoever inserted first
/// wins: replicas starting at once read back the same value.
pub async fn get_or_store(db: &Db, name: &str, value: &str) -> Result<String> {
    db.run(Op::Bootstrap, |c| {
        async move {
            c.execute(INSERT_IF_ABSENT, &[&name, &value]).await?;
            let row = c
                .query_one(
                    "SELECT value FROM cluster_setting WHERE name = $1",
                    &[&name],
                )
                .await?;
            Ok(row.get(0))
        }
        .scope_boxed()
    })
    .await
}
