//! Group commit of SubmitTask (`db::submit_batch`): concurrent submissions form batches and each
//! is stored exactly as given (lists, options, owner, step, status), with the answers of the
//! one-by-one path (a missing step is NOT_FOUND, prerequisites are resolved); within one batch
//! the ids follow arrival order; the new pending tasks are within reach of the claim cursors.

use crate::common;

use common::{postgres, start_replicas, submit, task, workflow_with_step};
use taskqueue::db::Db;
use taskqueue::db::submit_batch::submit_batch;
use taskqueue::db::tasks::NewTask;
use taskqueue::domain::ownership::Owner;
use taskqueue::domain::tasks::Submission;
use taskqueue::proto as pb;

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The i-th submission of the burst: every field set, some in status I, some on a missing step,
/// every fifth with a prerequisite (the first task).
fn request(i: usize, step: i32, first: i32) -> pb::TaskRequest {
    let mut t = task(&format!("echo {i}"));
    t.shell = Some("sh".into());
    t.container_options = (i % 3 == 0).then(|| "--env A=1".into());
    t.step_id = Some(if i % 17 == 16 { 999_999 } else { step });
    t.input = (0..i % 4).map(|k| format!("s3://in/{i}/{k}")).collect();
    t.resource = vec![format!("file:///r/{i}")];
    t.output = Some(format!("s3://out/{i}"));
    t.retry = Some((i % 3) as i32);
    t.is_final = Some(i % 2 == 0);
    t.uses_cache = Some(i % 2 == 1);
    t.download_timeout = Some(10.0);
    t.running_timeout = Some(i as f32);
    t.status = if i % 7 == 0 {
        "I".into()
    } else {
        String::new()
    };
    t.task_name = Some(format!("name-{i}"));
    if i % 5 == 4 {
        t.dependency = vec![first];
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_form_batches_and_are_stored_as_given() {
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    // A replica of its own process: its metrics count this test's submissions alone.
    let r = start_replicas(&url, &["submit-batch"], &[]).await.remove(0);
    let mut admin = r.admin().await;
    let (_, step) = workflow_with_step(&mut admin, "wf", "step").await;
    let first = submit(&mut admin, task("first")).await;
    let before = r.metrics().await;
    let n = 300;
    let answers = futures::future::join_all((0..n).map(|i| {
        let mut c = r.worker();
        async move { (i, c.submit_task(request(i, step, first)).await) }
    }))
    .await;
    let after = r.metrics().await;
    let tasks = admin
        .list_tasks(pb::ListTasksRequest {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let mut ids = std::collections::HashSet::new();
    for (i, answer) in answers {
        let want = request(i, step, first);
        if i % 17 == 16 {
            let e = answer.unwrap_err();
            assert_eq!(e.code(), tonic::Code::NotFound, "submission {i}");
            assert_eq!(e.message(), "step 999999 not found");
            continue;
        }
        let id = answer.unwrap().into_inner().task_id;
        assert!(ids.insert(id), "task id {id} answered twice");
        let t = tasks.iter().find(|t| t.task_id == id).unwrap();
        let status = if i % 7 == 0 && want.dependency.is_empty() {
            "I"
        } else {
            "P" // the prerequisite is pending: …
        };
        let status = if !want.dependency.is_empty() {
            "W"
        } else {
            status
        };
        assert_eq!(t.status, status, "submission {i}");
        assert_eq!(t.command, want.command);
        assert_eq!(t.shell, want.shell);
        assert_eq!(t.container, want.container);
        assert_eq!(t.container_options, want.container_options);
        assert_eq!(t.step_id, want.step_id);
        assert_eq!(t.input, want.input, "submission {i}");
        assert_eq!(t.resource, want.resource);
        assert_eq!(t.output, want.output);
        assert_eq!(t.retry, want.retry);
        assert_eq!(t.is_final, want.is_final);
        assert_eq!(t.uses_cache, want.uses_cache);
        assert_eq!(t.download_timeout, want.download_timeout);
        assert_eq!(t.running_timeout, want.running_timeout);
        assert_eq!(t.task_name, want.task_name);
    }
    let count = |s: &str| {
        metric(&after, &format!("{s}{{kind=\"submit\"}}"))
            - metric(&before, &format!("{s}{{kind=\"submit\"}}"))
    };
    assert_eq!(count("taskqueue_batch_size_sum"), n as f64);
    assert!(
        count("taskqueue_batch_size_count") < n as f64,
        "{} batches for {n} concurrent submissions: none formed",
        count("taskqueue_batch_size_count")
    );
    // Owned by the worker token: the rows say so.
    let c = pg.connect(&url).await;
    let not_token: i64 = c
        .query_one(
            "SELECT count(*) FROM task WHERE task_id <> $1 AND NOT owner_worker_token",
            &[&first],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(not_token, 0);
}

fn new_task(command: &str, step: Option<i32>, deps: &[i32]) -> NewTask {
    NewTask {
        rules: Submission::validate(command, "alpine", "", deps, None, [None; 3]).unwrap(),
        shell: None,
        container_options: None,
        step_id: step,
        input: vec!["a".into(), "b, \"c\"".into()],
        resource: Vec::new(),
        output: None,
        is_final: None,
        uses_cache: None,
        task_name: None,
        owner: Owner {
            user_id: None,
            worker_token: true,
        },
    }
}

#[tokio::test]
async fn within_a_batch_ids_follow_arrival_and_cursors_reach_the_new_tasks() {
    let pg = postgres().await;
    let url = pg.fresh_db().await;
    let db = Db::connect(&url, 4).unwrap();
    let c = pg.connect(&url).await;
    // Claims have gone past id 50 on every shard.
    c.batch_execute(
        "SELECT setval('task_task_id_seq', 50);
         INSERT INTO assign_cursor (step_key, shard, next_task_id, rescan_after)
         SELECT 0, s, 51, now() + interval '1 hour' FROM generate_series(0, 3) s;",
    )
    .await
    .unwrap();
    let client = db.client().await.unwrap();
    let first = submit_batch(&client, &db, 4, &[new_task("first", None, &[])])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let reqs: Vec<NewTask> = (0..8)
        .map(|i| match i {
            3 => new_task("on a missing step", Some(424_242), &[]),
            5 => new_task("with a prerequisite", None, &[first]),
            _ => new_task(&format!("task {i}"), None, &[]),
        })
        .collect();
    let answers = submit_batch(&client, &db, 4, &reqs).await.unwrap();
    assert_eq!(answers.len(), 8);
    let e = answers[3].as_ref().unwrap_err();
    assert_eq!(e.message, "step 424242 not found");
    let batched: Vec<i32> = [0, 1, 2, 4, 6, 7]
        .iter()
        .map(|&i| *answers[i].as_ref().unwrap())
        .collect();
    assert!(batched.windows(2).all(|w| w[0] < w[1]), "{batched:?}");
    let dependent = *answers[5].as_ref().unwrap();
    assert!(
        dependent > batched[5],
        "the one-by-one path runs after the statement"
    );
    let row = c
        .query_one(
            "SELECT status, input FROM task WHERE task_id = $1",
            &[&batched[0]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "P");
    assert_eq!(row.get::<_, Vec<String>>(1), vec!["a", "b, \"c\""]);
    let missed: i64 = c
        .query_one(
            "SELECT count(*) FROM task t JOIN assign_cursor a
                 ON a.step_key = COALESCE(t.step_id, 0) AND a.shard = t.shard
              WHERE t.status = 'P' AND a.next_task_id > t.task_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(missed, 0, "pending tasks below their cursor");
}
