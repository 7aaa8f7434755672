//! Workflow templates end to end: shell scripts as templates (interpreter `sh`) that call the
//! replica back through the real `taskqueue` client commands to create a workflow, a step and `I`
//! tasks. Upload validation, duplicates with and without force, list filters, runs that succeed
//! (tasks become P), fail or time out (their workflow is deleted), run bookkeeping RPCs.

use crate::common;

use std::time::Duration;

use common::{postgres, spawn_replica, test_config};
use taskqueue::proto as pb;
use tonic::Code;

/// A template script: `meta` and `params` are printed for --metadata / --params; --values creates
/// a workflow with one step and two `I` tasks, then fails (`"mode":"fail"`), hangs
/// (`"mode":"hang"`) or ends well.
fn script(meta: &str, params: &str) -> Vec<u8> {
    let tq = env!("CARGO_BIN_EXE_taskqueue");
    format!(
        r#"#!/bin/sh
TQ={tq}
case "$1" in
  --metadata) printf '%s\n' '{meta}' ;;
  --params) printf '%s\n' '{params}' ;;
  --values)
    wf=$($TQ workflow create "wf-run-$TASKQUEUE_TEMPLATE_RUN_ID") || exit 3
    $TQ template update-run --workflow "$wf" >/dev/null || exit 4
    step=$($TQ step create align --workflow "$wf") || exit 5
    $TQ task submit --step "$step" --status I -- echo one >/dev/null || exit 6
    $TQ task submit --step "$step" --status I -- echo two >/dev/null || exit 6
    case "$2" in
      *'"mode":"fail"'*) echo "cannot go on" >&2; exit 7 ;;
      *'"mode":"hang"'*) sleep 60 ;;
    esac
    echo "done with $2" >&2
    ;;
  *) echo "unknown option $1" >&2; exit 2 ;;
esac
"#
    )
    .into_bytes()
}

const META: &str = r#"{"name":"rnaseq","version":"1.0","description":"demo"}"#;
const PARAMS: &str =
    r#"[{"name":"mode","type":"str","required":true},{"name":"where","type":"provider_region"}]"#;

