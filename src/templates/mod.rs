//! Workflow templates, stateless (docs/architecture.md#templates): the script lives in Postgres
//! and is written to a private temporary folder only while it runs, so any replica uploads or runs
//! any template. Upload runs the script's `--metadata` and `--params` and stores what they
//! answered; a run records itself, runs `--values <json>` with a scoped token of the caller (the
//! script calls the server back to create its workflow, steps and `I` tasks, and reports its
//! workflow with UpdateTemplateRun), then activates that workflow's tasks — or deletes the
//! workflow when the script failed or timed out.
//!
//! Scripts are other people's code. They never see the caller's token: each script run gets a
//! fresh session of the caller that is scoped (only `rpcs::SCRIPT_RPCS`, never admin, only
//! its own run's bookkeeping) and deleted as soon as the script ends. How the process itself is
//! confined (user, namespaces, rlimits) is `sandbox`'s business.
//!
//! Deviations from the original, on purpose: script problems in upload answer `success=false`
//! as the original did, but warnings without `force` are a `FailedPrecondition` error; run values
//! must be a JSON object giving every required parameter (`InvalidArgument` otherwise); the run's
//! bookkeeping finishes even when the caller hangs up mid-run; a run left `P` by a replica that
//! stopped mid-run is ended `F` (and its workflow deleted) by the next RunTemplate once it is
//! older than the template timeout plus a margin.

pub mod sandbox;
pub mod script;
pub mod venv;

use crate::db::ownership::Object;
use crate::domain::ownership::{Actor, Owner};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::Value;

use crate::config::Config;
use crate::db::{self, Db};
use crate::domain::credentials::{new_session_token, token_digest};
use crate::domain::templates as rules;
use crate::error::{Code, Error, Result};
use crate::proto as pb;
use crate::telemetry::metrics as m;
use script::{Outcome, Runner};

/// Longest `--metadata` / `--params` run (the template timeout when shorter): these only describe
/// the script and should answer at once.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long past the template timeout a run still `P` is considered abandoned by a replica that
/// stopped mid-run (replicas are expected to share the timeout).
const STALE_MARGIN: Duration = Duration::from_secs(60);
/// Largest script accepted.
const MAX_SCRIPT: usize = 16 << 20;

/// Who calls a template RPC: the user (for uploaded_by/run_by, and whose scoped session the
/// script gets). Callers without a user (the worker token) run scripts without any token.
#[derive(Debug, Clone, Default)]
pub struct CallerCredentials {
    pub user_id: Option<i32>,
    /// Who they are for the ownership rule (replacing a version, owning the run).
    pub actor: Actor,
}

/// This replica's cache of sessions, as templates need it: a script's session, once revoked, is
/// forgotten at once (the api's `Authenticator` implements it; templates sit below api, see
/// docs/architecture.md#layers).
pub trait SessionCache: Send + Sync {
    /// Forgets the session of `token` on this replica.
    fn forget<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()>;
}

/// Template upload and run, with how scripts reach this server back.
#[derive(Clone)]
pub struct Templates {
    runner: Runner,
    /// Forgets a script's session on this replica the moment it is revoked.
    auth: Arc<dyn SessionCache>,
    timeout: Duration,
    /// `host:port` (SCITQ_SERVER, the original's form).
    server: String,
    /// `http(s)://host:port` (TASKQUEUE_SERVER, for the `taskqueue` client commands).
    server_url: String,
    /// PEM of the server certificate, when the port speaks TLS.
    certificate: Option<PathBuf>,
    /// Said when a script fails for lack of a Python module: which settings provide modules.
    venv_hint: String,
}

