//! The one storage layer: list (recursive, with globs), stat, download and upload for local paths,
//! `file://`, `http(s)://` and the remotes of the `rclone:` config (s3, azureblob, google cloud
//! storage, http, local), over opendal. Used by the worker for task inputs, resources and outputs,
//! and by the server for FetchList / FetchInfo. It owns no policy about tasks: callers decide where
//! things go and how long they may take.
//!
//! Location forms: `/abs/path`, `relative/path`, `file:///abs/path`, `https://host/path`,
//! `<remote>://<bucket>/<path>` (object stores) and `<remote>://<path>` (http and local remotes).
//! A path ending in `/` is a directory. A segment holding `*`, `?` or `[` starts a glob: the part
//! before it is listed recursively and every entry below it (files and directories) is kept when
//! the glob matches its path relative to that part, under rclone's filter rules as the original
//! applies them (`glob`: `data/*.fq` lists `data/a.fq` and `data/s1/b.fq`). A glob download
//! fetches the files the same listing lists.
//!
//! A storage built `with_policy` checks every location against a `domain::fetch_policy` rule
//! before touching it (local paths after resolving links, each file of a local download or upload
//! again, web hosts and the addresses they resolve to: see `access`); `new` checks nothing.

mod access;
mod glob;
mod location;
mod remotes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt as _;
use opendal::{ErrorKind, Operator};
use tokio::io::AsyncWriteExt as _;

pub use glob::{Glob, MAX_GLOB_ALTERNATIVES, MAX_GLOB_LEN, MAX_GLOB_WILDCARDS};
pub use location::{Backend, Location};

use crate::config::RcloneRemotes;
use crate::domain::fetch_policy::FetchPolicy;

/// Errors of the storage layer, each naming the location it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid location {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("unknown remote {name:?}: it is not in the rclone configuration (known: {known})")]
    UnknownRemote { name: String, known: String },
    #[error(
        "remote {name:?} has type {kind:?}, which is not supported (supported: s3, azureblob, google cloud storage, http, local)"
    )]
    UnsupportedType { name: String, kind: String },
    #[error("remote {name:?} is misconfigured: {reason}")]
    BadRemote { name: String, reason: String },
    /// "object not found" is rclone's wording (its ErrorObjectNotFound), which the original's
    /// FetchInfo passed on and the DSL looks for in the message.
    #[error("{uri}: object not found")]
    NotFound { uri: String },
    /// The location is outside what the storage policy allows.
    #[error("{uri}: {reason}")]
    Denied { uri: String, reason: String },
    #[error("{uri}: {source}")]
    Backend {
        uri: String,
        #[source]
        source: opendal::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        // The message goes back in a response header: a huge location must not make it too large
        // for HTTP/2 (the stream would be reset instead of answered).
        let mut message = e.to_string();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        match e {
            Error::InvalidUri { .. } | Error::UnknownRemote { .. } => {
                crate::Error::invalid(message)
            }
            Error::NotFound { .. } => crate::Error::not_found(message),
            Error::Denied { .. } => crate::Error::permission_denied(message),
            Error::UnsupportedType { .. } | Error::BadRemote { .. } => {
                crate::Error::failed_precondition(message)
            }
            // A backend that fails is a remote or disk that does not answer now: worth retrying.
            Error::Backend { source, .. } => match source.kind() {
                ErrorKind::PermissionDenied => crate::Error::permission_denied(message),
                ErrorKind::Unsupported | ErrorKind::IsADirectory | ErrorKind::NotADirectory => {
                    crate::Error::invalid(message)
                }
                ErrorKind::ConfigInvalid => crate::Error::failed_precondition(message),
                _ => crate::Error::unavailable(message),
            },
            Error::Io { .. } => crate::Error::unavailable(message),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Longest error message handed to a caller, in bytes.
const MAX_MESSAGE: usize = 1024;

/// What `stat` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The location, in the form it was given.
    pub uri: String,
    /// Last segment of the path.
    pub filename: String,
    pub size: u64,
    pub is_dir: bool,
    /// Last modification time (RFC 3339) when the backend knows it.
    pub modified: Option<String>,
}

/// Bytes and files moved by a download or an upload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    pub files: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Transfer {
    fn add_assign(&mut self, o: Transfer) {
        self.files += o.files;
        self.bytes += o.bytes;
    }
}

