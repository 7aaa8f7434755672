//! How a task's command runs: `shell` (`<task.shell or sh> -c <command>` in the task's work
//! directory, no container) or `docker` (`docker run` of the task's container with `input/`,
//! `output/`, `resource/` mounted at `/input`, `/output`, `/resource`). This module builds the
//! command line and runs it in its own process group, streaming its output lines; it knows nothing
//! of the server.
//!
//! Environment given to the command (both executors):
//! - `TASKQUEUE_INPUT`, `TASKQUEUE_OUTPUT`, `TASKQUEUE_RESOURCE`: the three folders (in docker:
//!   `/input`, `/output`, `/resource`; in shell: absolute paths under the work directory);
//! - `TASKQUEUE_WORKDIR` (shell only: the work directory, also the current directory);
//! - `TASKQUEUE_TASK_ID`, `TASKQUEUE_WORKER_NAME`;
//! - `CPU`: the worker's CPUs divided by its concurrency, at least 1 (as the original worker);
//! - `SCITQ_BUILTIN`: the folder of the shell helpers `std.sh`, `bio.sh` (in docker: `/builtin`,
//!   mounted read-only; in shell: the store's copy, also at `/builtin` when the worker could
//!   link it there).
//!
//! Nothing else of the worker's environment reaches a task (no `TASKQUEUE_TOKEN`, no worker
//! token, no cloud credentials): the command starts from an empty environment plus the variables
//! above and, from the worker's own, only `INHERITED` (`PATH`, `HOME`, `LANG`, `LC_*`, `TZ`,
//! `TMPDIR`). In docker the `docker` client gets those plus `DOCKER_CLIENT` (how to reach the
//! engine), and the container only what `-e` gives it: a bare `-e NAME` in the options finds
//! nothing to copy. Docker options and the image are checked against the worker's
//! `DockerPolicy` before anything starts, whoever submitted the task.
//!
//! In docker, `/tmp` is the task's own folder `tmp/` of its work directory (on the store's disk,
//! not a tmpfs: tools' temporary files may be larger than memory), unless the task's container
//! options mount something at `/tmp` themselves.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::docker_options::{self, DockerPolicy};
use crate::proto as pb;

/// Variables of the worker's own environment a task inherits (and every `LC_*`).
pub const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "TZ", "TMPDIR"];

/// Variables the `docker` client also inherits: how it reaches the engine.
pub const DOCKER_CLIENT: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_API_VERSION",
    "DOCKER_CONFIG",
];

/// The allow-listed part of an environment (`docker`: also `DOCKER_CLIENT`).
pub fn inherited_env(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    docker: bool,
) -> Vec<(String, String)> {
    vars.into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| {
            INHERITED.contains(&k.as_str())
                || k.starts_with("LC_")
                || (docker && DOCKER_CLIENT.contains(&k.as_str()))
        })
        .collect()
}

/// Which executor to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorChoice {
    /// docker when a Docker engine answers, else shell.
    Auto,
    Shell,
    Docker,
}

/// The executor of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executor {
    Shell,
    Docker {
        /// `docker --config <dir>` holding the registry credentials from the server, if any.
        config_dir: Option<PathBuf>,
    },
}

/// The folders of one task execution.
#[derive(Debug, Clone)]
pub struct WorkDirs {
    pub root: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub resource: PathBuf,
    /// The task's private `/tmp` in docker.
    pub tmp: PathBuf,
}

impl WorkDirs {
    pub fn under(root: PathBuf) -> WorkDirs {
        WorkDirs {
            input: root.join("input"),
            output: root.join("output"),
            resource: root.join("resource"),
            tmp: root.join("tmp"),
            root,
        }
    }
}

/// What the worker gives each task besides its folders.
#[derive(Debug, Clone)]
pub struct TaskEnv<'a> {
    pub worker_name: &'a str,
    /// `CPU`: the worker's share of CPUs per task.
    pub cpu: u32,
    /// The shell helpers' folder, when they could be written.
    pub builtin: Option<&'a Path>,
    /// Container options this worker runs.
    pub docker_policy: &'a DockerPolicy,
}