impl Templates {
    pub fn new(config: &Config, grpc_addr: SocketAddr, auth: Arc<dyn SessionCache>) -> Templates {
        // The original gives scripts `<server_fqdn or localhost>:<port>`: the
        // name a certificate is issued for (its embedded one names only localhost), never the
        // listen IP. We differ only for a server bound to one non-loopback address without
        // server_fqdn, where localhost would not reach it: there the address is used.
        let host = match &config.server_fqdn {
            Some(fqdn) if !fqdn.trim().is_empty() => fqdn.trim().to_string(),
            _ => match grpc_addr.ip() {
                ip if ip.is_unspecified() || ip.is_loopback() => "localhost".to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            },
        };
        let server = format!("{host}:{}", grpc_addr.port());
        let certificate = config.tls_certificate();
        let scheme = if certificate.is_some() {
            "https"
        } else {
            "http"
        };
        Templates {
            venv_hint: venv_hint(config),
            runner: Runner::new(
                &config.template_interpreter,
                sandbox::Settings::from_config(config),
            ),
            auth,
            timeout: config.template_timeout,
            server_url: format!("{scheme}://{server}"),
            server,
            certificate,
        }
    }

    /// The environment of a script: the original's SCITQ_* variables and their TASKQUEUE_*
    /// counterparts for the `taskqueue` client commands.
    /// The certificate goes as text (SCITQ_SSL_CERTIFICATE) and as a copy in the run's own
    /// folder (TASKQUEUE_CA_FILE, placed by the runner): the data dir is hidden from scripts.
    fn env(&self, token: Option<&str>, run_id: Option<i32>) -> Vec<(String, String)> {
        let mut env = vec![
            ("SCITQ_SERVER".to_string(), self.server.clone()),
            ("TASKQUEUE_SERVER".to_string(), self.server_url.clone()),
        ];
        if let Some(token) = token {
            env.push(("SCITQ_TOKEN".into(), token.to_string()));
            env.push(("TASKQUEUE_TOKEN".into(), token.to_string()));
        }
        if let Some(cert) = &self.certificate
            && let Ok(pem) = std::fs::read_to_string(cert)
        {
            env.push(("SCITQ_SSL_CERTIFICATE".into(), pem));
        }
        if let Some(id) = run_id {
            env.push(("SCITQ_TEMPLATE_RUN_ID".into(), id.to_string()));
            env.push(("TASKQUEUE_TEMPLATE_RUN_ID".into(), id.to_string()));
        }
        env
    }

    /// A fresh scoped session of the caller for one script run (see the module documentation),
    /// or none for a caller without a user. It expires by itself after the template timeout plus
    /// a margin, should the replica die before revoking it.
    async fn script_session(
        &self,
        db: &Db,
        caller: &CallerCredentials,
        run_id: Option<i32>,
    ) -> Result<Option<ScriptSession>> {
        let Some(user_id) = caller.user_id else {
            return Ok(None);
        };
        let token = new_session_token();
        let ttl = self.timeout + STALE_MARGIN;
        db::users::create_scoped_session(db, user_id, &token_digest(&token), ttl, run_id).await?;
        Ok(Some(ScriptSession { token }))
    }

    /// Ends a script's session: deleted in the database, forgotten by this replica's cache
    /// (other replicas forget it within the auth cache TTL).
    async fn revoke(&self, db: &Db, session: Option<ScriptSession>) {
        let Some(session) = session else { return };
        if let Err(e) = db::users::delete_session(db, &token_digest(&session.token)).await {
            tracing::warn!(error = %e, "cannot revoke a template script's session (it expires by itself)");
        }
        self.auth.forget(&session.token).await;
    }

    async fn describe(
        &self,
        script: &[u8],
        what: &str,
        env: &[(String, String)],
    ) -> Result<Outcome> {
        let timeout = self.timeout.min(DESCRIBE_TIMEOUT);
        self.runner.run(script, &[what], env, timeout).await
    }

