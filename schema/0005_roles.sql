-- Owners of the objects users create: workflows (and through them their steps), tasks,
-- recruiters, templates and template runs. Changing or deleting an object needs its owner or an
-- admin. `owner_id` is the creating user; `owner_worker_token` marks rows created with the worker
-- token, which may change only those. Rows from before this migration have neither: only an
-- admin may change them. Templates and runs already record their user (`uploaded_by`, `run_by`).
ALTER TABLE workflow
    ADD COLUMN owner_id integer REFERENCES scitq_user (user_id) ON DELETE SET NULL,
    ADD COLUMN owner_worker_token boolean NOT NULL DEFAULT false;
ALTER TABLE task
    ADD COLUMN owner_id integer REFERENCES scitq_user (user_id) ON DELETE SET NULL,
    ADD COLUMN owner_worker_token boolean NOT NULL DEFAULT false;
ALTER TABLE recruiter
    ADD COLUMN owner_id integer REFERENCES scitq_user (user_id) ON DELETE SET NULL,
    ADD COLUMN owner_worker_token boolean NOT NULL DEFAULT false;
ALTER TABLE workflow_template
    ADD COLUMN owner_worker_token boolean NOT NULL DEFAULT false;
ALTER TABLE template_run
    ADD COLUMN owner_worker_token boolean NOT NULL DEFAULT false;
