//! Storage layer against real local trees (bare paths and `file://`) and a loopback web server.

use std::path::Path;

use super::*;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.fq", "A");
    write(dir.path(), "b.txt", "BB");
    write(dir.path(), "run1/c.fq", "CCC");
    write(dir.path(), "run1/deep/d.fq", "DDDD");
    write(dir.path(), "run2/e.fq", "EEEEE");
    dir
}

fn relative(listed: &[String], root: &Path, prefix: &str) -> Vec<String> {
    let base = format!("{prefix}{}/", root.display());
    listed
        .iter()
        .map(|l| l.strip_prefix(&base).unwrap_or(l).to_string())
        .collect()
}

#[tokio::test]
async fn lists_recursively_with_directories_marked() {
    let t = tree();
    let s = Storage::local_only();
    let listed = s.list(&format!("{}/", t.path().display())).await.unwrap();
    assert_eq!(
        relative(&listed, t.path(), ""),
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
    // Without the trailing slash and as file://, the same tree in the form it was asked.
    let listed = s
        .list(&format!("file://{}", t.path().display()))
        .await
        .unwrap();
    assert_eq!(listed.len(), 8);
    assert!(
        listed.iter().all(|l| l.starts_with("file:///")),
        "{listed:?}"
    );
}

#[tokio::test]
async fn globs_match_the_end_of_the_path_as_rclone_rules() {
    let t = tree();
    let s = Storage::local_only();
    let root = t.path().display();
    // `*.fq` is the rclone rule `(^|/)[^/]*\.fq$`: a `.fq` at any depth below the fixed part.
    let any = s.list(&format!("{root}/*.fq")).await.unwrap();
    assert_eq!(
        relative(&any, t.path(), ""),
        ["a.fq", "run1/c.fq", "run1/deep/d.fq", "run2/e.fq"]
    );
    let runs = s.list(&format!("{root}/run*/*.fq")).await.unwrap();
    assert_eq!(relative(&runs, t.path(), ""), ["run1/c.fq", "run2/e.fq"]);
    // `**` is `.*`, so `**/` needs a `/`: the top-level `a.fq` is not matched.
    let below = s.list(&format!("{root}/**/*.fq")).await.unwrap();
    assert_eq!(
        relative(&below, t.path(), ""),
        ["run1/c.fq", "run1/deep/d.fq", "run2/e.fq"]
    );
    // Directories are entries of the listing too.
    let dirs = s.list(&format!("{root}/run?")).await.unwrap();
    assert_eq!(relative(&dirs, t.path(), ""), ["run1/", "run2/"]);
    let none = s.list(&format!("{root}/*.bam")).await.unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn stat_files_and_directories() {
    let t = tree();
    let s = Storage::local_only();
    let f = s
        .stat(&format!("file://{}/run1/c.fq", t.path().display()))
        .await
        .unwrap();
    assert_eq!((f.filename.as_str(), f.size, f.is_dir), ("c.fq", 3, false));
    let d = s
        .stat(&format!("{}/run1", t.path().display()))
        .await
        .unwrap();
    assert!(d.is_dir);
    assert_eq!(d.filename, "run1");
    let missing = s.stat(&format!("{}/nope", t.path().display())).await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn downloads_a_file_a_directory_and_a_glob() {
    let t = tree();
    let s = Storage::local_only();
    let root = t.path().display();
    let dest = tempfile::tempdir().unwrap();
    let moved = s
        .download(&format!("{root}/b.txt"), dest.path())
        .await
        .unwrap();
    assert_eq!(moved, Transfer { files: 1, bytes: 2 });
    assert_eq!(
        std::fs::read_to_string(dest.path().join("b.txt")).unwrap(),
        "BB"
    );

    let dir = tempfile::tempdir().unwrap();
    let moved = s
        .download(&format!("file://{root}/run1"), dir.path())
        .await
        .unwrap();
    assert_eq!(moved, Transfer { files: 2, bytes: 7 });
    assert_eq!(
        std::fs::read_to_string(dir.path().join("deep/d.fq")).unwrap(),
        "DDDD"
    );

    let globbed = tempfile::tempdir().unwrap();
    let moved = s
        .download(&format!("{root}/run*/*.fq"), globbed.path())
        .await
        .unwrap();
    assert_eq!(moved.files, 2);
    assert!(globbed.path().join("run2/e.fq").exists());

    // A glob download fetches the files its listing lists, at their path below the fixed part.
    let any = tempfile::tempdir().unwrap();
    let moved = s
        .download(&format!("{root}/*.fq"), any.path())
        .await
        .unwrap();
    assert_eq!(
        moved,
        Transfer {
            files: 4,
            bytes: 13
        }
    );
    assert!(any.path().join("run1/deep/d.fq").exists());
    // A glob matching only directories downloads no file.
    let dirs = tempfile::tempdir().unwrap();
    let moved = s
        .download(&format!("{root}/run?"), dirs.path())
        .await
        .unwrap();
    assert_eq!(moved, Transfer::default());

    let missing = s.download(&format!("{root}/nope.txt"), dest.path()).await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn uploads_a_tree_under_a_prefix() {
    let src = tree();
    let dest = tempfile::tempdir().unwrap();
    let s = Storage::local_only();
    let target = format!("file://{}/results/task-1", dest.path().display());
    let moved = s.upload(src.path(), &target).await.unwrap();
    assert_eq!(
        moved,
        Transfer {
            files: 5,
            bytes: 15
        }
    );
    assert_eq!(
        std::fs::read_to_string(dest.path().join("results/task-1/run1/deep/d.fq")).unwrap(),
        "DDDD"
    );
    // An empty or missing source uploads nothing.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        s.upload(&empty.path().join("missing"), &target)
            .await
            .unwrap(),
        Transfer::default()
    );
}

#[tokio::test]
async fn unknown_remotes_and_bad_locations_say_why() {
    let mut remotes = RcloneRemotes::new();
    remotes.insert(
        "mys3".into(),
        [("type".to_string(), "s3".to_string())]
            .into_iter()
            .collect(),
    );
    let s = Storage::new(remotes);
    let e = s.list("nowhere://bucket/x").await.unwrap_err();
    assert!(
        matches!(&e, Error::UnknownRemote { known, .. } if known == "mys3"),
        "{e}"
    );
    assert!(matches!(
        s.list("mys3://").await,
        Err(Error::InvalidUri { .. })
    ));
    let e: crate::Error = s.stat("/a/../b").await.unwrap_err().into();
    assert_eq!(e.code, crate::error::Code::InvalidArgument);
}

#[tokio::test]
async fn http_stat_and_download() {
    use axum::routing::get;
    let app = axum::Router::new().route("/files/hello.txt", get(|| async { "hello web\n" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let s = Storage::local_only();
    let uri = format!("http://{addr}/files/hello.txt");
    let info = s.stat(&uri).await.unwrap();
    assert_eq!((info.size, info.is_dir), (10, false));
    let dest = tempfile::tempdir().unwrap();
    s.download(&uri, dest.path()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dest.path().join("hello.txt")).unwrap(),
        "hello web\n"
    );
    let missing = s.stat(&format!("http://{addr}/files/none.txt")).await;
    assert!(missing.is_err());
    server.abort();
}
