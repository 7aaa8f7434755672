//! A private PostgreSQL run from the local installation (docs/architecture.md#configuration):
//! `taskqueue serve` without a database URL, and the test harness. initdb on first start, reused
//! after; the server process is a child of ours and receives SIGINT (fast shutdown) if we die. When
//! we run as root, PostgreSQL runs as the `postgres` user (it refuses root), in a folder that user
//! owns and can reach.
//!
//! Connections go through a Unix socket in the cluster folder (mode 0700), so no other local user can
//! connect; TCP on loopback is opt-in (`tcp_port`) for tools such as pgbench on another machine user.
//! Neither trusts the connecting process: `pg_hba.conf` asks for scram-sha-256 everywhere, with a
//! password generated once and kept in `postgres.password` beside the cluster folder (created 0600,
//! readable by the server only). A cluster made by an older version (trust) gets its password and
//! the new `pg_hba.conf` at its next start.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// What can go wrong starting the embedded database; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found: install them \
         (Debian/Ubuntu: apt-get install postgresql) or pass --database-url"
    )]
    NotInstalled,
    #[error(
        "running as root, but there is no 'postgres' user to run PostgreSQL as: install the postgresql package"
    )]
    NoPostgresUser,
    #[error("{0}")]
    Io(String),
    #[error("PostgreSQL did not start: {0}")]
    Start(String),
}

type Result<T> = std::result::Result<T, EmbeddedError>;

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> EmbeddedError {
    move |e| EmbeddedError::Io(format!("{what}: {e}"))
}

/// How to run the embedded server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster folder (created if missing).
    pub dir: PathBuf,
    /// Fsync and full page writes (true for a server, false for throwaway test clusters).
    pub durable: bool,
    /// Also listen on 127.0.0.1:<port>.
    pub tcp_port: Option<u16>,
    pub max_connections: u32,
}

impl Options {
    pub fn new(dir: impl Into<PathBuf>) -> Options {
        Options {
            dir: dir.into(),
            durable: true,
            tcp_port: None,
            max_connections: 200,
        }
    }
}

/// A running embedded PostgreSQL. `stop` shuts it down; dropping it without `stop` also stops it.
pub struct EmbeddedPostgres {
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    tcp_port: Option<u16>,
    password: String,
}

/// The superuser the embedded cluster is created with.
pub const SUPERUSER: &str = "postgres";
const SOCKET_PORT: u16 = 5432;
/// First line of the `pg_hba.conf` we write: a file without it is replaced (and the password set).
const HBA_MARKER: &str = "# taskqueue: password (scram-sha-256) for every connection";
const HBA: &str = "local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
";

