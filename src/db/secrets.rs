//! Cluster-wide generated secrets (`server_secret`): one value per name, created by the first
//! replica that asks and read back by every other, so replicas starting at once agree.

use scoped_futures::ScopedFutureExt as _;

use super::{Db, Op};
use crate::error::Result;

/// The name of the session-token signing key.
pub const JWT_KEY: &str = "jwt";

const INSERT_IF_ABSENT: &str = "
    INSERT INTO server_secret (name, value) VALUES ($1, $2)
    ON CONFLICT (name) DO NOTHING";

/// The stored secret `name`; stores `candidate` first when there is none. Whoever inserted first
/// wins: every caller gets the same bytes.
pub async fn get_or_create(db: &Db, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
    db.run(Op::Bootstrap, |c| {
        async move {
            c.execute(INSERT_IF_ABSENT, &[&name, &candidate]).await?;
            let row = c
                .query_one("SELECT value FROM server_secret WHERE name = $1", &[&name])
                .await?;
            Ok(row.get(0))
        }
        .scope_boxed()
    })
    .await
}