async fn setup(timeout: Duration) -> (common::Replica, tokio_postgres::Client) {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.template_interpreter = "sh".into();
    config.template_timeout = timeout;
    // Region choices of `provider_region` parameters include the (opt-in) local provider.
    config.local_provider = true;
    let r = spawn_replica(config).await;
    let db = postgres().await.connect(&url).await;
    (r, db)
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

async fn upload(
    client: &mut taskqueue::client::Client,
    script: Vec<u8>,
    force: bool,
) -> pb::UploadTemplateResponse {
    client
        .upload_template(pb::UploadTemplateRequest { script, force })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn upload_refuses_bad_metadata_and_params_and_stores_nothing() {
    let (r, db) = setup(Duration::from_secs(30)).await;
    let mut admin = r.admin().await;
    let cases: [(Vec<u8>, &str); 7] = [
        (b"#!/bin/sh\necho broken >&2\nexit 2\n".to_vec(), "exit=2"),
        (b"#!/bin/sh\necho 'hello, I am not JSON'\n".to_vec(), "JSON"),
        (script(r#"{"name":"x"}"#, PARAMS), "version"),
        (
            script(r#"{"name":"x","version":"latest"}"#, PARAMS),
            "reserved",
        ),
        (script(META, r#"{"not":"a list"}"#), "list"),
        (script(META, r#"[{"name":"a","type":"tuple"}]"#), "tuple"),
        (script(META, r#"[{"type":"int"}]"#), "name"),
    ];
    for (body, expected) in cases {
        let res = upload(&mut admin, body, false).await;
        assert!(!res.success, "{res:?}");
        assert!(
            res.message.contains(expected),
            "{expected:?} in {:?}",
            res.message
        );
        assert!(res.workflow_template_id.is_none());
    }
    let err = admin
        .upload_template(pb::UploadTemplateRequest {
            script: b" \n".to_vec(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Warnings on stderr: refused without force, accepted (and reported) with it.
    let noisy = String::from_utf8(script(META, PARAMS))
        .unwrap()
        .replace("--params) ", "--params) echo 'deprecated option' >&2; ");
    let err = admin
        .upload_template(pb::UploadTemplateRequest {
            script: noisy.clone().into_bytes(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("deprecated option"), "{err:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM workflow_template").await,
        0
    );
    let res = upload(&mut admin, noisy.into_bytes(), true).await;
    assert!(res.success, "{res:?}");
    assert!(res.message.contains("deprecated option"), "{res:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM workflow_template").await,
        1
    );
}

#[tokio::test]
async fn duplicates_need_force_and_lists_filter() {
    let (r, db) = setup(Duration::from_secs(30)).await;
    let mut admin = r.admin().await;
    let admin_id: i32 = db
        .query_one(
            "SELECT user_id FROM scitq_user WHERE username = 'admin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let first = upload(&mut admin, script(META, PARAMS), false).await;
    assert!(first.success, "{first:?}");
    let id = first.workflow_template_id.unwrap();
    assert_eq!(first.name.as_deref(), Some("rnaseq"));

    let again = upload(&mut admin, script(META, PARAMS), false).await;
    assert!(!again.success);
    assert!(again.message.contains("already exists"), "{again:?}");

    let changed = r#"{"name":"rnaseq","version":"1.0","description":"changed"}"#;
    let forced = upload(&mut admin, script(changed, PARAMS), true).await;
    assert!(forced.success, "{forced:?}");
    assert_eq!(
        forced.workflow_template_id,
        Some(id),
        "force replaces in place"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM workflow_template").await,
        1
    );

    let v2 = r#"{"name":"rnaseq","version":"2.0","description":"newer"}"#;
    let other = r#"{"name":"metagenomics","version":"0.1"}"#;
    let id2 = upload(&mut admin, script(v2, PARAMS), false)
        .await
        .workflow_template_id
        .unwrap();
    let id3 = upload(&mut admin, script(other, "[]"), false)
        .await
        .workflow_template_id
        .unwrap();

    let list = |id: Option<i32>, name: Option<&str>, version: Option<&str>| {
        let mut c = admin.clone();
        let f = pb::TemplateFilter {
            workflow_template_id: id,
            name: name.map(str::to_string),
            version: version.map(str::to_string),
        };
        async move {
            c.list_templates(f)
                .await
                .unwrap()
                .into_inner()
                .templates
                .iter()
                .map(|t| t.workflow_template_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(None, None, None).await, [id3, id2, id]);
    assert_eq!(list(Some(id), None, None).await, [id]);
    assert_eq!(list(None, Some("rna%"), None).await, [id2, id]);
    assert_eq!(list(None, Some("rnaseq"), Some("1.%")).await, [id]);
    assert_eq!(list(None, None, Some("latest")).await, [id3, id2]);
    assert_eq!(list(Some(9999), None, None).await, Vec::<i32>::new());

    // Fields: uploader, description, provider_region shown as the catalog's choices.
    common::wait_until(Duration::from_secs(20), "the catalog has regions", || {
        let mut c = admin.clone();
        async move {
            let t = c
                .list_templates(pb::TemplateFilter {
                    workflow_template_id: Some(id),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .templates
                .remove(0);
            let params: serde_json::Value = serde_json::from_str(&t.param_json).unwrap();
            params[1]["choices"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        }
    })
    .await;
    let t = admin
        .list_templates(pb::TemplateFilter {
            workflow_template_id: Some(id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .templates
        .remove(0);
    assert_eq!(t.uploaded_by, Some(admin_id));
    assert_eq!(t.description, "changed");
    let params: serde_json::Value = serde_json::from_str(&t.param_json).unwrap();
    assert_eq!(params[1]["type"], "str");
    assert!(
        params[1]["choices"][0]
            .as_str()
            .unwrap()
            .starts_with("local.local:"),
        "{params}"
    );
    assert_eq!(params[0]["type"], "str");
}

#[tokio::test]
async fn a_successful_run_activates_the_tasks_of_its_workflow() {
    let (r, db) = setup(Duration::from_secs(60)).await;
    let mut user = r.plain_user("alice").await;
    let alice: i32 = db
        .query_one(
            "SELECT user_id FROM scitq_user WHERE username = 'alice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let id = upload(&mut user, script(META, PARAMS), false)
        .await
        .workflow_template_id
        .unwrap();
    let run = user
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: id,
            param_values_json: r#"{"mode":"ok"}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.status, "S", "{run:?}");
    assert_eq!(run.run_by, Some(alice));
    assert_eq!(run.run_by_username.as_deref(), Some("alice"));
    assert!(
        run.error_message
            .as_deref()
            .unwrap_or("")
            .contains("done with"),
        "{run:?}"
    );
    let wf = run.workflow_id.expect("the script recorded its workflow");
    assert_eq!(
        run.workflow_name,
        Some(format!("wf-run-{}", run.template_run_id))
    );
    let statuses: Vec<String> = db
        .query(
            "SELECT t.status::text FROM task t JOIN step s ON s.step_id = t.step_id WHERE s.workflow_id = $1",
            &[&wf],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(statuses, ["P", "P"]);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM task WHERE status = 'P' AND pending_since IS NOT NULL"
        )
        .await,
        2
    );

    // ListTemplateRuns: all, by template, and the filter excludes other templates.
    let other = r#"{"name":"other","version":"1"}"#;
    let id2 = upload(&mut user, script(other, "[]"), false)
        .await
        .workflow_template_id
        .unwrap();
    let runs = |t: Option<i32>| {
        let mut c = user.clone();
        async move {
            c.list_template_runs(pb::TemplateRunFilter {
                workflow_template_id: t,
            })
            .await
            .unwrap()
            .into_inner()
            .runs
        }
    };
    let all = runs(None).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].template_name.as_deref(), Some("rnaseq"));
    assert_eq!(all[0].param_values_json, r#"{"mode": "ok"}"#);
    assert_eq!(runs(Some(id)).await.len(), 1);
    assert!(runs(Some(id2)).await.is_empty());
}

#[tokio::test]
async fn a_failing_run_deletes_its_workflow() {
    let (r, db) = setup(Duration::from_secs(60)).await;
    let mut admin = r.admin().await;
    let id = upload(&mut admin, script(META, PARAMS), false)
        .await
        .workflow_template_id
        .unwrap();
    let run = admin
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: id,
            param_values_json: r#"{"mode":"fail"}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.status, "F", "{run:?}");
    let message = run.error_message.unwrap();
    assert!(message.contains("script failed (exit=7)"), "{message}");
    assert!(message.contains("cannot go on"), "{message}");
    assert_eq!(count(&db, "SELECT count(*) FROM workflow").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM task").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM template_run WHERE status = 'F'").await,
        1
    );
    let metrics = r.metrics().await;
    assert!(
        metrics.contains(r#"taskqueue_template_runs_total{outcome="failed"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_run_past_its_timeout_is_killed_and_its_workflow_deleted() {
    let (r, db) = setup(Duration::from_secs(4)).await;
    let mut admin = r.admin().await;
    let id = upload(&mut admin, script(META, PARAMS), false)
        .await
        .workflow_template_id
        .unwrap();
    let started = std::time::Instant::now();
    let run = admin
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: id,
            param_values_json: r#"{"mode":"hang"}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the 60 s sleep was cut short"
    );
    assert_eq!(run.status, "F", "{run:?}");
    assert!(run.error_message.unwrap().contains("timed out after 4s"));
    assert_eq!(count(&db, "SELECT count(*) FROM workflow").await, 0);
}

#[tokio::test]
async fn runs_refuse_bad_input_and_script_garbage_fails_cleanly() {
    let (r, db) = setup(Duration::from_secs(30)).await;
    let mut admin = r.admin().await;
    let id = upload(&mut admin, script(META, PARAMS), false)
        .await
        .workflow_template_id
        .unwrap();
    for (template, values, code) in [
        (9999, r#"{"mode":"ok"}"#, Code::NotFound),
        (0, r#"{"mode":"ok"}"#, Code::InvalidArgument),
        (id, "not json", Code::InvalidArgument),
        (id, "", Code::InvalidArgument),
        (id, "[1,2]", Code::InvalidArgument),
        (
            id,
            r#"{"where":"local.local:local"}"#,
            Code::InvalidArgument,
        ),
    ] {
        let err = admin
            .run_template(pb::RunTemplateRequest {
                workflow_template_id: template,
                param_values_json: values.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{template} {values}: {err:?}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM template_run").await, 0);

    // A script that prints garbage and never records a workflow: the run fails, saying why.
    let garbage = b"#!/bin/sh\ncase \"$1\" in\n --metadata) echo '{\"name\":\"g\",\"version\":\"1\"}' ;;\n --params) echo '[]' ;;\n *) head -c 3000000 /dev/zero | tr '\\0' 'x'; echo '\\x00garbage' ;;\nesac\n";
    let gid = upload(&mut admin, garbage.to_vec(), false)
        .await
        .workflow_template_id
        .unwrap();
    let run = admin
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: gid,
            param_values_json: "{}".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.status, "F");
    assert!(run.error_message.unwrap().contains("workflow_id is NULL"));
}

#[tokio::test]
async fn runs_left_pending_by_a_stopped_replica_are_ended_by_the_next_run() {
    let (r, db) = setup(Duration::from_secs(30)).await;
    let mut admin = r.admin().await;
    let id = upload(&mut admin, script(META, PARAMS), false)
        .await
        .workflow_template_id
        .unwrap();
    let wf: i32 = db
        .query_one(
            "INSERT INTO workflow (workflow_name) VALUES ('orphan') RETURNING workflow_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for (age, workflow) in [("2 hours", Some(wf)), ("10 seconds", None)] {
        db.execute(
            "INSERT INTO template_run (workflow_template_id, param_values, workflow_id, created_at)
             VALUES ($1, '{}', $2, now() - $3::text::interval)",
            &[&id, &workflow, &age],
        )
        .await
        .unwrap();
    }
    let run = admin
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: id,
            param_values_json: r#"{"mode":"ok"}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.status, "S");
    let old: (String, Option<String>) = db
        .query_one(
            "SELECT status::text, error_message FROM template_run WHERE created_at < now() - interval '1 hour'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(old.0, "F");
    assert!(old.1.unwrap().contains("abandoned"));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM workflow WHERE workflow_name = 'orphan'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM template_run WHERE status = 'P'").await,
        1,
        "a recent run may still be running on another replica"
    );
}

#[tokio::test]
async fn template_runs_are_updated_and_deleted_by_id() {
    let (r, db) = setup(Duration::from_secs(30)).await;
    let mut admin = r.admin().await;
    let id = upload(&mut admin, script(META, PARAMS), false)
        .await
        .workflow_template_id
        .unwrap();
    let run = admin
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: id,
            param_values_json: r#"{"mode":"ok"}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let run_id = run.template_run_id;
    let update = |run: i32, wf: Option<i32>, msg: Option<&str>| pb::UpdateTemplateRunRequest {
        template_run_id: run,
        workflow_id: wf,
        error_message: msg.map(str::to_string),
    };
    for (req, code) in [
        (update(run_id, None, None), Code::InvalidArgument),
        (update(0, None, Some("x")), Code::InvalidArgument),
        (update(9999, None, Some("x")), Code::NotFound),
        (update(run_id, Some(9999), None), Code::NotFound),
    ] {
        let err = admin.update_template_run(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
    }
    admin
        .update_template_run(update(run_id, None, Some("noted")))
        .await
        .unwrap();
    let msg: Option<String> = db
        .query_one(
            "SELECT error_message FROM template_run WHERE template_run_id = $1",
            &[&run_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(msg.as_deref(), Some("noted"));
    assert_eq!(
        admin
            .delete_template_run(pb::DeleteTemplateRunRequest {
                template_run_id: 9999
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    admin
        .delete_template_run(pb::DeleteTemplateRunRequest {
            template_run_id: run_id,
        })
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM template_run").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM workflow").await,
        1,
        "the workflow stays"
    );
}

/// As root, scripts run as the configured unprivileged user.
#[tokio::test]
async fn scripts_run_as_the_configured_user() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: skipped");
        return;
    }
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.template_interpreter = "sh".into();
    config.template_run_as = Some("nobody".into());
    let r = spawn_replica(config).await;
    let mut admin = r.admin().await;
    let body = b"#!/bin/sh\ncase \"$1\" in\n --metadata) echo '{\"name\":\"who\",\"version\":\"1\"}' ;;\n --params) echo '[]' ;;\n *) echo \"user=$(id -un) cwd=$(pwd) files=$(ls -A | wc -l)\" >&2 ;;\nesac\n";
    let id = upload(&mut admin, body.to_vec(), false)
        .await
        .workflow_template_id
        .unwrap();
    let run = admin
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: id,
            param_values_json: "{}".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let message = run.error_message.unwrap();
    assert!(message.contains("user=nobody"), "{message}");
    assert!(
        message.contains("files=0"),
        "a clean working folder: {message}"
    );
}
