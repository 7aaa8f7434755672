//! `taskqueue serve` with no flags, as a new user runs it: a private PostgreSQL in ./taskqueue-data
//! (created on first start, reused after), an admin password printed once, 127.0.0.1:50051, and a
//! clean stop on SIGTERM that also stops the database.

use crate::common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use taskqueue::proto as pb;

fn start(dir: &std::path::Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskqueue"))
        .arg("serve")
        .current_dir(dir)
        .env_remove("TASKQUEUE_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

async fn login(password: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let attempt = async {
            let channel = taskqueue::client::Target::new("127.0.0.1:50051")
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut c = pb::task_queue_client::TaskQueueClient::new(channel);
            c.login(pb::LoginRequest {
                username: "admin".into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner().token)
            .map_err(|e| e.to_string())
        }
        .await;
        match attempt {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "serve exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn postgres_running_in(dir: &std::path::Path) -> bool {
    let out = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let needle = dir.join("taskqueue-data").to_string_lossy().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains("postgres") && l.contains(&needle))
}

#[tokio::test]
async fn serve_with_no_flags_works_and_reuses_its_data() {
    common::init_tracing();
    let dir = common::tempdir();
    let (child, out) = start(&dir);
    // The admin password is printed once, on stdout.
    let deadline = Instant::now() + Duration::from_secs(120);
    let password = loop {
        if let Ok(line) = out.recv_timeout(Duration::from_millis(200))
            && let Some(p) = line.split("with password: ").nth(1)
        {
            break p.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no admin password printed");
    };
    let token = login(&password)
        .await
        .expect("login with the printed password");
    let channel = taskqueue::client::Target::new("127.0.0.1:50051")
        .connect()
        .await
        .unwrap();
    let mut client = taskqueue::client::with_token(channel, Some(&token)).unwrap();
    assert_eq!(
        client
            .list_users(())
            .await
            .unwrap()
            .into_inner()
            .users
            .len(),
        1
    );
    let metrics = common::http_get("127.0.0.1:9090".parse().unwrap(), "/metrics").await;
    assert!(metrics.contains("grpc_server_handled_total"), "{metrics}");
    assert!(dir.join("taskqueue-data/worker-token").exists());
    stop(child);
    assert!(
        !postgres_running_in(&dir),
        "the embedded PostgreSQL stops with the server"
    );

    // Second start: same data, no new password.
    let (child, out) = start(&dir);
    login(&password)
        .await
        .expect("the same admin password works after a restart");
    let printed: Vec<String> = out.try_iter().collect();
    assert!(
        printed.iter().all(|l| !l.contains("with password")),
        "{printed:?}"
    );
    stop(child);
}