/// A command ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub program: String,
    pub args: Vec<String>,
    /// The whole environment of the command (it starts from an empty one).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// For docker: the container name, so a kill also stops the container.
    pub container_name: Option<String>,
}

/// Whether a Docker engine answers (`docker version` within 5 s).
pub async fn docker_available() -> bool {
    let probe = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), probe).await,
        Ok(Ok(s)) if s.success()
    )
}

impl Executor {
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Shell => "shell",
            Executor::Docker { .. } => "docker",
        }
    }

    /// The command line of `task`.
    pub fn prepare(
        &self,
        task: &pb::Task,
        dirs: &WorkDirs,
        task_env: &TaskEnv<'_>,
    ) -> Result<Prepared, String> {
        if task.command.trim().is_empty() {
            return Err("the task has an empty command".into());
        }
        let worker_name = task_env.worker_name;
        let common = [
            ("TASKQUEUE_TASK_ID", task.task_id.to_string()),
            ("TASKQUEUE_WORKER_NAME", worker_name.to_string()),
            ("CPU", task_env.cpu.to_string()),
        ];
        match self {
            Executor::Shell => {
                let shell = task
                    .shell
                    .as_deref()
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or("sh");
                let mut env = inherited_env(std::env::vars_os(), false);
                env.extend(common.iter().map(|(k, v)| (k.to_string(), v.clone())));
                for (k, p) in [
                    ("TASKQUEUE_INPUT", &dirs.input),
                    ("TASKQUEUE_OUTPUT", &dirs.output),
                    ("TASKQUEUE_RESOURCE", &dirs.resource),
                    ("TASKQUEUE_WORKDIR", &dirs.root),
                ] {
                    env.push((k.to_string(), p.display().to_string()));
                }
                if let Some(dir) = task_env.builtin {
                    env.push(("SCITQ_BUILTIN".into(), dir.display().to_string()));
                }
                Ok(Prepared {
                    program: shell.to_string(),
                    args: vec!["-c".into(), task.command.clone()],
                    env,
                    cwd: dirs.root.clone(),
                    container_name: None,
                })
            }
            Executor::Docker { config_dir } => {
                if task.container.trim().is_empty() {
                    return Err(
                        "the docker executor needs a container image, the task has none".into(),
                    );
                }
                let name = container_name(worker_name, task.task_id);
                let options = match task
                    .container_options
                    .as_deref()
                    .filter(|o| !o.trim().is_empty())
                {
                    Some(opts) => shell_words::split(opts)
                        .map_err(|e| format!("cannot parse container options {opts:?}: {e}"))?,
                    None => Vec::new(),
                };
                docker_options::check_image(&task.container)
                    .and_then(|()| docker_options::check_words(&options, task_env.docker_policy))
                    .map_err(|e| format!("refused by this worker: {e}"))?;
                let mut args: Vec<String> = Vec::new();
                if let Some(dir) = config_dir {
                    args.extend(["--config".into(), dir.display().to_string()]);
                }
                args.extend(["run".into(), "--rm".into(), "--name".into(), name.clone()]);
                for (host, inside, mode) in [
                    (&dirs.input, "/input", ""),
                    (&dirs.output, "/output", ""),
                    (&dirs.resource, "/resource", ":ro"),
                ] {
                    args.extend(["-v".into(), format!("{}:{inside}{mode}", host.display())]);
                }
                if let Some(dir) = task_env.builtin {
                    args.extend(["-v".into(), format!("{}:/builtin:ro", dir.display())]);
                }
                if !mounts_tmp(&options) {
                    args.extend(["-v".into(), format!("{}:/tmp", dirs.tmp.display())]);
                }
                let builtin_env = task_env
                    .builtin
                    .map(|_| ("SCITQ_BUILTIN".to_string(), "/builtin".to_string()));
                for (k, v) in common
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .chain([
                        ("TASKQUEUE_INPUT".to_string(), "/input".to_string()),
                        ("TASKQUEUE_OUTPUT".to_string(), "/output".to_string()),
                        ("TASKQUEUE_RESOURCE".to_string(), "/resource".to_string()),
                    ])
                    .chain(builtin_env)
                {
                    args.extend(["-e".into(), format!("{k}={v}")]);
                }
                args.extend(options);
                args.push(task.container.trim().to_string());
                match task.shell.as_deref().filter(|s| !s.trim().is_empty()) {
                    Some(shell) => {
                        args.extend([shell.to_string(), "-c".into(), task.command.clone()])
                    }
                    None => args.extend(
                        shell_words::split(&task.command)
                            .map_err(|e| format!("cannot parse the command: {e}"))?,
                    ),
                }
                Ok(Prepared {
                    program: "docker".into(),
                    args,
                    env: inherited_env(std::env::vars_os(), true),
                    cwd: dirs.root.clone(),
                    container_name: Some(name),
                })
            }
        }
    }
}

