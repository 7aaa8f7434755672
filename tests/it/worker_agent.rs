//! The worker agent in-process against a real replica: the status chain with durations, staging
//! through file:// locations, failures and automatic retries, timeouts, concurrency, re-weighting,
//! tasks the server lists but the worker does not hold, and the SIGTERM hand-back.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{WORKER_TOKEN, all_tasks, postgres, replica, status_of, submit, task, wait_until};
use taskqueue::proto as pb;
use taskqueue::worker::WorkerArgs;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Agent {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    fn start(args: WorkerArgs) -> Agent {
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(taskqueue::worker::run(args, async move {
            let _ = rx.await;
        }));
        Agent {
            stop: Some(tx),
            handle,
        }
    }

    /// The SIGTERM path: returns what the agent returned.
    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(60), &mut self.handle)
            .await
            .expect("the worker stops within its grace period")
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

fn args(r: &common::Replica, name: &str, concurrency: u32) -> WorkerArgs {
    let mut a = WorkerArgs::new(
        &r.url(),
        WORKER_TOKEN,
        name,
        common::tempdir().join("store"),
    );
    a.concurrency = concurrency;
    a.ping_interval = Duration::from_millis(200);
    a
}

async fn wait_status(c: &taskqueue::client::Client, id: i32, want: &str, within: Duration) {
    wait_until(within, &format!("task {id} to reach {want}"), || {
        let mut c = c.clone();
        async move { status_of(&mut c, id).await == want }
    })
    .await;
}

fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

