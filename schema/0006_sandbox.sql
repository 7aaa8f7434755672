-- Sessions handed to template scripts: limited to the RPCs a script needs, never admin, and
-- deleted when their run (or upload) ends. `template_run_id` is the run whose bookkeeping
-- (UpdateTemplateRun) the script may write; NULL for the --metadata/--params runs of an upload.
ALTER TABLE scitq_user_session
    ADD COLUMN scoped boolean NOT NULL DEFAULT false,
    ADD COLUMN template_run_id integer REFERENCES template_run (template_run_id) ON DELETE CASCADE,
    ADD CONSTRAINT scitq_user_session_run_is_scoped CHECK (template_run_id IS NULL OR scoped);
