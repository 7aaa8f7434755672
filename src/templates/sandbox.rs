//! How a template script's process is confined. Scripts are other people's code, so:
//! - never as root: a server running as root starts them as the script user (`--script-user`,
//!   created with `useradd --system` when missing) and refuses to run them at all when that user
//!   cannot be had; a server not running as root starts them as its own user, and then only the
//!   rlimits and the scoped token separate them from the server;
//! - as root, in a private mount namespace where the data dir and secret folders are covered by an
//!   empty tmpfs, secret files by `/dev/null`, and `/proc` is a fresh instance with `hidepid=2`
//!   (the server's command line and environment are not readable);
//! - `no_new_privs` (no setuid binary gives root back) and the rlimits below, in every case.
//!
//! Everything is resolved before the fork (`Plan::prepare`); the child only makes system calls on
//! that prepared data (`Plan::apply`). What this module does not do: the scoped session (see
//! `templates`), output caps and the deadline (see `script`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::config::Config;
use crate::error::{Error, Result};

/// CPU seconds a script may use (the default template timeout: a script that computes for longer
/// is not building a workflow).
pub const CPU_SECONDS: u64 = 1800;
/// Address space of each script process.
pub const ADDRESS_SPACE_BYTES: u64 = 4 << 30;
/// Processes (and threads) of the script user at once, all runs together; applied only when the
/// script runs as its own user (the count is per user, and would include the server's threads).
pub const PROCESSES: u64 = 256;
/// Largest file a script may write.
pub const FILE_SIZE_BYTES: u64 = 1 << 30;
/// Open files of each script process.
pub const OPEN_FILES: u64 = 1024;

/// Where and as whom scripts run, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The unprivileged user scripts run as when the server is root.
    pub user: String,
    /// Folders and files scripts must not see: the data dir, the TLS key, secret files.
    pub hidden: Vec<PathBuf>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let user = config
            .script_user
            .clone()
            .or_else(|| config.template_run_as.clone())
            .unwrap_or_else(|| crate::config::defaults::SCRIPT_USER.to_string());
        let mut hidden = vec![config.data_dir.clone()];
        if let crate::config::TlsMode::Files { key, .. } = &config.tls {
            hidden.push(key.clone());
        }
        hidden.extend(config.secret_files.iter().cloned());
        Settings { user, hidden }
    }
}

/// The user a script runs as: ids and supplementary groups.
#[derive(Debug, Clone)]
struct RunAs {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

/// What the child does between fork and exec, prepared in the parent.
#[derive(Debug)]
pub struct Plan {
    run_as: Option<RunAs>,
    /// Private mount namespace with these covered (only when switching from root).
    cover_dirs: Vec<CString>,
    cover_files: Vec<CString>,
    isolate: bool,
}

/// getpwnam and useradd are not safe to call from several threads at once.
static USERS: Mutex<()> = Mutex::new(());

impl Plan {
    /// Resolves the script user (creating it when the server is root and it is missing) and the
    /// paths to cover. `FailedPrecondition` when the server is root and no unprivileged user can
    /// be had: scripts never run as root.
    pub fn prepare(settings: &Settings) -> Result<Plan> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(Plan {
                run_as: None,
                cover_dirs: Vec::new(),
                cover_files: Vec::new(),
                isolate: false,
            });
        }
        let run_as = {
            let _guard = USERS.lock().unwrap_or_else(|p| p.into_inner());
            match lookup_user(&settings.user)? {
                Some(u) => u,
                None => {
                    create_user(&settings.user)?;
                    lookup_user(&settings.user)?
                        .ok_or_else(|| no_user(&settings.user, "useradd did not create it"))?
                }
            }
        };
        if run_as.uid == 0 || run_as.gid == 0 {
            return Err(no_user(&settings.user, "it is root (uid or gid 0)"));
        }
        let (mut cover_dirs, mut cover_files) = (Vec::new(), Vec::new());
        for path in &settings.hidden {
            let Ok(path) = path.canonicalize() else {
                continue;
            };
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            let c = cstring(&path)?;
            if md.is_dir() {
                cover_dirs.push(c);
            } else {
                cover_files.push(c);
            }
        }
        Ok(Plan {
            run_as: Some(run_as),
            cover_dirs,
            cover_files,
            isolate: true,
        })
    }

    /// The uid and gid the script runs as, when it is not the server's (to own its folder).
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.run_as.as_ref().map(|u| (u.uid, u.gid))
    }

    /// Installs the plan as the command's pre-exec step.
    pub fn install(self, cmd: &mut tokio::process::Command) {
        // SAFETY: `apply` only makes system calls (unshare, mount, setrlimit, setgroups, setgid,
        // setuid, prctl) on data prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || self.apply());
        }
    }

    /// Runs in the child between fork and exec.
    fn apply(&self) -> io::Result<()> {
        if self.isolate {
            isolate(&self.cover_dirs, &self.cover_files)?;
        }
        let mut limits = vec![
            (libc::RLIMIT_CPU, CPU_SECONDS),
            (libc::RLIMIT_AS, ADDRESS_SPACE_BYTES),
            (libc::RLIMIT_FSIZE, FILE_SIZE_BYTES),
            (libc::RLIMIT_NOFILE, OPEN_FILES),
        ];
        if self.run_as.is_some() {
            limits.push((libc::RLIMIT_NPROC, PROCESSES));
        }
        for (resource, value) in limits {
            lower_limit(resource, value)?;
        }
        if let Some(u) = &self.run_as {
            // SAFETY: plain syscalls on prepared data; the order drops groups before the uid.
            unsafe {
                check(libc::setgroups(u.groups.len() as _, u.groups.as_ptr()))?;
                check(libc::setgid(u.gid))?;
                check(libc::setuid(u.uid))?;
            }
        }
        // SAFETY: plain syscall.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        Ok(())
    }
}