/// Opendal clients with reqwest need a process-wide rustls crypto provider; ring is the one tonic
/// uses too. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The storage layer, configured with the `rclone:` remotes. Operators are built on first use and
/// kept (one per remote and bucket).
pub struct Storage {
    remotes: RcloneRemotes,
    operators: Mutex<HashMap<(String, String), Operator>>,
    /// None: every location is reachable (the worker before it knows its roots, tests).
    policy: Option<Arc<FetchPolicy>>,
}

/// Chunk size of uploads (multipart part size on object stores).
const UPLOAD_CHUNK: usize = 8 << 20;

impl Storage {
    pub fn new(remotes: RcloneRemotes) -> Storage {
        install_crypto_provider();
        Storage {
            remotes,
            operators: Mutex::new(HashMap::new()),
            policy: None,
        }
    }

    /// A storage that reaches only what `policy` allows (its roots and denied folders are made
    /// canonical here).
    pub fn with_policy(remotes: RcloneRemotes, mut policy: FetchPolicy) -> Storage {
        policy.local_roots = access::canonical_roots(&policy.local_roots);
        policy.denied = access::canonical_roots(&policy.denied);
        let mut storage = Storage::new(remotes);
        storage.policy = Some(Arc::new(policy));
        storage
    }

    /// Local paths, `file://` and `http(s)://` only.
    pub fn local_only() -> Storage {
        Storage::new(RcloneRemotes::new())
    }

    /// Parses `uri` against the configured remotes.
    pub fn locate(&self, uri: &str) -> Result<Location> {
        Location::parse(uri, |name| {
            self.remotes
                .get(name)
                .and_then(|o| o.get("type"))
                .is_some_and(|t| remotes::is_bucketed(t))
        })
    }

    fn operator(&self, loc: &Location) -> Result<Operator> {
        let key = match &loc.backend {
            Backend::Local => ("".to_string(), "".to_string()),
            Backend::Http { endpoint } => (format!("http:{endpoint}"), String::new()),
            Backend::Remote { name } => (name.clone(), loc.bucket.clone()),
        };
        if let Some(op) = self.operators.lock().unwrap().get(&key) {
            return Ok(op.clone());
        }
        let op = match &loc.backend {
            Backend::Local => remotes::local()?,
            Backend::Http { endpoint } => {
                let client = match &self.policy {
                    Some(p) => Some(access::checked_client(p.clone()).map_err(|reason| {
                        Error::BadRemote {
                            name: endpoint.clone(),
                            reason,
                        }
                    })?),
                    None => None,
                };
                remotes::http(endpoint, client)?
            }
            Backend::Remote { name } => {
                let options = self.remotes.get(name).ok_or_else(|| Error::UnknownRemote {
                    name: name.clone(),
                    known: self.known_remotes(),
                })?;
                remotes::remote(name, options, &loc.bucket)?
            }
        };
        self.operators.lock().unwrap().insert(key, op.clone());
        Ok(op)
    }

    /// Whether a location reaches the local filesystem (bare paths, `file://`, and remotes of
    /// type `local`, which are rooted at `/` as well).
    fn is_local(&self, loc: &Location) -> bool {
        match &loc.backend {
            Backend::Local => true,
            Backend::Http { .. } => false,
            Backend::Remote { name } => self
                .remotes
                .get(name)
                .and_then(|o| o.get("type"))
                .is_some_and(|t| t == "local"),
        }
    }

