//! The `taskqueue` client commands, run as a person runs them (the real binary, a private
//! configuration folder) against a replica: login and its stored session, tasks, workflows, steps,
//! workers, users, JSON output, one-line errors with a non-zero exit, TLS with a CA file or
//! without verification, help and completions, `task wait` with a real worker.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{ADMIN_PASSWORD, WORKER_TOKEN, replica, wait_until};

/// The binary with a private configuration folder and no inherited connection settings.
struct Cli {
    config: PathBuf,
}

impl Cli {
    fn new() -> Cli {
        Cli {
            config: common::tempdir().join("config"),
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskqueue"));
        cmd.args(args)
            .env("XDG_CONFIG_HOME", &self.config)
            .env_remove("TASKQUEUE_SERVER")
            .env_remove("TASKQUEUE_TOKEN")
            .env_remove("TASKQUEUE_PASSWORD")
            .env_remove("TASKQUEUE_LOG")
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("the command finishes")
            .unwrap()
    }

    /// Runs and expects success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects a failure with one line on stderr; returns that line.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
        assert!(stderr.starts_with("taskqueue: "), "{stderr:?}");
        stderr.trim_end().to_string()
    }

    fn login_file(&self) -> PathBuf {
        self.config.join("taskqueue/login.yaml")
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test]
async fn login_stores_a_private_session_used_by_every_command() {
    let r = replica().await;
    let cli = Cli::new();
    let server = r.url();
    let out = cli
        .run_env(
            &["login", "--server", &server, "--user", "admin"],
            &[("TASKQUEUE_PASSWORD", ADMIN_PASSWORD)],
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(cli.login_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the token is readable by its owner only"
    );
    let stored = std::fs::read_to_string(cli.login_file()).unwrap();
    assert!(
        stored.contains(&server) && stored.contains("token:"),
        "{stored}"
    );

    // Workflow, step, tasks — no --server or --token needed any more.
    let wf = cli
        .ok(&["workflow", "create", "rnaseq"])
        .await
        .trim()
        .to_string();
    let step = cli
        .ok(&["step", "create", "--workflow", &wf, "align"])
        .await
        .trim()
        .to_string();
    let steps = json(
        &cli.ok(&["step", "list", "--workflow", &wf, "-o", "json"])
            .await,
    );
    assert_eq!(steps[0]["name"], "align");
    let first = cli
        .ok(&[
            "task", "submit", "--step", &step, "--name", "first", "--retry", "2", "--", "echo",
            "hi",
        ])
        .await
        .trim()
        .parse::<i32>()
        .unwrap();
    let second = json(
        &cli.ok(&[
            "task",
            "submit",
            "-o",
            "json",
            "--after",
            &first.to_string(),
            "--",
            "echo bye",
        ])
        .await,
    )["task_id"]
        .as_i64()
        .unwrap();
    let listed = json(&cli.ok(&["task", "list", "-o", "json"]).await);
    let ids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [second, first as i64]);
    let shown = json(
        &cli.ok(&["task", "show", &first.to_string(), "-o", "json"])
            .await,
    );
    assert_eq!(shown["command"], "echo hi");
    assert_eq!(shown["retry"], 2);
    assert_eq!(shown["status"], "P");
    let table = cli.ok(&["task", "list", "--step", &step]).await;
    assert!(table.contains("ID") && table.contains("echo hi") && !table.contains("echo bye"));
    let retried = cli.ok(&["task", "retry", &first.to_string()]).await;
    assert!(
        retried.contains(&format!("task {first} retried as task")),
        "{retried}"
    );
    let latest = json(
        &cli.ok(&["task", "show", &first.to_string(), "--latest", "-o", "json"])
            .await,
    );
    assert_eq!(latest["previous_task_id"], first);

    let workflows = cli.ok(&["workflow", "list"]).await;
    assert!(workflows.contains("rnaseq"));
    let stats = json(&cli.ok(&["workflow", "stats", &wf, "-o", "json"]).await);
    assert_eq!(stats[0]["step_name"], "align");
    let users = json(&cli.ok(&["user", "list", "-o", "json"]).await);
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["username"] == "admin")
    );
    cli.ok(&["workers", "list"]).await;

    // Logging out forgets the session; commands then say how to get one.
    assert!(cli.ok(&["logout"]).await.contains("logged out"));
    assert!(!cli.login_file().exists());
    let line = cli.fails(&["task", "list", "--server", &server]).await;
    assert!(line.contains("taskqueue login"), "{line}");
}

