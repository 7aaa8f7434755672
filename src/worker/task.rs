//! One task on this worker, from acceptance to its final status:
//! C → download inputs and resources → O → wait for a slot → R → run → U (success) or V (failure)
//! → upload `output/` → S (after U) or F (after V, or after any staging failure). Each phase honours
//! the task's timeout for it. The log stream is closed and acknowledged before the final status.
//! A task that is not running yet when the worker stops, or that is still running when the grace
//! period ends, is handed back: F with free_retry, so the server retries it at no cost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tokio::sync::{mpsc, watch};

use super::ctx::{Ctx, UpdateError};
use super::executor::{self, Line, Outcome, WorkDirs};
use super::logs::LogShipper;
use crate::domain::status::TaskStatus;
use crate::proto as pb;

/// How long the server may take to acknowledge a task's logs.
const LOG_ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// The last word on a task.
#[derive(Debug)]
enum Final {
    /// Send this status (S or F) with this duration.
    Status {
        status: TaskStatus,
        duration: Option<i32>,
        free_retry: bool,
    },
    /// The server no longer counts this task as ours: send nothing more.
    NotOurs(String),
}

impl Final {
    fn failed(duration: Option<i32>) -> Final {
        Final::Status {
            status: TaskStatus::Failed,
            duration,
            free_retry: false,
        }
    }
    fn handed_back() -> Final {
        Final::Status {
            status: TaskStatus::Failed,
            duration: None,
            free_retry: true,
        }
    }
}

/// Runs `task` to its final status.
pub(crate) async fn execute(ctx: Arc<Ctx>, task: pb::Task, mut weight: watch::Receiver<f64>) {
    let id = task.task_id;
    let dirs = WorkDirs::under(ctx.store.join("tasks").join(id.to_string()));
    let logs = LogShipper::open(ctx.client.clone(), id);
    let last = lifecycle(&ctx, &task, &dirs, &mut weight, &logs).await;
    if let Err(e) = logs.finish(LOG_ACK_TIMEOUT).await {
        tracing::warn!(task_id = id, error = %e, "task logs may be incomplete");
    }
    match last {
        Final::Status {
            status,
            duration,
            free_retry,
        } => send_final(&ctx, id, status, duration, free_retry).await,
        Final::NotOurs(why) => {
            tracing::warn!(task_id = id, reason = %why, "task taken away by the server, dropped");
        }
    }
    executor::remove_tree(&dirs.root).await;
}

/// The final status must land: after the 3 attempts of `update`, keep trying for a while (the
/// server or its load balancer may be restarting), unless the server refuses it.
async fn send_final(
    ctx: &Ctx,
    id: i32,
    status: TaskStatus,
    duration: Option<i32>,
    free_retry: bool,
) {
    for round in 0..20 {
        match ctx.update(id, status, duration, free_retry).await {
            Ok(()) => {
                tracing::info!(task_id = id, status = %status, "task finished");
                return;
            }
            Err(UpdateError::Rejected(why)) => {
                tracing::warn!(task_id = id, status = %status, reason = %why, "final status refused");
                return;
            }
            Err(UpdateError::Unreachable(why)) => {
                if ctx.abandon.is_cancelled() && round > 0 {
                    break;
                }
                tracing::warn!(task_id = id, status = %status, reason = %why, "final status not sent yet");
                tokio::time::sleep(Duration::from_secs(15)).await;
            }
        }
    }
    tracing::error!(task_id = id, status = %status, "final status could not be sent");
}

fn secs(since: Instant) -> i32 {
    since.elapsed().as_secs_f64().round() as i32
}

/// A task timeout in seconds (absent or ≤ 0: none). A value beyond the longest timeout a task may
/// have (a server older than that limit may still send one) is held to that longest timeout rather
/// than overflowing `Duration`.
fn timeout_of(seconds: Option<f32>) -> Option<Duration> {
    let max = Duration::from_secs(crate::domain::limits::MAX_TIMEOUT_SECS);
    seconds.filter(|s| s.is_finite() && *s > 0.0).map(|s| {
        Duration::try_from_secs_f64(f64::from(s))
            .unwrap_or(max)
            .min(max)
    })
}

