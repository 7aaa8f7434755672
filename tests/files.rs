//! FetchList / FetchInfo against a real local tree through a replica: recursive listings, `*`
//! and `**` globs, directories suffixed with `/`, `file://` locations, stat of files and folders,
//! and bad input mapped to the right codes (unknown remote, `..`, missing paths, empty uri).

mod common;

use std::path::Path;

use common::{postgres, spawn_replica, test_config};
use taskqueue::proto as pb;
use tonic::Code;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn tree() -> std::path::PathBuf {
    let root = common::tempdir().join("tree");
    write(&root, "a.fq", "A");
    write(&root, "b.txt", "BB");
    write(&root, "run1/c.fq", "CCC");
    write(&root, "run1/deep/d.fq", "DDDD");
    write(&root, "run2/e.fq", "EEEEE");
    root
}

async fn list(c: &mut taskqueue::client::Client, uri: &str) -> Result<Vec<String>, tonic::Status> {
    c.fetch_list(pb::FetchListRequest { uri: uri.into() })
        .await
        .map(|r| r.into_inner().files)
}

fn relative(files: &[String], prefix: &str) -> Vec<String> {
    files
        .iter()
        .map(|f| f.strip_prefix(prefix).unwrap_or(f).to_string())
        .collect()
}

#[tokio::test]
async fn lists_trees_and_globs() {
    let r = common::replica().await;
    let mut c = r.worker();
    let root = tree();
    let base = format!("{}/", root.display());

    let all = list(&mut c, &base).await.unwrap();
    assert_eq!(
        relative(&all, &base),
        [
            "a.fq",
            "b.txt",
            "run1/",
            "run1/c.fq",
            "run1/deep/",
            "run1/deep/d.fq",
            "run2/",
            "run2/e.fq"
        ]
    );
    let files = list(&mut c, &format!("file://{}", root.display()))
        .await
        .unwrap();
    assert_eq!(files.len(), 8);
    assert!(files.iter().all(|f| f.starts_with("file:///")), "{files:?}");

    let top = list(&mut c, &format!("{base}*.fq")).await.unwrap();
    assert_eq!(relative(&top, &base), ["a.fq"], "* stays within a segment");
    let deep = list(&mut c, &format!("{base}**/*.fq")).await.unwrap();
    assert_eq!(
        relative(&deep, &base),
        ["a.fq", "run1/c.fq", "run1/deep/d.fq", "run2/e.fq"],
        "** crosses segments"
    );
    let runs = list(&mut c, &format!("{base}run*/*.fq")).await.unwrap();
    assert_eq!(relative(&runs, &base), ["run1/c.fq", "run2/e.fq"]);
    assert!(
        list(&mut c, &format!("{base}*.bam"))
            .await
            .unwrap()
            .is_empty()
    );

    let one = list(&mut c, &format!("{base}b.txt")).await.unwrap();
    assert_eq!(relative(&one, &base), ["b.txt"]);
}

