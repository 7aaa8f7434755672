//! The `local` provider (`local.local`): each "machine" is a worker process started on this host.
//! The command is `worker_command` (a path, or a list: program then arguments), default
//! `<this executable> worker --server {server} --name {name} --concurrency {concurrency}
//! --provider {provider} --region {region} --job {job_id}`; placeholders are replaced in each
//! argument (never through a shell). The worker token is passed in the environment
//! (`TASKQUEUE_TOKEN`, with `TASKQUEUE_SERVER`), never on the command line.
//!
//! A create job succeeds only once the worker has really registered: the job runner waits (up to
//! `register_timeout`, default 2 min) for the worker row to be pinged, and the job fails with the
//! last lines the process printed if it exits first (e.g. a `worker_command` it does not accept).
//!
//! Idempotency by name across replica restarts: each process has a pid file
//! `<data_dir>/local-workers/<name>.pid` (and its output in `<name>.log`); create finds a live
//! process there, delete stops the process group it names (SIGTERM, then SIGKILL after a grace).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::{
    Environment, Provider, ProviderError, ProviderResult, Vm, VmSpec, extra_duration, extra_strings,
};
use crate::config::ProviderConfig;

/// How long a stopped worker gets to exit before it is killed.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// A worker on this host registers within a second or two; two minutes leave room for a busy
/// host, and stay well under the job timeout (10 min) so the job says why it failed.
const DEFAULT_REGISTER_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of a worker's output quoted in the job's log when it exits before registering.
const OUTPUT_LINES: usize = 10;

pub struct LocalProvider {
    command: Vec<String>,
    env: Environment,
    dir: PathBuf,
    stop_grace: Duration,
    register_timeout: Duration,
    /// Creates and deletes of this replica do not interleave (they are quick).
    lock: Mutex<()>,
    /// Per worker name: where its latest process' output starts in its log, and how that process
    /// ended (set by the reaper).
    runs: Arc<std::sync::Mutex<HashMap<String, Run>>>,
}

#[derive(Debug, Clone, Default)]
struct Run {
    pid: i32,
    log_offset: u64,
    exit: Option<String>,
}

/// A whole argument of `worker_command` that becomes `--ca-file <pem>` when the server speaks TLS
/// and disappears otherwise, so that the server's own workers trust its certificate. (`{ca_file}`,
/// inside any argument, is the PEM path alone, empty on plaintext.)
const CA_ARGS: &str = "{ca_args}";

fn default_command() -> Vec<String> {
    let exe = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "taskqueue".into());
    [
        exe.as_str(),
        "worker",
        "--server",
        "{server}",
        CA_ARGS,
        "--name",
        "{name}",
        "--concurrency",
        "{concurrency}",
        "--provider",
        "{provider}",
        "--region",
        "{region}",
        "--job",
        "{job_id}",
    ]
    .map(str::to_string)
    .to_vec()
}

fn checked_name(name: &str) -> ProviderResult<&str> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(ProviderError::Failed(format!(
            "{name:?} is not a valid local worker name (letters, digits, '-', '_', '.')"
        )))
    }
}

/// Whether `pid` is a live (not zombie) process whose command line mentions `name`.
fn alive(pid: i32, name: &str) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat"))
        && let Some(state) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next())
        && state == 'Z'
    {
        return false;
    }
    match std::fs::read(proc_dir.join("cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains(name),
        // Without /proc we cannot check for pid reuse; trust the pid file.
        Err(_) => true,
    }
}

impl LocalProvider {
    pub fn from_config(cfg: &ProviderConfig, env: &Environment) -> anyhow::Result<LocalProvider> {
        let command = extra_strings(cfg, "worker_command")
            .map_err(|e| anyhow::anyhow!("providers.local.local.{e}"))?
            .filter(|c| !c.is_empty())
            .unwrap_or_else(default_command);
        let stop_grace = extra_duration(cfg, "stop_grace")
            .map_err(|e| anyhow::anyhow!("providers.local.local.{e}"))?
            .unwrap_or(DEFAULT_STOP_GRACE);
        let register_timeout = extra_duration(cfg, "register_timeout")
            .map_err(|e| anyhow::anyhow!("providers.local.local.{e}"))?
            .unwrap_or(DEFAULT_REGISTER_TIMEOUT);
        Ok(LocalProvider {
            command,
            env: env.clone(),
            dir: env.data_dir.join("local-workers"),
            stop_grace,
            register_timeout,
            lock: Mutex::new(()),
            runs: Arc::default(),
        })
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The last lines the latest process of `name` printed, joined with " | ".
    fn last_output(&self, name: &str, from: u64) -> String {
        use std::io::{Read as _, Seek as _};
        let mut text = Vec::new();
        if let Ok(mut f) = std::fs::File::open(self.log_file(name)) {
            // The tail is enough: at most the last 64 KiB of this run's output.
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let start = from.max(len.saturating_sub(64 * 1024));
            if f.seek(std::io::SeekFrom::Start(start)).is_ok() {
                let _ = f.read_to_end(&mut text);
            }
        }
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let tail = &lines[lines.len().saturating_sub(OUTPUT_LINES)..];
        if tail.is_empty() {
            "(no output)".into()
        } else {
            tail.join(" | ")
        }
    }

    fn argv_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.argv"))
    }

