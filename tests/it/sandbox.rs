//! Template scripts are untrusted code (issue 13 item 3). Run as root only (the sandbox is what a
//! root server does; skipped with a printed reason otherwise): a script that tries to read the
//! server's command line, the data dir, the worker token file, to connect to the database, to
//! fork-bomb and to allocate 6 GiB fails at every attempt while the server carries on; its token
//! is scoped (not admin, no user RPCs) and dies with the run; the embedded PostgreSQL asks for a
//! password.

use crate::common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use common::{WORKER_TOKEN, postgres, spawn_replica, tempdir, test_config};
use taskqueue::proto as pb;
use tonic::Code;

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// The hostile script: each attempt prints `<name>=<outcome>` on stderr (kept in the run's
/// message), `LEAK` when it got what it should not have.
fn hostile_script(data_dir: &str, token_file: &str, socket_dir: &str, exchange: &str) -> Vec<u8> {
    format!(
        r#"#!/bin/sh
case "$1" in
  --metadata) echo '{{"name":"hostile","version":"1"}}' ;;
  --params) echo '[]' ;;
  --values)
    say() {{ echo "$1=$2" >&2; }}
    say user "$(id -u)"
    if cat /proc/$PPID/cmdline >/dev/null 2>&1; then say cmdline LEAK; else say cmdline denied; fi
    if cat /proc/$PPID/environ >/dev/null 2>&1; then say environ LEAK; else say environ denied; fi
    if cat /proc/1/cmdline >/dev/null 2>&1; then say init LEAK; else say init denied; fi
    n=$(ls -A {data_dir} 2>/dev/null | wc -l)
    if [ "$n" -gt 0 ]; then say datadir LEAK; else say datadir denied; fi
    if grep -q {WORKER_TOKEN} {token_file} 2>/dev/null; then say tokenfile LEAK; else say tokenfile denied; fi
    if env | grep -q {WORKER_TOKEN}; then say tokenenv LEAK; else say tokenenv denied; fi
    if psql "host={socket_dir} port=5432 user=postgres dbname=postgres" -w -c 'select 1' >/dev/null 2>&1; then say socket LEAK; else say socket denied; fi
    if psql "host={socket_dir} port=5432 user=postgres dbname=postgres password=" -w -c 'select 1' >/dev/null 2>&1; then say socket2 LEAK; else say socket2 denied; fi
    if /usr/bin/python3 -c 'b = bytearray(6 << 30); b[-1] = 1' 2>/dev/null; then say memory LEAK; else say memory denied; fi
    printf '%s' "$TASKQUEUE_TOKEN" > {exchange}/token
    forks=$(/usr/bin/python3 -c '
import os, signal, time
kids = []
try:
    for _ in range(2000):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
except OSError:
    pass
for k in kids:
    os.kill(k, signal.SIGKILL)
for k in kids:
    os.waitpid(k, 0)
print(len(kids))
')
    if [ "$forks" -lt 2000 ]; then say forkbomb "denied($forks)"; else say forkbomb LEAK; fi
    say done yes
    ;;
esac
"#
    )
    .into_bytes()
}

#[tokio::test]
async fn a_hostile_script_gets_nothing_and_the_server_carries_on() {
    if !is_root() {
        eprintln!("skipped: the template sandbox needs the server to run as root");
        return;
    }
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.template_interpreter = "sh".into();
    config.template_timeout = Duration::from_secs(120);
    // Readable by anyone on the host: only the sandbox keeps these from the script.
    std::fs::write(config.data_dir.join("canary"), "x").unwrap();
    std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secrets = tempdir();
    let token_file = secrets.join("worker-token");
    std::fs::write(&token_file, WORKER_TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    config.secret_files.push(token_file.clone());
    let exchange = tempdir();
    std::fs::set_permissions(&exchange, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket_dir = postgres().await.pg.socket_dir().to_path_buf();
    let data_dir = config.data_dir.clone();
    let r = spawn_replica(config).await;
    let mut admin = r.admin().await;

    let script = hostile_script(
        &data_dir.display().to_string(),
        &token_file.display().to_string(),
        &socket_dir.display().to_string(),
        &exchange.display().to_string(),
    );
    let template = admin
        .upload_template(pb::UploadTemplateRequest {
            script,
            force: false,
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_template_id
        .expect("uploaded");
    let run = admin
        .run_template(pb::RunTemplateRequest {
            workflow_template_id: template,
            param_values_json: "{}".into(),
        })
        .await
        .expect("the run is answered")
        .into_inner();
    let report = run.error_message.clone().unwrap_or_default();
    eprintln!("{report}");
    assert!(
        report.contains("done=yes"),
        "the script ran to its end: {run:?}"
    );
    assert!(!report.contains("user=0"), "never as root: {report}");
    for attempt in [
        "cmdline",
        "environ",
        "init",
        "datadir",
        "tokenfile",
        "tokenenv",
        "socket",
        "socket2",
        "memory",
        "forkbomb",
    ] {
        assert!(
            report.contains(&format!("{attempt}=denied")),
            "{attempt}: {report}"
        );
        eprintln!("sandbox: {attempt} denied");
    }

    // The host's view is untouched (the covers were private to the script's namespace).
    assert!(data_dir.join("canary").exists());
    assert!(
        std::fs::read_to_string("/proc/self/cmdline").is_ok(),
        "the host's /proc is as it was"
    );

    // The server carries on.
    let workflows = admin
        .list_workflows(pb::WorkflowFilter::default())
        .await
        .expect("the server still answers");
    drop(workflows);

    // The script's token: scoped while it ran, dead now.
    let token = std::fs::read_to_string(exchange.join("token")).unwrap();
    assert!(!token.is_empty());
    let mut spy = r.with_token(&token);
    let dead = spy.list_users(()).await.unwrap_err();
    assert_eq!(dead.code(), Code::Unauthenticated, "{dead:?}");
}

/// The embedded PostgreSQL refuses a connection without its password, even from root on its
/// socket, and keeps that password in a 0600 file.
#[tokio::test]
async fn the_embedded_postgres_asks_for_a_password() {
    let pg = &postgres().await.pg;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(pg.socket_dir())
        .port(pg.port())
        .user("postgres")
        .dbname("postgres");
    let err = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("no connection without a password");
    // tokio-postgres words it "invalid configuration: password missing".
    assert!(
        format!("{err:?}").contains("password"),
        "refused for lack of a password: {err:?}"
    );
    let file = pg.dir().parent().unwrap().join("postgres.password");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());
    let (client, conn) = pg
        .config("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the password works");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
}
