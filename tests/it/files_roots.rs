//! Where FetchList/FetchInfo may lead, through a replica: local paths only under `fetch_roots`
//! (symbolic links and `..` cannot escape, the data dir is never reachable), web hosts only when
//! allow-listed and internal addresses only with `fetch_allow_private`; and a task's environment,
//! from a real worker process started with tokens in its own, holds no token.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{WORKER_TOKEN, postgres, spawn_replica, submit, test_config, wait_until};
use taskqueue::proto as pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

async fn list(c: &mut taskqueue::client::Client, uri: &str) -> Result<Vec<String>, tonic::Status> {
    c.fetch_list(pb::FetchListRequest { uri: uri.into() })
        .await
        .map(|r| r.into_inner().files)
}

async fn info(
    c: &mut taskqueue::client::Client,
    uri: &str,
) -> Result<pb::FetchInfoResponse, tonic::Status> {
    c.fetch_info(pb::FetchListRequest { uri: uri.into() })
        .await
        .map(|r| r.into_inner())
}

/// A replica whose only fetch root is `root`, with its data dir at `data_dir`.
async fn replica_rooted(roots: Vec<PathBuf>, data_dir: Option<PathBuf>) -> common::Replica {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.fetch_roots = roots;
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    spawn_replica(config).await
}