#[tokio::test]
async fn runs_the_status_chain_with_staging_and_durations() {
    let r = replica().await;
    let mut c = r.worker();
    let data = common::tempdir();
    std::fs::write(data.join("in.txt"), "alpha\nbeta\n").unwrap();
    std::fs::create_dir_all(data.join("ref")).unwrap();
    std::fs::write(data.join("ref/genome.fa"), ">chr1\nACGT\n").unwrap();
    let out = common::tempdir().join("results");
    let mut req = task(
        "set -e; test \"$PWD\" = \"$TASKQUEUE_WORKDIR\"; \
         wc -l < $TASKQUEUE_INPUT/in.txt > $TASKQUEUE_OUTPUT/lines; \
         cp $TASKQUEUE_RESOURCE/genome.fa $TASKQUEUE_OUTPUT/; mkdir $TASKQUEUE_OUTPUT/sub; \
         echo $TASKQUEUE_TASK_ID > $TASKQUEUE_OUTPUT/sub/id; sleep 1; echo done",
    );
    req.input = vec![file_uri(&data.join("in.txt"))];
    req.resource = vec![format!("{}/", data.join("ref").display())];
    req.output = Some(format!("{}/", file_uri(&out)));
    let id = submit(&mut c, req).await;

    let agent = Agent::start(args(&r, "chain", 1));
    wait_status(&c, id, "S", Duration::from_secs(60)).await;
    assert_eq!(
        std::fs::read_to_string(out.join("lines")).unwrap().trim(),
        "2"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("genome.fa")).unwrap(),
        ">chr1\nACGT\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("sub/id")).unwrap().trim(),
        id.to_string()
    );

    let db = postgres().await.connect(r.database_url()).await;
    let row = db
        .query_one(
            "SELECT run_duration, run_started_at IS NOT NULL AS started, w.worker_name
               FROM task t JOIN worker w USING (worker_id) WHERE task_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, i32>("run_duration") >= 1,
        "run duration recorded"
    );
    assert!(row.get::<_, bool>("started"), "R stamped run_started_at");
    assert_eq!(row.get::<_, String>("worker_name"), "chain");
    // The worker sent its specifications: a local flavor named after it.
    let flavor: i64 = db
        .query_one(
            "SELECT count(*) FROM flavor WHERE flavor_name = 'chain'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(flavor, 1);
    // Its work directory is cleaned up once the task is finished.
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn failures_are_retried_then_fail_and_timeouts_kill() {
    let r = replica().await;
    let mut c = r.worker();
    let mut failing = task("echo attempt; exit 3");
    failing.retry = Some(1);
    let failing = submit(&mut c, failing).await;
    let mut slow = task("sleep 30");
    slow.running_timeout = Some(0.5);
    let slow = submit(&mut c, slow).await;
    let mut missing = task("echo never runs");
    missing.input = vec!["/nonexistent/taskqueue/input.txt".into()];
    let missing = submit(&mut c, missing).await;
    let started = std::time::Instant::now();
    let agent = Agent::start(args(&r, "failing", 2));

    // The failing task: first attempt F (hidden), its retry F for good.
    wait_until(Duration::from_secs(60), "the retry to fail", || {
        let mut c = c.clone();
        async move {
            let tasks = all_tasks(&mut c).await;
            tasks
                .iter()
                .any(|t| t.previous_task_id == Some(failing) && t.status == "F" && !t.hidden)
        }
    })
    .await;
    wait_status(&c, slow, "F", Duration::from_secs(30)).await;
    wait_status(&c, missing, "F", Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the running timeout killed the 30 s sleep"
    );
    let tasks = all_tasks(&mut c).await;
    let first = tasks.iter().find(|t| t.task_id == failing).unwrap();
    assert!(first.hidden && first.status == "F");
    let db = postgres().await.connect(r.database_url()).await;
    // A download failure never ran: no run_started_at.
    let ran: bool = db
        .query_one(
            "SELECT run_started_at IS NOT NULL FROM task WHERE task_id = $1",
            &[&missing],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!ran);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn never_runs_more_than_its_concurrency() {
    let r = replica().await;
    let mut c = r.worker();
    let dir = common::tempdir();
    let cmd = format!(
        "touch {d}/run.$TASKQUEUE_TASK_ID; sleep 0.4; ls {d} | grep -c '^run' >> {d}/counts; \
         rm {d}/run.$TASKQUEUE_TASK_ID",
        d = dir.display()
    );
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit(&mut c, task(&cmd)).await);
    }
    let mut a = args(&r, "bounded", 2);
    a.prefetch = Some(2);
    let agent = Agent::start(a);
    for id in &ids {
        wait_status(&c, *id, "S", Duration::from_secs(60)).await;
    }
    let counts: Vec<u32> = std::fs::read_to_string(dir.join("counts"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 6);
    assert!(
        counts.iter().all(|n| *n <= 2),
        "at most 2 at once: {counts:?}"
    );
    assert!(counts.contains(&2), "it did run 2 at once: {counts:?}");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn hands_back_tasks_the_server_lists_but_it_does_not_hold() {
    let r = replica().await;
    let mut c = r.worker();
    // A previous life of worker "phoenix" died while uploading a failed run's outputs (V: a status
    // that re-registration leaves alone and pings list as active).
    let id = common::register_worker(&mut c, "phoenix", 1, 0, None).await;
    let t = submit(&mut c, task("echo second life")).await;
    let answer = common::ping(&mut c, id).await;
    assert_eq!(answer.tasks.len(), 1);
    for s in ["C", "O", "R", "V"] {
        common::set_status(&mut c, t, s).await;
    }

    let agent = Agent::start(args(&r, "phoenix", 1));
    // It is handed back (hidden F) and its retry runs here to success.
    wait_until(
        Duration::from_secs(60),
        "the handed-back task's retry to succeed",
        || {
            let mut c = c.clone();
            async move {
                let tasks = all_tasks(&mut c).await;
                let original = tasks.iter().find(|x| x.task_id == t);
                let retry = tasks.iter().find(|x| x.previous_task_id == Some(t));
                original.is_some_and(|o| o.hidden && o.status == "F")
                    && retry.is_some_and(|r| r.status == "S")
            }
        },
    )
    .await;
    let events = c
        .list_worker_events(pb::WorkerEventFilter {
            worker_id: Some(id),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().events)
        .unwrap_or_default();
    // Events are another area's RPCs: when they answer, the warning is there.
    if !events.is_empty() {
        assert!(
            events
                .iter()
                .any(|e| e.level == "W" && e.message.contains(&t.to_string()))
        );
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn sigterm_pauses_and_hands_back_unfinished_tasks() {
    let r = replica().await;
    let mut c = r.worker();
    let running = submit(&mut c, task("sleep 60")).await;
    let queued = submit(&mut c, task("sleep 60")).await;
    let mut a = args(&r, "leaving", 1);
    a.prefetch = Some(1);
    a.shutdown_grace = Duration::from_millis(500);
    let agent = Agent::start(a);
    // Either may win the one slot: one runs, the other waits on hold.
    wait_until(
        Duration::from_secs(60),
        "one task running, one on hold",
        || {
            let mut c = c.clone();
            async move {
                let mut s = [
                    status_of(&mut c, running).await,
                    status_of(&mut c, queued).await,
                ];
                s.sort();
                s == ["O", "R"]
            }
        },
    )
    .await;

    let started = std::time::Instant::now();
    agent.stop().await.expect("the worker exits cleanly");
    assert!(started.elapsed() < Duration::from_secs(30));
    let tasks = all_tasks(&mut c).await;
    for id in [running, queued] {
        let t = tasks.iter().find(|t| t.task_id == id).unwrap();
        assert!(t.hidden && t.status == "F", "task {id} handed back: {t:?}");
        let retry = tasks
            .iter()
            .find(|x| x.previous_task_id == Some(id))
            .unwrap();
        assert_eq!(retry.status, "P", "its retry waits for another worker");
        assert_eq!(
            retry.retry.unwrap_or(0),
            t.retry.unwrap_or(0),
            "a hand-back costs no retry"
        );
    }
    let db = postgres().await.connect(r.database_url()).await;
    let status: String = db
        .query_one(
            "SELECT status::text FROM worker WHERE worker_name = 'leaving'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        status, "P",
        "a stopped worker is paused so nothing new is assigned"
    );
}

#[tokio::test]
async fn a_refused_token_ends_the_worker_with_a_clear_error() {
    let r = replica().await;
    let mut a = args(&r, "intruder", 1);
    a.connect.token = Some("not-a-token".into());
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        taskqueue::worker::run(a, std::future::pending()),
    )
    .await
    .expect("a refusal is not retried forever")
    .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn commands_get_the_shell_helpers_and_their_cpu_share() {
    let r = replica().await;
    let mut c = r.worker();
    let out = common::tempdir().join("results");
    let link = common::tempdir().join("builtin");
    // A command written as for the original (its helpers, $CPU), sourcing them by $SCITQ_BUILTIN
    // and, as the original's `. /builtin/std.sh`, through the link the worker made.
    let mut req = task(&format!(
        ". \"$SCITQ_BUILTIN/std.sh\"; . {}/bio.sh; \
         touch $TASKQUEUE_INPUT/s_1.fq.gz $TASKQUEUE_INPUT/s_2.fq.gz; \
         _find_pairs $TASKQUEUE_INPUT/*; echo \"$READS1\" > $TASKQUEUE_OUTPUT/reads1; \
         echo \"$CPU\" > $TASKQUEUE_OUTPUT/cpu; _canfail false; \
         _para sh -c 'exit 0'; _para sh -c 'exit 6'; _wait; echo never > $TASKQUEUE_OUTPUT/never",
        link.display()
    ));
    req.output = Some(format!("{}/", file_uri(&out)));
    let id = submit(&mut c, req).await;

    let mut a = args(&r, "helpers", 2);
    a.builtin_link = link.clone();
    let agent = Agent::start(a);
    wait_status(&c, id, "F", Duration::from_secs(60)).await;
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        std::fs::read_to_string(out.join("cpu")).unwrap().trim(),
        (cpus / 2).max(1).to_string()
    );
    assert!(
        std::fs::read_to_string(out.join("reads1"))
            .unwrap()
            .trim()
            .ends_with("/input/s_1.fq.gz")
    );
    assert!(!out.join("never").exists(), "_wait failed the command");
    let logs = c
        .get_logs_chunk(pb::GetLogsRequest {
            task_ids: vec![id],
            chunk_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let text = format!("{logs:?}");
    assert!(
        text.contains("Command failed (PID ") && text.contains("): sh -c exit 6"),
        "{text}"
    );
    assert!(
        std::fs::read_link(&link)
            .unwrap()
            .ends_with("store/builtin")
    );
    agent.stop().await.unwrap();
}