impl EmbeddedPostgres {
    /// Starts the cluster in `options.dir` (initdb first if it is new) and waits until it accepts
    /// connections.
    pub async fn start(options: Options) -> Result<EmbeddedPostgres> {
        let bin = find_bindir()?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user()?)
        } else {
            None
        };
        let dir = prepare_dir(&options.dir, run_as)?;
        let socket_dir = socket_dir_for(&dir, run_as)?;
        if !dir.join("PG_VERSION").exists() {
            initdb(&bin, &dir, run_as)?;
        }
        let password_file = options
            .dir
            .parent()
            .unwrap_or(&options.dir)
            .join("postgres.password");
        let (password, created) = password(&password_file)?;
        let hba = dir.join("pg_hba.conf");
        let ours = std::fs::read_to_string(&hba)
            .map(|t| t.starts_with(HBA_MARKER))
            .unwrap_or(false);
        if created || !ours {
            set_password(&bin, &dir, run_as, &password)?;
            write_owned(&hba, format!("{HBA_MARKER}\n{HBA}").as_bytes(), run_as)?;
        }
        let port = options.tcp_port.unwrap_or(SOCKET_PORT);
        let log_path = dir.parent().unwrap_or(&dir).join(format!(
            "{}.log",
            dir.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("postgres")
        ));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("cannot open {}", log_path.display())))?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&dir)
            .arg("-k")
            .arg(&socket_dir)
            .arg("-p")
            .arg(port.to_string());
        let listen = if options.tcp_port.is_some() {
            "127.0.0.1"
        } else {
            ""
        };
        let mut settings = vec![
            format!("listen_addresses={listen}"),
            format!("max_connections={}", options.max_connections),
            "unix_socket_permissions=0700".to_string(),
            "shared_buffers=128MB".to_string(),
        ];
        if !options.durable {
            settings.extend(
                [
                    "fsync=off",
                    "synchronous_commit=off",
                    "full_page_writes=off",
                ]
                .map(String::from),
            );
        }
        for s in settings {
            cmd.arg("-c").arg(s);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("log file"))?)
            .stderr(log);
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = spawn_tied_to_process(cmd).map_err(io_err("cannot start postgres"))?;
        let pg = EmbeddedPostgres {
            child: Mutex::new(Some(child)),
            dir: dir.clone(),
            socket_dir,
            port,
            tcp_port: options.tcp_port,
            password,
        };
        pg.wait_ready(&log_path).await?;
        tracing::info!(dir = %dir.display(), socket = %pg.socket_dir.display(), "embedded PostgreSQL is up");
        Ok(pg)
    }

    async fn wait_ready(&self, log_path: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .lock()
                .expect("lock")
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(EmbeddedError::Start(format!(
                    "postgres exited with {status}; last lines of {}:\n{}",
                    log_path.display(),
                    tail(log_path, 15)
                )));
            }
            let cfg = self.config("postgres");
            if let Ok((client, conn)) = cfg.connect(tokio_postgres::NoTls).await {
                let task = tokio::spawn(conn);
                let ok = client.simple_query("SELECT 1").await.is_ok();
                drop(client);
                let _ = task.await;
                if ok {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(EmbeddedError::Start(format!(
                    "not ready after 60s; see {}:\n{}",
                    log_path.display(),
                    tail(log_path, 15)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connection settings for database `dbname` as the superuser.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.socket_dir)
            .port(self.port)
            .user(SUPERUSER)
            .password(&self.password)
            .dbname(dbname);
        cfg
    }

    /// A `key=value` connection string for database `dbname` (accepted by `--database-url`).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            quote(&self.socket_dir.to_string_lossy()),
            self.port,
            SUPERUSER,
            quote(&self.password),
            quote(dbname)
        )
    }

    /// A TCP URL, when the cluster listens on loopback.
    pub fn tcp_url(&self, dbname: &str) -> Option<String> {
        self.tcp_port.map(|p| {
            format!(
                "postgresql://{SUPERUSER}:{}@127.0.0.1:{p}/{dbname}",
                self.password
            )
        })
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates database `name` if it does not exist.
    pub async fn ensure_database(
        &self,
        name: &str,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let (client, conn) = self
            .config("postgres")
            .connect(tokio_postgres::NoTls)
            .await?;
        let task = tokio::spawn(conn);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await?
            .is_some();
        if !exists {
            let ident = name.replace('"', "\"\"");
            client
                .batch_execute(&format!("CREATE DATABASE \"{ident}\""))
                .await?;
        }
        drop(client);
        let _ = task.await;
        Ok(())
    }

    /// Fast shutdown (SIGINT): open sessions are ended, committed data is kept. Waits up to 30 s.
    pub async fn stop(&self) {
        let child = self.child.lock().expect("lock").take();
        let Some(mut child) = child else { return };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    tracing::warn!("postgres did not stop within 30s; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        tracing::info!(dir = %self.dir.display(), "embedded PostgreSQL stopped");
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().ok().and_then(|mut c| c.take()) {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
    }
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The folder holding `initdb` and `postgres`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/<major>/bin`, else `$PATH`.
pub fn find_bindir() -> Result<PathBuf> {
    let has_server = |d: &Path| d.join("postgres").is_file() && d.join("initdb").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                has_server(&bin).then_some((major, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Ok(bin);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(EmbeddedError::NotInstalled)
}

/// uid and gid of the `postgres` user.
fn postgres_user() -> Result<(u32, u32)> {
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer into static storage or NULL; we copy the two ids at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(EmbeddedError::NoPostgresUser);
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Creates the cluster folder with the right owner. When running as root and the `postgres` user
/// cannot reach the requested folder (e.g. it is under /root), the cluster goes to
/// `/var/lib/taskqueue/postgres-<hash of the requested path>` instead, and the log says so.
fn prepare_dir(requested: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf> {
    std::fs::create_dir_all(requested)
        .map_err(io_err(format!("cannot create {}", requested.display())))?;
    let requested = requested
        .canonicalize()
        .map_err(io_err(format!("cannot resolve {}", requested.display())))?;
    let Some((uid, gid)) = run_as else {
        set_mode(&requested, 0o700)?;
        return Ok(requested);
    };
    let dir = if reachable_by(&requested, uid, gid) {
        requested
    } else {
        let hash = hex::encode(&Sha256::digest(requested.to_string_lossy().as_bytes())[..6]);
        let fallback = PathBuf::from("/var/lib/taskqueue").join(format!("postgres-{hash}"));
        tracing::warn!(
            requested = %requested.display(),
            actual = %fallback.display(),
            "the postgres user cannot reach the data dir; keeping the database cluster elsewhere"
        );
        std::fs::create_dir_all(&fallback)
            .map_err(io_err(format!("cannot create {}", fallback.display())))?;
        std::fs::set_permissions("/var/lib/taskqueue", std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("cannot set permissions of /var/lib/taskqueue"))?;
        fallback
    };
    chown_recursive(&dir, uid, gid)?;
    set_mode(&dir, 0o700)?;
    Ok(dir)
}

fn set_mode(dir: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io_err(format!(
        "cannot set permissions of {}",
        dir.display()
    )))
}

/// Can `uid` traverse every ancestor of `dir`? (It will own `dir` itself.)
fn reachable_by(dir: &Path, uid: u32, gid: u32) -> bool {
    dir.ancestors().skip(1).all(|a| match std::fs::metadata(a) {
        Ok(md) => {
            let mode = md.mode();
            (md.uid() == uid && mode & 0o100 != 0)
                || (md.gid() == gid && mode & 0o010 != 0)
                || mode & 0o001 != 0
        }
        Err(_) => false,
    })
}

fn chown_recursive(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .map_err(io_err(format!("cannot chown {}", dir.display())))?;
    let md =
        std::fs::symlink_metadata(dir).map_err(io_err(format!("cannot stat {}", dir.display())))?;
    if md.is_dir() {
        for entry in
            std::fs::read_dir(dir).map_err(io_err(format!("cannot list {}", dir.display())))?
        {
            let entry = entry.map_err(io_err("cannot list"))?;
            if entry.metadata().map(|m| m.uid() != uid).unwrap_or(true) {
                chown_recursive(&entry.path(), uid, gid)?;
            }
        }
    }
    Ok(())
}

/// The socket folder: the cluster folder when the socket path fits the 107-byte limit, else a
/// short private folder under /tmp.
fn socket_dir_for(dir: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf> {
    if dir
        .join(format!(".s.PGSQL.{SOCKET_PORT}"))
        .as_os_str()
        .len()
        < 100
    {
        return Ok(dir.to_path_buf());
    }
    let hash = hex::encode(&Sha256::digest(dir.to_string_lossy().as_bytes())[..6]);
    let short = PathBuf::from(format!("/tmp/taskqueue-pg-{hash}"));
    // A predictable name in a world-writable folder: someone else may have made it first.
    crate::secret_files::ensure_private_dir(&short, run_as.map(|(uid, _)| uid))
        .map_err(io_err(format!("cannot use {}", short.display())))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&short, Some(uid), Some(gid))
            .map_err(io_err("cannot chown socket dir"))?;
    }
    set_mode(&short, 0o700)?;
    Ok(short)
}

fn initdb(bin: &Path, dir: &Path, run_as: Option<(u32, u32)>) -> Result<()> {
    tracing::info!(dir = %dir.display(), "creating the embedded PostgreSQL cluster (initdb)");
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(dir)
        .args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .stdin(Stdio::null());
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
        // initdb changes into the cluster dir; give it a HOME it can read.
        cmd.current_dir(dir).env("HOME", dir);
    }
    let out = cmd.output().map_err(io_err("cannot run initdb"))?;
    if !out.status.success() {
        return Err(EmbeddedError::Start(format!(
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The superuser's password: read from `path`, or generated (hex, so it needs no quoting) and
/// written there with mode 0600 from the start. True when it was just created.
fn password(path: &Path) -> Result<(String, bool)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok((text.trim().to_string(), false)),
        Ok(_) => {
            std::fs::remove_file(path).map_err(io_err(format!(
                "cannot replace the empty {}",
                path.display()
            )))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("cannot read {}", path.display()))(e)),
    }
    let secret = hex::encode(rand::random::<[u8; 24]>());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("cannot create {}", path.display())))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .map_err(io_err(format!("cannot write {}", path.display())))?;
    Ok((secret, true))
}

/// Sets the superuser's password (scram-sha-256) in single-user mode, which needs no
/// authentication: the cluster is not running yet.
fn set_password(bin: &Path, dir: &Path, run_as: Option<(u32, u32)>, password: &str) -> Result<()> {
    use std::io::Write as _;
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.args(["--single", "-D"])
        .arg(dir)
        .args(["-c", "listen_addresses=", SUPERUSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid).current_dir(dir);
    }
    let mut child = cmd
        .spawn()
        .map_err(io_err("cannot run postgres --single"))?;
    let sql = format!(
        "SET password_encryption = 'scram-sha-256'\nALTER ROLE {SUPERUSER} PASSWORD '{password}'\n"
    );
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(sql.as_bytes())
            .map_err(io_err("cannot talk to postgres --single"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err("cannot wait for postgres --single"))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if !out.status.success() || stdout.contains("ERROR") || stderr.contains("ERROR:") {
        // The output may quote the statement: the password is not repeated in the message.
        return Err(EmbeddedError::Start(format!(
            "cannot set the superuser password ({}): {}{}",
            out.status,
            stdout.replace(password, "***"),
            stderr.replace(password, "***")
        )));
    }
    Ok(())
}

/// Writes `path` (0600) and gives it to the user PostgreSQL runs as.
fn write_owned(path: &Path, contents: &[u8], run_as: Option<(u32, u32)>) -> Result<()> {
    std::fs::write(path, contents).map_err(io_err(format!("cannot write {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(
        format!("cannot set permissions of {}", path.display()),
    ))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io_err(format!("cannot chown {}", path.display())))?;
    }
    Ok(())
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it receives SIGINT when this process dies. The parent-death signal fires
/// when the *thread* that forked the child exits, so children are forked from one thread that lives
/// as long as the process.
pub fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the child-spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner lock")
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?
}