/// Whether docker options already mount something at `/tmp` (`-v x:/tmp`, `--tmpfs /tmp`,
/// `--mount …,target=/tmp`): then the task's own `/tmp` is left out, docker refusing two mounts
/// at one place.
fn mounts_tmp(options: &[String]) -> bool {
    let target_is_tmp = |flag: &str, value: &str| match flag {
        "--tmpfs" => value.split(':').next() == Some("/tmp"),
        "-v" | "--volume" => value.split(':').nth(1) == Some("/tmp"),
        "--mount" => value.split(',').any(|kv| {
            matches!(
                kv.split_once('='),
                Some(("target" | "dst" | "destination", "/tmp"))
            )
        }),
        _ => false,
    };
    options.iter().enumerate().any(|(i, o)| {
        let next = options.get(i + 1).map_or("", String::as_str);
        match o.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => target_is_tmp(flag, value),
            _ if o.starts_with("-v") && o.len() > 2 => target_is_tmp("-v", &o[2..]),
            _ => target_is_tmp(o, next),
        }
    })
}

/// A container name unique per worker and task, within docker's allowed characters.
fn container_name(worker_name: &str, task_id: i32) -> String {
    let clean: String = worker_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("taskqueue-{clean}-task{task_id}")
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Stdout(String),
    Stderr(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited; `Ok(())` for status 0, else the reason.
    Exited(Result<(), String>),
    /// The running timeout passed; the command was killed.
    TimedOut(Duration),
    /// `stop` was cancelled; the command was killed.
    Stopped,
    /// The command could not start.
    NotStarted(String),
}

/// Runs `prepared`, sending its output lines to `lines`, until it exits, `timeout` passes or
/// `stop` is cancelled (the last two kill its process group, and its container).
pub async fn run(
    prepared: &Prepared,
    lines: mpsc::Sender<Line>,
    timeout: Option<Duration>,
    stop: &CancellationToken,
) -> Outcome {
    let mut cmd = Command::new(&prepared.program);
    cmd.args(&prepared.args)
        .env_clear()
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&prepared.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::NotStarted(format!("cannot start {}: {e}", prepared.program)),
    };
    let out = tokio::spawn(forward(
        child.stdout.take().expect("piped"),
        lines.clone(),
        Line::Stdout,
    ));
    let err = tokio::spawn(forward(
        child.stderr.take().expect("piped"),
        lines,
        Line::Stderr,
    ));
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        status = child.wait() => Outcome::Exited(describe(status)),
        () = deadline => {
            kill(&mut child, prepared).await;
            Outcome::TimedOut(timeout.unwrap_or_default())
        }
        () = stop.cancelled() => {
            kill(&mut child, prepared).await;
            Outcome::Stopped
        }
    };
    // Output still buffered in the pipes belongs to the run. A background process that keeps a
    // pipe open must not hold the task forever: its group is killed after a short wait.
    let drained = async {
        let _ = out.await;
        let _ = err.await;
    };
    tokio::pin!(drained);
    if tokio::time::timeout(Duration::from_secs(5), &mut drained)
        .await
        .is_err()
    {
        signal_group(&child, libc::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), drained).await;
    }
    outcome
}