    /// Parses `uri` and checks it against the policy, if any.
    async fn reach(&self, uri: &str) -> Result<Location> {
        let loc = self.locate(uri)?;
        let Some(policy) = &self.policy else {
            return Ok(loc);
        };
        if self.is_local(&loc) {
            self.check_local_path(policy, &loc.path, uri).await?;
        } else if let Backend::Http { endpoint } = &loc.backend {
            let (host, ip) =
                access::endpoint_host(endpoint).map_err(|reason| Error::InvalidUri {
                    uri: uri.into(),
                    reason,
                })?;
            access::check_host(policy, &host, ip).map_err(|reason| denied(uri, reason))?;
            if ip.is_none() && !policy.any_http {
                // Refused now when no address of the name is allowed (the client checks the
                // addresses again when it connects, so a name that changes gains nothing).
                access::check_resolved(policy, &host)
                    .await
                    .map_err(|reason| denied(uri, reason))?;
            }
        }
        Ok(loc)
    }

    /// Checks the local path `path` (relative to `/`) against the policy, after resolving links.
    async fn check_local_path(&self, policy: &FetchPolicy, path: &str, uri: &str) -> Result<()> {
        let absolute = Path::new("/").join(path);
        let canonical = access::canonical(absolute).await.map_err(|e| {
            if e.raw_os_error() == Some(libc::ENAMETOOLONG) {
                Error::InvalidUri {
                    uri: clip(uri),
                    reason: "a path segment is too long".into(),
                }
            } else {
                denied(uri, format!("cannot resolve the path: {e}"))
            }
        })?;
        policy.check_local(&canonical).map_err(|d| denied(uri, d.0))
    }

    /// Checks one file of a local download or upload (a link inside an allowed folder may lead
    /// out of it).
    async fn check_local_file(&self, loc: &Location, path: &str, uri: &str) -> Result<()> {
        match &self.policy {
            Some(policy) if self.is_local(loc) => self.check_local_path(policy, path, uri).await,
            _ => Ok(()),
        }
    }

