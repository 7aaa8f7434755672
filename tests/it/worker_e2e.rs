//! The proof of issue 7, end to end with real processes: `taskqueue serve` with its embedded
//! defaults (private PostgreSQL in a data folder), two `taskqueue worker` processes and the
//! `taskqueue` command line. 200 shell tasks with dependencies, retries and failures all end as
//! expected; their logs, followed live and read back page by page, are what the commands printed;
//! their outputs land at file:// locations; a worker killed with SIGKILL mid-task has its task
//! retried on the other worker once the watchdog notices.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{all_tasks, free_port, wait_until};
use taskqueue::proto as pb;
use tokio::process::{Child, Command};

const TOKEN: &str = "e2e-worker-token";
const PASSWORD: &str = "e2e-admin-password";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_taskqueue"));
    c.env_remove("TASKQUEUE_SERVER")
        .env_remove("TASKQUEUE_TOKEN")
        .env_remove("TASKQUEUE_DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("TASKQUEUE_LOG", "warn")
        .kill_on_drop(true);
    c
}

struct World {
    dir: PathBuf,
    server: String,
    serve: Child,
    workers: BTreeMap<String, Child>,
}

impl World {
    async fn start() -> World {
        let dir = common::tempdir();
        let port = free_port();
        let server = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("serve.log")).unwrap();
        let serve = bin()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                "off",
            ])
            .args(["--worker-token", TOKEN, "--admin-password", PASSWORD])
            .args(["--offline-timeout", "2s", "--lost-timeout", "3s"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let world = World {
            dir,
            server,
            serve,
            workers: BTreeMap::new(),
        };
        let target = taskqueue::client::Target::new(world.server.clone());
        wait_until(Duration::from_secs(120), "serve to answer", || {
            let target = target.clone();
            async move {
                let Ok(channel) = target.connect().await else {
                    return false;
                };
                let mut c = taskqueue::client::with_token(channel, Some(TOKEN)).unwrap();
                c.list_workers(pb::ListWorkersRequest::default())
                    .await
                    .is_ok()
            }
        })
        .await;
        world
    }

    fn client(&self) -> taskqueue::client::Client {
        let channel = taskqueue::client::Target::new(self.server.clone())
            .channel()
            .unwrap();
        taskqueue::client::with_token(channel, Some(TOKEN)).unwrap()
    }

    fn start_worker(&mut self, name: &str, step: i32) {
        let store = self.dir.join(format!("store-{name}"));
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = bin()
            .args([
                "worker",
                "--server",
                &self.server,
                "--token",
                TOKEN,
                "--name",
                name,
            ])
            .args([
                "--concurrency",
                "4",
                "--executor",
                "shell",
                "--ping-interval",
                "500ms",
            ])
            .args(["--step", &step.to_string()])
            .arg("--store")
            .arg(store)
            .env("TASKQUEUE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.insert(name.into(), child);
    }

    /// The command line, logged in through its stored session (private config folder).
    fn cli(&self) -> Command {
        let mut c = bin();
        c.env("XDG_CONFIG_HOME", self.dir.join("config"));
        c
    }

    async fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli().args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// Submits through the CLI; returns the new task id.
async fn submit(world: &World, args: &[&str], command: &str) -> i32 {
    let mut all = vec!["task", "submit"];
    all.extend_from_slice(args);
    all.extend(["--", command]);
    world.cli_ok(&all).await.trim().parse().unwrap()
}

fn uri(p: &Path) -> String {
    format!("file://{}/", p.display())
}

#[tokio::test]
async fn two_workers_two_hundred_tasks_and_a_killed_worker() {
    let mut world = World::start().await;
    let out = world
        .cli()
        .args([
            "login",
            "--server",
            &world.server,
            "--user",
            "admin",
            "--password",
            PASSWORD,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wf = world
        .cli_ok(&["workflow", "create", "e2e"])
        .await
        .trim()
        .to_string();
    let step: i32 = world
        .cli_ok(&["step", "create", "--workflow", &wf, "all"])
        .await
        .trim()
        .parse()
        .unwrap();
    let step_s = step.to_string();
    let outputs = world.dir.join("outputs");
    let flaky = world.dir.join("flaky");
    std::fs::create_dir_all(&flaky).unwrap();

    // A task printing 50 lines slowly, followed live from before it starts.
    let chatty_cmd = "for j in $(seq 1 50); do echo line-$j; sleep 0.02; done; echo tail-err >&2";
    let chatty = submit(&world, &["--step", &step_s, "--name", "chatty"], chatty_cmd).await;
    let follow = world
        .cli()
        .args(["task", "logs", &chatty.to_string(), "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // 149 independent tasks with an output each, 40 dependents, 8 that fail once then succeed on
    // their retry, 1 that fails for good (with one retry) and 1 that depends on it: 200 tasks.
    let mut plain = BTreeMap::new();
    for i in 1..=149 {
        let out_to = uri(&outputs.join(format!("t{i}")));
        let cmd = format!("echo out-{i}; echo err-{i} >&2; echo {i} > $TASKQUEUE_OUTPUT/n");
        let id = submit(&world, &["--step", &step_s, "--output-to", &out_to], &cmd).await;
        plain.insert(i, id);
    }
    let mut dependents = Vec::new();
    for i in 1..=40 {
        let after = plain[&i].to_string();
        let cmd = format!("echo after-{i}");
        dependents.push(submit(&world, &["--step", &step_s, "--after", &after], &cmd).await);
    }
    let mut flakies = Vec::new();
    for i in 1..=8 {
        let cmd = format!(
            "if mkdir {}/{i} 2>/dev/null; then echo first-try >&2; exit 1; fi; echo recovered",
            flaky.display()
        );
        flakies.push(submit(&world, &["--step", &step_s, "--retry", "2"], &cmd).await);
    }
    let doomed = submit(
        &world,
        &["--step", &step_s, "--retry", "1"],
        "echo doomed >&2; exit 5",
    )
    .await;
    let orphan = submit(
        &world,
        &["--step", &step_s, "--after", &doomed.to_string()],
        "echo never",
    )
    .await;

    world.start_worker("alpha", step);
    world.start_worker("beta", step);

    // The CLI waits for the whole workflow and reports the two failures.
    let out = world
        .cli()
        .args(["task", "wait", "--workflow", &wf, "--timeout"])
        .arg(std::env::var("TASKQUEUE_E2E_WAIT").unwrap_or_else(|_| "600s".into()))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "two tasks failed: {stderr}");

    // Every task ended as expected (following retries).
    let mut c = world.client();
    let tasks: BTreeMap<i32, pb::Task> = all_tasks(&mut c)
        .await
        .into_iter()
        .map(|t| (t.task_id, t))
        .collect();
    let latest = |id: i32| {
        let mut current = id;
        while let Some(next) = tasks.values().find(|t| t.previous_task_id == Some(current)) {
            current = next.task_id;
        }
        &tasks[&current]
    };
    for id in plain.values().chain(&dependents).chain(&[chatty]) {
        assert_eq!(latest(*id).status, "S", "task {id}");
        assert!(
            !tasks[id].hidden,
            "task {id} succeeded on its first attempt"
        );
    }
    for id in &flakies {
        let last = latest(*id);
        assert_eq!(last.status, "S", "flaky task {id} succeeded on its retry");
        assert_eq!(last.retry_count, 1);
    }
    assert_eq!(latest(doomed).status, "F");
    assert_eq!(
        latest(doomed).retry_count,
        1,
        "one retry, then failed for good"
    );
    assert_eq!(
        latest(orphan).status,
        "F",
        "a dependent of a final failure fails"
    );
    let line = stderr.trim();
    assert!(
        line.contains(&format!("{}", latest(doomed).task_id)) && line.contains(&orphan.to_string()),
        "{line}"
    );
    // Both workers took part.
    let by_worker: std::collections::BTreeSet<i32> =
        tasks.values().filter_map(|t| t.worker_id).collect();
    assert!(by_worker.len() >= 2, "both workers ran tasks");

    // Outputs landed at their file:// locations.
    for i in plain.keys() {
        let n = std::fs::read_to_string(outputs.join(format!("t{i}/n"))).unwrap();
        assert_eq!(n.trim(), i.to_string());
    }

    // Logs: every line each command printed, on the right stream, nothing else.
    let ids: Vec<i32> = plain.values().copied().collect();
    let chunks = c
        .get_logs_chunk(pb::GetLogsRequest {
            task_ids: ids.clone(),
            chunk_size: 100,
            skip_from_end: None,
            log_type: None,
        })
        .await
        .unwrap()
        .into_inner()
        .logs;
    assert_eq!(chunks.len(), ids.len());
    for ((i, id), chunk) in plain.iter().zip(&chunks) {
        assert_eq!(chunk.task_id, *id);
        assert_eq!(chunk.stdout, [format!("out-{i}")], "task {id}");
        assert_eq!(chunk.stderr, [format!("err-{i}")], "task {id}");
    }
    let doomed_log = c
        .get_logs_chunk(pb::GetLogsRequest {
            task_ids: vec![doomed],
            chunk_size: 10,
            skip_from_end: None,
            log_type: Some("stderr".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .logs;
    assert_eq!(doomed_log[0].stderr[0], "doomed");
    assert!(
        doomed_log[0].stderr[1].contains("command failed: exit status 5"),
        "the worker's own message is in the task's stderr: {:?}",
        doomed_log[0].stderr
    );
    // Live (followed from before the task ran) and paged logs of the chatty task match.
    let live = tokio::time::timeout(Duration::from_secs(60), follow.wait_with_output())
        .await
        .expect("the follow ends with the task")
        .unwrap();
    let expected: Vec<String> = (1..=50).map(|j| format!("line-{j}")).collect();
    let live_lines: Vec<String> = String::from_utf8_lossy(&live.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(live_lines, expected, "live logs");
    assert_eq!(String::from_utf8_lossy(&live.stderr).trim(), "tail-err");
    let paged = world
        .cli()
        .args(["task", "logs", &chatty.to_string()])
        .output()
        .await
        .unwrap();
    let paged_lines: Vec<String> = String::from_utf8_lossy(&paged.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(paged_lines, expected, "paged logs");
    let tail = world
        .cli_ok(&[
            "task",
            "logs",
            &chatty.to_string(),
            "--tail",
            "3",
            "--stream",
            "stdout",
        ])
        .await;
    assert_eq!(
        tail.lines().collect::<Vec<_>>(),
        ["line-48", "line-49", "line-50"]
    );

    // SIGKILL the worker running a long task: the watchdog notices and the task is retried on
    // the other worker.
    let marks = world.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let sleeper_cmd = format!(
        "if [ -e {m}/started ]; then echo survived on $TASKQUEUE_WORKER_NAME; \
         else echo $$ > {m}/pgid; touch {m}/started; sleep 600; fi",
        m = marks.display()
    );
    let sleeper = submit(&world, &["--step", &step_s], &sleeper_cmd).await;
    let holder = {
        let c = c.clone();
        let mut holder = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while holder.is_none() {
            assert!(Instant::now() < deadline, "the sleeper starts");
            let mut c = c.clone();
            let t = c
                .list_tasks(pb::ListTasksRequest {
                    step_id_filter: Some(step),
                    status_filter: Some("R".into()),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .tasks;
            holder = t
                .iter()
                .find(|t| t.task_id == sleeper)
                .and_then(|t| t.worker_id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        holder.unwrap()
    };
    let workers = c
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    let victim = workers
        .iter()
        .find(|w| w.worker_id == holder)
        .unwrap()
        .name
        .clone();
    let survivor = if victim == "alpha" { "beta" } else { "alpha" };
    let mut child = world.workers.remove(&victim).unwrap();
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let killed_at = Instant::now();
    wait_until(
        Duration::from_secs(120),
        "the sleeper's retry to succeed elsewhere",
        || {
            let mut c = c.clone();
            async move {
                let tasks = all_tasks(&mut c).await;
                tasks
                    .iter()
                    .any(|t| t.previous_task_id == Some(sleeper) && t.status == "S")
            }
        },
    )
    .await;
    eprintln!(
        "killed worker's task retried and done after {:?}",
        killed_at.elapsed()
    );
    let retried = all_tasks(&mut c)
        .await
        .into_iter()
        .find(|t| t.previous_task_id == Some(sleeper))
        .unwrap();
    let survivor_id = workers
        .iter()
        .find(|w| w.name == survivor)
        .unwrap()
        .worker_id;
    assert_eq!(retried.worker_id, Some(survivor_id));

    // The orphaned `sleep` of the killed worker.
    if let Ok(pgid) = std::fs::read_to_string(marks.join("pgid")) {
        let pgid: i32 = pgid.trim().parse().unwrap();
        // SAFETY: kill(2) of the process group the killed worker's task started.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
    // The surviving worker and the server stop cleanly on SIGTERM.
    for (name, mut child) in std::mem::take(&mut world.workers) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(90), child.wait())
            .await
            .expect("the worker stops on SIGTERM")
            .unwrap();
        assert!(
            status.success(),
            "worker {name}: {status}\n{}",
            world.log(&name)
        );
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(world.serve.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(60), world.serve.wait())
        .await
        .expect("serve stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "serve: {status}");
}
