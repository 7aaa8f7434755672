//! Files and folders that hold secrets (TLS key, worker token, registry credentials, a stored
//! login, a worker's command line): a file is created readable by its owner only (mode 0600 given
//! to `open`, never a chmod afterwards, so there is no moment when another user could open it), and
//! a folder of a predictable name (under /tmp) is used only if it is ours and nobody else can write
//! to it. What goes into the files is not decided here.

use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Writes `content` to `path`, readable and writable by the owner only. The bytes go to a new file
/// (created exclusively, mode 0600, beside `path`) that then replaces `path`: an existing file of
/// wider mode, or a symlink planted at `path`, is replaced, never written through.
pub fn write_private(path: &Path, content: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Makes sure `dir` is a private folder: creates it with mode 0700 when missing (its parent must
/// exist); when it exists, refuses it (PermissionDenied) unless it is a real folder (not a
/// symlink) owned by this process' user or by `owner`, and not writable by group or others.
pub fn ensure_private_dir(dir: &Path, owner: Option<u32>) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = std::fs::symlink_metadata(dir)?;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing to use {}: {why} (remove it, or choose another folder)",
                dir.display()
            ),
        ))
    };
    if !md.file_type().is_dir() {
        return refuse("it exists and is not a folder");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me && Some(md.uid()) != owner {
        return refuse(&format!("it is owned by uid {}, not by us", md.uid()));
    }
    if md.mode() & 0o022 != 0 {
        return refuse("it is writable by group or others");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn secret_files_are_0600_even_over_a_wider_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_private(&path, b"one").unwrap();
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let path = dir.path().join("key.pem");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_private(&path, b"secret").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn private_dirs_are_created_0700_and_foreign_ones_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("sock");
        ensure_private_dir(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o700);
        ensure_private_dir(&dir, None).unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(&dir, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("writable by group or others"), "{e}");

        let link = base.path().join("link");
        std::os::unix::fs::symlink(base.path(), &link).unwrap();
        assert!(ensure_private_dir(&link, None).is_err());

        // A folder owned by someone else (root's /, seen from any user but root, or a folder of
        // another uid when we are root) is refused.
        let me = unsafe { libc::geteuid() };
        if me == 0 {
            let foreign = base.path().join("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
            let e = ensure_private_dir(&foreign, None).unwrap_err();
            assert!(e.to_string().contains("not by us"), "{e}");
            assert!(ensure_private_dir(&foreign, Some(65534)).is_ok());
        }
    }
}
