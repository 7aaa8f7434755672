-- Settings every replica of a cluster must share: the first replica to start stores its value,
-- every later one compares its own and refuses to start when they differ (server::serve).
-- 'assign_shards': the shard count of the pending-task queue (--assign-shards). A task keeps the
-- shard it was stored in, and a replica claims from shards 0..N-1 only: replicas that disagree
-- would leave tasks no one claims.
CREATE TABLE cluster_setting (
    name  text PRIMARY KEY,
    value text NOT NULL
);