/// A private mount namespace: nothing mounted here reaches the host, the hidden paths are
/// covered, and `/proc` shows only the script user's own processes.
fn isolate(dirs: &[CString], files: &[CString]) -> io::Result<()> {
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: plain syscalls; every pointer is a NUL-terminated string prepared before the fork
    // (or a literal) or null where the call allows it.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for d in dirs {
            check(libc::mount(
                c"tmpfs".as_ptr(),
                d.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                c"size=4k,mode=0700".as_ptr().cast(),
            ))?;
        }
        for f in files {
            check(libc::mount(
                c"/dev/null".as_ptr(),
                f.as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
        }
        check(libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"hidepid=2".as_ptr().cast(),
        ))?;
    }
    Ok(())
}

/// Lowers a limit (soft and hard); never raises one the server already runs under.
fn lower_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack value.
    unsafe {
        check(libc::getrlimit(resource, &mut current))?;
        let new = libc::rlimit {
            rlim_cur: value.min(current.rlim_cur),
            rlim_max: value.min(current.rlim_max),
        };
        check(libc::setrlimit(resource, &new))
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::failed_precondition(format!("{} holds a NUL byte", path.display())))
}

fn no_user(user: &str, why: &str) -> Error {
    Error::failed_precondition(format!(
        "template scripts never run as root, and the script user {user:?} cannot be used ({why}): \
         create an unprivileged user and name it with --script-user"
    ))
}

/// The ids and groups of `user`, `None` when there is no such user. Call with `USERS` held.
fn lookup_user(user: &str) -> Result<Option<RunAs>> {
    let name = CString::new(user).map_err(|_| no_user(user, "the name holds a NUL byte"))?;
    // SAFETY: getpwnam returns a pointer into static storage or NULL (serialized by `USERS`);
    // the ids are copied at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Ok(None);
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: groups has room for n entries; getgrouplist writes at most n and updates n.
        let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n as usize);
            break;
        }
        groups.resize((n as usize).max(groups.len() * 2), 0);
    }
    if groups.contains(&0) {
        return Err(no_user(user, "it is in the root group"));
    }
    Ok(Some(RunAs { uid, gid, groups }))
}

/// `useradd --system`: no home, no login shell, its own group.
fn create_user(user: &str) -> Result<()> {
    let valid = !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(no_user(
            user,
            "no such user, and not a name useradd accepts",
        ));
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            user,
        ])
        .output()
        .map_err(|e| no_user(user, &format!("no such user, and useradd cannot run: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(no_user(
            user,
            &format!("no such user, and useradd failed: {}", stderr.trim()),
        ));
    }
    tracing::info!(user, "created the template script user (useradd --system)");
    Ok(())
}