    /// The live process of worker `name`, if any.
    fn running(&self, name: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid, name).then_some(pid)
    }

    fn argv(&self, spec: &VmSpec) -> Vec<String> {
        let ca_file = self
            .env
            .ca_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        self.command
            .iter()
            .flat_map(|arg| match (arg.as_str(), &ca_file) {
                (CA_ARGS, Some(ca)) => vec!["--ca-file".to_string(), ca.clone()],
                (CA_ARGS, None) => vec![],
                _ => vec![arg.clone()],
            })
            .map(|arg| {
                arg.replace("{server}", &self.env.server_url)
                    .replace("{ca_file}", ca_file.as_deref().unwrap_or(""))
                    .replace("{name}", &spec.worker_name)
                    .replace("{concurrency}", &spec.concurrency.to_string())
                    .replace("{provider}", &spec.provider)
                    .replace("{region}", &spec.region)
                    .replace("{job_id}", &spec.job_id.to_string())
                    .replace("{worker_id}", &spec.worker_id.to_string())
            })
            .collect()
    }

    fn spawn(&self, name: &str, argv: &[String]) -> ProviderResult<i32> {
        let fail = |what: &str, e: std::io::Error| {
            ProviderError::Failed(format!("local worker {name}: cannot {what}: {e}"))
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| fail("create its folder", e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(name))
            .map_err(|e| fail("open its log", e))?;
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| ProviderError::Failed("worker_command is empty".into()))?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env("TASKQUEUE_SERVER", &self.env.server_url)
            .env("TASKQUEUE_TOKEN", &self.env.worker_token)
            .env("TASKQUEUE_WORKER_NAME", name)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail("open its log", e))?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| fail(&format!("start {program}"), e))?;
        let pid = child.id().unwrap_or(0) as i32;
        self.runs.lock().unwrap().insert(
            name.to_string(),
            Run {
                pid,
                log_offset,
                exit: None,
            },
        );
        let pid_file = self.pid_file(name);
        write_file(&pid_file, &format!("{pid}\n")).map_err(|e| fail("write its pid file", e))?;
        write_file(
            &self.argv_file(name),
            &serde_json::to_string(argv).unwrap_or_default(),
        )
        .map_err(|e| fail("write its command file", e))?;
        // Reap the process when it exits, and forget it if the pid file still names it.
        let runs = self.runs.clone();
        let worker = name.to_string();
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::info!(pid, status = ?status.as_ref().ok(), "local worker process exited");
            if let Some(run) = runs.lock().unwrap().get_mut(&worker)
                && run.pid == pid
            {
                run.exit = Some(match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("cannot wait for it: {e}"),
                });
            }
            if std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == pid.to_string()) {
                let _ = std::fs::remove_file(&pid_file);
            }
        });
        tracing::info!(worker = %name, pid, "started local worker process");
        Ok(pid)
    }

    async fn stop(&self, name: &str) -> ProviderResult<()> {
        let Some(pid) = self.running(name) else {
            let _ = std::fs::remove_file(self.pid_file(name));
            return Ok(());
        };
        // SAFETY: signalling the process group the worker leads (it was started with its own).
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let deadline = tokio::time::Instant::now() + self.stop_grace;
        while alive(pid, name) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if alive(pid, name) {
            tracing::warn!(worker = %name, pid, "local worker did not stop in time; killing it");
            // SAFETY: as above.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            while alive(pid, name) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = std::fs::remove_file(self.pid_file(name));
        tracing::info!(worker = %name, pid, "stopped local worker process");
        Ok(())
    }
}

/// Pid and command files: the command line carries the worker token, so owner-only.
fn write_file(path: &Path, content: &str) -> std::io::Result<()> {
    crate::secret_files::write_private(path, content.as_bytes())
}

fn loopback(name: &str) -> Vm {
    Vm {
        name: name.to_string(),
        region: crate::domain::catalog::LOCAL_REGION.to_string(),
        ipv4: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn full_name(&self) -> &str {
        "local.local"
    }

    async fn create(&self, spec: &VmSpec) -> ProviderResult<Vm> {
        let name = checked_name(&spec.worker_name)?;
        let _guard = self.lock.lock().await;
        if self.running(name).is_none() {
            self.spawn(name, &self.argv(spec))?;
        }
        Ok(loopback(name))
    }

    fn registration_timeout(&self) -> Option<Duration> {
        Some(self.register_timeout)
    }

    async fn check_starting(&self, worker_name: &str) -> ProviderResult<()> {
        let name = checked_name(worker_name)?;
        if self.running(name).is_some() {
            return Ok(());
        }
        // The reaper records the exit status just after the process ends: give it a moment.
        let mut run = None;
        for _ in 0..20 {
            run = self.runs.lock().unwrap().get(name).cloned();
            if run.as_ref().is_none_or(|r| r.exit.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let run = run.unwrap_or_default();
        let how = run.exit.map(|e| format!(" ({e})")).unwrap_or_default();
        Err(ProviderError::Failed(format!(
            "local worker {name} exited before it registered{how}; its last output: {}",
            self.last_output(name, run.log_offset)
        )))
    }

    async fn delete(&self, worker_name: &str, _region: &str) -> ProviderResult<()> {
        let name = checked_name(worker_name)?;
        let _guard = self.lock.lock().await;
        self.stop(name).await?;
        let _ = std::fs::remove_file(self.argv_file(name));
        Ok(())
    }

    async fn restart(&self, worker_name: &str, _region: &str) -> ProviderResult<()> {
        let name = checked_name(worker_name)?;
        let _guard = self.lock.lock().await;
        let argv: Vec<String> = std::fs::read_to_string(self.argv_file(name))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .ok_or_else(|| {
                ProviderError::Failed(format!("no local worker named {name} to restart"))
            })?;
        self.stop(name).await?;
        self.spawn(name, &argv)?;
        Ok(())
    }

    async fn list(&self, region: &str) -> ProviderResult<Vec<Vm>> {
        if region != crate::domain::catalog::LOCAL_REGION {
            return Ok(Vec::new());
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".pid")
                && self.running(name).is_some()
            {
                out.push(loopback(name));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
