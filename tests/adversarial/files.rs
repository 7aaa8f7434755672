//! Files and containers (issue 13, items 4 and 5): FetchList/FetchInfo toward system files, the
//! data dir, links out of a root, encoded `..`, local-type remotes and internal web addresses
//! (cloud metadata services included), and container options that would hand a task the host,
//! each submitted by a plain user and by the worker token.

use taskqueue::proto as pb;
use tonic::Code;

use crate::common::{postgres, spawn_replica, task, tempdir, test_config};
use crate::guard::{Guard, refused};

macro_rules! case {
    ($call:expr, $code:ident, $what:expr) => {
        refused($call.await, Code::$code, $what)
    };
}

#[tokio::test]
async fn fetch_outside_the_roots() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    let root = tempdir().join("root");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/a.fq"), "A").unwrap();
    config.fetch_roots = vec![root.clone()];
    config.fetch_http_hosts = vec!["example.org".into()];
    config.rclone.insert(
        "disk".into(),
        [("type".to_string(), "local".to_string())]
            .into_iter()
            .collect(),
    );
    let data_dir = config.data_dir.clone();
    // Links from inside the root to what must stay out of reach.
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    std::os::unix::fs::symlink("/proc/self", root.join("self")).unwrap();
    std::os::unix::fs::symlink(&data_dir, root.join("datadir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
    std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
    let r = spawn_replica(config).await;
    let mut user = r.plain_user("mallory").await;
    let guard = Guard::new(&r).await;

    let base = root.display().to_string();
    let dd = data_dir.display().to_string();
    let denied: Vec<String> = vec![
        "/etc/".into(),
        "/etc/passwd".into(),
        "/etc/shadow".into(),
        "/proc/self/environ".into(),
        "/proc/1/cmdline".into(),
        "file:///proc/self/environ".into(),
        "file:///etc/".into(),
        "/root/".into(),
        "/".into(),
        "file:///".into(),
        "/*".into(),
        "/etc/*.conf".into(),
        format!("{dd}/"),
        format!("{dd}/worker-token"),
        format!("file://{dd}/tls/key.pem"),
        format!("{base}/etc/"),
        format!("{base}/etc/passwd"),
        format!("{base}/self/environ"),
        format!("{base}/datadir/"),
        format!("{base}/datadir/worker-token"),
        format!("{base}/passwd"),
        format!("{base}/up/"),
        format!("{base}/up/etc/passwd"),
        "file:///..%2f..%2fetc/passwd".into(),
        "disk:///etc/".into(),
        "disk://etc/passwd".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://169.254.169.254/computeMetadata/v1/".into(),
        "http://[fd00:ec2::254]/latest/meta-data/".into(),
        "http://100.100.100.200/latest/meta-data/".into(),
        "http://metadata.google.internal/computeMetadata/v1/".into(),
        "http://127.0.0.1:5432/".into(),
        "http://localhost/".into(),
        "http://[::1]/".into(),
        "http://0.0.0.0/".into(),
        "http://2130706433/".into(),
        "http://10.0.0.1/".into(),
        "http://192.168.1.1/".into(),
        "http://172.16.0.1/".into(),
        "https://example.org@169.254.169.254/".into(),
    ];
    for uri in &denied {
        let short: String = uri.chars().take(60).collect();
        case!(
            user.fetch_list(pb::FetchListRequest { uri: uri.clone() }),
            PermissionDenied,
            &format!("FetchList {short}")
        );
        if !uri.contains('*') {
            case!(
                user.fetch_info(pb::FetchListRequest { uri: uri.clone() }),
                PermissionDenied,
                &format!("FetchInfo {short}")
            );
        }
    }
    // An encoded `..` below a root is a name like any other: not found, not an escape.
    case!(
        user.fetch_list(pb::FetchListRequest {
            uri: format!("{base}/data/..%2f..%2fetc/passwd")
        }),
        NotFound,
        "FetchList of an encoded .. below a root"
    );
    case!(
        user.fetch_list(pb::FetchListRequest {
            uri: format!("{base}/data/../../etc/")
        }),
        InvalidArgument,
        "FetchList with .. segments"
    );
    guard.assert_unchanged("fetches outside the roots").await;

    // What is allowed still works under the same replica.
    let ok = user
        .fetch_list(pb::FetchListRequest {
            uri: format!("{base}/data/"),
        })
        .await
        .unwrap()
        .into_inner()
        .files;
    assert_eq!(ok, [format!("{base}/data/a.fq")]);
}

#[tokio::test]
async fn container_options_of_a_plain_user() {
    let r = crate::common::replica().await;
    let mut user = r.plain_user("mallory").await;
    let mut worker = r.worker();
    let mut admin = r.admin().await;
    let guard = Guard::new(&r).await;
    let with_options = |opts: &str| pb::TaskRequest {
        container_options: Some(opts.into()),
        ..task("true")
    };
    for opts in [
        "--privileged",
        "--pid=host",
        "--pid host",
        "--ipc host",
        "--network host",
        "--net=host",
        "--network container:other",
        "--cap-add SYS_ADMIN",
        "--cap-add=ALL",
        "--device /dev/mem",
        "--security-opt apparmor=unconfined",
        "--security-opt seccomp=unconfined",
        "--userns host",
        "--uts host",
        "-v /:/host",
        "-v/etc:/etc",
        "--volume /etc:/etc:ro",
        "--volume=/var/run/docker.sock:/var/run/docker.sock",
        "--mount type=bind,source=/,target=/host",
        "--mount type=volume,target=/x,volume-opt=device=/etc,volume-opt=o=bind",
        "-v named:/x",
        "--volumes-from other",
        "--env-file /etc/shadow",
        "-itd",
        "--gpus all --privileged",
        "-e X=1 --cap-add NET_ADMIN",
    ] {
        case!(
            user.submit_task(with_options(opts)),
            PermissionDenied,
            &format!("SubmitTask with {opts} as a plain user")
        );
    }
    for opts in ["--privileged", "--network host", "-v /:/host"] {
        case!(
            worker.submit_task(with_options(opts)),
            PermissionDenied,
            &format!("SubmitTask with {opts} with the worker token")
        );
    }
    case!(
        user.submit_task(pb::TaskRequest {
            container: "--privileged".into(),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with an image that is an option"
    );
    case!(
        user.submit_task(pb::TaskRequest {
            container: "alpine --privileged".into(),
            ..task("true")
        }),
        InvalidArgument,
        "SubmitTask with an image holding a space"
    );
    case!(
        user.submit_task(with_options("-- --privileged")),
        InvalidArgument,
        "SubmitTask with options ending the option list"
    );
    case!(
        user.submit_task(with_options("--env \"X")),
        InvalidArgument,
        "SubmitTask with unbalanced quotes in options"
    );
    guard
        .assert_unchanged("container options of a plain user")
        .await;

    // Ordinary options pass for the user, anything for an admin.
    user.submit_task(with_options("--gpus all --shm-size 2g -e A=1"))
        .await
        .unwrap();
    admin
        .submit_task(with_options("--privileged -v /:/host"))
        .await
        .unwrap();
}