fn describe(status: std::io::Result<ExitStatus>) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Err(format!("exit status {code}")),
            (None, Some(sig)) => Err(format!("killed by signal {sig}")),
            _ => Err(format!("ended with {s}")),
        },
        Err(e) => Err(format!("cannot wait for the command: {e}")),
    }
}

fn signal_group(child: &Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the process group we created for this child.
        unsafe { libc::killpg(pid as i32, signal) };
    }
}

/// SIGTERM to the group (and `docker kill` for a container), SIGKILL after 5 s.
async fn kill(child: &mut Child, prepared: &Prepared) {
    if let Some(name) = &prepared.container_name {
        let _ = Command::new("docker")
            .args(["kill", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    signal_group(child, libc::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        signal_group(child, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

/// Sends each line of `pipe` (lossy UTF-8, without its line ending) to `lines`.
async fn forward(
    pipe: impl AsyncRead + Unpin,
    lines: mpsc::Sender<Line>,
    wrap: fn(String) -> Line,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                if lines.send(wrap(text)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Removes a folder tree, ignoring a missing one.
pub async fn remove_tree(path: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove work directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(command: &str) -> pb::Task {
        pb::Task {
            task_id: 42,
            command: command.into(),
            container: "ubuntu:24.04".into(),
            ..Default::default()
        }
    }

    fn dirs() -> WorkDirs {
        WorkDirs::under(PathBuf::from("/store/tasks/42"))
    }

    static NO_EXTRA: DockerPolicy = DockerPolicy {
        volume_roots: Vec::new(),
        extra_allowed: Vec::new(),
    };

    fn env(worker_name: &str) -> TaskEnv<'_> {
        TaskEnv {
            worker_name,
            cpu: 3,
            builtin: None,
            docker_policy: &NO_EXTRA,
        }
    }

    #[test]
    fn shell_runs_under_the_task_shell_or_sh() {
        let p = Executor::Shell
            .prepare(&task("echo hi > $TASKQUEUE_OUTPUT/x"), &dirs(), &env("w1"))
            .unwrap();
        assert_eq!(p.program, "sh");
        assert_eq!(p.args, ["-c", "echo hi > $TASKQUEUE_OUTPUT/x"]);
        assert_eq!(p.cwd, PathBuf::from("/store/tasks/42"));
        let vars: std::collections::HashMap<_, _> = p.env.into_iter().collect();
        assert_eq!(vars["TASKQUEUE_OUTPUT"], "/store/tasks/42/output");
        assert_eq!(vars["TASKQUEUE_INPUT"], "/store/tasks/42/input");
        assert_eq!(vars["TASKQUEUE_RESOURCE"], "/store/tasks/42/resource");
        assert_eq!(vars["TASKQUEUE_TASK_ID"], "42");
        assert_eq!(vars["CPU"], "3");
        assert!(!vars.contains_key("SCITQ_BUILTIN"));
        let with_helpers = TaskEnv {
            builtin: Some(Path::new("/store/builtin")),
            ..env("w1")
        };
        let p = Executor::Shell
            .prepare(&task("true"), &dirs(), &with_helpers)
            .unwrap();
        assert!(
            p.env
                .contains(&("SCITQ_BUILTIN".into(), "/store/builtin".into()))
        );
        let mut t = task("set -e; false");
        t.shell = Some("bash".into());
        assert_eq!(
            Executor::Shell
                .prepare(&t, &dirs(), &env("w1"))
                .unwrap()
                .program,
            "bash"
        );
        assert!(
            Executor::Shell
                .prepare(&task("  "), &dirs(), &env("w1"))
                .is_err()
        );
    }

    #[test]
    fn docker_mounts_folders_and_splits_the_command() {
        let mut t = task("bowtie2 -x /resource/idx -U '/input/a b.fq'");
        t.container_options = Some("--gpus all --shm-size 2g".into());
        let p = Executor::Docker { config_dir: None }
            .prepare(&t, &dirs(), &env("node 1"))
            .unwrap();
        assert_eq!(p.program, "docker");
        assert_eq!(p.container_name.as_deref(), Some("taskqueue-node-1-task42"));
        let expected: Vec<String> = [
            "run",
            "--rm",
            "--name",
            "taskqueue-node-1-task42",
            "-v",
            "/store/tasks/42/input:/input",
            "-v",
            "/store/tasks/42/output:/output",
            "-v",
            "/store/tasks/42/resource:/resource:ro",
            "-v",
            "/store/tasks/42/tmp:/tmp",
            "-e",
            "TASKQUEUE_TASK_ID=42",
            "-e",
            "TASKQUEUE_WORKER_NAME=node 1",
            "-e",
            "CPU=3",
            "-e",
            "TASKQUEUE_INPUT=/input",
            "-e",
            "TASKQUEUE_OUTPUT=/output",
            "-e",
            "TASKQUEUE_RESOURCE=/resource",
            "--gpus",
            "all",
            "--shm-size",
            "2g",
            "ubuntu:24.04",
            "bowtie2",
            "-x",
            "/resource/idx",
            "-U",
            "/input/a b.fq",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(p.args, expected);
    }

    #[test]
    fn docker_with_a_shell_and_credentials() {
        let mut t = task("cat /input/* | wc -l > /output/n");
        t.shell = Some("bash".into());
        let p = Executor::Docker {
            config_dir: Some("/store/docker".into()),
        }
        .prepare(&t, &dirs(), &env("w"))
        .unwrap();
        assert_eq!(&p.args[..3], ["--config", "/store/docker", "run"]);
        assert_eq!(
            &p.args[p.args.len() - 4..],
            [
                "ubuntu:24.04",
                "bash",
                "-c",
                "cat /input/* | wc -l > /output/n"
            ]
        );
    }

    #[test]
    fn docker_mounts_the_helpers_read_only_and_a_private_tmp() {
        let roots = DockerPolicy {
            volume_roots: vec!["/scratch".into(), "/tmp".into()],
            extra_allowed: Vec::new(),
        };
        let helpers = TaskEnv {
            builtin: Some(Path::new("/store/builtin")),
            docker_policy: &roots,
            ..env("w")
        };
        let d = Executor::Docker { config_dir: None };
        let p = d.prepare(&task("true"), &dirs(), &helpers).unwrap();
        let pairs: Vec<(String, String)> = p
            .args
            .windows(2)
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect();
        for (flag, value) in [
            ("-v", "/store/builtin:/builtin:ro"),
            ("-v", "/store/tasks/42/tmp:/tmp"),
            ("-e", "SCITQ_BUILTIN=/builtin"),
            ("-e", "CPU=3"),
        ] {
            assert!(
                pairs.contains(&(flag.into(), value.into())),
                "{flag} {value} in {:?}",
                p.args
            );
        }
        // The task's own /tmp gives way to one its options mount.
        for opts in [
            "--tmpfs /tmp",
            "--tmpfs=/tmp:size=1g",
            "-v /scratch:/tmp",
            "--volume=/scratch:/tmp:rw",
            "-v/scratch:/tmp",
            "--mount type=bind,source=/scratch,target=/tmp",
        ] {
            let mut t = task("true");
            t.container_options = Some(opts.into());
            let p = d.prepare(&t, &dirs(), &helpers).unwrap();
            assert!(
                !p.args.iter().any(|a| a == "/store/tasks/42/tmp:/tmp"),
                "{opts}: {:?}",
                p.args
            );
        }
        for opts in ["-v /tmp:/data", "--tmpfs /run", "-e TMP=/tmp"] {
            let mut t = task("true");
            t.container_options = Some(opts.into());
            let p = d.prepare(&t, &dirs(), &helpers).unwrap();
            assert!(
                p.args.iter().any(|a| a == "/store/tasks/42/tmp:/tmp"),
                "{opts}: {:?}",
                p.args
            );
        }
    }

    #[test]
    fn docker_refuses_what_it_cannot_run() {
        let d = Executor::Docker { config_dir: None };
        let mut no_image = task("true");
        no_image.container = "".into();
        assert!(d.prepare(&no_image, &dirs(), &env("w")).is_err());
        assert!(
            d.prepare(&task("echo 'unclosed"), &dirs(), &env("w"))
                .is_err()
        );
        let mut bad_opts = task("true");
        bad_opts.container_options = Some("--env \"X".into());
        assert!(d.prepare(&bad_opts, &dirs(), &env("w")).is_err());
    }

    #[test]
    fn docker_refuses_options_and_images_its_policy_does_not_allow() {
        let d = Executor::Docker { config_dir: None };
        for opts in [
            "--privileged",
            "--network host",
            "-v /:/host",
            "--cap-add ALL",
        ] {
            let mut t = task("true");
            t.container_options = Some(opts.into());
            let e = d.prepare(&t, &dirs(), &env("w")).unwrap_err();
            assert!(e.contains("refused by this worker"), "{opts}: {e}");
        }
        let mut t = task("true");
        t.container = "--privileged".into();
        assert!(d.prepare(&t, &dirs(), &env("w")).is_err());
        let allowing = DockerPolicy {
            volume_roots: vec!["/data".into()],
            extra_allowed: vec!["--privileged".into()],
        };
        let mut t = task("true");
        t.container_options = Some("--privileged -v /data/ref:/ref".into());
        let env = TaskEnv {
            docker_policy: &allowing,
            ..env("w")
        };
        assert!(d.prepare(&t, &dirs(), &env).is_ok());
    }

    #[test]
    fn only_allow_listed_variables_are_inherited() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/w"),
            ("LC_ALL", "C.UTF-8"),
            ("TASKQUEUE_TOKEN", "secret"),
            ("TASKQUEUE_WORKER_TOKEN", "secret"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("DOCKER_HOST", "unix:///run/docker.sock"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let shell: Vec<String> = inherited_env(vars.clone(), false)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(shell, ["PATH", "HOME", "LC_ALL"]);
        let docker: Vec<String> = inherited_env(vars, true)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(docker, ["PATH", "HOME", "LC_ALL", "DOCKER_HOST"]);
    }

    #[tokio::test]
    async fn a_command_sees_no_other_variable() {
        let (o, lines) = run_shell("env", None).await;
        assert_eq!(o, Outcome::Exited(Ok(())));
        for line in lines {
            let Line::Stdout(l) = line else { continue };
            let name = l.split('=').next().unwrap_or("");
            assert!(
                INHERITED.contains(&name)
                    || name.starts_with("LC_")
                    || name.starts_with("TASKQUEUE_")
                    || ["CPU", "SCITQ_BUILTIN", "PWD", "SHLVL", "_", "OLDPWD"].contains(&name),
                "{l}"
            );
            assert!(!name.contains("TOKEN"), "{l}");
        }
    }

    async fn run_shell(command: &str, timeout: Option<Duration>) -> (Outcome, Vec<Line>) {
        let dir = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::under(dir.path().to_path_buf());
        let p = Executor::Shell
            .prepare(&task(command), &dirs, &env("w"))
            .unwrap();
        let (tx, mut rx) = mpsc::channel(100);
        let stop = CancellationToken::new();
        let outcome = run(&p, tx, timeout, &stop).await;
        let mut lines = Vec::new();
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        (outcome, lines)
    }

    #[tokio::test]
    async fn streams_lines_and_reports_exit() {
        let (o, lines) = run_shell("echo one; echo two >&2; printf 'no newline'", None).await;
        assert_eq!(o, Outcome::Exited(Ok(())));
        assert!(lines.contains(&Line::Stdout("one".into())));
        assert!(lines.contains(&Line::Stderr("two".into())));
        assert!(lines.contains(&Line::Stdout("no newline".into())));
        let (o, _) = run_shell("exit 3", None).await;
        assert_eq!(o, Outcome::Exited(Err("exit status 3".into())));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let started = std::time::Instant::now();
        let (o, _) = run_shell(
            "sleep 30 & sleep 30; echo never",
            Some(Duration::from_millis(300)),
        )
        .await;
        assert!(matches!(o, Outcome::TimedOut(_)), "{o:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
