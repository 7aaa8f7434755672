//! Issue 12, item 4: an original `scitq.yaml` means what it meant. A file with a `scitq:` section and
//! no certificate serves TLS with the generated certificate (`plaintext: true` turns it off; no
//! file stays plaintext); template scripts get `SCITQ_SERVER=localhost:<port>` and the PEM in
//! `SCITQ_SSL_CERTIFICATE`; secrets come from files; `script_venv` is made at start with
//! `script_packages`; and, end to end with real processes, `taskqueue serve --config scitq.yaml`,
//! a `taskqueue worker` over https and the command line run a task to S while a `local` worker the
//! server started itself registers over TLS.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{ADMIN_PASSWORD, ADMIN_USER, WORKER_TOKEN, postgres, spawn_replica, wait_until};
use taskqueue::client::Target;
use taskqueue::config::{Config, ServeArgs};
use taskqueue::proto as pb;
use tokio::process::Command;

/// The configuration `taskqueue serve --config <file>` would use, on a port the test binds.
fn from_file(path: &Path) -> Config {
    let mut config = ServeArgs {
        config: Some(path.to_path_buf()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics_listen = None;
    config.shutdown_grace = Duration::from_secs(5);
    config.db_pool_size = 10;
    config
}

/// An original-format file (a `scitq:` section, no certificate) on a fresh test database.
async fn original_yaml(dir: &Path, extra: &str) -> PathBuf {
    let url = yaml_string(&postgres().await.fresh_db().await);
    let path = dir.join("scitq.yaml");
    std::fs::write(
        &path,
        format!(
            "scitq:\n  port: 50051\n  db_url: {url}\n  data_dir: {}\n  worker_token: {WORKER_TOKEN}\n  \
             admin_password: {ADMIN_PASSWORD}\n  jwt_secret: unused\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// `text` as a YAML scalar (a JSON string is one): the test database URL holds quotes.
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// A replica run in this process without waiting for plaintext answers (it may speak TLS).
struct Running {
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(config: Config) -> Running {
    let grpc = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(taskqueue::server::run(
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
    Running { port, stop, handle }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}

/// Logs in through `target`, retrying while the server starts; the session token.
async fn login(target: &Target) -> Option<String> {
    for _ in 0..300 {
        if let Ok(channel) = target.connect().await {
            let mut anon = pb::task_queue_client::TaskQueueClient::new(channel);
            if let Ok(resp) = anon
                .login(pb::LoginRequest {
                    username: ADMIN_USER.into(),
                    password: ADMIN_PASSWORD.into(),
                })
                .await
            {
                return Some(resp.into_inner().token);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn plaintext_login_fails(port: u16) -> bool {
    let plain = Target::new(format!("http://127.0.0.1:{port}"))
        .channel()
        .unwrap();
    let mut anon = pb::task_queue_client::TaskQueueClient::new(plain);
    anon.login(pb::LoginRequest {
        username: ADMIN_USER.into(),
        password: ADMIN_PASSWORD.into(),
    })
    .await
    .is_err()
}

#[tokio::test]
async fn an_original_yaml_without_a_certificate_serves_tls_and_scripts_trust_it() {
    let dir = common::tempdir();
    let out = dir.join("seen");
    std::fs::create_dir_all(&out).unwrap();
    // Scripts of a root server run as the unprivileged script user: let it write here.
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut config = from_file(&original_yaml(&dir, "").await);
    assert_eq!(config.tls, taskqueue::config::TlsMode::SelfSigned);
    config.template_interpreter = "sh".into();
    let server = start(config).await;
    let cert = dir.join("data/tls/cert.pem");
    let target = Target {
        server: format!("https://localhost:{}", server.port),
        ca_file: Some(cert.clone()),
        ..Default::default()
    };
    let token = login(&target).await.expect("login over TLS");
    assert!(
        plaintext_login_fails(server.port).await,
        "plaintext must not work"
    );

    // A template script sees the original's SCITQ_SERVER rule and the PEM text.
    let script = format!(
        "#!/bin/sh\nprintf '%s' \"$SCITQ_SERVER\" > {out}/server\n\
         printf '%s' \"$SCITQ_SSL_CERTIFICATE\" > {out}/pem\n\
         printf '%s' \"$TASKQUEUE_SERVER\" > {out}/url\n\
         case \"$1\" in\n  --metadata) echo '{{\"name\":\"env\",\"version\":\"1\",\"description\":\"d\"}}' ;;\n  \
         --params) echo '[]' ;;\nesac\n",
        out = out.display()
    );
    let mut user = taskqueue::client::with_token(target.channel().unwrap(), Some(&token)).unwrap();
    let resp = user
        .upload_template(pb::UploadTemplateRequest {
            script: script.into_bytes(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.success, "{}", resp.message);
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    assert_eq!(read("server"), format!("localhost:{}", server.port));
    assert_eq!(read("url"), format!("https://localhost:{}", server.port));
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(read("pem").trim_end(), pem.trim_end());
    server.stop().await;
}

#[tokio::test]
async fn plaintext_true_and_secrets_from_files() {
    let dir = common::tempdir();
    let token_file = dir.join("worker-token.txt");
    let password_file = dir.join("admin-password.txt");
    std::fs::write(&token_file, "token-from-a-file\n").unwrap();
    std::fs::write(&password_file, "password-from-a-file\n").unwrap();
    let url = yaml_string(&postgres().await.fresh_db().await);
    let path = dir.join("scitq.yaml");
    std::fs::write(
        &path,
        format!(
            "scitq:\n  port: 50051\n  db_url: {url}\n  data_dir: {}\n  plaintext: true\n  \
             worker_token_file: {}\n  admin_password_file: {}\n",
            dir.join("data").display(),
            token_file.display(),
            password_file.display()
        ),
    )
    .unwrap();
    let config = from_file(&path);
    assert_eq!(config.tls, taskqueue::config::TlsMode::Plain);
    let r = spawn_replica(config).await; // waits for plaintext answers
    let mut worker = r.with_token("token-from-a-file");
    worker
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .expect("the worker token of the file");
    assert!(
        r.with_token(WORKER_TOKEN)
            .list_workers(pb::ListWorkersRequest::default())
            .await
            .is_err()
    );
    let token = r.login(ADMIN_USER, "password-from-a-file").await;
    assert!(!token.is_empty());
    assert!(!dir.join("data/tls/cert.pem").exists());
    r.stop().await.unwrap();
}

#[tokio::test]
async fn a_template_missing_a_module_names_the_venv_settings() {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_err()
    {
        eprintln!("skipped: no python3");
        return;
    }
    let url = postgres().await.fresh_db().await;
    let mut config = common::test_config(&url);
    config.template_interpreter = "python3".into();
    let r = spawn_replica(config).await;
    let resp = r
        .admin()
        .await
        .upload_template(pb::UploadTemplateRequest {
            script: b"import tq_no_such_module\n".to_vec(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.success);
    assert!(
        resp.message.contains("No module named")
            && resp.message.contains("script_venv")
            && resp.message.contains("script_packages"),
        "{}",
        resp.message
    );
    r.stop().await.unwrap();
}

/// Whether `python3 -m venv` can work here (Debian splits it into python3-venv).
fn venv_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A root server runs scripts as an unprivileged user: a venv made from a python installed under
/// a private folder (pyenv under /root) cannot run them.
fn base_python_reachable_by_script_user() -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return true;
    }
    let Ok(out) = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
    else {
        return false;
    };
    let prefix = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    prefix
        .ancestors()
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// A local package: a pure-Python wheel written by hand (no build tools, no network).
fn local_wheel(dir: &Path) -> PathBuf {
    let wheel = dir.join("tqprobe-0.1-py3-none-any.whl");
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
             \x20   z.writestr('tqprobe/__init__.py', 'GREETING = \"hello from tqprobe\"\\n')\n\
             \x20   z.writestr('tqprobe-0.1.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: tqprobe\\nVersion: 0.1\\n')\n\
             \x20   z.writestr('tqprobe-0.1.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n\
             \x20   z.writestr('tqprobe-0.1.dist-info/RECORD', '')\n",
        )
        .arg(&wheel)
        .status()
        .unwrap();
    assert!(status.success());
    wheel
}

#[tokio::test]
async fn script_venv_is_made_at_start_with_its_packages() {
    if !venv_available() {
        eprintln!("skipped: python3 has no venv module");
        return;
    }
    let dir = common::tempdir();
    let packages = dir.join("packages");
    std::fs::create_dir_all(&packages).unwrap();
    let wheel = local_wheel(&packages);
    let venv = dir.join("venv");
    let url = yaml_string(&postgres().await.fresh_db().await);
    let path = dir.join("scitq.yaml");
    std::fs::write(
        &path,
        format!(
            "scitq:\n  db_url: {url}\n  plaintext: true\n  data_dir: {}\n  worker_token: {WORKER_TOKEN}\n  \
             admin_password: {ADMIN_PASSWORD}\n  script_venv: {}\n  script_packages: [{}]\n",
            dir.join("data").display(),
            venv.display(),
            wheel.display()
        ),
    )
    .unwrap();
    let config = from_file(&path);
    assert_eq!(
        config.template_interpreter,
        venv.join("bin/python").display().to_string()
    );
    // The start makes the venv; a template importing the package then uploads.
    let r = spawn_replica(config.clone()).await;
    if base_python_reachable_by_script_user() {
        let resp = r
            .admin()
            .await
            .upload_template(pb::UploadTemplateRequest {
                script: b"import json, sys, tqprobe\n\
                          if sys.argv[1] == '--metadata':\n\
                          \x20   print(json.dumps({'name': 'probe', 'version': '1', 'description': tqprobe.GREETING}))\n\
                          else:\n\
                          \x20   print('[]')\n"
                    .to_vec(),
                force: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.success, "{}", resp.message);
        assert_eq!(resp.description.as_deref(), Some("hello from tqprobe"));
    } else {
        eprintln!(
            "upload skipped: python3 lives where the template script user cannot reach it (e.g. under /root)"
        );
    }
    r.stop().await.unwrap();

    // Idempotent: the next start installs nothing (the wheel is gone, and nothing fails).
    std::fs::remove_file(&wheel).unwrap();
    taskqueue::templates::venv::ensure(config.script_venv.as_ref().unwrap())
        .await
        .unwrap();

    // A package pip cannot install fails the start, saying which setting.
    let broken = taskqueue::config::ScriptVenv {
        dir: dir.join("venv-broken"),
        packages: vec![dir.join("missing.whl").display().to_string()],
    };
    let mut bad = config.clone();
    bad.script_venv = Some(broken);
    let err = start(bad).await.handle.await.unwrap().unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("script_packages") && message.contains("missing.whl"),
        "{message}"
    );
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_taskqueue"));
    c.env_remove("TASKQUEUE_SERVER")
        .env_remove("TASKQUEUE_TOKEN")
        .env_remove("TASKQUEUE_CA_FILE")
        .env_remove("TASKQUEUE_DATABASE_URL")
        .env_remove("TASKQUEUE_CONFIG")
        .env_remove("RUST_LOG")
        .env("TASKQUEUE_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// The tutorial's flow with an original-format file, as a new user would run it.
#[tokio::test]
async fn serve_an_original_yaml_then_a_worker_and_the_cli_over_tls() {
    postgres().await; // first: it clears this process' temporary folder
    let dir = common::tempdir();
    let port = common::free_port();
    std::fs::write(dir.join("worker-token.txt"), "e2e-tls-token\n").unwrap();
    std::fs::write(dir.join("admin-password.txt"), "e2e-tls-password\n").unwrap();
    let exe = env!("CARGO_BIN_EXE_taskqueue");
    let store = dir.join("stores");
    std::fs::write(
        dir.join("scitq.yaml"),
        format!(
            "scitq:\n  port: {port}\n  worker_token_file: worker-token.txt\n  \
             admin_password_file: admin-password.txt\n  jwt_secret: unused\n\
             providers:\n  local:\n    local:\n      stop_grace: 2s\n      worker_command: [{exe}, worker, \
             --server, '{{server}}', '{{ca_args}}', --name, '{{name}}', --concurrency, '{{concurrency}}', \
             --executor, shell, --ping-interval, 500ms, --store, '{}/{{name}}']\n",
            store.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let _serve = bin()
        .args(["serve", "--config", "scitq.yaml", "--metrics-listen", "off"])
        .current_dir(&dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let cert = dir.join("taskqueue-data/tls/cert.pem");
    let server = format!("https://localhost:{port}");
    let target = Target {
        server: server.clone(),
        ca_file: Some(cert.clone()),
        ..Default::default()
    };
    let serve_log = || std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
    wait_until(Duration::from_secs(120), "serve to answer over TLS", || {
        let target = target.clone();
        async move {
            let Ok(channel) = target.connect().await else {
                return false;
            };
            let mut c = taskqueue::client::with_token(channel, Some("e2e-tls-token")).unwrap();
            c.list_workers(pb::ListWorkersRequest::default())
                .await
                .is_ok()
        }
    })
    .await;
    let logged = serve_log();
    assert!(
        logged.contains("taskqueue-data/tls/cert.pem") && logged.contains("over TLS"),
        "the log names the PEM: {logged}"
    );
    assert!(plaintext_login_fails(port).await);

    // A worker, as the tutorial starts it, with the certificate to trust.
    let worker_log = std::fs::File::create(dir.join("alpha.log")).unwrap();
    let _alpha = bin()
        .args(["worker", "--server", &server, "--ca-file"])
        .arg(&cert)
        .args(["--name", "alpha", "--executor", "shell"])
        .args(["--ping-interval", "500ms", "--store"])
        .arg(dir.join("store-alpha"))
        .env("TASKQUEUE_TOKEN", "e2e-tls-token")
        .current_dir(&dir)
        .stdout(worker_log.try_clone().unwrap())
        .stderr(worker_log)
        .spawn()
        .unwrap();

    // The command line: login (the password from the environment), submit, wait.
    let cli = || {
        let mut c = bin();
        c.env("XDG_CONFIG_HOME", dir.join("config"))
            .env("TASKQUEUE_LOG", "warn")
            .current_dir(&dir);
        c
    };
    let out = cli()
        .args(["login", "--server", &server, "--ca-file"])
        .arg(&cert)
        .args(["--user", "admin"])
        .env("TASKQUEUE_PASSWORD", "e2e-tls-password")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli()
        .args(["task", "submit", "--", "echo hello over tls"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let waited = tokio::time::timeout(
        Duration::from_secs(120),
        cli().args(["task", "wait", &id]).output(),
    )
    .await
    .expect("task wait returns")
    .unwrap();
    assert!(
        waited.status.success(),
        "task {id} did not succeed: {}\nworker: {}",
        String::from_utf8_lossy(&waited.stderr),
        std::fs::read_to_string(dir.join("alpha.log")).unwrap_or_default()
    );
    let out = cli()
        .args(["task", "list", "--output", "json"])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("\"S\""), "{listed}");

    // A worker the server starts itself (local provider) is given the certificate and registers.
    let admin_token = login_with(&target, "e2e-tls-password").await;
    let mut admin =
        taskqueue::client::with_token(target.channel().unwrap(), Some(&admin_token)).unwrap();
    let flavor_id = common::create_flavor(
        &mut admin,
        pb::FlavorCreateRequest {
            provider_name: "local".into(),
            config_name: "local".into(),
            flavor_name: "host".into(),
            cpu: 1,
            memory: 1.0,
            region_names: vec!["local".into()],
            ..Default::default()
        },
    )
    .await;
    let region_id = common::region_id(&mut admin, "local").await;
    let created = admin
        .create_worker(pb::WorkerRequest {
            flavor_id,
            region_id,
            number: 1,
            concurrency: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workers_details
        .remove(0);
    let local_name = created.worker_name.clone();
    let workers_dir = dir.join("taskqueue-data/local-workers");
    let local_log = || {
        std::fs::read_to_string(workers_dir.join(format!("{local_name}.log"))).unwrap_or_default()
    };
    wait_until(
        Duration::from_secs(60),
        "the local worker to register",
        || {
            let mut admin = admin.clone();
            let name = local_name.clone();
            async move {
                admin
                    .list_workers(pb::ListWorkersRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .workers
                    .iter()
                    .any(|w| w.name == name && w.status == "R")
            }
        },
    )
    .await;
    let argv = std::fs::read_to_string(workers_dir.join(format!("{local_name}.argv"))).unwrap();
    assert!(
        argv.contains("--ca-file") && argv.contains("https://localhost:"),
        "{argv}\n{}",
        local_log()
    );
    // The local worker is a process of its own: stop it through its provider.
    admin
        .delete_worker(pb::WorkerDeletion {
            worker_id: created.worker_id,
            undeployed: None,
        })
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "the local worker to stop", || {
        let pid_file = workers_dir.join(format!("{local_name}.pid"));
        async move { !pid_file.exists() }
    })
    .await;
}

async fn login_with(target: &Target, password: &str) -> String {
    let mut anon = pb::task_queue_client::TaskQueueClient::new(target.connect().await.unwrap());
    anon.login(pb::LoginRequest {
        username: ADMIN_USER.into(),
        password: password.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .token
}