    /// UploadTemplate, step by step as the original does it.
    pub async fn upload(
        &self,
        db: &Db,
        script: &[u8],
        force: bool,
        caller: &CallerCredentials,
    ) -> Result<pb::UploadTemplateResponse> {
        if script.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::invalid("script is empty"));
        }
        if script.len() > MAX_SCRIPT {
            return Err(Error::invalid(format!(
                "script is larger than {} MiB",
                MAX_SCRIPT >> 20
            )));
        }
        let session = self.script_session(db, caller, None).await?;
        let env = self.env(session.as_ref().map(|s| s.token.as_str()), None);
        let described = self.upload_described(db, script, force, caller, &env).await;
        self.revoke(db, session).await;
        described
    }

    /// UploadTemplate once the scripts' session exists (it is revoked by the caller).
    async fn upload_described(
        &self,
        db: &Db,
        script: &[u8],
        force: bool,
        caller: &CallerCredentials,
        env: &[(String, String)],
    ) -> Result<pb::UploadTemplateResponse> {
        let meta_run = self.describe(script, "--metadata", env).await?;
        if !meta_run.success() {
            return Ok(refused(script_failure(
                "--metadata",
                &meta_run,
                self.timeout,
                &self.venv_hint,
            )));
        }
        let meta = match rules::parse_metadata(&meta_run.stdout) {
            Ok(m) => m,
            Err(e) => return Ok(refused(e.to_string())),
        };
        if !force && db::templates::exists(db, &meta.name, &meta.version).await? {
            return Ok(refused(already_exists(&meta)));
        }
        if force {
            let version = Object::TemplateVersion {
                name: &meta.name,
                version: &meta.version,
            };
            db::ownership::check(db, caller.actor, version).await?;
        }
        let params_run = self.describe(script, "--params", env).await?;
        if !params_run.success() {
            return Ok(refused(script_failure(
                "--params",
                &params_run,
                self.timeout,
                &self.venv_hint,
            )));
        }
        let params = match rules::parse_params(&params_run.stdout) {
            Ok(p) => p,
            Err(e) => return Ok(refused(e.to_string())),
        };
        let warnings = [meta_run.stderr.trim(), params_run.stderr.trim()]
            .into_iter()
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if !warnings.is_empty() && !force {
            return Err(Error::failed_precondition(format!(
                "the script wrote warnings on stderr (upload with force to accept them): {warnings}"
            )));
        }
        let new = db::templates::NewTemplate {
            name: &meta.name,
            version: &meta.version,
            description: &meta.description,
            script,
            params: &params,
            uploaded_by: caller.user_id,
            owner_worker_token: Owner::of(caller.actor).worker_token,
        };
        let id = match db::templates::save(db, &new, force).await {
            Ok(id) => id,
            Err(e) if e.code == Code::AlreadyExists => return Ok(refused(already_exists(&meta))),
            Err(e) => return Err(e),
        };
        let regions = db::templates::region_choices(db).await?;
        tracing::info!(template_id = id, name = %meta.name, version = %meta.version, force, "template uploaded");
        Ok(pb::UploadTemplateResponse {
            success: true,
            message: if warnings.is_empty() {
                "template uploaded".into()
            } else {
                warnings
            },
            workflow_template_id: Some(id),
            name: Some(meta.name),
            version: Some(meta.version),
            description: Some(meta.description),
            param_json: Some(rules::show_params(&params, &regions).to_string()),
        })
    }

    /// RunTemplate (as the original): blocks until the script ends or times out. The script
    /// runs in its own task so that the run is finished and recorded even if the caller goes away.
    pub async fn run(
        &self,
        db: &Db,
        template_id: i32,
        values_json: &str,
        caller: &CallerCredentials,
    ) -> Result<pb::TemplateRun> {
        if template_id <= 0 {
            return Err(Error::invalid("workflow_template_id is required"));
        }
        let stored = db::templates::stored(db, template_id).await?;
        let stale = (self.timeout + STALE_MARGIN).as_secs_f64();
        let abandoned = db::templates::abandon_stale_runs(db, stale).await?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "template runs of a stopped replica ended as failed"
            );
        }
        let values = rules::check_values(values_json, &stored.params)?;
        let values_doc: Value =
            serde_json::from_str(&values).map_err(|e| Error::internal(e.to_string()))?;
        let run_id =
            db::templates::create_run(db, template_id, &values_doc, Owner::of(caller.actor))
                .await?;
        let session = match self.script_session(db, caller, Some(run_id)).await {
            Ok(s) => s,
            Err(e) => {
                db::templates::finish_failure(db, run_id, &e.message).await?;
                return Err(e);
            }
        };
        let env = self.env(session.as_ref().map(|s| s.token.as_str()), Some(run_id));
        let (this, db2) = (self.clone(), db.clone());
        let finished = tokio::spawn(async move {
            let executed = this.execute(&db2, stored, run_id, &values, &env).await;
            this.revoke(&db2, session).await;
            executed
        });
        finished
            .await
            .map_err(|e| Error::internal(format!("template run {run_id} task failed: {e}")))??;
        db::templates::list_runs(db, None, Some(run_id))
            .await?
            .pop()
            .ok_or_else(|| Error::not_found(format!("template run {run_id} was deleted")))
    }

    async fn execute(
        &self,
        db: &Db,
        stored: db::templates::Stored,
        run_id: i32,
        values: &str,
        env: &[(String, String)],
    ) -> Result<()> {
        let started = Instant::now();
        let outcome = self
            .runner
            .run(&stored.script, &["--values", values], env, self.timeout)
            .await;
        let template_id = stored.template_id;
        match outcome {
            Ok(o) if o.success() => {
                let activated = db::templates::finish_success(db, run_id, o.stderr.trim()).await?;
                record(started, "succeeded");
                tracing::info!(template_id, run_id, activated, elapsed = ?started.elapsed(), "template run succeeded");
            }
            Ok(o) => {
                let message = script_failure("", &o, self.timeout, &self.venv_hint);
                let deleted = db::templates::finish_failure(db, run_id, &message).await?;
                let outcome = if o.exit == script::Exit::TimedOut {
                    "timed_out"
                } else {
                    "failed"
                };
                record(started, outcome);
                tracing::info!(template_id, run_id, deleted_workflow = ?deleted, exit = ?o.exit, "template run failed");
            }
            Err(e) => {
                db::templates::finish_failure(db, run_id, &e.message).await?;
                record(started, "failed");
                tracing::warn!(template_id, run_id, error = %e, "template script could not start");
            }
        }
        Ok(())
    }

    /// ListTemplates, with `provider_region` parameters shown as catalog choices.
    pub async fn list(
        &self,
        db: &Db,
        id: Option<i32>,
        name: Option<&str>,
        version: Option<&str>,
    ) -> Result<Vec<pb::Template>> {
        let listed = db::templates::list(db, id, name, version).await?;
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let regions = db::templates::region_choices(db).await?;
        Ok(listed
            .into_iter()
            .map(|(mut t, params)| {
                t.param_json = rules::show_params(&params, &regions).to_string();
                t
            })
            .collect())
    }
}