#[tokio::test]
async fn bad_input_fails_with_one_clear_line() {
    let r = replica().await;
    let cli = Cli::new();
    let server = r.url();
    let line = cli
        .fails(&[
            "login",
            "--server",
            &server,
            "--user",
            "admin",
            "--password",
            "wrong",
        ])
        .await;
    assert!(line.contains("credentials"), "{line}");
    assert!(!cli.login_file().exists(), "a failed login stores nothing");

    let with = |extra: &[&str]| {
        let mut v = vec!["--server", server.as_str(), "--token", WORKER_TOKEN];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<String>>()
    };
    let run = |a: Vec<String>| {
        let cli = &cli;
        async move {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            cli.fails(&refs).await
        }
    };
    let mut all = vec!["task".to_string(), "show".into(), "424242".into()];
    all.extend(with(&[]));
    assert!(run(all).await.contains("not found"));
    let mut bad_status = vec!["task".to_string(), "submit".into()];
    bad_status.extend(with(&["--status", "XY", "--", "true"]));
    assert!(run(bad_status).await.contains("invalid"));
    let mut no_step = vec!["task".to_string(), "submit".into()];
    no_step.extend(with(&["--step", "999", "--", "true"]));
    run(no_step).await;
    // The worker token is not an admin.
    let mut not_admin = vec!["user".to_string(), "create".into(), "eve".into()];
    not_admin.extend(with(&["--password", "x"]));
    assert!(run(not_admin).await.contains("permission denied"));
    // Nothing stored, nothing listening.
    let line = cli
        .fails(&["workers", "list", "--server", "127.0.0.1:1"])
        .await;
    assert!(line.contains("cannot reach"), "{line}");
    // Argument errors are clap's, also non-zero.
    let out = cli.run(&["task", "retry", "not-a-number"]).await;
    assert!(!out.status.success());
    // The database is left unchanged by all of the above.
    let db = common::postgres().await.connect(r.database_url()).await;
    let tasks: i64 = db
        .query_one("SELECT count(*) FROM task", &[])
        .await
        .unwrap()
        .get(0);
    let users: i64 = db
        .query_one("SELECT count(*) FROM scitq_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((tasks, users), (0, 1));
}

#[tokio::test]
async fn help_everywhere_and_completions() {
    let cli = Cli::new();
    for noun in [
        "worker",
        "login",
        "logout",
        "task",
        "workers",
        "workflow",
        "step",
        "flavor",
        "provider",
        "region",
        "recruiter",
        "event",
        "user",
        "job",
        "template",
    ] {
        let out = cli.ok(&[noun, "--help"]).await;
        assert!(out.contains("Usage"), "{noun}: {out}");
    }
    let sub = cli.ok(&["task", "submit", "--help"]).await;
    assert!(sub.contains("--output-to") && sub.contains("--after"));
    let bash = cli.ok(&["completions", "bash"]).await;
    assert!(bash.contains("taskqueue") && bash.contains("workflow"));
    cli.ok(&["completions", "zsh"]).await;
}

async fn start_tls_replica() -> (u16, PathBuf, tokio::sync::oneshot::Sender<()>) {
    let url = common::postgres().await.fresh_db().await;
    let mut config = common::test_config(&url);
    config.tls = taskqueue::config::TlsMode::SelfSigned;
    config.metrics_listen = None;
    let cert = config.data_dir.join("tls/cert.pem");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(taskqueue::server::run(
        config,
        taskqueue::server::Listeners {
            grpc,
            metrics: None,
            web: None,
        },
        async move {
            let _ = rx.await;
        },
    ));
    wait_until(Duration::from_secs(60), "the certificate", || {
        let cert = cert.clone();
        async move { cert.exists() }
    })
    .await;
    (port, cert, tx)
}

#[tokio::test]
async fn tls_with_a_ca_file_or_without_verification() {
    let (port, cert, _stop) = start_tls_replica().await;
    let server = format!("https://localhost:{port}");
    let cli = Cli::new();
    let login = |extra: &'static [&'static str]| {
        let server = server.clone();
        let cli = &cli;
        async move {
            let mut args = vec!["login", "--server", &server, "--user", "admin"];
            args.extend_from_slice(extra);
            cli.run_env(&args, &[("TASKQUEUE_PASSWORD", ADMIN_PASSWORD)])
                .await
        }
    };
    // The server may still be starting: retry the verified login for a while.
    let ca = cert.to_string_lossy().to_string();
    let mut ok = false;
    for _ in 0..100 {
        let out = cli
            .run_env(
                &[
                    "login",
                    "--server",
                    &server,
                    "--user",
                    "admin",
                    "--ca-file",
                    &ca,
                ],
                &[("TASKQUEUE_PASSWORD", ADMIN_PASSWORD)],
            )
            .await;
        if out.status.success() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "login over TLS with the server's certificate");
    // The stored login remembers the CA file.
    cli.ok(&["workers", "list"]).await;
    // Without the CA the certificate is not trusted; --insecure skips verification.
    std::fs::remove_file(cli.login_file()).unwrap();
    let untrusted = login(&[]).await;
    assert!(!untrusted.status.success());
    let insecure = login(&["--insecure"]).await;
    assert!(
        insecure.status.success(),
        "{}",
        String::from_utf8_lossy(&insecure.stderr)
    );
    assert!(
        std::fs::read_to_string(cli.login_file())
            .unwrap()
            .contains("insecure: true")
    );
    cli.ok(&["workflow", "list"]).await;
}

fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

#[tokio::test]
async fn task_wait_follows_retries_and_reports_failures() {
    let r = replica().await;
    let cli = Cli::new();
    let server = r.url();
    let base = ["--server", server.as_str(), "--token", WORKER_TOKEN];
    let submit = |cmd: &'static str, extra: &'static [&'static str]| {
        let cli = &cli;
        async move {
            let mut args = vec!["task", "submit"];
            args.extend_from_slice(&base);
            args.extend_from_slice(extra);
            args.extend(["--", cmd]);
            cli.ok(&args).await.trim().to_string()
        }
    };
    let out = common::tempdir().join("out");
    let out_uri = file_uri(&out);
    let good = {
        let mut args = vec!["task", "submit"];
        args.extend_from_slice(&base);
        args.extend([
            "--output-to",
            out_uri.as_str(),
            "--",
            "echo 42 > $TASKQUEUE_OUTPUT/answer",
        ]);
        cli.ok(&args).await.trim().to_string()
    };
    let flaky = submit("test -e $TASKQUEUE_WORKDIR/../../flaky || { mkdir -p $TASKQUEUE_WORKDIR/../../flaky; exit 1; }", &["--retry", "1"]).await;
    let bad = submit("exit 7", &[]).await;

    let mut args =
        taskqueue::worker::WorkerArgs::new(&server, WORKER_TOKEN, "cli-runner", common::tempdir());
    args.ping_interval = Duration::from_millis(200);
    args.concurrency = 2;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(taskqueue::worker::run(args, async move {
        let _ = stopped.await;
    }));

    let mut wait = vec![
        "task",
        "wait",
        good.as_str(),
        flaky.as_str(),
        "--timeout",
        "60s",
    ];
    wait.extend_from_slice(&base);
    let done = cli.ok(&wait).await;
    assert!(done.contains("2 task(s) finished: 2 succeeded"), "{done}");
    assert_eq!(
        std::fs::read_to_string(out.join("answer")).unwrap().trim(),
        "42"
    );
    let mut wait_bad = vec!["task", "wait", bad.as_str(), "--timeout", "60s"];
    wait_bad.extend_from_slice(&base);
    let line = cli.fails(&wait_bad).await;
    assert!(line.contains(&format!("1 task(s) failed: {bad}")), "{line}");

    // Re-target the running worker to a workflow's step and watch that workflow finish.
    // Connection flags go right after `<noun> <verb>` (before any `--`).
    let with_base = |mut a: Vec<String>| {
        let tail = a.split_off(2);
        a.extend(base.iter().map(|s| s.to_string()));
        a.extend(tail);
        a
    };
    let run = |a: Vec<String>| {
        let cli = &cli;
        async move {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            cli.ok(&refs).await
        }
    };
    let wf = run(with_base(vec![
        "workflow".into(),
        "create".into(),
        "watched".into(),
    ]))
    .await;
    let wf = wf.trim().to_string();
    let step = run(with_base(vec![
        "step".into(),
        "create".into(),
        "--workflow".into(),
        wf.clone(),
        "only".into(),
    ]))
    .await
    .trim()
    .to_string();
    for i in 0..3 {
        run(with_base(vec![
            "task".into(),
            "submit".into(),
            "--step".into(),
            step.clone(),
            "--".into(),
            format!("echo {i}"),
        ]))
        .await;
    }
    let workers = json(
        &run(with_base(vec![
            "workers".into(),
            "list".into(),
            "-o".into(),
            "json".into(),
        ]))
        .await,
    );
    let worker_id = workers[0]["worker_id"].as_i64().unwrap().to_string();
    assert_eq!(workers[0]["name"], "cli-runner");
    run(with_base(vec![
        "workers".into(),
        "update".into(),
        worker_id.clone(),
        "--step".into(),
        step.clone(),
    ]))
    .await;
    let watched = run(with_base(vec![
        "workflow".into(),
        "watch".into(),
        wf.clone(),
        "--timeout".into(),
        "60s".into(),
    ]))
    .await;
    assert!(
        watched.contains("3 task(s) finished, 3 succeeded"),
        "{watched}"
    );
    let statuses = json(
        &run(with_base(vec![
            "workers".into(),
            "status".into(),
            worker_id.clone(),
            "--set".into(),
            "P".into(),
            "-o".into(),
            "json".into(),
        ]))
        .await,
    );
    assert_eq!(statuses[0]["status"], "P");
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}