    fn known_remotes(&self) -> String {
        if self.remotes.is_empty() {
            "none".into()
        } else {
            self.remotes.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// Lists a location: a directory recursively (unbounded depth), a glob's matches (files and
    /// directories), or a file alone. Returns locations in the form `uri` was given, directories suffixed with `/`, sorted.
    pub async fn list(&self, uri: &str) -> Result<Vec<String>> {
        let loc = self.reach(uri).await?;
        let op = self.operator(&loc)?;
        let entries = self.entries(&op, &loc, uri).await?;
        let mut out: Vec<String> = entries.into_iter().map(|e| loc.display(&e.path)).collect();
        out.sort();
        Ok(out)
    }

    /// Stat of one object; a directory (or an object-store prefix) yields `is_dir`.
    pub async fn stat(&self, uri: &str) -> Result<Info> {
        let loc = self.reach(uri).await?;
        if loc.glob.is_some() {
            return Err(Error::InvalidUri {
                uri: uri.into(),
                reason: "stat takes one object, not a glob".into(),
            });
        }
        let op = self.operator(&loc)?;
        let (path, meta) = stat_any(&op, &loc.path, uri).await?;
        Ok(Info {
            uri: loc.display(&path),
            filename: loc.file_name().to_string(),
            size: if meta.is_dir() {
                0
            } else {
                meta.content_length()
            },
            is_dir: meta.is_dir(),
            modified: meta.last_modified().map(|t| t.to_string()),
        })
    }

    /// Downloads `uri` into the directory `dest`: a file as `dest/<name>`, a directory's content
    /// (recursively) into `dest`, a glob's matches at their path below the glob's fixed part.
    pub async fn download(&self, uri: &str, dest: &Path) -> Result<Transfer> {
        let loc = self.reach(uri).await?;
        let op = self.operator(&loc)?;
        let files: Vec<(String, PathBuf)> = if loc.glob.is_some() || loc.path.ends_with('/') {
            self.files_below(&op, &loc, uri, dest).await?
        } else {
            let (path, meta) = stat_any(&op, &loc.path, uri).await?;
            if meta.is_dir() {
                let dir = Location {
                    path,
                    ..loc.clone()
                };
                self.files_below(&op, &dir, uri, dest).await?
            } else {
                vec![(loc.path.clone(), dest.join(loc.file_name()))]
            }
        };
        let mut total = Transfer::default();
        for (path, target) in files {
            self.check_local_file(&loc, &path, &loc.display(&path))
                .await?;
            total.bytes += download_file(&op, &path, &target, &loc.display(&path)).await?;
            total.files += 1;
        }
        Ok(total)
    }

    /// Uploads the files below the local directory `src` (recursively) under the directory `uri`.
    pub async fn upload(&self, src: &Path, uri: &str) -> Result<Transfer> {
        let loc = self.reach(uri).await?;
        if loc.glob.is_some() {
            return Err(Error::InvalidUri {
                uri: uri.into(),
                reason: "cannot upload to a glob".into(),
            });
        }
        let op = self.operator(&loc)?;
        let mut base = loc.path.clone();
        if !base.is_empty() && !base.ends_with('/') {
            base.push('/');
        }
        let mut total = Transfer::default();
        for (relative, file) in local_files(src).await? {
            let path = format!("{base}{relative}");
            self.check_local_file(&loc, &path, &loc.display(&path))
                .await?;
            total.bytes += upload_file(&op, &file, &path, &loc.display(&path)).await?;
            total.files += 1;
        }
        Ok(total)
    }

    /// Entries of a location: recursive listing of a directory, matches of a glob, or the file.
    /// The original lists the part before the glob recursively and keeps each entry (file or
    /// directory, its path without a trailing `/`) that its rclone rules `+ <glob>`, `- *` include.
    async fn entries(&self, op: &Operator, loc: &Location, uri: &str) -> Result<Vec<Listed>> {
        let dir = if loc.glob.is_some() || loc.path.ends_with('/') || loc.path.is_empty() {
            dir_path(&loc.path)
        } else {
            let (path, meta) = stat_any(op, &loc.path, uri).await?;
            if !meta.is_dir() {
                return Ok(vec![Listed {
                    path,
                    is_dir: false,
                }]);
            }
            path
        };
        let matcher = match loc.glob.as_deref() {
            Some(g) => Some(Glob::new(g).map_err(|reason| Error::InvalidUri {
                uri: uri.into(),
                reason,
            })?),
            None => None,
        };
        let listed = op
            .list_with(&dir)
            .recursive(true)
            .await
            .map_err(|e| map_err(uri, e))?;
        let mut out = Vec::new();
        for entry in listed {
            let path = entry.path().to_string();
            if path == dir || !path.starts_with(&dir) {
                continue;
            }
            let is_dir = entry.metadata().is_dir();
            if let Some(m) = &matcher {
                let relative = path[dir.len()..].trim_end_matches('/');
                if !m.is_match(relative) {
                    continue;
                }
            }
            out.push(Listed { path, is_dir });
        }
        if out.is_empty() && loc.glob.is_none() && !dir.is_empty() {
            // An empty listing of a directory that does not exist is a mistake worth reporting.
            if !op.exists(&dir).await.map_err(|e| map_err(uri, e))? {
                return Err(Error::NotFound { uri: uri.into() });
            }
        }
        Ok(out)
    }

    /// Files below a directory or matching a glob, each with its local target below `dest`.
    async fn files_below(
        &self,
        op: &Operator,
        loc: &Location,
        uri: &str,
        dest: &Path,
    ) -> Result<Vec<(String, PathBuf)>> {
        let dir = dir_path(&loc.path);
        let entries = self.entries(op, loc, uri).await?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| {
                let target = dest.join(&e.path[dir.len()..]);
                (e.path, target)
            })
            .collect())
    }
}