/// Runs `fut` within `limit`, unless `stop` is cancelled first (then `None`).
async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, String>>,
    limit: Option<Duration>,
    what: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<Result<T, String>> {
    let limited = async {
        match limit {
            Some(l) => tokio::time::timeout(l, fut)
                .await
                .unwrap_or_else(|_| Err(format!("{what} timeout of {l:?} passed"))),
            None => fut.await,
        }
    };
    tokio::select! {
        r = limited => Some(r),
        () = stop.cancelled() => None,
    }
}

/// Sends an intermediate status; `Err` ends the task when the server refused it.
async fn step(ctx: &Ctx, id: i32, status: TaskStatus, duration: Option<i32>) -> Result<(), Final> {
    match ctx.update(id, status, duration, false).await {
        Ok(()) => Ok(()),
        Err(UpdateError::Rejected(why)) => Err(Final::NotOurs(why)),
        // The server will learn the later statuses; a same-status retry is harmless.
        Err(UpdateError::Unreachable(why)) => {
            tracing::warn!(task_id = id, status = %status, reason = %why, "going on without this status update");
            Ok(())
        }
    }
}

async fn lifecycle(
    ctx: &Ctx,
    task: &pb::Task,
    dirs: &WorkDirs,
    weight: &mut watch::Receiver<f64>,
    logs: &LogShipper,
) -> Final {
    match phases(ctx, task, dirs, weight, logs).await {
        Ok(f) | Err(f) => f,
    }
}

async fn phases(
    ctx: &Ctx,
    task: &pb::Task,
    dirs: &WorkDirs,
    weight: &mut watch::Receiver<f64>,
    logs: &LogShipper,
) -> Result<Final, Final> {
    let id = task.task_id;
    step(ctx, id, TaskStatus::Accepted, None).await?;
    let hand_back = |phase: &'static str| async move {
        logs.note(format!(
            "taskqueue worker {}: stopping while the task was {phase}; handed back for a free retry",
            ctx.worker_name
        ))
        .await;
        Final::handed_back()
    };

    // Download inputs and resources.
    let started = Instant::now();
    let staged = bounded(
        stage_in(ctx, task, dirs),
        timeout_of(task.download_timeout),
        "download",
        &ctx.stopping,
    )
    .await;
    match staged {
        None => return Ok(hand_back("downloading").await),
        Some(Err(e)) => {
            logs.note(format!("taskqueue worker {}: {e}", ctx.worker_name))
                .await;
            return Ok(Final::failed(None));
        }
        Some(Ok(())) => {}
    }
    step(ctx, id, TaskStatus::OnHold, Some(secs(started))).await?;

    // Wait for an execution slot of the task's weight (re-queued if the server re-weights it).
    let mut permit = loop {
        let w = *weight.borrow_and_update();
        tokio::select! {
            p = ctx.slots.acquire(w) => break p,
            () = changed(weight) => continue,
            () = ctx.stopping.cancelled() => return Ok(hand_back("waiting for a slot").await),
        }
    };
    step(ctx, id, TaskStatus::Running, None).await?;

    // Run.
    let started = Instant::now();
    let task_env = executor::TaskEnv {
        worker_name: &ctx.worker_name,
        cpu: super::builtin::cpu_share(ctx.cpus, ctx.slots.usage().0),
        builtin: ctx.builtin.as_deref(),
        docker_policy: &ctx.docker_policy,
    };
    let outcome = match ctx.executor.prepare(task, dirs, &task_env) {
        Err(e) => Outcome::NotStarted(e),
        Ok(prepared) => {
            let (tx, rx) = mpsc::channel(256);
            let forward = tokio::spawn(forward_lines(rx, logs.stdout(), logs.stderr()));
            let stop = ctx.abandon.child_token();
            let run = executor::run(&prepared, tx, timeout_of(task.running_timeout), &stop);
            tokio::pin!(run);
            let outcome = loop {
                tokio::select! {
                    o = &mut run => break o,
                    () = changed(weight) => permit.set_weight(*weight.borrow_and_update()),
                }
            };
            let _ = forward.await;
            outcome
        }
    };
    drop(permit); // an uploading task no longer holds a slot
    ctx.wake.notify_one();
    let succeeded = match outcome {
        Outcome::Exited(Ok(())) => true,
        Outcome::Stopped => return Ok(hand_back("running").await),
        Outcome::Exited(Err(why)) => {
            logs.note(format!(
                "taskqueue worker {}: command failed: {why}",
                ctx.worker_name
            ))
            .await;
            false
        }
        Outcome::TimedOut(limit) => {
            logs.note(format!(
                "taskqueue worker {}: running timeout of {limit:?} passed, the command was killed",
                ctx.worker_name
            ))
            .await;
            false
        }
        Outcome::NotStarted(why) => {
            logs.note(format!("taskqueue worker {}: {why}", ctx.worker_name))
                .await;
            false
        }
    };
    let after_run = if succeeded {
        TaskStatus::UploadingSuccess
    } else {
        TaskStatus::UploadingFailure
    };
    step(ctx, id, after_run, Some(secs(started))).await?;

    // Upload outputs (also after a failure: they help to understand it).
    let started = Instant::now();
    let uploaded = bounded(
        stage_out(ctx, task, dirs),
        timeout_of(task.upload_timeout),
        "upload",
        &ctx.abandon,
    )
    .await;
    let upload_ok = match uploaded {
        None => return Ok(hand_back("uploading").await),
        Some(Ok(Some(warning))) => {
            logs.note(format!("taskqueue worker {}: {warning}", ctx.worker_name))
                .await;
            true
        }
        Some(Ok(None)) => true,
        Some(Err(e)) => {
            logs.note(format!("taskqueue worker {}: {e}", ctx.worker_name))
                .await;
            false
        }
    };
    let status = if succeeded && upload_ok {
        TaskStatus::Succeeded
    } else {
        TaskStatus::Failed
    };
    Ok(Final::Status {
        status,
        duration: Some(secs(started)),
        free_retry: false,
    })
}

