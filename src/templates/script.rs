//! Running one template script: the script (bytes from Postgres) is written to a private temporary
//! folder (mode 0700) that lives only for the run, and started as `<interpreter> <script> <args>`
//! in an empty working folder inside it, with a clean environment (PATH, locale, HOME = the working
//! folder, plus what the caller passes), confined as `sandbox` decides, in its own process
//! group. A certificate passed as `SCITQ_SSL_CERTIFICATE` is also written to the run's folder and
//! named by `TASKQUEUE_CA_FILE`, since the server's own copy is out of the script's sight. Standard output and error are captured up to `MAX_OUTPUT` bytes each (the rest is read
//! and dropped so the script never blocks on a full pipe). At the deadline, and after the script
//! ends, the whole process group is killed: nothing started by a script outlives its run.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::sandbox::{Plan, Settings};
use crate::error::{Error, Result};

/// Bytes of standard output (and, separately, of standard error) kept from one run.
pub const MAX_OUTPUT: usize = 1 << 20;
/// How long the output readers may run on after the script's process group was killed (a
/// grandchild that left the group may hold the pipes open).
const READER_GRACE: Duration = Duration::from_secs(2);
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How scripts are started.
#[derive(Debug, Clone)]
pub struct Runner {
    /// The interpreter's program and its leading arguments.
    pub interpreter: Vec<String>,
    /// Who the script runs as and what it must not see.
    pub sandbox: Settings,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Exit,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }

    /// One line saying how the run ended, for error messages.
    pub fn describe(&self, timeout: Duration) -> String {
        match self.exit {
            Exit::Code(c) => format!("script failed (exit={c})"),
            Exit::Signal(s) => format!("script killed by signal {s}"),
            Exit::TimedOut => format!(
                "script timed out after {}",
                humantime::format_duration(timeout)
            ),
        }
    }
}

impl Runner {
    pub fn new(interpreter: &str, sandbox: Settings) -> Runner {
        Runner {
            interpreter: interpreter.split_whitespace().map(str::to_string).collect(),
            sandbox,
        }
    }

    /// Runs `script` with `args` and the extra environment `env`, for at most `timeout`. Errors
    /// only when the script cannot be started at all (the message says why).
    pub async fn run(
        &self,
        script: &[u8],
        args: &[&str],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<Outcome> {
        let plan = Plan::prepare(&self.sandbox)?;
        let dir = tempfile::Builder::new()
            .prefix("taskqueue-template-")
            .tempdir()
            .map_err(|e| Error::unavailable(format!("cannot create a temporary folder: {e}")))?;
        let script_path = dir.path().join("script.py");
        let work = dir.path().join("work");
        let certificate = env
            .iter()
            .find(|(k, _)| k == "SCITQ_SSL_CERTIFICATE")
            .map(|(_, pem)| (dir.path().join("ca.pem"), pem.as_bytes()));
        prepare(
            dir.path(),
            &script_path,
            &work,
            script,
            certificate.as_ref().map(|(p, pem)| (p.as_path(), *pem)),
            plan.owner(),
        )?;

        let (program, leading) = self
            .interpreter
            .split_first()
            .ok_or_else(|| Error::failed_precondition("no template interpreter configured"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(leading)
            .arg(&script_path)
            .args(args)
            .current_dir(&work)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
            )
            .env("HOME", &work)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for key in ["LANG", "LC_ALL", "TZ"] {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        if let Some((path, _)) = &certificate {
            cmd.env("TASKQUEUE_CA_FILE", path);
        }
        plan.install(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            Error::failed_precondition(format!(
                "cannot start the template interpreter {program:?}: {e}"
            ))
        })?;
        let pgid = child.id().map(|p| p as i32);
        let stdout = tokio::spawn(capture(child.stdout.take()));
        let stderr = tokio::spawn(capture(child.stderr.take()));

        let exit = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt as _;
                match (status.code(), status.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(s)) => Exit::Signal(s),
                    (None, None) => Exit::Code(-1),
                }
            }
            Ok(Err(e)) => {
                kill_group(pgid);
                return Err(Error::internal(format!(
                    "cannot wait for the template script: {e}"
                )));
            }
            Err(_) => Exit::TimedOut,
        };
        // Whatever the script left running in its group goes with it.
        kill_group(pgid);
        let _ = child.wait().await;
        let stdout = join_capture(stdout).await;
        let stderr = join_capture(stderr).await;
        Ok(Outcome {
            exit,
            stdout,
            stderr,
        })
    }
}

fn kill_group(pgid: Option<i32>) {
    if let Some(pgid) = pgid.filter(|p| *p > 0) {
        // SAFETY: plain syscall; the group was created for this script (process_group(0)).
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
}

async fn join_capture(handle: tokio::task::JoinHandle<String>) -> String {
    let abort = handle.abort_handle();
    match tokio::time::timeout(READER_GRACE, handle).await {
        Ok(Ok(text)) => text,
        Ok(Err(_)) => String::new(),
        Err(_) => {
            abort.abort();
            String::from("[output not collected: a process of the script kept it open]")
        }
    }
}

/// Reads a pipe to its end, keeping the first `MAX_OUTPUT` bytes.
async fn capture(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped += n.saturating_sub(room);
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        text.push_str(&format!("\n[… {dropped} more bytes not kept]"));
    }
    text
}

/// Writes the script (and the certificate) and creates the working folder, owned by the user
/// the script runs as.
fn prepare(
    dir: &Path,
    script_path: &Path,
    work: &Path,
    script: &[u8],
    certificate: Option<(&Path, &[u8])>,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let io = |what: &str, e: std::io::Error| {
        Error::unavailable(format!("cannot prepare the template run ({what}): {e}"))
    };
    std::fs::write(script_path, script).map_err(|e| io("script", e))?;
    std::fs::create_dir(work).map_err(|e| io("working folder", e))?;
    let mut owned = vec![dir, script_path, work];
    if let Some((path, pem)) = certificate {
        std::fs::write(path, pem).map_err(|e| io("certificate", e))?;
        owned.push(path);
    }
    if let Some((uid, gid)) = owner {
        for p in owned {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| io("owner", e))?;
        }
    }
    Ok(())
}
