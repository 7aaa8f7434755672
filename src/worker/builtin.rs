//! The shell helpers task commands source (`std.sh`, `bio.sh`, in `builtin/`): shipped in the
//! binary, written into `<store>/builtin/` at every worker start (so an upgrade replaces them),
//! and reachable as `/builtin` — where the original scitq worker puts them, and where its DSL's
//! commands (`. /builtin/std.sh`) look — through a symlink the worker creates when it may.
//!
//! The symlink is made only when the link path is absent or already one of ours (a symlink to a
//! folder holding our marker file, or a dangling symlink to a `…/builtin` folder, left by an
//! earlier store); anything else there is someone else's and is never touched. Tasks of the shell
//! executor get the store copy's path in `SCITQ_BUILTIN` either way; docker mounts it at
//! `/builtin` read-only.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The helpers, by file name.
pub const SCRIPTS: [(&str, &str); 2] = [
    ("std.sh", include_str!("builtin/std.sh")),
    ("bio.sh", include_str!("builtin/bio.sh")),
];

/// Where the original worker's commands expect the helpers.
pub const DEFAULT_LINK: &str = "/builtin";

/// A file in the folder that says "taskqueue wrote this folder".
const MARKER: &str = ".taskqueue-builtin";

/// Writes the helpers into `<store>/builtin/` (folder 0755, files 0644, rewritten every time)
/// and returns that folder.
pub fn install(store: &Path) -> std::io::Result<PathBuf> {
    let dir = store.join("builtin");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    for (name, text) in SCRIPTS.iter().chain([&(MARKER, "")]) {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(dir)
}

/// What [`link`] found at the link path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linked {
    /// The link now points to the store copy.
    Linked,
    /// Something that is not ours is there; left alone.
    Foreign,
    /// The link could not be made (typically: not root).
    Failed(String),
}

/// Points `link` (normally `/builtin`) at `dir`, unless something foreign is there. Replaces an
/// existing link of ours atomically (a new symlink renamed over it).
pub fn link(link: &Path, dir: &Path) -> Linked {
    match std::fs::symlink_metadata(link) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Linked::Failed(e.to_string()),
        Ok(meta) if !meta.file_type().is_symlink() => return Linked::Foreign,
        Ok(_) => {
            let target = std::fs::read_link(link).unwrap_or_default();
            if target == dir {
                return Linked::Linked;
            }
            let ours = if target.exists() {
                target.join(MARKER).exists()
            } else {
                target.file_name().is_some_and(|n| n == "builtin")
            };
            if !ours {
                return Linked::Foreign;
            }
        }
    }
    let tmp = link.with_file_name(format!(
        ".{}.{}.tmp",
        link.file_name()
            .map_or("builtin".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    match std::os::unix::fs::symlink(dir, &tmp).and_then(|()| std::fs::rename(&tmp, link)) {
        Ok(()) => Linked::Linked,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Linked::Failed(e.to_string())
        }
    }
}

/// Installs the helpers and tries the link (`None`: no link); logs what happened. `None` when the
/// helpers could not be written (tasks then run without them).
pub fn prepare(store: &Path, link_path: Option<&Path>) -> Option<PathBuf> {
    let dir = match install(store) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(store = %store.display(), error = %e,
                "cannot write the shell helpers (std.sh, bio.sh); tasks run without them");
            return None;
        }
    };
    if let Some(path) = link_path.filter(|p| !p.as_os_str().is_empty()) {
        match link(path, &dir) {
            Linked::Linked => {
                tracing::info!(link = %path.display(), target = %dir.display(), "shell helpers linked")
            }
            Linked::Foreign => tracing::warn!(link = %path.display(),
                "not linking the shell helpers: something else is there; commands must use $SCITQ_BUILTIN"),
            Linked::Failed(why) => tracing::info!(link = %path.display(), error = %why,
                "cannot link the shell helpers (needs root); commands must use $SCITQ_BUILTIN"),
        }
    }
    Some(dir)
}

/// `CPU` of a task: the worker's CPUs shared by its concurrency, at least 1. The original worker
/// gives its tasks `CPU` = its cpu count divided by its concurrency, never below 1 (issue 12).
pub fn cpu_share(cpus: usize, concurrency: f64) -> u32 {
    let concurrency = if concurrency.is_finite() && concurrency >= 1.0 {
        concurrency.floor() as usize
    } else {
        1
    };
    (cpus / concurrency).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_share_of_the_concurrency_at_least_one() {
        assert_eq!(cpu_share(8, 1.0), 8);
        assert_eq!(cpu_share(8, 3.0), 2);
        assert_eq!(cpu_share(8, 16.0), 1);
        assert_eq!(cpu_share(8, 0.0), 8);
        assert_eq!(cpu_share(0, 2.0), 1);
    }

    #[test]
    fn install_writes_readable_scripts_and_rewrites_them() {
        let store = tempfile::tempdir().unwrap();
        let dir = install(store.path()).unwrap();
        assert_eq!(dir, store.path().join("builtin"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o755);
        std::fs::write(dir.join("std.sh"), "old").unwrap();
        std::fs::set_permissions(dir.join("std.sh"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        install(store.path()).unwrap();
        for (name, text) in SCRIPTS {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), text);
            assert_eq!(mode(&dir.join(name)), 0o644);
        }
    }

    #[test]
    fn link_never_overwrites_a_foreign_path() {
        let root = tempfile::tempdir().unwrap();
        let a = install(&root.path().join("a")).unwrap();
        let b = install(&root.path().join("b")).unwrap();
        let at = root.path().join("builtin-link");
        assert_eq!(link(&at, &a), Linked::Linked);
        assert_eq!(std::fs::read_link(&at).unwrap(), a);
        assert_eq!(link(&at, &a), Linked::Linked);
        // Ours, to another store: re-pointed.
        assert_eq!(link(&at, &b), Linked::Linked);
        assert_eq!(std::fs::read_link(&at).unwrap(), b);
        // Ours but dangling (that store was removed): re-pointed.
        std::fs::remove_dir_all(root.path().join("b")).unwrap();
        assert_eq!(link(&at, &a), Linked::Linked);
        assert_eq!(std::fs::read_link(&at).unwrap(), a);

        // A folder, a file, or a symlink elsewhere: left alone.
        let folder = root.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        assert_eq!(link(&folder, &a), Linked::Foreign);
        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let foreign = root.path().join("foreign");
        std::os::unix::fs::symlink(&other, &foreign).unwrap();
        assert_eq!(link(&foreign, &a), Linked::Foreign);
        assert_eq!(std::fs::read_link(&foreign).unwrap(), other);
        // Cannot be created: reported, not fatal.
        assert!(matches!(
            link(&root.path().join("missing/builtin"), &a),
            Linked::Failed(_)
        ));
    }
}
