//! The deploy files (deploy/, loadtest/ghz/) cannot all run here (no Docker, no Kubernetes), so this
//! checks what can be checked: every YAML and JSON file parses, every `TASKQUEUE_*` name they use is
//! a real configuration name (a clap `env = "…"` of the sources), and the pieces that must agree
//! do (image non-root and multi-stage, gRPC health probes, secret wiring, compose topology).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn deploy_files() -> Vec<PathBuf> {
    let mut all = files(&root().join("deploy"));
    let ghz = root().join("loadtest/ghz");
    if ghz.is_dir() {
        all.extend(files(&ghz));
    }
    all
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `TASKQUEUE_*` words of a text.
fn env_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("TASKQUEUE_") && w.len() > "TASKQUEUE_".len())
        .map(str::to_string)
        .collect()
}

/// The environment variables the program reads: clap `env = "…"` attributes and `from_env("…")`.
fn known_env_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in files(&root().join("src")) {
        if file.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = read(&file);
        for marker in ["env = \"", "from_env(\""] {
            for part in text.split(marker).skip(1) {
                if let Some(name) = part.split('"').next()
                    && name.starts_with("TASKQUEUE_")
                {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

fn yaml_documents(path: &Path) -> Vec<serde_yaml::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|doc| {
            serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .collect()
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

#[test]
fn every_yaml_and_json_file_parses() {
    let mut yaml = 0;
    let mut json = 0;
    for path in deploy_files() {
        if has_ext(&path, &["yaml", "yml"]) {
            assert!(!yaml_documents(&path).is_empty(), "{}", path.display());
            yaml += 1;
        } else if has_ext(&path, &["json"]) {
            serde_json::from_str::<serde_json::Value>(&read(&path))
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            json += 1;
        }
    }
    assert!(yaml >= 10, "only {yaml} YAML files found");
    assert!(json >= 1, "only {json} JSON files found");
}

#[test]
fn every_taskqueue_variable_of_the_deploy_files_is_a_configuration_name() {
    let known = known_env_names();
    for must in [
        "TASKQUEUE_DATABASE_URL",
        "TASKQUEUE_ETCD_ENDPOINTS",
        "TASKQUEUE_WORKER_TOKEN",
        "TASKQUEUE_LISTEN",
        "TASKQUEUE_METRICS_LISTEN",
        "TASKQUEUE_LOG",
    ] {
        assert!(known.contains(must), "{must} not found in the sources");
    }
    let mut used = BTreeSet::new();
    for path in deploy_files() {
        for name in env_names(&read(&path)) {
            assert!(
                known.contains(&name),
                "{} uses {name}, which the program does not read",
                path.display()
            );
            used.insert(name);
        }
    }
    assert!(used.len() >= 8, "few TASKQUEUE_ names used: {used:?}");
}

#[test]
fn the_image_is_multi_stage_and_runs_as_an_unprivileged_user() {
    let dockerfile = read(&root().join("deploy/docker/Dockerfile"));
    let stages = dockerfile
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .count();
    assert!(stages >= 2, "single-stage image");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !matches!(user.trim(), "root" | "0" | "0:0"),
        "runs as {user}"
    );
    assert!(dockerfile.contains("--locked"), "builds from Cargo.lock");
}

fn k8s(name: &str) -> Vec<serde_yaml::Value> {
    yaml_documents(&root().join("deploy/k8s").join(name))
}

#[test]
fn kubernetes_probes_use_the_grpc_health_service_and_the_wiring_agrees() {
    let deployment = &k8s("deployment.yaml")[0];
    assert_eq!(deployment["kind"], "Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let container = &spec["containers"][0];
    assert_eq!(container["args"][0], "serve");
    let grpc_port = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a grpc port")["containerPort"]
        .as_i64()
        .unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &container[probe]["grpc"];
        assert_eq!(
            p["port"].as_i64(),
            Some(grpc_port),
            "{probe} on the gRPC port"
        );
    }
    assert_eq!(
        container["readinessProbe"]["grpc"]["service"], "taskqueue.TaskQueue",
        "readiness follows the service's health (NOT_SERVING while draining)"
    );

    // The ConfigMap and the Secret the Deployment reads exist and hold the essentials.
    let config = &k8s("configmap.yaml")[0];
    let secret = &k8s("secret.yaml")[0];
    for from in container["envFrom"].as_sequence().unwrap() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            assert_eq!(config["metadata"]["name"], name);
        }
        if let Some(name) = from["secretRef"]["name"].as_str() {
            assert_eq!(secret["metadata"]["name"], name);
        }
    }
    assert!(config["data"]["TASKQUEUE_ETCD_ENDPOINTS"].is_string());
    for key in ["TASKQUEUE_DATABASE_URL", "TASKQUEUE_WORKER_TOKEN"] {
        assert!(secret["stringData"][key].is_string(), "secret lacks {key}");
    }
    // A rollout never takes a serving replica away before its successor is ready.
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );

    let job = &k8s("migrate-job.yaml")[0];
    assert_eq!(job["kind"], "Job");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "migrate"
    );
    let pdb = &k8s("pdb.yaml")[0];
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    for service in k8s("service.yaml") {
        assert_eq!(&service["spec"]["selector"], selector);
    }
    let kustomization = &k8s("kustomization.yaml")[0];
    for resource in kustomization["resources"].as_sequence().unwrap() {
        let file = resource.as_str().unwrap();
        assert!(root().join("deploy/k8s").join(file).is_file(), "{file}");
    }
}