struct Listed {
    path: String,
    is_dir: bool,
}

/// At most 200 bytes of a location, for messages.
fn clip(uri: &str) -> String {
    if uri.len() <= 200 {
        return uri.to_string();
    }
    let mut end = 200;
    while !uri.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &uri[..end])
}

fn denied(uri: &str, reason: String) -> Error {
    Error::Denied {
        uri: clip(uri),
        reason,
    }
}

fn dir_path(path: &str) -> String {
    if path.is_empty() || path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    }
}

fn map_err(uri: &str, e: opendal::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        Error::NotFound { uri: uri.into() }
    } else {
        Error::Backend {
            uri: uri.into(),
            source: e,
        }
    }
}

/// Stat of `path`; an object store has no directory objects, so a missing `path` is tried again as
/// the prefix `path/`. Returns the path that answered.
async fn stat_any(op: &Operator, path: &str, uri: &str) -> Result<(String, opendal::Metadata)> {
    if path.is_empty() {
        return Ok((
            String::new(),
            opendal::Metadata::new(opendal::EntryMode::DIR),
        ));
    }
    match op.stat(path).await {
        Ok(meta) => {
            let path = if meta.is_dir() {
                dir_path(path)
            } else {
                path.to_string()
            };
            Ok((path, meta))
        }
        Err(e) if e.kind() == ErrorKind::NotFound && !path.ends_with('/') => {
            let dir = dir_path(path);
            let listed = op.list_with(&dir).limit(1).await;
            match listed {
                Ok(entries) if entries.iter().any(|e| e.path() != dir) => {
                    Ok((dir, opendal::Metadata::new(opendal::EntryMode::DIR)))
                }
                _ => Err(Error::NotFound { uri: uri.into() }),
            }
        }
        Err(e) => Err(map_err(uri, e)),
    }
}

async fn download_file(op: &Operator, path: &str, target: &Path, uri: &str) -> Result<u64> {
    let io = |source| Error::Io {
        path: target.to_path_buf(),
        source,
    };
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    let reader = op.reader(path).await.map_err(|e| map_err(uri, e))?;
    let mut stream = reader
        .into_bytes_stream(..)
        .await
        .map_err(|e| map_err(uri, e))?;
    let mut file = tokio::fs::File::create(target).await.map_err(io)?;
    let mut written = 0u64;
    while let Some(chunk) = stream.try_next().await.map_err(|e| Error::Backend {
        uri: uri.into(),
        source: opendal::Error::new(ErrorKind::Unexpected, e.to_string()),
    })? {
        file.write_all(&chunk).await.map_err(io)?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(io)?;
    Ok(written)
}

async fn upload_file(op: &Operator, file: &Path, path: &str, uri: &str) -> Result<u64> {
    use tokio::io::AsyncReadExt as _;
    let io = |source| Error::Io {
        path: file.to_path_buf(),
        source,
    };
    let mut src = tokio::fs::File::open(file).await.map_err(io)?;
    let mut writer = op
        .writer_with(path)
        .chunk(UPLOAD_CHUNK)
        .await
        .map_err(|e| map_err(uri, e))?;
    let mut sent = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        writer
            .write(buf[..n].to_vec())
            .await
            .map_err(|e| map_err(uri, e))?;
        sent += n as u64;
    }
    writer.close().await.map_err(|e| map_err(uri, e))?;
    Ok(sent)
}

/// Regular files below `root`, recursively, as (relative path with `/`, absolute path), sorted.
/// Symbolic links are followed; special files are skipped.
async fn local_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let io = |source| Error::Io {
            path: dir.clone(),
            source,
        };
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == root => return Ok(out),
            Err(e) => return Err(io(e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let path = entry.path();
            let meta = tokio::fs::metadata(&path)
                .await
                .map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                let relative = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((relative, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests;