/// Resolves when the weight changes (never if its sender is gone).
async fn changed(weight: &mut watch::Receiver<f64>) {
    if weight.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn forward_lines(
    mut rx: mpsc::Receiver<Line>,
    out: super::logs::LineSender,
    err: super::logs::LineSender,
) {
    while let Some(line) = rx.recv().await {
        match line {
            Line::Stdout(t) => out.send(t).await,
            Line::Stderr(t) => err.send(t).await,
        }
    }
}

/// Creates the work folders and downloads inputs into `input/`, resources into `resource/`.
async fn stage_in(ctx: &Ctx, task: &pb::Task, dirs: &WorkDirs) -> Result<(), String> {
    executor::remove_tree(&dirs.root).await;
    for d in [&dirs.input, &dirs.output, &dirs.resource, &dirs.tmp] {
        tokio::fs::create_dir_all(d)
            .await
            .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    // The container's /tmp: writable by any user the image runs as, sticky like /tmp.
    {
        use std::os::unix::fs::PermissionsExt as _;
        tokio::fs::set_permissions(&dirs.tmp, std::fs::Permissions::from_mode(0o1777))
            .await
            .map_err(|e| format!("cannot set the mode of {}: {e}", dirs.tmp.display()))?;
    }
    for uri in task.input.iter().filter(|u| !u.trim().is_empty()) {
        ctx.storage
            .download(uri, &dirs.input)
            .await
            .map_err(|e| format!("cannot download input {uri}: {e}"))?;
    }
    for uri in task.resource.iter().filter(|u| !u.trim().is_empty()) {
        let cached = cached_resource(ctx, uri).await?;
        link_tree(&cached, &dirs.resource)
            .await
            .map_err(|e| format!("cannot link resource {uri}: {e}"))?;
    }
    Ok(())
}

/// A resource is downloaded once per worker into `<store>/resources/<hash>/` and shared.
async fn cached_resource(ctx: &Ctx, uri: &str) -> Result<PathBuf, String> {
    let hash = hex::encode(&sha2::Sha256::digest(uri.as_bytes())[..12]);
    let dir = ctx.store.join("resources").join(hash);
    let lock = ctx
        .resource_locks
        .lock()
        .unwrap()
        .entry(uri.to_string())
        .or_default()
        .clone();
    let _guard = lock.lock().await;
    let complete = dir.join(".complete");
    if tokio::fs::try_exists(&complete).await.unwrap_or(false) {
        return Ok(dir.join("data"));
    }
    executor::remove_tree(&dir).await;
    ctx.storage
        .download(uri, &dir.join("data"))
        .await
        .map_err(|e| format!("cannot download resource {uri}: {e}"))?;
    tokio::fs::write(&complete, uri)
        .await
        .map_err(|e| format!("cannot write {}: {e}", complete.display()))?;
    Ok(dir.join("data"))
}

/// Hard-links (or copies, across filesystems) every file below `from` into `to`.
async fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut pending = vec![from.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            let target = to.join(path.strip_prefix(from).unwrap_or(&path));
            if entry.file_type().await?.is_dir() {
                tokio::fs::create_dir_all(&target).await?;
                pending.push(path);
            } else {
                if let Some(p) = target.parent() {
                    tokio::fs::create_dir_all(p).await?;
                }
                let _ = tokio::fs::remove_file(&target).await;
                if tokio::fs::hard_link(&path, &target).await.is_err() {
                    tokio::fs::copy(&path, &target).await?;
                }
            }
        }
    }
    Ok(())
}

