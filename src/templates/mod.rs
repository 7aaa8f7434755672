//! Workflow templates (behavior.md §4.11), stateless (design.md §2): the script lives in Postgres
//! and is written to a private temporary folder only while it runs, so any replica uploads or runs
//! any template. Upload runs the script's `--metadata` and `--params` and stores what they
//! answered; a run records itself, runs `--values <json>` with the caller's credentials (the
//! script calls the server back to create its workflow, steps and `I` tasks, and reports its
//! workflow with UpdateTemplateRun), then activates that workflow's tasks — or deletes the
//! workflow when the script failed or timed out.
//!
//! Deviations from the original, on purpose: script problems in upload answer `success=false`
//! as the original did, but warnings without `force` are a `FailedPrecondition` error; run values
//! must be a JSON object giving every required parameter (`InvalidArgument` otherwise); the run's
//! bookkeeping finishes even when the caller hangs up mid-run; a run left `P` by a replica that
//! stopped mid-run is ended `F` (and its workflow deleted) by the next RunTemplate once it is
//! older than the template timeout plus a margin.

pub mod script;
pub mod venv;

use crate::db::ownership::Object;
use crate::domain::ownership::{Actor, Owner};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::Config;
use crate::db::{self, Db};
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

/// Who calls a template RPC: the user (for uploaded_by/run_by) and the bearer token the script
/// gets to call the server back as that caller.
#[derive(Debug, Clone, Default)]
pub struct CallerCredentials {
    pub user_id: Option<i32>,
    /// Who they are for the ownership rule (replacing a version, owning the run).
    pub actor: Actor,
    pub token: Option<String>,
}

/// Template upload and run, with how scripts reach this server back.
#[derive(Debug, Clone)]
pub struct Templates {
    runner: Runner,
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
    pub fn new(config: &Config, grpc_addr: SocketAddr) -> Templates {
        // The original gives scripts `<server_fqdn or localhost>:<port>` (behavior.md §4.11): the
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
            runner: Runner::new(&config.template_interpreter, config.template_run_as.clone()),
            timeout: config.template_timeout,
            server_url: format!("{scheme}://{server}"),
            server,
            certificate,
        }
    }

    /// The environment of a script: the original's SCITQ_* variables and their TASKQUEUE_*
    /// counterparts for the `taskqueue` client commands.
    fn env(&self, caller: &CallerCredentials, run_id: Option<i32>) -> Vec<(String, String)> {
        let mut env = vec![
            ("SCITQ_SERVER".to_string(), self.server.clone()),
            ("TASKQUEUE_SERVER".to_string(), self.server_url.clone()),
        ];
        if let Some(token) = &caller.token {
            env.push(("SCITQ_TOKEN".into(), token.clone()));
            env.push(("TASKQUEUE_TOKEN".into(), token.clone()));
        }
        if let Some(cert) = &self.certificate {
            env.push(("TASKQUEUE_CA_FILE".into(), cert.to_string_lossy().into()));
            if let Ok(pem) = std::fs::read_to_string(cert) {
                env.push(("SCITQ_SSL_CERTIFICATE".into(), pem));
            }
        }
        if let Some(id) = run_id {
            env.push(("SCITQ_TEMPLATE_RUN_ID".into(), id.to_string()));
            env.push(("TASKQUEUE_TEMPLATE_RUN_ID".into(), id.to_string()));
        }
        env
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

    /// UploadTemplate (behavior.md §4.11 steps 1–7).
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
        let env = self.env(caller, None);
        let meta_run = self.describe(script, "--metadata", &env).await?;
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
        let params_run = self.describe(script, "--params", &env).await?;
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

    /// RunTemplate (behavior.md §4.11): blocks until the script ends or times out. The script
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
        let env = self.env(caller, Some(run_id));
        let (this, db2) = (self.clone(), db.clone());
        let finished =
            tokio::spawn(async move { this.execute(&db2, stored, run_id, &values, &env).await });
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