#[tokio::test]
async fn stats_files_and_directories() {
    let r = common::replica().await;
    let mut c = r.admin().await;
    let root = tree();
    let info = c
        .fetch_info(pb::FetchListRequest {
            uri: format!("{}/run1/deep/d.fq", root.display()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.filename, "d.fq");
    assert_eq!(info.size, 4);
    assert!(info.is_file && !info.is_dir);
    let dir = c
        .fetch_info(pb::FetchListRequest {
            uri: format!("file://{}/run1", root.display()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dir.is_dir && !dir.is_file, "{dir:?}");
    assert_eq!(dir.filename, "run1");
    assert!(dir.uri.ends_with("run1/"), "{dir:?}");
}

#[tokio::test]
async fn bad_locations_get_precise_codes() {
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.rclone.insert(
        "broken".into(),
        [("type".to_string(), "sftp".to_string())]
            .into_iter()
            .collect(),
    );
    let r = spawn_replica(config).await;
    let mut c = r.worker();
    let root = tree();
    let missing = format!("{}/nothing-here/", root.display());
    for (uri, code) in [
        ("", Code::InvalidArgument),
        ("nosuchremote://bucket/path", Code::InvalidArgument),
        ("/etc/../etc/passwd", Code::InvalidArgument),
        (
            format!("{}/run1/../../../etc/", root.display()).as_str(),
            Code::InvalidArgument,
        ),
        ("file:///tmp/../root/", Code::InvalidArgument),
        (
            format!("{}/[z-a]*", root.display()).as_str(),
            Code::InvalidArgument,
        ),
        (missing.as_str(), Code::NotFound),
        ("broken://somewhere/x", Code::FailedPrecondition),
    ] {
        let err = list(&mut c, uri).await.unwrap_err();
        assert_eq!(err.code(), code, "{uri:?}: {err:?}");
        assert!(!err.message().is_empty());
    }
    for (uri, code) in [
        ("nosuchremote://bucket/file", Code::InvalidArgument),
        (
            format!("{}/a/../a.fq", root.display()).as_str(),
            Code::InvalidArgument,
        ),
        (
            format!("{}/missing.fq", root.display()).as_str(),
            Code::NotFound,
        ),
        (
            format!("{}/*.fq", root.display()).as_str(),
            Code::InvalidArgument,
        ),
    ] {
        let err = c
            .fetch_info(pb::FetchListRequest {
                uri: uri.to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{uri:?}: {err:?}");
    }
}

/// A moto S3 server on a free loopback port, killed on drop.
struct Moto(std::process::Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `moto_server` and fills bucket `data` with a small tree; None when moto is missing.
async fn moto_with_tree() -> Option<Moto> {
    let port = common::free_port();
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let moto = Moto(child, port);
    let fill = format!(
        r#"
import boto3, time
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:{port}", aws_access_key_id="k",
                  aws_secret_access_key="s", region_name="us-east-1")
for _ in range(200):
    try:
        s3.create_bucket(Bucket="data"); break
    except Exception:
        time.sleep(0.05)
for key in ["a.fq", "runs/r1/b.fq", "runs/r2/c.fq", "runs/r2/notes.txt"]:
    s3.put_object(Bucket="data", Key=key, Body=b"xyz")
"#
    );
    let out = tokio::process::Command::new("python3")
        .args(["-c", &fill])
        .output()
        .await
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(moto)
}

#[tokio::test]
async fn lists_an_s3_remote_of_the_rclone_section() {
    let Some(moto) = moto_with_tree().await else {
        eprintln!("moto_server is not installed: skipped");
        return;
    };
    let url = postgres().await.fresh_db().await;
    let mut config = test_config(&url);
    config.rclone.insert(
        "s3".into(),
        [
            ("type", "s3"),
            ("provider", "Other"),
            ("access_key_id", "k"),
            ("secret_access_key", "s"),
            ("endpoint", &format!("http://127.0.0.1:{}", moto.1)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let r = spawn_replica(config).await;
    let mut c = r.worker();
    let deep = list(&mut c, "s3://data/**/*.fq").await.unwrap();
    assert_eq!(
        deep,
        [
            "s3://data/a.fq",
            "s3://data/runs/r1/b.fq",
            "s3://data/runs/r2/c.fq"
        ]
    );
    let runs = list(&mut c, "s3://data/runs/r2/").await.unwrap();
    assert_eq!(
        runs,
        ["s3://data/runs/r2/c.fq", "s3://data/runs/r2/notes.txt"]
    );
    let info = c
        .fetch_info(pb::FetchListRequest {
            uri: "s3://data/runs/r1/b.fq".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.size, info.is_file), (3, true));
    let dir = c
        .fetch_info(pb::FetchListRequest {
            uri: "s3://data/runs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dir.is_dir, "{dir:?}");
    let err = c
        .fetch_info(pb::FetchListRequest {
            uri: "s3://data/none.fq".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}