#[tokio::test]
async fn local_paths_only_below_the_roots() {
    let root = common::tempdir().join("root");
    write(&root, "a.fq", "A");
    write(&root, "run1/b.fq", "BB");
    let outside = common::tempdir().join("outside");
    write(&outside, "secret.txt", "S");
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out-link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("file-link")).unwrap();
    std::os::unix::fs::symlink(root.join("run1"), root.join("inner-link")).unwrap();
    // A root given through a link is the folder it names.
    let via_link = common::tempdir().join("root-link");
    std::os::unix::fs::symlink(&root, &via_link).unwrap();
    let data_dir = root.join("data");
    let r = replica_rooted(vec![via_link.clone()], Some(data_dir.clone())).await;
    let mut c = r.worker();

    let base = format!("{}/", root.display());
    let all = list(&mut c, &base).await.unwrap();
    assert!(all.contains(&format!("{base}run1/b.fq")), "{all:?}");
    assert_eq!(info(&mut c, &format!("{base}a.fq")).await.unwrap().size, 1);
    assert_eq!(
        list(&mut c, &format!("file://{}/run1/", via_link.display()))
            .await
            .unwrap()
            .len(),
        1
    );
    // A link that stays inside the root is followed.
    assert_eq!(
        info(&mut c, &format!("{base}inner-link/b.fq"))
            .await
            .unwrap()
            .size,
        2
    );
    // Missing below a root: NotFound, as before.
    let missing = list(&mut c, &format!("{base}nothing/")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    for uri in [
        "/etc/".to_string(),
        "/etc/passwd".to_string(),
        "file:///proc/self/environ".to_string(),
        "/".to_string(),
        format!("{}/secret.txt", outside.display()),
        format!("{base}etc-link/"),
        format!("{base}etc-link/passwd"),
        format!("{base}out-link/"),
        format!("{base}out-link/secret.txt"),
        format!("{base}file-link"),
        format!("{}/", data_dir.display()),
        format!("{}/worker-token", data_dir.display()),
        format!("{}/nothing-there", outside.display()),
        format!("{}/*.txt", outside.display()),
    ] {
        let e = list(&mut c, &uri).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "FetchList {uri}: {e:?}");
        let e = info(&mut c, &uri).await;
        match e {
            Err(e) if uri.contains('*') => assert_eq!(e.code(), Code::PermissionDenied),
            Err(e) => assert_eq!(e.code(), Code::PermissionDenied, "FetchInfo {uri}: {e:?}"),
            Ok(i) => panic!("FetchInfo {uri} answered {i:?}"),
        }
    }
    let e = list(&mut c, "/etc/").await.unwrap_err();
    assert!(e.message().contains("--fetch-roots"), "{e:?}");
    // `..` never gets as far as the check.
    let e = list(&mut c, &format!("{base}run1/../../outside/"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn no_roots_means_no_local_paths() {
    let r = replica_rooted(Vec::new(), None).await;
    let mut c = r.admin().await;
    let dir = common::tempdir();
    write(&dir, "x", "x");
    let e = list(&mut c, &format!("{}/", dir.display()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("no --fetch-roots configured"), "{e:?}");
}

/// A tiny HTTP/1.1 server answering every request with `body` (HEAD without it), or with a
/// redirect to `redirect` when given.
async fn http_server(body: &'static str, redirect: Option<String>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let redirect = redirect.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = match redirect {
                    Some(to) => format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    None if head.starts_with("HEAD") => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    ),
                    None => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                };
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    port
}

async fn replica_http(hosts: &[&str], allow_private: bool) -> common::Replica {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.fetch_http_hosts = hosts.iter().map(|h| h.to_string()).collect();
    config.fetch_allow_private = allow_private;
    spawn_replica(config).await
}

#[tokio::test]
async fn web_hosts_only_when_allowed_and_never_internal_by_default() {
    let port = http_server("hello", None).await;
    let file = format!("http://127.0.0.1:{port}/data/file.txt");

    // Nothing allowed: every web location is refused, naming the option.
    let r = replica_http(&[], false).await;
    let mut c = r.worker();
    let e = info(&mut c, &file).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("--fetch-http-hosts"), "{e:?}");

    // Listed but internal: refused unless internal addresses are allowed.
    let r = replica_http(
        &["127.0.0.1", "169.254.169.254", "10.0.0.1", "localhost"],
        false,
    )
    .await;
    let mut c = r.worker();
    for uri in [
        file.clone(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://10.0.0.1/x".into(),
        format!("http://localhost:{port}/data/file.txt"),
        // The forms a URL parser reads as 127.0.0.1 are checked as that address.
        format!("http://2130706433:{port}/x"),
        format!("http://0x7f.1:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
    ] {
        let e = info(&mut c, &uri).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{uri}: {e:?}");
    }
    let e = info(&mut c, &file).await.unwrap_err();
    assert!(e.message().contains("--fetch-allow-private"), "{e:?}");
    let e = info(&mut c, "https://example.org/x").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "not listed: {e:?}");

    // Listed and allowed: served.
    let r = replica_http(&["127.0.0.1", "localhost"], true).await;
    let mut c = r.worker();
    let got = info(&mut c, &file).await.unwrap();
    assert_eq!((got.size, got.filename.as_str()), (5, "file.txt"));
    let got = info(&mut c, &format!("http://localhost:{port}/data/file.txt"))
        .await
        .unwrap();
    assert_eq!(got.size, 5);
    // Still only the listed hosts.
    let e = info(&mut c, "http://169.254.169.254/latest/")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test]
async fn a_redirect_is_checked_like_the_first_location() {
    let target = http_server("secret", None).await;
    let hop = http_server("", Some(format!("http://127.0.0.2:{target}/meta"))).await;
    let r = replica_http(&["127.0.0.1"], true).await;
    let mut c = r.worker();
    let uri = format!("http://127.0.0.1:{hop}/start");
    match info(&mut c, &uri).await {
        Ok(i) => assert_ne!(
            i.size, 6,
            "the redirect to an unlisted host was followed: {i:?}"
        ),
        Err(e) => assert_ne!(e.code(), Code::Ok),
    }
}

/// A shell task run by a real worker process whose own environment holds tokens and a cloud
/// secret: the task's `env` shows none of them.
#[tokio::test]
async fn a_task_sees_no_token_of_its_worker() {
    let r = common::replica().await;
    let mut c = r.worker();
    let out = common::tempdir().join("env-out");
    let mut req = common::task("env > $TASKQUEUE_OUTPUT/env.txt");
    req.output = Some(format!("file://{}/", out.display()));
    let id = submit(&mut c, req).await;

    let dir = common::tempdir();
    let log = std::fs::File::create(dir.join("worker.log")).unwrap();
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_taskqueue"))
        .args(["worker", "--server", &r.url(), "--name", "envcheck"])
        .args(["--executor", "shell", "--ping-interval", "200ms"])
        .arg("--store")
        .arg(dir.join("store"))
        .env("TASKQUEUE_TOKEN", WORKER_TOKEN)
        .env("TASKQUEUE_WORKER_TOKEN", "server-side-secret")
        .env("AWS_SECRET_ACCESS_KEY", "cloud-secret")
        .env("LANG", "C.UTF-8")
        .env("TASKQUEUE_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the env task to succeed", || {
        let mut c = c.clone();
        async move { common::status_of(&mut c, id).await == "S" }
    })
    .await;
    let _ = worker.kill();
    let _ = worker.wait();
    let env = std::fs::read_to_string(out.join("env.txt")).unwrap();
    assert!(env.contains("TASKQUEUE_TASK_ID="), "{env}");
    assert!(env.contains("LANG=C.UTF-8"), "{env}");
    for leaked in [
        "TASKQUEUE_TOKEN",
        "TASKQUEUE_WORKER_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        WORKER_TOKEN,
        "server-side-secret",
        "cloud-secret",
        "TASKQUEUE_LOG",
    ] {
        assert!(!env.contains(leaked), "{leaked} reached the task:\n{env}");
    }
}

/// A worker refuses local inputs outside its roots and in its store: the task fails, nothing is
/// copied.
#[tokio::test]
async fn a_worker_stages_only_below_its_local_roots() {
    let r = common::replica().await;
    let mut c = r.worker();
    let allowed = common::tempdir().join("allowed");
    write(&allowed, "in.txt", "ok\n");
    let out = common::tempdir().join("out");
    let store = common::tempdir().join("store");
    let mut ok = common::task("cat $TASKQUEUE_INPUT/in.txt > $TASKQUEUE_OUTPUT/copy");
    ok.input = vec![format!("file://{}/in.txt", allowed.display())];
    ok.output = Some(format!("file://{}/", out.display()));
    let ok = submit(&mut c, ok).await;
    let mut etc = common::task("cat $TASKQUEUE_INPUT/passwd");
    etc.input = vec!["/etc/passwd".into()];
    let etc = submit(&mut c, etc).await;
    let mut into_etc = common::task("echo x > $TASKQUEUE_OUTPUT/cron");
    into_etc.output = Some("file:///etc/cron.d/".into());
    let into_etc = submit(&mut c, into_etc).await;
    let mut from_store = common::task("true");
    from_store.input = vec![format!("{}/", store.display())];
    let from_store = submit(&mut c, from_store).await;

    let mut args = taskqueue::worker::WorkerArgs::new(&r.url(), WORKER_TOKEN, "rooted", store);
    args.ping_interval = Duration::from_millis(200);
    args.local_roots = Some(vec![allowed.clone(), out.clone(), common::test_base()]);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(taskqueue::worker::run(args, async move {
        let _ = rx.await;
    }));
    for (id, want) in [(ok, "S"), (etc, "F"), (into_etc, "F"), (from_store, "F")] {
        wait_until(
            Duration::from_secs(60),
            &format!("task {id} → {want}"),
            || {
                let mut c = c.clone();
                async move { common::status_of(&mut c, id).await == want }
            },
        )
        .await;
    }
    assert_eq!(std::fs::read_to_string(out.join("copy")).unwrap(), "ok\n");
    assert!(!Path::new("/etc/cron.d/cron").exists());
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
}