/// A template script's session token (see `Templates::script_session`).
struct ScriptSession {
    token: String,
}

fn record(started: Instant, outcome: &'static str) {
    metrics::counter!(m::TEMPLATE_RUNS, "outcome" => outcome).increment(1);
    metrics::histogram!(m::TEMPLATE_RUN_SECONDS, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

fn refused(message: String) -> pb::UploadTemplateResponse {
    pb::UploadTemplateResponse {
        success: false,
        message,
        ..Default::default()
    }
}

fn already_exists(meta: &rules::Metadata) -> String {
    format!(
        "template {} version {} already exists (upload with force to replace it)",
        meta.name, meta.version
    )
}

/// What to tell the operator when a script's interpreter lacks a module.
fn venv_hint(config: &Config) -> String {
    match &config.script_venv {
        Some(venv) => format!(
            "the template interpreter {} lacks a Python module: list its package under \
             scitq.script_packages (--script-packages), installed when scitq.script_venv \
             ({}) is created at start — remove that folder to have it made again",
            config.template_interpreter,
            venv.dir.display()
        ),
        None => format!(
            "the template interpreter {} lacks a Python module: set scitq.script_venv \
             (--script-venv) with the packages under scitq.script_packages \
             (--script-packages, e.g. the scitq2 package), or --template-interpreter",
            config.template_interpreter
        ),
    }
}

/// "script failed (exit=n)" and what the script printed.
fn script_failure(what: &str, o: &Outcome, timeout: Duration, hint: &str) -> String {
    let mut message = if what.is_empty() {
        o.describe(timeout)
    } else {
        format!("{what}: {}", o.describe(timeout))
    };
    for text in [o.stdout.trim(), o.stderr.trim()] {
        if !text.is_empty() {
            message.push('\n');
            message.push_str(text);
        }
    }
    // Python's words when an import fails (ModuleNotFoundError: No module named 'scitq2').
    if o.stderr.contains("ModuleNotFoundError") || o.stderr.contains("No module named") {
        message.push('\n');
        message.push_str(hint);
    }
    message
}
