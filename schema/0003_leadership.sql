-- Leadership and the leader loops.
--
-- The dependency sweep looks, between full passes, only at prerequisites that settled (S or F)
-- recently: this partial index holds just the settled tasks by time, so a pass with nothing new to
-- do costs an index probe instead of a scan of every waiting task. Task updates already change
-- indexed columns (status), so indexing modified_at here costs no HOT updates.
CREATE INDEX task_settled_idx ON task (modified_at) WHERE status IN ('S', 'F') AND NOT hidden;