#[test]
fn compose_runs_three_replicas_behind_a_load_balancer_with_prometheus() {
    let compose = &yaml_documents(&root().join("deploy/compose.yaml"))[0];
    let services = compose["services"].as_mapping().unwrap();
    let replicas: Vec<&str> = services
        .keys()
        .filter_map(|k| k.as_str())
        .filter(|k| k.starts_with("taskqueue-"))
        .collect();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    for name in ["postgres", "etcd", "migrate", "lb", "prometheus"] {
        assert!(services.contains_key(name), "no {name} service");
    }
    // The load balancer and Prometheus point at exactly those replicas.
    let nginx = read(&root().join("deploy/compose/nginx.conf"));
    assert!(nginx.contains("grpc_pass"), "nginx must proxy gRPC");
    let prometheus = &yaml_documents(&root().join("deploy/monitoring/prometheus.yml"))[0];
    let targets = &prometheus["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(prometheus["scrape_configs"][0]["job_name"], "taskqueue");
    for r in &replicas {
        assert!(
            nginx.contains(&format!("server {r}:50051")),
            "nginx lacks {r}"
        );
        assert!(
            targets
                .as_sequence()
                .unwrap()
                .iter()
                .any(|t| t.as_str() == Some(&format!("{r}:9090"))),
            "prometheus lacks {r}"
        );
    }
    // Volumes of the compose file exist in the repository.
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let v = volume.as_str().unwrap();
            if let Some(local) = v.strip_prefix("./") {
                let file = local.split(':').next().unwrap();
                assert!(
                    root().join("deploy").join(file).exists(),
                    "{name:?} mounts missing {file}"
                );
            }
        }
    }
}

#[test]
fn the_systemd_unit_runs_serve_as_an_unprivileged_user() {
    let unit = read(&root().join("deploy/systemd/taskqueue.service"));
    assert!(unit.contains("ExecStart=/usr/local/bin/taskqueue serve"));
    let user = unit
        .lines()
        .find_map(|l| l.strip_prefix("User="))
        .expect("User=");
    assert_ne!(user.trim(), "root");
    assert!(unit.contains("KillSignal=SIGTERM"));
}

/// The field names of the request message of `rpc` in the proto file.
fn request_fields(proto: &str, rpc: &str) -> BTreeSet<String> {
    let after = proto
        .split(&format!("rpc {rpc}("))
        .nth(1)
        .unwrap_or_else(|| panic!("no RPC {rpc}"));
    let message = after.split(')').next().unwrap().trim();
    let body = proto
        .split(&format!("message {message} {{"))
        .nth(1)
        .unwrap_or_else(|| panic!("no message {message}"))
        .split('}')
        .next()
        .unwrap();
    body.lines()
        .filter_map(|l| l.split('=').next())
        .filter_map(|decl| decl.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

#[test]
fn ghz_configs_use_reflection_and_two_connections_per_replica() {
    let proto = read(&root().join("proto/taskqueue.proto"));
    let mut calls = BTreeSet::new();
    for path in files(&root().join("loadtest/ghz")) {
        if !has_ext(&path, &["json"]) {
            continue;
        }
        let config: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
        let name = path.display();
        assert!(
            config.get("proto").is_none() && config.get("protoset").is_none(),
            "{name}: must use server reflection"
        );
        assert!(
            config["connections"].as_u64().unwrap_or(0) >= 6,
            "{name}: --connections must be at least 2 x 3 replicas"
        );
        let call = config["call"].as_str().unwrap();
        let rpc = call
            .strip_prefix("taskqueue.TaskQueue.")
            .unwrap_or_else(|| panic!("{name}: {call}"));
        let fields = request_fields(&proto, rpc);
        for key in config["data"].as_object().expect("data").keys() {
            assert!(
                fields.contains(key),
                "{name}: {key} is not a field of {rpc}'s request ({fields:?})"
            );
        }
        assert!(
            config["metadata"]["authorization"]
                .as_str()
                .is_some_and(|a| a.starts_with("Bearer ")),
            "{name}: every RPC needs a token"
        );
        calls.insert(rpc.to_string());
    }
    for rpc in ["PingAndTakeNewTasks", "SubmitTask", "ListTasks"] {
        assert!(calls.contains(rpc), "no ghz config for {rpc}");
    }
}
