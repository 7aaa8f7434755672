//! The monitoring kit of deploy/monitoring: every metric that the Grafana dashboard and the alert
//! rules name is exported by a running replica after a small workload (tasks, a worker, pings,
//! status updates, logs, a provider job, a failed RPC); the dashboard's shape (datasource variable,
//! quantiles summed by `le`); and, with promtool, the rules and the dashboard's PromQL parse and the
//! alert unit tests pass.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ping, set_status, submit, task, wait_until};
use taskqueue::proto as pb;
use tonic::Code;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(monitoring_dir().join("grafana-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn alert_rules() -> serde_yaml::Value {
    let text = std::fs::read_to_string(monitoring_dir().join("alerts.yml")).unwrap();
    serde_yaml::from_str(&text).expect("alerts.yml is YAML")
}

/// Every `expr` of the dashboard's panel targets.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

/// (alert name, expr) of every rule of alerts.yml.
fn alert_exprs(rules: &serde_yaml::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            out.push((
                rule["alert"].as_str().expect("alert name").to_string(),
                rule["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

/// The metric names of ours a PromQL expression uses (`taskqueue_*`, `grpc_server_*`, with the
/// `_bucket`/`_count`/`_sum` series names of histograms as written).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("taskqueue_") || t.starts_with("grpc_server_"))
        .map(str::to_string)
        .collect()
}

/// The series names in a /metrics text.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn referenced_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expr in dashboard_exprs(&dashboard()) {
        names.extend(metric_names(&expr));
    }
    for (_, expr) in alert_exprs(&alert_rules()) {
        names.extend(metric_names(&expr));
    }
    names
}

#[test]
fn the_dashboard_has_a_datasource_variable_and_sums_histograms_across_replicas() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "the dashboard needs a datasource variable"
    );
    let mut quantiles = 0;
    for panel in d["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} must use the datasource variable",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(!metric_names(expr).is_empty(), "{expr}: names no metric");
            if expr.contains("histogram_quantile") {
                quantiles += 1;
                assert!(
                    expr.contains("sum by (le"),
                    "{expr}: quantiles must sum the replicas' buckets by le"
                );
            }
        }
    }
    assert!(quantiles >= 10, "only {quantiles} quantile queries");
    let names = referenced_metrics();
    for must in [
        "taskqueue_ping_duration_seconds_bucket",
        "taskqueue_tasks_assigned_total",
        "taskqueue_task_queue_wait_seconds_bucket",
        "taskqueue_tasks",
        "taskqueue_workers",
        "taskqueue_leader",
        "taskqueue_jobs_total",
        "taskqueue_job_duration_seconds_bucket",
        "taskqueue_log_received_lines_total",
        "taskqueue_db_pool_connections",
        "grpc_server_handled_total",
    ] {
        assert!(names.contains(must), "the kit does not use {must}");
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_unit_test() {
    let rules = alert_rules();
    let tests = std::fs::read_to_string(monitoring_dir().join("alerts_test.yml")).unwrap();
    let tests: serde_yaml::Value = serde_yaml::from_str(&tests).unwrap();
    let mut tested = BTreeSet::new();
    let mut fired = BTreeSet::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for case in t["alert_rule_test"].as_sequence().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_string();
            if !case["exp_alerts"].as_sequence().unwrap().is_empty() {
                fired.insert(name.clone());
            }
            tested.insert(name);
        }
    }
    let alerts = alert_exprs(&rules);
    assert_eq!(alerts.len(), 6);
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: summary"
            );
            assert!(rule["for"].is_string(), "{name}: a `for` duration");
            assert!(fired.contains(name), "{name}: no test where it fires");
            assert!(tested.contains(name), "{name}: untested");
        }
    }
}

/// promtool, when installed (scripts/setup.sh installs it; CI must have it).
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing on CI: run scripts/setup.sh"
        );
        eprintln!("promtool not installed: skipping (scripts/setup.sh installs it)");
    }
    found
}