/// Uploads `output/` to the task's output location. `Ok(Some(_))` carries a warning (files
/// produced without an output location).
async fn stage_out(ctx: &Ctx, task: &pb::Task, dirs: &WorkDirs) -> Result<Option<String>, String> {
    match task.output.as_deref().filter(|o| !o.trim().is_empty()) {
        Some(uri) => {
            ctx.storage
                .upload(&dirs.output, uri)
                .await
                .map_err(|e| format!("cannot upload outputs to {uri}: {e}"))?;
            Ok(None)
        }
        None => {
            let mut entries = tokio::fs::read_dir(&dirs.output)
                .await
                .map_err(|e| format!("cannot read {}: {e}", dirs.output.display()))?;
            if entries.next_entry().await.ok().flatten().is_some() {
                Ok(Some(
                    "the task has no output location: the files it wrote in output/ were not kept"
                        .into(),
                ))
            } else {
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_ignore_absent_and_non_positive_values() {
        assert_eq!(timeout_of(None), None);
        assert_eq!(timeout_of(Some(0.0)), None);
        assert_eq!(timeout_of(Some(-3.0)), None);
        assert_eq!(timeout_of(Some(f32::NAN)), None);
        assert_eq!(timeout_of(Some(1.5)), Some(Duration::from_millis(1500)));
        let longest = Duration::from_secs(crate::domain::limits::MAX_TIMEOUT_SECS);
        assert_eq!(timeout_of(Some(3e38)), Some(longest));
        assert_eq!(timeout_of(Some(f32::INFINITY)), None);
    }

    #[tokio::test]
    async fn bounded_reports_timeouts_and_stops() {
        let stop = tokio_util::sync::CancellationToken::new();
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, String>(())
        };
        let r = bounded(slow, Some(Duration::from_millis(10)), "download", &stop).await;
        assert!(matches!(r, Some(Err(e)) if e.contains("download timeout")));
        stop.cancel();
        let r = bounded(async { Ok::<_, String>(1) }, None, "x", &stop).await;
        // Either may win when both are ready; a cancelled stop never hangs.
        assert!(matches!(r, None | Some(Ok(1))));
    }

    #[tokio::test]
    async fn link_tree_mirrors_files() {
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("a/b")).unwrap();
        std::fs::write(from.path().join("a/b/x"), "x").unwrap();
        std::fs::write(from.path().join("y"), "y").unwrap();
        let to = tempfile::tempdir().unwrap();
        link_tree(from.path(), to.path()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(to.path().join("a/b/x")).unwrap(),
            "x"
        );
        assert_eq!(std::fs::read_to_string(to.path().join("y")).unwrap(), "y");
    }
}
