//! The virtual environment of template scripts (`scitq.script_venv`), made at start when it is
//! missing: `python3 -m venv <dir>`, then `pip install` of `scitq.script_packages` (paths, wheels
//! or names). The original does the same at start from a tarball of its DSL embedded in the
//! server (fatal on failure); we embed no DSL, so the operator lists what
//! to install (e.g. their copy of the `scitq2` package).
//!
//! Idempotent: the packages installed are recorded in `<dir>/.taskqueue-packages`; a start whose
//! venv exists with the same list does nothing, a changed list is installed again. An existing
//! venv the server did not make is used as is unless packages are configured.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context as _;

use crate::config::ScriptVenv;

/// The interpreter that creates the venv.
const BASE_PYTHON: &str = "python3";
/// Records which packages were installed, so an unchanged start installs nothing.
const MARKER: &str = ".taskqueue-packages";
/// The end of a failed command's output kept in the start error.
const ERROR_TAIL: usize = 4000;

/// Makes sure `venv` exists with its packages; an error says what failed and what to change.
pub async fn ensure(venv: &ScriptVenv) -> anyhow::Result<()> {
    let dir = &venv.dir;
    let python = dir.join("bin/python");
    if !python.exists() {
        tracing::info!(venv = %dir.display(), "creating the template virtual environment (scitq.script_venv)");
        let mut cmd = tokio::process::Command::new(BASE_PYTHON);
        cmd.arg("-m").arg("venv").arg(dir);
        run(cmd).await.with_context(|| {
            format!(
                "cannot create scitq.script_venv {}: `{BASE_PYTHON} -m venv` failed \
                 (on Debian/Ubuntu the python3-venv package provides it)",
                dir.display()
            )
        })?;
    }
    let marker = dir.join(MARKER);
    let wanted = venv.packages.join("\n");
    let installed = std::fs::read_to_string(&marker).ok();
    if venv.packages.is_empty() || installed.as_deref() == Some(wanted.as_str()) {
        tracing::debug!(venv = %dir.display(), "template virtual environment is ready");
        return Ok(());
    }
    tracing::info!(venv = %dir.display(), packages = ?venv.packages, "installing scitq.script_packages into the template virtual environment");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
    ])
    .args(&venv.packages);
    run(cmd).await.with_context(|| {
        format!(
            "cannot install scitq.script_packages {:?} into scitq.script_venv {}: pip failed",
            venv.packages,
            dir.display()
        )
    })?;
    write_marker(&marker, &wanted)?;
    tracing::info!(venv = %dir.display(), "template virtual environment is ready");
    Ok(())
}

/// Runs `cmd` to its end; a failure carries the end of what it printed.
async fn run(mut cmd: tokio::process::Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot start it")?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = text.trim();
    let start = text
        .char_indices()
        .rev()
        .nth(ERROR_TAIL)
        .map_or(0, |(i, _)| i);
    anyhow::bail!("{}: {}", out.status, &text[start..])
}

fn write_marker(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}