fn run(promtool: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_their_unit_tests_and_the_prometheus_config() {
    let Some(promtool) = promtool() else { return };
    run(&promtool, &["check", "rules", "alerts.yml"]);
    run(&promtool, &["test", "rules", "alerts_test.yml"]);
    // The Prometheus configuration of deploy/compose.yaml, with the rules it loads.
    run(&promtool, &["check", "config", "prometheus.yml"]);
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let Some(promtool) = promtool() else { return };
    // promtool parses recording rules: one per dashboard query, Grafana's variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs(&dashboard()).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", "taskqueue");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file = common::tempdir().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    run(&promtool, &["check", "rules", file.to_str().unwrap()]);
}

/// A replica with a `fake` provider after a workload exports every metric the kit names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_exports_every_metric_the_dashboard_and_alerts_use() {
    let referenced = referenced_metrics();
    let url = common::postgres().await.fresh_db().await;
    let mut config = common::test_config(&url);
    let cloud = format!("monitoring-{}", std::process::id());
    let yaml = format!("fake:\n  test:\n    cloud: {cloud}\n    regions: [r1]\n");
    config.providers = serde_yaml::from_str(&yaml).unwrap();
    config.recruiter_interval = Duration::from_millis(100);
    let replica = common::spawn_replica(config).await;

    // The replica becomes leader and synchronises the catalogue (provider fake.test, region r1).
    let mut admin = replica.admin().await;
    wait_until(Duration::from_secs(30), "the leader's catalogue", || {
        let mut admin = admin.clone();
        async move {
            let regions = admin.list_regions(()).await.unwrap().into_inner().regions;
            regions.iter().any(|r| r.region_name == "r1")
        }
    })
    .await;

    // A provider job: one machine created through CreateWorker, run by the leader's job runner.
    let flavor = common::create_flavor(
        &mut admin,
        pb::FlavorCreateRequest {
            provider_name: "fake".into(),
            config_name: "test".into(),
            flavor_name: "small".into(),
            cpu: 2,
            memory: 8.0,
            disk: 20.0,
            region_names: vec!["r1".into()],
            ..Default::default()
        },
    )
    .await;
    let region_id = common::region_id(&mut admin, "r1").await;
    admin
        .create_worker(pb::WorkerRequest {
            provider_id: 0,
            flavor_id: flavor,
            region_id,
            number: 1,
            concurrency: 1,
            prefetch: 0,
            step_id: None,
        })
        .await
        .unwrap();

    // A request of the web listener.
    common::http_get(replica.web_addr.unwrap(), "/").await;

    // Tasks, a worker, pings, status updates (one automatic retry), logs.
    let mut c = replica.worker();
    let mut ids = Vec::new();
    for (i, retry) in [(0, None), (1, Some(1)), (2, None)] {
        let mut t = task(&format!("echo {i}"));
        t.retry = retry;
        ids.push(submit(&mut c, t).await);
    }
    let worker = common::register_worker(&mut c, "monitored", 3, 0, None).await;
    assert_eq!(ping(&mut c, worker).await.tasks.len(), 3);
    for s in ["C", "R"] {
        set_status(&mut c, ids[0], s).await;
    }
    let log = |text: &str| pb::TaskLog {
        task_id: ids[0],
        log_type: "stdout".into(),
        log_text: text.into(),
    };
    c.send_task_logs(tokio_stream::iter(vec![log("hello"), log("world")]))
        .await
        .unwrap();
    set_status(&mut c, ids[0], "S").await;
    set_status(&mut c, ids[1], "F").await;
    ping(&mut c, worker).await;
    // An RPC that fails, so error codes are exported too.
    let missing = c
        .update_task_status(pb::TaskStatusUpdate {
            task_id: 999_999,
            new_status: "S".into(),
            duration: None,
            free_retry: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Leader gauges and the job's outcome arrive within a few loop cycles.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let scrape = replica.metrics().await;
        let exported = exported_names(&scrape);
        let missing: Vec<&String> = referenced
            .iter()
            .filter(|n| !exported.contains(*n))
            .collect();
        if missing.is_empty() {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not exported after the workload: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        last.contains("grpc_code=\"NotFound\""),
        "error codes are exported"
    );
    assert!(last.contains("taskqueue_jobs_total{"), "a job outcome");
    replica.stop().await.unwrap();
}

/// The queue gauges' query (published by the leader): live tasks by status, and running workers
/// that hold nothing while their step has pending tasks.
#[tokio::test]
async fn queue_gauges_count_live_tasks_and_idle_eligible_workers() {
    use scoped_futures::ScopedFutureExt as _;
    use taskqueue::db::{Db, Op, recruiters};

    let replica = common::replica().await;
    let db = Db::connect(replica.database_url(), 2).unwrap();
    let counts = || {
        let db = db.clone();
        async move {
            let (tasks, idle) = db
                .tx(Op::RecruiterCycle, |tx| {
                    async move { recruiters::queue_counts(tx).await }.scope_boxed()
                })
                .await
                .unwrap();
            let of = |s: &str| {
                tasks
                    .iter()
                    .find(|(status, _)| status.trim() == s)
                    .map_or(0, |(_, n)| *n)
            };
            (of("P"), of("A"), of("S"), idle)
        }
    };
    let mut c = replica.worker();
    let (_, step) = common::workflow_with_step(&mut c, "wf", "other").await;
    for i in 0..2 {
        c.submit_task(task(&format!("echo {i}"))).await.unwrap();
    }
    assert_eq!(counts().await, (2, 0, 0, 0), "no worker yet");
    // A worker of another step and a worker without capacity are not eligible.
    common::register_worker(&mut c, "elsewhere", 1, 0, Some(step)).await;
    common::register_worker(&mut c, "no-capacity", 0, 0, None).await;
    assert_eq!(counts().await, (2, 0, 0, 0));
    let w = common::register_worker(&mut c, "idle", 1, 0, None).await;
    assert_eq!(counts().await, (2, 0, 0, 1), "idle with pending work");
    let answer = ping(&mut c, w).await;
    assert_eq!(counts().await, (1, 1, 0, 0), "busy after its ping");
    let t = answer.tasks[0].task_id;
    set_status(&mut c, t, "S").await;
    // Terminal tasks are not counted; the worker is idle again while one task waits.
    assert_eq!(counts().await, (1, 0, 0, 1));
}
