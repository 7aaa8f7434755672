//! This test process' temporary folder (below it every `tempdir()`), and the sweep of the folders
//! of earlier test processes that are gone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// This test process' temporary folder: every `tempdir()` is below it.
pub fn test_base() -> PathBuf {
    std::env::temp_dir().join(format!("taskqueue-test-{}", std::process::id()))
}

/// A fresh temporary folder, removed with the process' temp folder sweep.
pub fn tempdir() -> PathBuf {
    let base = test_base().join("dirs");
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.join(format!("d{}", DIR_COUNTER.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Removes the folders of earlier test processes that are gone.
pub fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = name
            .strip_prefix("taskqueue-test-")
            .and_then(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill with signal 0 only checks that the process exists.
            if pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } != 0 {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
