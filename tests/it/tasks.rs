//! Task lifecycle: submission (validation, dependencies in one transaction), status updates
//! (alphabet, idempotence, durations, hidden tasks), automatic and manual retries, listing.

use crate::common;

use common::{
    all_tasks, postgres, replica, set_status, status_of, submit, task, workflow_with_step,
};
use taskqueue::proto as pb;
use tonic::Code;

async fn count_tasks(url: &str) -> i64 {
    postgres()
        .await
        .connect(url)
        .await
        .query_one("SELECT count(*) FROM task", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn submission_is_validated_and_all_or_nothing() {
    let r = replica().await;
    let mut c = r.admin().await;
    let (_, step) = workflow_with_step(&mut c, "wf", "s").await;
    let before = count_tasks(r.database_url()).await;
    let bad = [
        (
            "empty command",
            pb::TaskRequest {
                command: " ".into(),
                ..task("x")
            },
            Code::InvalidArgument,
        ),
        (
            "empty container",
            pb::TaskRequest {
                container: String::new(),
                ..task("x")
            },
            Code::InvalidArgument,
        ),
        (
            "status S",
            pb::TaskRequest {
                status: "S".into(),
                ..task("x")
            },
            Code::InvalidArgument,
        ),
        (
            "two letters",
            pb::TaskRequest {
                status: "PP".into(),
                ..task("x")
            },
            Code::InvalidArgument,
        ),
        (
            "lowercase",
            pb::TaskRequest {
                status: "p".into(),
                ..task("x")
            },
            Code::InvalidArgument,
        ),
        (
            "negative retry",
            pb::TaskRequest {
                retry: Some(-1),
                ..task("x")
            },
            Code::InvalidArgument,
        ),
        (
            "negative timeout",
            pb::TaskRequest {
                running_timeout: Some(-2.0),
                ..task("x")
            },
            Code::InvalidArgument,
        ),
        (
            "unknown step",
            pb::TaskRequest {
                step_id: Some(999_999),
                ..task("x")
            },
            Code::NotFound,
        ),
        (
            "unknown prerequisite",
            pb::TaskRequest {
                dependency: vec![999_999],
                step_id: Some(step),
                ..task("x")
            },
            Code::InvalidArgument,
        ),
        (
            "bad prerequisite id",
            pb::TaskRequest {
                dependency: vec![-3],
                ..task("x")
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, req, code) in bad {
        let err = c.submit_task(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {}", err.message());
    }
    // One known and one unknown prerequisite: nothing is created, not even the task.
    let a = submit(&mut c, task("a")).await;
    let err = c
        .submit_task(pb::TaskRequest {
            dependency: vec![a, 888_888],
            ..task("b")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("888888"), "{}", err.message());
    assert_eq!(count_tasks(r.database_url()).await, before + 1);
}

#[tokio::test]
async fn initial_status_and_dependencies() {
    let r = replica().await;
    let mut c = r.admin().await;
    let a = submit(&mut c, task("a")).await;
    assert_eq!(status_of(&mut c, a).await, "P");
    let i = submit(
        &mut c,
        pb::TaskRequest {
            status: "I".into(),
            ..task("i")
        },
    )
    .await;
    assert_eq!(status_of(&mut c, i).await, "I");
    let w = submit(
        &mut c,
        pb::TaskRequest {
            status: "W".into(),
            ..task("w")
        },
    )
    .await;
    assert_eq!(status_of(&mut c, w).await, "P", "nothing to wait for");
    let b = submit(
        &mut c,
        pb::TaskRequest {
            dependency: vec![a],
            ..task("b")
        },
    )
    .await;
    let d = submit(
        &mut c,
        pb::TaskRequest {
            dependency: vec![a, b],
            ..task("d")
        },
    )
    .await;
    assert_eq!(status_of(&mut c, b).await, "W");
    set_status(&mut c, a, "S").await;
    assert_eq!(
        status_of(&mut c, b).await,
        "P",
        "the last prerequisite's success promotes"
    );
    assert_eq!(status_of(&mut c, d).await, "W", "d still waits for b");
    set_status(&mut c, b, "S").await;
    assert_eq!(status_of(&mut c, d).await, "P");
    // Depending on an already-succeeded task starts pending (the original left it in W forever).
    let e = submit(
        &mut c,
        pb::TaskRequest {
            dependency: vec![a],
            ..task("e")
        },
    )
    .await;
    assert_eq!(status_of(&mut c, e).await, "P");
}

#[tokio::test]
async fn concurrent_prerequisite_successes_promote_once() {
    let r = replica().await;
    let mut c = r.admin().await;
    for round in 0..15 {
        let p1 = submit(&mut c, task("p1")).await;
        let p2 = submit(&mut c, task("p2")).await;
        let d = submit(
            &mut c,
            pb::TaskRequest {
                dependency: vec![p1, p2],
                ..task("d")
            },
        )
        .await;
        let (mut c1, mut c2) = (c.clone(), c.clone());
        tokio::join!(set_status(&mut c1, p1, "S"), set_status(&mut c2, p2, "S"));
        assert_eq!(status_of(&mut c, d).await, "P", "round {round}");
    }
}

#[tokio::test]
async fn status_updates_validate_and_are_idempotent() {
    let r = replica().await;
    let mut c = r.admin().await;
    let t = submit(&mut c, task("t")).await;
    let update = |status: &str, duration: Option<i32>| pb::TaskStatusUpdate {
        task_id: t,
        new_status: status.into(),
        duration,
        free_retry: None,
    };
    for bad in ["", "RR", "r", "Y", "A"] {
        let err = c.update_task_status(update(bad, None)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
    assert_eq!(
        c.update_task_status(update("R", Some(-1)))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let unknown = pb::TaskStatusUpdate {
        task_id: 777_777,
        ..update("R", None)
    };
    assert_eq!(
        c.update_task_status(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    let free_on_s = pb::TaskStatusUpdate {
        free_retry: Some(true),
        ..update("S", None)
    };
    assert_eq!(
        c.update_task_status(free_on_s).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    c.update_task_status(update("C", None)).await.unwrap();
    c.update_task_status(update("O", Some(7))).await.unwrap();
    c.update_task_status(update("R", None)).await.unwrap();
    c.update_task_status(update("R", None))
        .await
        .expect("same status is an idempotent success");
    c.update_task_status(update("U", Some(11))).await.unwrap();
    c.update_task_status(update("S", Some(3))).await.unwrap();
    let db = postgres().await.connect(r.database_url()).await;
    let row = db
        .query_one(
            "SELECT download_duration, run_duration, upload_duration, run_started_at IS NOT NULL, status FROM task WHERE task_id = $1",
            &[&t],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i32>(0),
            row.get::<_, i32>(1),
            row.get::<_, i32>(2)
        ),
        (7, 11, 3)
    );
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, String>(4), "S");
    let listed = c
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(
        listed
            .iter()
            .find(|x| x.task_id == t)
            .unwrap()
            .run_start_time
            .is_some()
    );
}

#[tokio::test]
async fn automatic_retry_clones_hides_and_rewires() {
    let r = replica().await;
    let mut c = r.admin().await;
    let a = submit(
        &mut c,
        pb::TaskRequest {
            retry: Some(2),
            ..task("flaky")
        },
    )
    .await;
    let b = submit(
        &mut c,
        pb::TaskRequest {
            dependency: vec![a],
            ..task("after")
        },
    )
    .await;
    set_status(&mut c, a, "F").await;
    let all = all_tasks(&mut c).await;
    let original = all.iter().find(|t| t.task_id == a).unwrap();
    assert!(original.hidden);
    assert_eq!(original.status, "F");
    let clone = all
        .iter()
        .find(|t| t.previous_task_id == Some(a))
        .expect("a clone");
    assert_eq!(
        (
            clone.status.as_str(),
            clone.retry,
            clone.retry_count,
            clone.hidden
        ),
        ("P", Some(1), 1, false)
    );
    assert_eq!(clone.command, "flaky");
    let visible = c
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(
        visible.iter().all(|t| t.task_id != a),
        "hidden tasks are not listed by default"
    );

    // The hidden original is read-only.
    let err = c
        .update_task_status(pb::TaskStatusUpdate {
            task_id: a,
            new_status: "S".into(),
            duration: None,
            free_retry: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The dependent now waits for the clone.
    assert_eq!(status_of(&mut c, b).await, "W");
    set_status(&mut c, clone.task_id, "S").await;
    assert_eq!(status_of(&mut c, b).await, "P");

    // Out of retries: the failure is final.
    let last = submit(
        &mut c,
        pb::TaskRequest {
            retry: Some(0),
            ..task("fatal")
        },
    )
    .await;
    set_status(&mut c, last, "F").await;
    let all = all_tasks(&mut c).await;
    assert!(all.iter().all(|t| t.previous_task_id != Some(last)));
    assert!(!all.iter().find(|t| t.task_id == last).unwrap().hidden);
}

#[tokio::test]
async fn free_retry_keeps_the_budget() {
    let r = replica().await;
    let mut c = r.admin().await;
    let t = submit(
        &mut c,
        pb::TaskRequest {
            retry: Some(0),
            ..task("x")
        },
    )
    .await;
    c.update_task_status(pb::TaskStatusUpdate {
        task_id: t,
        new_status: "F".into(),
        duration: None,
        free_retry: Some(true),
    })
    .await
    .unwrap();
    let all = c
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let clone = all.iter().find(|x| x.previous_task_id == Some(t)).unwrap();
    assert_eq!(clone.retry, Some(0));
    assert_eq!(clone.status, "P");
}

#[tokio::test]
async fn manual_retry() {
    let r = replica().await;
    let mut c = r.admin().await;
    assert_eq!(
        c.retry_task(pb::RetryTaskRequest {
            task_id: 424_242,
            retry: None
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    let t = submit(
        &mut c,
        pb::TaskRequest {
            retry: Some(3),
            ..task("x")
        },
    )
    .await;
    set_status(&mut c, t, "S").await;
    // A succeeded task can be re-run on request (a task that wrongly reported success).
    let clone = c
        .retry_task(pb::RetryTaskRequest {
            task_id: t,
            retry: None,
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    assert_ne!(clone, t);
    let all = all_tasks(&mut c).await;
    let cl = all.iter().find(|x| x.task_id == clone).unwrap();
    assert_eq!(
        (cl.status.as_str(), cl.retry, cl.previous_task_id),
        ("P", Some(2), Some(t))
    );
    assert_eq!(
        c.retry_task(pb::RetryTaskRequest {
            task_id: t,
            retry: None
        })
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        c.retry_task(pb::RetryTaskRequest {
            task_id: clone,
            retry: Some(-2)
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    let again = c
        .retry_task(pb::RetryTaskRequest {
            task_id: clone,
            retry: Some(5),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let all = c
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(
        all.iter().find(|x| x.task_id == again).unwrap().retry,
        Some(4)
    );

    // Retrying a waiting task keeps it waiting for its prerequisites.
    let p = submit(&mut c, task("p")).await;
    let w = submit(
        &mut c,
        pb::TaskRequest {
            dependency: vec![p],
            ..task("w")
        },
    )
    .await;
    let w2 = c
        .retry_task(pb::RetryTaskRequest {
            task_id: w,
            retry: None,
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    assert_eq!(status_of(&mut c, w2).await, "W");
    set_status(&mut c, p, "S").await;
    assert_eq!(status_of(&mut c, w2).await, "P");
}

#[tokio::test]
async fn list_tasks_filters_and_pages() {
    let r = replica().await;
    let mut c = r.admin().await;
    let (wf, step) = workflow_with_step(&mut c, "wf", "align").await;
    let (_, other) = workflow_with_step(&mut c, "wf2", "sort").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let req = pb::TaskRequest {
            step_id: Some(step),
            task_name: Some(format!("n{i}")),
            ..task(&format!("bwa MEM sample_{i}%"))
        };
        ids.push(submit(&mut c, req).await);
    }
    c.submit_task(pb::TaskRequest {
        step_id: Some(other),
        ..task("samtools sort")
    })
    .await
    .unwrap();
    set_status(&mut c, ids[0], "R").await;
    let list = |f: pb::ListTasksRequest| {
        let mut c = c.clone();
        async move { c.list_tasks(f).await.map(|r| r.into_inner().tasks) }
    };
    let by_step = list(pb::ListTasksRequest {
        step_id_filter: Some(step),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(by_step.len(), 5);
    assert!(
        by_step.windows(2).all(|w| w[0].task_id > w[1].task_id),
        "newest first"
    );
    assert!(by_step.iter().all(|t| t.workflow_id == Some(wf)));
    assert_eq!(
        list(pb::ListTasksRequest {
            workflow_id_filter: Some(wf),
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        5
    );
    let running = list(pb::ListTasksRequest {
        status_filter: Some("R".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        running.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let by_cmd = list(pb::ListTasksRequest {
        command_filter: Some("mem SAMPLE_3%".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        by_cmd.len(),
        1,
        "case-insensitive substring, % taken literally"
    );
    let page = list(pb::ListTasksRequest {
        step_id_filter: Some(step),
        limit: Some(2),
        offset: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        page.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![ids[3], ids[2]]
    );
    for bad in [
        pb::ListTasksRequest {
            status_filter: Some("Q".into()),
            ..Default::default()
        },
        pb::ListTasksRequest {
            limit: Some(0),
            ..Default::default()
        },
        pb::ListTasksRequest {
            offset: Some(-1),
            ..Default::default()
        },
    ] {
        assert_eq!(list(bad).await.unwrap_err().code(), Code::InvalidArgument);
    }
}
