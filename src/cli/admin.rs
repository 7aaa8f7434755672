//! `taskqueue event …`, `taskqueue user …`, `taskqueue job …` and `taskqueue template …`.

use std::path::PathBuf;

use clap::Subcommand;

use super::output::{self, Format, rpc};
use crate::client::Client;
use crate::proto as pb;

#[derive(Debug, Subcommand)]
pub enum EventCmd {
    /// List worker events, newest first.
    List {
        #[arg(long)]
        worker: Option<i32>,
        /// D, I, W or E.
        #[arg(long)]
        level: Option<String>,
        /// install, runtime, task, network …
        #[arg(long)]
        class: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i32,
    },
    /// Delete one event.
    Delete { id: i32 },
    /// Delete events older than --before (RFC 3339), optionally filtered.
    Prune {
        #[arg(long)]
        before: Option<String>,
        #[arg(long)]
        level: Option<String>,
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        worker: Option<i32>,
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// List users.
    List,
    /// Create a user (admin); prints the id.
    Create {
        username: String,
        #[arg(long, env = "TASKQUEUE_NEW_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "")]
        email: String,
        #[arg(long)]
        admin: bool,
    },
    /// Delete a user (admin).
    Delete { id: i32 },
    /// Change a user (admin).
    Update {
        id: i32,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        admin: Option<bool>,
    },
    /// Change a password (needs the old one, no token).
    Passwd {
        username: String,
        #[arg(long, env = "TASKQUEUE_OLD_PASSWORD", hide_env_values = true)]
        old: String,
        #[arg(long, env = "TASKQUEUE_NEW_PASSWORD", hide_env_values = true)]
        new: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// List provider jobs, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i32,
        #[arg(long)]
        offset: Option<i32>,
    },
    /// Statuses of jobs.
    Status {
        #[arg(required = true)]
        ids: Vec<i32>,
    },
    /// Delete a job row.
    Delete { id: i32 },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Upload a workflow template (a python script of the scitq DSL).
    Upload {
        file: PathBuf,
        /// Replace an existing name/version, and accept warnings.
        #[arg(long)]
        force: bool,
    },
    /// Run a template with parameters (key=value, repeatable, or --json).
    Run {
        id: i32,
        #[arg(long = "param", short = 'p', value_parser = output::key_value)]
        params: Vec<(String, String)>,
        /// All parameters as one JSON object (instead of --param).
        #[arg(long, conflicts_with = "params")]
        json: Option<String>,
    },
    /// List templates.
    #[command(disable_version_flag = true)]
    List {
        #[arg(long)]
        id: Option<i32>,
        #[arg(long)]
        name: Option<String>,
        /// A version, or "latest".
        #[arg(long)]
        version: Option<String>,
    },
    /// List template runs.
    Runs {
        #[arg(long)]
        template: Option<i32>,
    },
    /// Delete a template run.
    DeleteRun { id: i32 },
    /// Record the workflow (or an error message) of a template run; template scripts call this
    /// with the workflow they created (the run id comes from their environment).
    UpdateRun {
        /// Template run id.
        #[arg(long, env = "TASKQUEUE_TEMPLATE_RUN_ID")]
        run: i32,
        /// Workflow id the run created.
        #[arg(long)]
        workflow: Option<i32>,
        /// Error message to record.
        #[arg(long)]
        error: Option<String>,
    },
}

pub async fn run_event(cmd: EventCmd, client: &mut Client, format: Format) -> anyhow::Result<()> {
    match cmd {
        EventCmd::List {
            worker,
            level,
            class,
            limit,
        } => {
            let r = rpc(client
                .list_worker_events(pb::WorkerEventFilter {
                    worker_id: worker,
                    level,
                    class,
                    limit: Some(limit),
                })
                .await)?;
            output::print(format, &r.events, || {
                let mut t = output::table(&["ID", "TIME", "WORKER", "LEVEL", "CLASS", "MESSAGE"]);
                for e in &r.events {
                    t.add_row(vec![
                        e.event_id.to_string(),
                        e.created_at.clone(),
                        match e.worker_id {
                            Some(id) => format!("{id} ({})", e.worker_name),
                            None => e.worker_name.clone(),
                        },
                        e.level.clone(),
                        e.event_class.clone(),
                        e.message.clone(),
                    ]);
                }
                t
            })
        }
        EventCmd::Delete { id } => {
            rpc(client
                .delete_worker_event(pb::WorkerEventId { event_id: id })
                .await)?;
            output::done(
                format,
                &format!("event {id} deleted"),
                serde_json::json!({ "event_id": id }),
            )
        }
        EventCmd::Prune {
            before,
            level,
            class,
            worker,
            dry_run,
        } => {
            let r = rpc(client
                .prune_worker_events(pb::WorkerEventPruneFilter {
                    before,
                    level,
                    class,
                    worker_id: worker,
                    dry_run,
                })
                .await)?;
            output::print(format, &r, || {
                output::details(vec![
                    ("matched", r.matched.to_string()),
                    ("deleted", r.deleted.to_string()),
                ])
            })
        }
    }
}

pub async fn run_user(cmd: UserCmd, client: &mut Client, format: Format) -> anyhow::Result<()> {
    match cmd {
        UserCmd::List => {
            let r = rpc(client.list_users(()).await)?;
            output::print(format, &r.users, || {
                let mut t = output::table(&["ID", "USERNAME", "EMAIL", "ADMIN"]);
                for u in &r.users {
                    t.add_row(vec![
                        u.user_id.to_string(),
                        output::opt(&u.username),
                        output::opt(&u.email),
                        if u.is_admin == Some(true) { "yes" } else { "" }.into(),
                    ]);
                }
                t
            })
        }
        UserCmd::Create {
            username,
            password,
            email,
            admin,
        } => {
            let r = rpc(client
                .create_user(pb::CreateUserRequest {
                    username,
                    password,
                    email,
                    is_admin: admin,
                })
                .await)?;
            match format {
                Format::Json => println!("{}", serde_json::json!({ "user_id": r.user_id })),
                Format::Table => println!("{}", r.user_id),
            }
            Ok(())
        }
        UserCmd::Delete { id } => {
            rpc(client.delete_user(pb::UserId { user_id: id }).await)?;
            output::done(
                format,
                &format!("user {id} deleted"),
                serde_json::json!({ "user_id": id }),
            )
        }
        UserCmd::Update {
            id,
            username,
            email,
            admin,
        } => {
            rpc(client
                .update_user(pb::User {
                    user_id: id,
                    username,
                    email,
                    is_admin: admin,
                })
                .await)?;
            output::done(
                format,
                &format!("user {id} updated"),
                serde_json::json!({ "user_id": id }),
            )
        }
        UserCmd::Passwd { username, old, new } => {
            rpc(client
                .change_password(pb::ChangePasswordRequest {
                    username: username.clone(),
                    old_password: old,
                    new_password: new,
                })
                .await)?;
            output::done(
                format,
                &format!("password of {username} changed"),
                serde_json::json!({ "username": username }),
            )
        }
    }
}

pub async fn run_job(cmd: JobCmd, client: &mut Client, format: Format) -> anyhow::Result<()> {
    match cmd {
        JobCmd::List { limit, offset } => {
            let r = rpc(client
                .list_jobs(pb::ListJobsRequest {
                    limit: Some(limit),
                    offset,
                })
                .await)?;
            output::print(format, &r.jobs, || {
                let mut t = output::table(&[
                    "ID", "ACTION", "STATUS", "WORKER", "FLAVOR", "RETRY", "PROGRESS", "MODIFIED",
                ]);
                for j in &r.jobs {
                    t.add_row(vec![
                        j.job_id.to_string(),
                        j.action.clone(),
                        j.status.clone(),
                        j.worker_id.to_string(),
                        j.flavor_id.to_string(),
                        j.retry.to_string(),
                        format!("{}%", j.progression),
                        j.modified_at.clone(),
                    ]);
                }
                t
            })
        }
        JobCmd::Status { ids } => {
            let r = rpc(client
                .get_job_statuses(pb::JobStatusRequest { job_ids: ids })
                .await)?;
            output::print(format, &r.statuses, || {
                let mut t = output::table(&["ID", "STATUS", "PROGRESS"]);
                for s in &r.statuses {
                    t.add_row(vec![
                        s.job_id.to_string(),
                        s.status.clone(),
                        format!("{}%", s.progression),
                    ]);
                }
                t
            })
        }
        JobCmd::Delete { id } => {
            rpc(client.delete_job(pb::JobId { job_id: id }).await)?;
            output::done(
                format,
                &format!("job {id} deleted"),
                serde_json::json!({ "job_id": id }),
            )
        }
    }
}

pub async fn run_template(
    cmd: TemplateCmd,
    client: &mut Client,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        TemplateCmd::Upload { file, force } => {
            let script = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let r = rpc(client
                .upload_template(pb::UploadTemplateRequest { script, force })
                .await)?;
            if !r.success {
                anyhow::bail!("upload refused: {}", r.message.replace('\n', " "));
            }
            output::print(format, &r, || {
                output::details(vec![
                    ("id", output::opt(&r.workflow_template_id)),
                    ("name", output::opt(&r.name)),
                    ("version", output::opt(&r.version)),
                    ("message", r.message.clone()),
                ])
            })
        }
        TemplateCmd::Run { id, params, json } => {
            let values = match json {
                Some(j) => {
                    serde_json::from_str::<serde_json::Value>(&j)
                        .map_err(|e| anyhow::anyhow!("--json is not valid JSON: {e}"))?;
                    j
                }
                None => {
                    let map: serde_json::Map<String, serde_json::Value> = params
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect();
                    serde_json::Value::Object(map).to_string()
                }
            };
            let r = rpc(client
                .run_template(pb::RunTemplateRequest {
                    workflow_template_id: id,
                    param_values_json: values,
                })
                .await)?;
            let failed = r.status == "F";
            output::print(format, &r, || template_run_details(&r))?;
            if failed {
                anyhow::bail!(
                    "template run {} failed: {}",
                    r.template_run_id,
                    output::opt(&r.error_message).replace('\n', " ")
                );
            }
            Ok(())
        }
        TemplateCmd::List { id, name, version } => {
            let r = rpc(client
                .list_templates(pb::TemplateFilter {
                    workflow_template_id: id,
                    name,
                    version,
                })
                .await)?;
            output::print(format, &r.templates, || {
                let mut t = output::table(&["ID", "NAME", "VERSION", "UPLOADED", "DESCRIPTION"]);
                for x in &r.templates {
                    t.add_row(vec![
                        x.workflow_template_id.to_string(),
                        x.name.clone(),
                        x.version.clone(),
                        x.uploaded_at.clone(),
                        x.description.clone(),
                    ]);
                }
                t
            })
        }
        TemplateCmd::Runs { template } => {
            let r = rpc(client
                .list_template_runs(pb::TemplateRunFilter {
                    workflow_template_id: template,
                })
                .await)?;
            output::print(format, &r.runs, || {
                let mut t = output::table(&[
                    "ID", "TEMPLATE", "STATUS", "WORKFLOW", "BY", "CREATED", "ERROR",
                ]);
                for x in &r.runs {
                    t.add_row(vec![
                        x.template_run_id.to_string(),
                        format!(
                            "{} {}",
                            output::opt(&x.template_name),
                            output::opt(&x.template_version)
                        ),
                        x.status.clone(),
                        output::opt(&x.workflow_id),
                        output::opt(&x.run_by_username),
                        x.created_at.clone(),
                        output::opt(&x.error_message).replace('\n', " "),
                    ]);
                }
                t
            })
        }
        TemplateCmd::DeleteRun { id } => {
            rpc(client
                .delete_template_run(pb::DeleteTemplateRunRequest {
                    template_run_id: id,
                })
                .await)?;
            output::done(
                format,
                &format!("template run {id} deleted"),
                serde_json::json!({ "template_run_id": id }),
            )
        }
        TemplateCmd::UpdateRun {
            run,
            workflow,
            error,
        } => {
            rpc(client
                .update_template_run(pb::UpdateTemplateRunRequest {
                    template_run_id: run,
                    workflow_id: workflow,
                    error_message: error,
                })
                .await)?;
            output::done(
                format,
                &format!("template run {run} updated"),
                serde_json::json!({ "template_run_id": run }),
            )
        }
    }
}

fn template_run_details(r: &pb::TemplateRun) -> comfy_table::Table {
    output::details(vec![
        ("run", r.template_run_id.to_string()),
        ("status", r.status.clone()),
        ("workflow", output::opt(&r.workflow_id)),
        ("error", output::opt(&r.error_message)),
    ])
}
