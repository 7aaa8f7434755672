//! Workflows, steps and step statistics.

use crate::common;

use common::{postgres, register_worker, replica, set_status, submit, task, workflow_with_step};
use taskqueue::proto as pb;
use tonic::Code;

#[tokio::test]
async fn workflows_create_list_delete() {
    let r = replica().await;
    let mut c = r.admin().await;
    let create = |name: &str, strategy: Option<&str>, max: Option<i32>| pb::WorkflowRequest {
        name: name.into(),
        run_strategy: strategy.map(str::to_string),
        maximum_workers: max,
    };
    assert_eq!(
        c.create_workflow(create(" ", None, None))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.create_workflow(create("x", Some("Q"), None))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.create_workflow(create("x", Some("BB"), None))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.create_workflow(create("x", None, Some(-1)))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let a = c
        .create_workflow(create("rnaseq-1", None, None))
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let b = c
        .create_workflow(create("RNAseq-2", Some("T"), Some(10)))
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    c.create_workflow(create("metagenomics", None, None))
        .await
        .unwrap();
    let dup = c
        .create_workflow(create("rnaseq-1", None, None))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert!(
        dup.message().contains("duplicate key"),
        "older DSL clients match this text: {}",
        dup.message()
    );

    let list = |f: pb::WorkflowFilter| {
        let mut c = c.clone();
        async move { c.list_workflows(f).await.map(|r| r.into_inner().workflows) }
    };
    let rna = list(pb::WorkflowFilter {
        name_like: Some("rnaseq%".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        rna.iter().map(|w| w.workflow_id).collect::<Vec<_>>(),
        vec![b, a],
        "case-insensitive, newest first"
    );
    assert_eq!(
        (rna[0].run_strategy.as_str(), rna[0].maximum_workers),
        ("T", Some(10))
    );
    assert_eq!(
        (rna[1].run_strategy.as_str(), rna[1].maximum_workers),
        ("B", None)
    );
    let page = list(pb::WorkflowFilter {
        limit: Some(1),
        offset: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        page.iter().map(|w| w.workflow_id).collect::<Vec<_>>(),
        vec![b]
    );
    assert_eq!(
        list(pb::WorkflowFilter {
            limit: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        list(pb::WorkflowFilter {
            offset: Some(-3),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );

    // Deleting cascades to steps and tasks; workers stay, without step.
    let s = c
        .create_step(pb::StepRequest {
            name: "align".into(),
            workflow_id: Some(a),
            workflow_name: None,
        })
        .await
        .unwrap()
        .into_inner()
        .step_id;
    let w = register_worker(&mut c, "w", 1, 0, Some(s)).await;
    c.submit_task(pb::TaskRequest {
        step_id: Some(s),
        ..task("x")
    })
    .await
    .unwrap();
    assert_eq!(
        c.delete_workflow(pb::WorkflowId {
            workflow_id: 424_242
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    c.delete_workflow(pb::WorkflowId { workflow_id: a })
        .await
        .unwrap();
    let db = postgres().await.connect(r.database_url()).await;
    let left: i64 = db
        .query_one("SELECT count(*) FROM task WHERE step_id = $1", &[&s])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let workers = c
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(
        workers.iter().find(|x| x.worker_id == w).unwrap().step_id,
        None
    );
}

#[tokio::test]
async fn steps_by_id_or_name() {
    let r = replica().await;
    let mut c = r.admin().await;
    let wf = c
        .create_workflow(pb::WorkflowRequest {
            name: "wf".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let req = |name: &str, id: Option<i32>, wname: Option<&str>| pb::StepRequest {
        name: name.into(),
        workflow_id: id,
        workflow_name: wname.map(str::to_string),
    };
    let s1 = c
        .create_step(req("align", Some(wf), None))
        .await
        .unwrap()
        .into_inner()
        .step_id;
    let s2 = c
        .create_step(req("count", None, Some("wf")))
        .await
        .unwrap()
        .into_inner()
        .step_id;
    assert_eq!(
        c.create_step(req("", Some(wf), None))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.create_step(req("x", None, None))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.create_step(req("x", Some(0), Some("")))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.create_step(req("x", Some(31_337), None))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.create_step(req("x", None, Some("nope")))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.create_step(req("align", Some(wf), None))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    let steps = c
        .list_steps(pb::StepFilter {
            workflow_id: wf,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .steps;
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.step_id, s.name.as_str()))
            .collect::<Vec<_>>(),
        vec![(s1, "align"), (s2, "count")]
    );
    assert_eq!(steps[0].workflow_name, "wf");
    assert_eq!(
        c.list_steps(pb::StepFilter {
            workflow_id: 31_337,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        c.delete_step(pb::StepId { step_id: 31_337 })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    c.delete_step(pb::StepId { step_id: s1 }).await.unwrap();
    let steps = c
        .list_steps(pb::StepFilter {
            workflow_id: wf,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .steps;
    assert_eq!(steps.len(), 1);
}

#[tokio::test]
async fn step_stats_count_what_the_tasks_say() {
    let r = replica().await;
    let mut c = r.admin().await;
    let (wf, step) = workflow_with_step(&mut c, "wf", "s").await;
    let (_, empty) = workflow_with_step(&mut c, "wf-empty", "nothing").await;
    let request = |retry: i32| pb::TaskRequest {
        step_id: Some(step),
        retry: Some(retry),
        ..task("t")
    };
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit(&mut c, request(0)).await);
    }
    let flaky = submit(&mut c, request(1)).await;
    c.submit_task(pb::TaskRequest {
        dependency: vec![ids[2]],
        ..request(0)
    })
    .await
    .unwrap(); // W
    c.submit_task(pb::TaskRequest {
        status: "I".into(),
        ..request(0)
    })
    .await
    .unwrap(); // I counts as pending
    let upd = |task_id, s: &str, d: Option<i32>| pb::TaskStatusUpdate {
        task_id,
        new_status: s.into(),
        duration: d,
        free_retry: None,
    };
    // ids[0]: succeeded (download 4, run 10, upload 2)
    for (s, d) in [
        ("C", None),
        ("O", Some(4)),
        ("R", None),
        ("U", Some(10)),
        ("S", Some(2)),
    ] {
        c.update_task_status(upd(ids[0], s, d)).await.unwrap();
    }
    // ids[1]: failed after running 3 s; ids[2]: running; ids[3]: accepted
    for (s, d) in [("C", None), ("R", None), ("V", Some(3)), ("F", Some(1))] {
        c.update_task_status(upd(ids[1], s, d)).await.unwrap();
    }
    set_status(&mut c, ids[2], "R").await;
    set_status(&mut c, ids[3], "C").await;
    // flaky: fails once (retried → hidden F + new P)
    set_status(&mut c, flaky, "F").await;

    let stats = c
        .get_step_stats(pb::StepStatsRequest {
            workflow_id: Some(wf),
            step_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!((s.step_id, s.step_name.as_str()), (step, "s"));
    // Visible tasks: 6 + flaky's clone + W + I = 9 (the hidden original is not counted).
    assert_eq!(s.total_tasks, 9);
    assert_eq!(s.waiting_tasks, 1);
    assert_eq!(
        s.pending_tasks, 4,
        "ids[4], ids[5], the clone, and the I task"
    );
    assert_eq!(s.accepted_tasks, 1);
    assert_eq!(s.running_tasks, 1);
    assert_eq!(s.successful_tasks, 1);
    assert_eq!(s.failed_tasks, 1, "retried failures");
    assert_eq!(s.really_failed_tasks, 1, "final failures");
    let ok = s.success_run.unwrap();
    assert_eq!((ok.count, ok.sum, ok.min, ok.max), (1, 10.0, 10.0, 10.0));
    let ko = s.failed_run.unwrap();
    assert_eq!((ko.count, ko.sum), (1, 3.0));
    let dl = s.download.unwrap();
    assert_eq!((dl.count, dl.sum), (1, 4.0));
    let ul = s.upload.unwrap();
    assert_eq!((ul.count, ul.sum, ul.min, ul.max), (2, 3.0, 1.0, 2.0));
    assert_eq!(s.running_run.unwrap().count, 1);
    assert!(s.start_time.is_some() && s.end_time.is_some());
    assert!(s.stats_eval_time > 0);

    // An empty step: zeros, min/max of an empty set are 0 (not +inf as the original).
    let stats = c
        .get_step_stats(pb::StepStatsRequest {
            workflow_id: None,
            step_ids: vec![empty],
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 1);
    let e = &stats[0];
    assert_eq!(e.total_tasks, 0);
    for a in [
        e.success_run,
        e.failed_run,
        e.running_run,
        e.download,
        e.upload,
    ] {
        let a = a.unwrap();
        assert_eq!((a.count, a.sum, a.min, a.max), (0, 0.0, 0.0, 0.0));
    }
    assert_eq!((e.start_time, e.end_time), (None, None));
    // All steps, sorted.
    let all = c
        .get_step_stats(pb::StepStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(
        all.iter().map(|s| s.step_id).collect::<Vec<_>>(),
        vec![step, empty]
    );
}
