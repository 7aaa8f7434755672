//! Postgres advisory lock namespaces: the first key of the two-key form `pg_advisory_*(ns, key)`.
//! One constant per purpose, so two purposes can never take each other's locks.

/// Schema migrations (key 0): N replicas start together, exactly one migrates.
pub const NS_MIGRATE: i32 = 0x7471_0001;
/// First-start bootstrap (initial admin user; key 0).
pub const NS_BOOTSTRAP: i32 = 0x7471_0002;
/// One ping of a worker at a time (key = worker_id).
pub const NS_WORKER: i32 = 0x7471_0003;
/// One claimer per pending-queue shard (key = hash of step and shard).
pub const NS_SHARD: i32 = 0x7471_0004;
/// Postgres-mode leadership (key 0), held on a dedicated session.
pub const NS_LEADER: i32 = 0x7471_0005;
/// Appends to one task's log (key = task_id): batch sequence numbers follow commit order.
pub const NS_TASK_LOG: i32 = 0x7471_0006;
/// Catalog synchronisation and catalogue refresh (key 0): two replicas never interleave them.
pub const NS_CATALOG: i32 = 0x7471_0007;
/// Quota check and worker insertion of one region (key = region_id): two deployments in a region
/// cannot both pass the check on the same usage.
pub const NS_QUOTA: i32 = 0x7471_0008;
